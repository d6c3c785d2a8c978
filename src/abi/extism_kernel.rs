//! The Extism kernel's state in a Store: its block memory (offsets are i64; 0 is "none"; freed
//! blocks reused best-fit and their pages given back), the call's input, output and error
//! blocks, and the vars an actor keeps. The kernel functions over it are in `extism.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{MAX_VAR_BYTES, VAR_OVERHEAD};
use crate::error::ExecError;

/// The kernel's state in a Store.
#[derive(Default)]
pub struct Kernel {
    pub(super) mem: Vec<u8>,
    pub(super) blocks: BTreeMap<u64, u64>,
    /// Freed blocks inside `mem`, by offset and by (size, offset): reused by `alloc`, and given
    /// back when they reach the end of `mem`.
    pub(super) freed: BTreeMap<u64, u64>,
    pub(super) freed_by_size: std::collections::BTreeSet<(u64, u64)>,
    /// Bytes this call's blocks hold against `maxMemoryMB` (their bytes and `BLOCK_OVERHEAD` each).
    reserved: u64,
    pub(super) input: (u64, u64),
    pub(super) output: Option<(u64, u64)>,
    pub(super) error: Option<u64>,
    /// Kept between the calls of an actor; part of its snapshots. Changed through `set_var`,
    /// `remove_var` and `replace_vars`, which keep `vars_held`.
    pub(crate) vars: BTreeMap<String, Vec<u8>>,
    /// What `vars` hold, as `vars_bytes` counts them (kept as they change: summed anew on each
    /// `var_set`, filling 1 MiB with tiny vars took 0.6-0.8 s of CPU, review BE2).
    vars_held: u64,
    /// `definition.config` of the call (`set_config`), kept by an actor until its next call.
    pub(super) config: Arc<BTreeMap<String, String>>,
    /// What `config` counts (`options::config_bytes`).
    config_held: u64,
    /// The status and headers (JSON) of the call's last HTTP response.
    pub(super) http_status: u16,
    pub(super) http_headers: Option<String>,
}

/// Past this many block records, the memory they took is given back once they go (`trim`).
const TRIM_PAST_BLOCKS: usize = 1 << 18;

/// What one block costs the host beside its bytes (its entry in `blocks`), counted against the cap.
pub(super) const BLOCK_OVERHEAD: u64 = 64;

/// Most freed blocks `free` gives back in one call.
pub(super) const FREE_STEPS: usize = 4096;

/// Bytes of a new block zeroed between two looks at the call's deadline (a few ms at most).
pub(super) const ZERO_STEP: u64 = 4 << 20;

/// Gives the whole pages of `mem`'s spare capacity back to the OS, keeping the capacity (so
/// growth stays amortized: reallocating down and up again would copy the kernel memory each
/// time). What is no longer counted must not stay held, and truncating keeps the pages written
/// when the blocks there were made (review W: 127 MiB resident under a 64 MiB cap).
fn release_spare(mem: &mut Vec<u8>) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let Ok(page) = usize::try_from(page) else { return };
    if !page.is_power_of_two() {
        return;
    }
    let base = mem.as_mut_ptr() as usize;
    let start = (base + mem.len()).next_multiple_of(page);
    let end = (base + mem.capacity()) & !(page - 1);
    if end >= start + 16 * page {
        // SAFETY: [start, end) is whole pages inside the Vec's own allocation, past its length:
        // memory nothing reads (spare capacity is uninitialized to the Vec) and no allocator
        // metadata (that lies outside the allocation). MADV_DONTNEED leaves the range mapped,
        // reading as zeros, as the Vec's next growth writes it anyway.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// What a var costs the host past what `var_set` counts (`VAR_OVERHEAD`), counted in an actor's
/// `maxActorMemoryMB` only: review BR2 measured 172-174 bytes for a var of a 3-byte key and a
/// 1-byte value, 132 counted (7,900 such vars per actor, 1.3 times the bound held). The 1 MiB
/// limit keeps its count, so snapshots stored under it still restore.
pub const VAR_HELD_EXTRA: u64 = 48;

pub(super) fn trap(why: impl Into<String>) -> wasmtime::Error {
    wasmtime::Error::new(ExecError::Trap { kind: "extism_out_of_bounds".into(), message: why.into() })
}

impl Kernel {
    /// Empties the block memory for a new call (vars stay) and places the input.
    pub fn begin(&mut self, input: &[u8], limiter: &mut crate::limits::MemoryLimiter) -> Result<(), ExecError> {
        limiter.release_host(self.reserved);
        self.reserved = 0;
        // Anew, as `end` leaves it: what a start function or `__collect` allocated since is not
        // kept past its count (review BE2: a start function's 200 MiB stayed resident, uncounted,
        // through the call).
        self.mem = vec![0]; // offset 0 is "none"
        self.blocks.clear();
        self.freed.clear();
        self.freed_by_size.clear();
        self.output = None;
        self.error = None;
        self.http_status = 0;
        self.http_headers = None;
        let off = self.alloc(input.len() as u64, limiter).map_err(|e| match e.downcast_ref::<ExecError>() {
            Some(e) => e.clone(),
            None => ExecError::internal(e),
        })?;
        self.mem[off as usize..].copy_from_slice(input);
        self.input = (off, input.len() as u64);
        Ok(())
    }

    pub(super) fn alloc(&mut self, n: u64, limiter: &mut crate::limits::MemoryLimiter) -> wasmtime::Result<u64> {
        self.alloc_within(n, limiter, &|| None)
    }

    /// `alloc` for the guest: the block's bytes are zeroed `ZERO_STEP` at a time, and `ended`
    /// (the call's deadline or cancellation) stops it between two, the kernel as it was (review
    /// BZ1: one `alloc` of 1 GiB zeroed it in one host call, 0.7-0.9 s past a 50 ms
    /// `maxExecutionMs`, and a signal or `close()` waited as long).
    pub(super) fn alloc_within(
        &mut self,
        n: u64,
        limiter: &mut crate::limits::MemoryLimiter,
        ended: &dyn Fn() -> Option<ExecError>,
    ) -> wasmtime::Result<u64> {
        // A block costs its entry in `blocks` too: counted, so a flood of 1-byte blocks meets
        // the cap as soon as their bytes would (it took 1.2 GiB past a 32 MiB cap).
        let fit = if n == 0 { None } else { self.freed_by_size.range((n, 0)..).next().copied() };
        if let Some((len, off)) = fit {
            // Zeroed first: a call that ends meanwhile leaves the block free (its bytes are
            // zeroed again whenever it is handed out).
            for at in (off..off + n).step_by(ZERO_STEP as usize) {
                if at > off {
                    if let Some(e) = ended() {
                        return Err(wasmtime::Error::new(e));
                    }
                }
                self.mem[at as usize..(at + ZERO_STEP).min(off + n) as usize].fill(0);
            }
            // The smallest freed block that fits; what it has past `n` stays free, a block of
            // its own (whose record is counted). Handed out zeroed, as a new block is.
            if len > n {
                limiter.reserve_host(BLOCK_OVERHEAD).map_err(wasmtime::Error::new)?;
                self.reserved += BLOCK_OVERHEAD;
                self.freed.insert(off + n, len - n);
                self.freed_by_size.insert((len - n, off + n));
            }
            self.freed.remove(&off);
            self.freed_by_size.remove(&(len, off));
            self.blocks.insert(off, n);
            return Ok(off);
        }
        let cost = n.saturating_add(BLOCK_OVERHEAD);
        limiter.reserve_host(cost).map_err(wasmtime::Error::new)?;
        let off = self.mem.len();
        if self.mem.try_reserve(n as usize).is_err() {
            limiter.release_host(cost);
            return Err(wasmtime::Error::new(ExecError::OutOfMemory { limit_bytes: limiter.max_bytes(), requested_bytes: n }));
        }
        let end = off + n as usize;
        while self.mem.len() < end {
            if self.mem.len() > off {
                if let Some(e) = ended() {
                    self.mem.truncate(off);
                    limiter.release_host(cost);
                    return Err(wasmtime::Error::new(e));
                }
            }
            let step = (end - self.mem.len()).min(ZERO_STEP as usize);
            self.mem.resize(self.mem.len() + step, 0);
        }
        self.reserved += cost;
        self.blocks.insert(off as u64, n);
        Ok(off as u64)
    }

    /// Frees a block (an offset that is none is ignored, as a second free is): reused by a later
    /// `alloc`, and its bytes given back to `maxMemoryMB` once nothing past it is held, so a
    /// plugin that allocates and frees in a loop runs in the memory of its largest blocks.
    pub(super) fn free(&mut self, off: u64, limiter: &mut crate::limits::MemoryLimiter) {
        let Some(len) = self.blocks.remove(&off) else { return };
        self.freed.insert(off, len);
        self.freed_by_size.insert((len, off));
        let held = self.mem.len();
        // At most `FREE_STEPS` blocks go back per call (host work is not interrupted: 4M
        // one-byte blocks freed at once took 280 ms past a call's deadline, review W); later
        // frees take the rest.
        for _ in 0..FREE_STEPS {
            let Some((&off, &len)) = self.freed.last_key_value() else { break };
            if off + len != self.mem.len() as u64 {
                break;
            }
            self.freed.remove(&off);
            self.freed_by_size.remove(&(len, off));
            self.mem.truncate(off as usize);
            let cost = len + BLOCK_OVERHEAD;
            limiter.release_host(cost);
            self.reserved = self.reserved.saturating_sub(cost);
        }
        if self.mem.len() < held {
            release_spare(&mut self.mem);
        }
    }

    /// Ends a call: its blocks and their memory go (vars stay).
    pub fn end(&mut self, limiter: &mut crate::limits::MemoryLimiter) {
        limiter.release_host(self.reserved);
        self.reserved = 0;
        self.mem = vec![0];
        let many = self.blocks.len() + self.freed.len() > TRIM_PAST_BLOCKS;
        self.blocks = BTreeMap::new();
        self.freed = BTreeMap::new();
        self.freed_by_size = Default::default();
        // Their records are small allocations the allocator keeps once freed (`trim`).
        if many {
            crate::trim::soon();
        }
        self.input = (0, 0);
        self.output = None;
        self.error = None;
        // An idle actor keeps no response headers (review BC1: up to twice maxHeaderBytes each).
        self.http_status = 0;
        self.http_headers = None;
    }

    /// A block's bytes as text (a host function's input), refused past `max` bytes.
    pub(crate) fn read_text_capped(&self, off: u64, max: u64) -> wasmtime::Result<String> {
        let len = self.blocks.get(&off).copied().unwrap_or(0);
        if len > max {
            return Err(wasmtime::Error::new(ExecError::InvalidOutput {
                message: format!("a host function's argument is {len} bytes, over the limit of {max}"),
                preview: String::new(),
            }));
        }
        // Invalid UTF-8 decodes to up to three times its bytes (U+FFFD for each): at most `max`
        // bytes of text come of it (review BE2: 64 MiB of 0xFF made 192 MiB in the host, before
        // the request it was meant to be was refused).
        let block = self.block(off)?;
        match std::str::from_utf8(block) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Ok(String::from_utf8_lossy(&block[..block.len().min(usize::try_from(max / 3).unwrap_or(usize::MAX))]).into_owned()),
        }
    }

    /// Copies bytes into a new block (a host function's output); its offset.
    pub(crate) fn write_bytes(&mut self, bytes: &[u8], limiter: &mut crate::limits::MemoryLimiter) -> wasmtime::Result<u64> {
        let at = self.alloc(bytes.len() as u64, limiter)?;
        self.mem[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        Ok(at)
    }

    pub(super) fn range(&self, off: u64, len: u64) -> wasmtime::Result<std::ops::Range<usize>> {
        let end = off.checked_add(len).filter(|e| *e <= self.mem.len() as u64 && off > 0);
        match end {
            Some(end) => Ok(off as usize..end as usize),
            None => Err(trap(format!("kernel memory access at {off} (+{len}) is out of bounds ({} bytes)", self.mem.len()))),
        }
    }

    pub(super) fn block(&self, off: u64) -> wasmtime::Result<&[u8]> {
        let len = *self.blocks.get(&off).ok_or_else(|| trap(format!("{off} is not an allocated block")))?;
        Ok(&self.mem[self.range(off, len)?])
    }

    /// A block holding a var's or config's key: text, or a trap, as Extism's own kernel
    /// (`memory_str`) has it. Read lossily, two keys of bytes that are not UTF-8 were one var
    /// (review BP2: 8-byte counters past 0x7f overwrote each other).
    pub(super) fn key(&self, off: u64) -> wasmtime::Result<String> {
        match std::str::from_utf8(self.block(off)?) {
            Ok(key) => Ok(key.to_string()),
            Err(e) => Err(wasmtime::Error::new(ExecError::Trap { kind: "extism_invalid_key".into(), message: format!("a var's or config's key is not UTF-8 text ({e})") })),
        }
    }

    /// A block's first `max` bytes as text (a cut character shows as U+FFFD), with `…` when
    /// the block is longer.
    pub(super) fn text_prefix(&self, off: u64, max: usize) -> wasmtime::Result<String> {
        let block = self.block(off)?;
        let mut s = String::from_utf8_lossy(&block[..block.len().min(max)]).into_owned();
        if block.len() > max {
            s.push('…');
        }
        Ok(s)
    }

    /// Takes the call's `definition.config`. An actor keeps it until its next call, and counts
    /// it in `maxActorMemoryMB` (review BP2: 3,000 actors of a 64 KB config held 250 MB more
    /// than counted under a bound of 1 MiB, none evicted).
    pub fn set_config(&mut self, config: Arc<BTreeMap<String, String>>) {
        self.config_held = crate::options::config_bytes(&config) as u64;
        self.config = config;
    }

    /// What the call's config counts.
    pub fn config_bytes(&self) -> u64 {
        self.config_held
    }

    /// What the vars hold in the host, for an actor's `maxActorMemoryMB`: `vars_bytes` and
    /// `VAR_HELD_EXTRA` more for each var.
    pub fn vars_held_bytes(&self) -> u64 {
        self.vars_held.saturating_add(self.vars.len() as u64 * VAR_HELD_EXTRA)
    }

    /// What the vars hold, as `var_set` counts them against `MAX_VAR_BYTES`.
    pub fn vars_bytes(&self) -> u64 {
        self.vars_held
    }

    fn var_cost(name: &str, value: &[u8]) -> u64 {
        (name.len() + value.len() + VAR_OVERHEAD) as u64
    }

    /// What the vars would hold with `name` set to a value of `len` bytes.
    pub(crate) fn vars_bytes_with(&self, name: &str, len: usize) -> u64 {
        let old = self.vars.get(name).map_or(0, |v| Self::var_cost(name, v));
        (self.vars_held - old).saturating_add((name.len() + len + VAR_OVERHEAD) as u64)
    }

    pub(crate) fn set_var(&mut self, name: String, value: Vec<u8>) {
        self.vars_held += Self::var_cost(&name, &value);
        if let Some(old) = self.vars.insert(name.clone(), value) {
            self.vars_held -= Self::var_cost(&name, &old);
        }
    }

    pub(crate) fn remove_var(&mut self, name: &str) {
        if let Some(old) = self.vars.remove(name) {
            self.vars_held -= Self::var_cost(name, &old);
        }
    }

    /// Puts in the vars of a snapshot (`decode_vars`).
    pub fn replace_vars(&mut self, vars: BTreeMap<String, Vec<u8>>) {
        self.vars_held = vars.iter().map(|(n, v)| Self::var_cost(n, v)).sum();
        self.vars = vars;
    }

    /// The vars as bytes (for snapshots): count, then (key length, key, value length, value).
    pub fn encode_vars(&self) -> Vec<u8> {
        let mut out = (self.vars.len() as u32).to_le_bytes().to_vec();
        for (k, v) in &self.vars {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn decode_vars(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ExecError> {
        let bad = || ExecError::SnapshotInvalid("the Extism vars of the snapshot are malformed".into());
        let mut vars = BTreeMap::new();
        // A plugin's state always has its vars' count: none at all is state of another ABI (an
        // AssemblyScript actor's durable snapshot, reloaded under `abi: 'extism'`, ran as a plugin:
        // review AV1).
        if bytes.is_empty() {
            return Err(ExecError::SnapshotInvalid("the snapshot has no Extism vars: it is of another ABI".into()));
        }
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], ExecError> {
            let s = bytes.get(at..at.checked_add(n).ok_or_else(bad)?).ok_or_else(bad)?;
            at += n;
            Ok(s)
        };
        let u32_of = |b: &[u8]| -> Result<usize, ExecError> { Ok(u32::from_le_bytes(b.try_into().map_err(|_| bad())?) as usize) };
        let count = u32_of(take(4)?)?;
        let mut total = 0usize;
        for _ in 0..count {
            let klen = u32_of(take(4)?)?;
            let key = String::from_utf8(take(klen)?.to_vec()).map_err(|_| bad())?;
            let vlen = u32_of(take(4)?)?;
            // What `var_set` allows, no more: a snapshot cannot give an actor vars a plugin could not set.
            total += klen + vlen + VAR_OVERHEAD;
            if total > MAX_VAR_BYTES {
                return Err(ExecError::SnapshotInvalid(format!("the Extism vars of the snapshot are over {MAX_VAR_BYTES} bytes")));
            }
            vars.insert(key, take(vlen)?.to_vec());
        }
        if at != bytes.len() {
            return Err(bad());
        }
        Ok(vars)
    }
}
