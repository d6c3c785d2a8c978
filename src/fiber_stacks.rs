//! Gives the pages of an idle actor's fiber stack back to the OS.
//!
//! Guest code runs on a wasmtime fiber stack from the pooling allocator. A Store keeps the last
//! stack it ran on (wasmtime caches it for the Store's next call) for as long as the Store
//! lives, so every live actor holds one stack, with the pages its calls touched still resident:
//! 4 KiB at least, more after deep recursion. wasmtime's public API has no way to release a
//! Store's cached stack, so:
//! - A call hook on each actor's Store records an address on the running fiber's stack, at each
//!   entry into wasm from the host (not a nested one). All of a Store's fibers that run
//!   top-level take its cached stack and cache theirs when they finish (a fiber dropped unfinished
//!   is resumed to completion first, and caches its stack too). A fiber that fails to start
//!   (wasmtime then returns the stack it took to the pool) or that panics loses the Store its
//!   stack, but such a call fails, and its instance is discarded (`call::run` owns the instance
//!   while a call runs, and keeps it after an error only when the guest finished normally; a
//!   panic also leaves the probe's depth above 0, so nothing is released). So the first recorded
//!   address names the Store's stack for its whole life. A later entry recorded elsewhere marks
//!   the Store `mixed`, and its stack is never released.
//! - A Store's stack is released only when the mapping that holds the recorded address is exactly
//!   a fiber stack in /proc/self/maps: `ASYNC_STACK_BYTES`, readable and writable, above a guard
//!   page, with the address near its top, and the address was recorded before the maps were read
//!   (the Store has held that stack since). A sweep reads the maps at most once; a pool stack,
//!   mapped for the life of the process, is checked only the first time it is seen. Pooled and
//!   on-demand stacks alike.
//! - A sweeper thread releases (`MADV_DONTNEED`) the stacks of actors idle for `IDLE`, each while
//!   it holds that actor's lock, so no call runs on the stack meanwhile. The next call faults in
//!   the page or two it needs (a few microseconds, once per idle period).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use wasmtime::CallHook;

/// Each fiber stack's size: wasmtime's default 2 MiB, plus 64 KiB so that no thread stack of the
/// process (Rust's, Node's and glibc's come in whole MiBs, less their guard) has this size: a
/// released mapping must be a fiber stack, whatever address a probe recorded.
pub const ASYNC_STACK_BYTES: usize = (2 * 1024 + 64) * 1024;
/// How long an actor stays idle before its stack pages go back. An actor called more often
/// keeps them, and pays no page faults.
pub const IDLE: Duration = Duration::from_secs(1);
/// While some actor holds resident stack pages, the sweeper looks again when the first of them
/// is due, and at least this long after its last look (this often while an actor is busy).
const PERIOD: Duration = Duration::from_millis(250);
/// How far below its stack's top a top-level entry into wasm may be recorded (in practice, a few
/// hundred bytes of wasmtime's own frames).
const NEAR_TOP: usize = 64 * 1024;

/// Where a Store's guest code runs: recorded by its call hook.
#[derive(Debug, Default)]
pub struct StackProbe {
    /// Entries into wasm not yet returned from.
    depth: u32,
    /// An address on the stack of the first top-level entry (0: none yet).
    at: usize,
    /// A later top-level entry ran on another stack: the recorded one is not surely the Store's.
    mixed: bool,
    /// `MAPS_EPOCH` when `at` was recorded.
    epoch: u64,
    /// The Store's engine allocates from a pool: its stacks are mapped once, for good.
    pooled: bool,
}

impl StackProbe {
    /// A probe for a Store of an engine that pools its stacks (`pooled`) or maps each on demand.
    pub fn new(pooled: bool) -> StackProbe {
        StackProbe { pooled, ..Default::default() }
    }

    pub fn on_hook(&mut self, hook: CallHook) {
        match hook {
            CallHook::CallingWasm => {
                if self.depth == 0 {
                    let marker = 0u8;
                    let here = std::hint::black_box(&marker) as *const u8 as usize;
                    if self.at == 0 {
                        self.epoch = MAPS_EPOCH.load(Ordering::SeqCst);
                        self.at = here;
                    } else if here.abs_diff(self.at) > NEAR_TOP {
                        self.mixed = true;
                    }
                }
                self.depth += 1;
            }
            CallHook::ReturningFromWasm => self.depth = self.depth.saturating_sub(1),
            CallHook::CallingHost | CallHook::ReturningFromHost => {}
        }
    }

    /// An address on the Store's own cached stack, when it is known and the Store is out of wasm.
    pub fn address(&self) -> Option<usize> {
        (self.depth == 0 && !self.mixed && self.at != 0).then_some(self.at)
    }
}

/// The most of a fiber stack a call can leave resident: the whole stack.
pub const STACK_MAX_RESIDENT: u64 = ASYNC_STACK_BYTES as u64;

/// How much of the stack `probe` recorded is resident now (`mincore` over the part below its
/// recorded address: about 2 us). The Store must be out of wasm. A Store whose stack is not
/// surely known (`mixed`) counts the most any stack holds; one that never entered wasm, none.
/// Only a query: a wrong address can make the figure wrong, never touch memory.
pub fn resident_bytes(probe: &StackProbe) -> u64 {
    let Some(at) = probe.address() else {
        return if probe.mixed { STACK_MAX_RESIDENT } else { 0 };
    };
    const PAGE: usize = 4096;
    // The page holding `at` and those below it, down to the stack's bottom at the lowest:
    // the stack's top is at most NEAR_TOP above `at`.
    let hi = (at | (PAGE - 1)) + 1;
    let lo = hi.saturating_sub((ASYNC_STACK_BYTES - NEAR_TOP) & !(PAGE - 1));
    let mut pages = [0u8; (ASYNC_STACK_BYTES - NEAR_TOP) / PAGE];
    if !cfg!(target_os = "linux") || page_size() != Some(PAGE) {
        return STACK_MAX_RESIDENT;
    }
    // SAFETY: `mincore` only reads the page tables of the range and writes one byte per page
    // into `pages`, which has a byte for each.
    let ok = unsafe { libc::mincore(lo as *mut libc::c_void, hi - lo, pages.as_mut_ptr()) } == 0;
    if !ok {
        // Part of the range is not mapped: not the stack recorded. Counted as a whole one.
        return STACK_MAX_RESIDENT;
    }
    (pages.iter().filter(|b| **b & 1 == 1).count() * PAGE) as u64
}

fn page_size() -> Option<usize> {
    static PAGE: OnceLock<Option<usize>> = OnceLock::new();
    // SAFETY: a plain query.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok().filter(|p| *p > 0))
}

/// One line of /proc/self/maps: its range and whether it is readable and writable.
#[derive(Debug, Clone, Copy)]
struct Vma {
    lo: usize,
    hi: usize,
    rw: bool,
}

fn parse_maps(text: &str) -> Vec<Vma> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (lo, hi) = parts.next()?.split_once('-')?;
            let perms = parts.next()?;
            Some(Vma {
                lo: usize::from_str_radix(lo, 16).ok()?,
                hi: usize::from_str_radix(hi, 16).ok()?,
                rw: perms.starts_with("rw"),
            })
        })
        .collect()
}

/// Bumped by each read of the process's maps; a probe notes the value when it records.
static MAPS_EPOCH: AtomicU64 = AtomicU64::new(1);

/// The process's mappings at one moment (one read of /proc/self/maps serves a whole sweep).
pub struct Maps {
    vmas: Vec<Vma>,
    /// Probes recorded at or before this epoch were recorded before the read.
    epoch: u64,
    page: usize,
}

impl Maps {
    /// Reads the process's mappings (none where there is no /proc).
    pub fn read() -> Option<Maps> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let epoch = MAPS_EPOCH.fetch_add(1, Ordering::SeqCst);
        let text = std::fs::read_to_string("/proc/self/maps").ok()?;
        // SAFETY: a plain query.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok().filter(|p| *p > 0)?;
        Some(Maps { vmas: parse_maps(&text), epoch, page })
    }

    fn containing(&self, a: usize) -> Option<&Vma> {
        let i = self.vmas.partition_point(|v| v.hi <= a);
        self.vmas.get(i).filter(|v| v.lo <= a)
    }

    /// The whole fiber stack that `addr` was recorded on, by the probe's epoch: a readable,
    /// writable mapping of exactly `ASYNC_STACK_BYTES` above a page that is mapped and not
    /// writable (its guard), with `addr` near its top. The stack's Store has held it since it
    /// recorded, so when that was before the read, the mapping read is that stack. Anything else
    /// (recorded after the read, merged with a neighbour, another size) gives none.
    fn stack_of(&self, addr: usize, recorded: u64) -> Option<Range<usize>> {
        if recorded == 0 || recorded > self.epoch {
            return None;
        }
        let v = self.containing(addr)?;
        let len = ASYNC_STACK_BYTES.next_multiple_of(self.page);
        let guarded = v.lo >= self.page && self.containing(v.lo - self.page).is_some_and(|g| !g.rw);
        (v.rw && v.hi - v.lo == len && guarded && v.hi - addr <= NEAR_TOP).then_some(v.lo..v.hi)
    }
}

static RELEASED: AtomicU64 = AtomicU64::new(0);

/// Stacks released so far in this process.
pub fn released() -> u64 {
    RELEASED.load(Ordering::Relaxed)
}

/// Pool stacks already checked against the process's maps (lowest byte to end). The pooled
/// engine lives as long as the process, so its stacks stay where they were found.
fn pool_stacks() -> std::sync::MutexGuard<'static, BTreeMap<usize, usize>> {
    static POOL: OnceLock<Mutex<BTreeMap<usize, usize>>> = OnceLock::new();
    POOL.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// One sweep's releases: the process's maps are read at most once, and only for a stack not
/// checked before (a pool stack is checked once for the life of the process). `release` never
/// reads them itself: its caller may hold locks a call waits on, and a read takes milliseconds
/// (22 ms with 7,000 actors). It asks for them (`None`); the caller lets go of its locks, calls
/// `read_maps`, and asks again.
#[derive(Default)]
pub struct Sweep {
    maps: Option<Option<Maps>>,
}

impl Sweep {
    /// Releases the resident pages of the stack `probe` recorded. The caller guarantees that the
    /// probe's Store is idle (out of wasm, no fiber of it running or suspended): its stack holds
    /// nothing live, and its next fiber writes its own first frame. `None`: the stack must be
    /// checked against the maps first (`read_maps`); after that read it is never `None`.
    pub fn release(&mut self, probe: &StackProbe) -> Option<bool> {
        let Some(addr) = probe.address() else { return Some(false) };
        let known = probe.pooled.then(|| {
            let pool = pool_stacks();
            pool.range(..=addr).next_back().map(|(lo, hi)| *lo..*hi).filter(|r| r.contains(&addr) && r.end - addr <= NEAR_TOP)
        });
        let stack = match known.flatten() {
            Some(stack) => stack,
            None => {
                let Some(maps) = self.maps.as_ref()? else { return Some(false) };
                let Some(stack) = maps.stack_of(addr, probe.epoch) else { return Some(false) };
                if probe.pooled {
                    pool_stacks().insert(stack.start, stack.end);
                }
                stack
            }
        };
        // SAFETY: the range is exactly one fiber stack mapping (checked against the process's
        // maps), held by an idle Store: no frame on it is live. MADV_DONTNEED on private anonymous
        // memory leaves it mapped; its pages read as zero when next touched.
        let done = unsafe { libc::madvise(stack.start as *mut libc::c_void, stack.len(), libc::MADV_DONTNEED) } == 0;
        if done {
            RELEASED.fetch_add(1, Ordering::Relaxed);
        }
        Some(done)
    }

    /// Reads the process's maps for this sweep's later releases (once; holding no lock).
    pub fn read_maps(&mut self) {
        self.maps.get_or_insert_with(Maps::read);
    }

    /// Whether this sweep has read the maps.
    #[cfg(test)]
    pub fn has_read_maps(&self) -> bool {
        self.maps.is_some()
    }
}

struct Sweeper {
    /// Some actor has ended a call since the last sweep, and whether a stack is to be given back
    /// at once (`sweep_soon`).
    pending: Mutex<(bool, bool)>,
    wake: Condvar,
}

fn sweeper() -> &'static Sweeper {
    static SWEEPER: OnceLock<Sweeper> = OnceLock::new();
    SWEEPER.get_or_init(|| Sweeper { pending: Mutex::new((false, false)), wake: Condvar::new() })
}

/// Tells the sweeper that an actor holds resident stack pages (starting it on first use).
pub fn wake_sweeper() {
    poke(false);
}

/// Asks the sweeper for a sweep now: a counted stack past an executor's cap waits for it (one not
/// checked against the process's maps yet, which a call's end cannot read).
pub fn sweep_soon() {
    poke(true);
}

fn poke(urgent: bool) {
    static STARTED: OnceLock<bool> = OnceLock::new();
    let s = sweeper();
    {
        let mut pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.0 = true;
        pending.1 |= urgent;
    }
    s.wake.notify_one();
    STARTED.get_or_init(|| std::thread::Builder::new().name("loom-wasm-stacks".into()).spawn(sweep_loop).is_ok());
}

fn sweep_loop() {
    crate::threads::lower_priority();
    let s = sweeper();
    loop {
        {
            let mut pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
            while !pending.0 {
                pending = s.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            pending.0 = false;
        }
        // While some actor holds its stack: sweep again when the first idle one is due, or
        // after PERIOD while one is busy (when its call ends is not known); at once when asked.
        let mut wait = PERIOD;
        loop {
            {
                let pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
                let (mut pending, _) =
                    s.wake.wait_timeout_while(pending, wait, |p| !p.1).unwrap_or_else(|p| p.into_inner());
                pending.1 = false;
            }
            let swept = crate::actors::release_idle_stacks(IDLE);
            if swept.holding == 0 {
                break;
            }
            wait = match swept.next_due_ms {
                Some(ms) if !swept.busy => Duration::from_millis(ms).max(PERIOD),
                _ => PERIOD,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A sweep's release as the sweeper makes it: asked again after reading the maps.
    fn release(probe: &StackProbe) -> bool {
        let mut sweep = Sweep::default();
        sweep.release(probe).unwrap_or_else(|| {
            sweep.read_maps();
            sweep.release(probe).expect("checked against the maps")
        })
    }
    const LEN: usize = ASYNC_STACK_BYTES;

    /// Maps text for `n` stacks from `base` (a guard page, then `LEN` bytes each), between
    /// unrelated neighbours.
    fn pool(base: usize, n: usize) -> String {
        let mut s = format!("{:x}-{:x} rw-p 00000000 00:00 0\n", base - 3 * PAGE, base - 2 * PAGE);
        for i in 0..n {
            let g = base + i * (LEN + PAGE);
            s += &format!("{:x}-{:x} ---p 00000000 00:00 0\n", g, g + PAGE);
            s += &format!("{:x}-{:x} rw-p 00000000 00:00 0\n", g + PAGE, g + PAGE + LEN);
        }
        let end = base + n * (LEN + PAGE);
        s += &format!("{:x}-{:x} rw-p 00000000 08:01 12 /usr/lib/x\n", end, end + 2 * PAGE);
        s
    }

    fn maps(text: &str, epoch: u64) -> Maps {
        Maps { vmas: parse_maps(text), epoch, page: PAGE }
    }

    const BASE: usize = 0x7f00_0000_0000;

    #[test]
    fn names_each_stack_from_an_address_near_its_top() {
        let m = maps(&pool(BASE, 5), 7);
        for i in 0..5 {
            let top = BASE + (i + 1) * (LEN + PAGE);
            assert_eq!(m.stack_of(top - 0x80d, 7), Some(top - LEN..top));
            assert_eq!(m.stack_of(top - NEAR_TOP, 3), Some(top - LEN..top));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let m = maps(&pool(BASE, 5), 7);
        let top = BASE + 2 * (LEN + PAGE);
        // Recorded after the read (its mapping may be newer than the read), or never.
        assert_eq!(m.stack_of(top - 8, 8), None);
        assert_eq!(m.stack_of(top - 8, 0), None);
        // Deep in a stack: not where a top-level entry is recorded.
        assert_eq!(m.stack_of(top - NEAR_TOP - 1, 7), None);
        // In a guard page, in a neighbour, in nothing mapped.
        assert_eq!(m.stack_of(BASE + 8, 7), None);
        assert_eq!(m.stack_of(BASE - 3 * PAGE + 8, 7), None);
        assert_eq!(m.stack_of(BASE - PAGE, 7), None);
        assert_eq!(m.stack_of(BASE + 5 * (LEN + PAGE) + 8, 7), None);
        // A mapping of another size (merged with a neighbour), or without its guard below.
        let merged = pool(BASE, 1).replace(&format!("{:x}-{:x} rw-p", BASE + PAGE, BASE + PAGE + LEN), &format!("{:x}-{:x} rw-p", BASE + PAGE, BASE + PAGE + LEN + PAGE));
        assert_eq!(maps(&merged, 7).stack_of(BASE + PAGE + LEN - 8, 7), None);
        let unguarded = pool(BASE, 2).replacen("---p", "rw-p", 1);
        assert_eq!(maps(&unguarded, 7).stack_of(BASE + LEN + PAGE - 8, 7), None);
        assert!(maps(&unguarded, 7).stack_of(BASE + 2 * (LEN + PAGE) - 8, 7).is_some());
        assert_eq!(maps("", 7).stack_of(top - 8, 7), None);
    }

    #[test]
    fn the_probe_records_the_first_top_level_entry_only() {
        let mut p = StackProbe::default();
        assert_eq!(p.address(), None);
        p.on_hook(CallHook::CallingWasm);
        assert_eq!(p.address(), None, "in wasm: the stack is in use");
        p.on_hook(CallHook::CallingHost);
        p.on_hook(CallHook::ReturningFromHost);
        p.on_hook(CallHook::ReturningFromWasm);
        let at = p.address().expect("recorded");
        assert!(p.epoch > 0);
        // A nested entry (from a host call) is not recorded.
        p.on_hook(CallHook::CallingWasm);
        p.on_hook(CallHook::CallingWasm);
        p.on_hook(CallHook::ReturningFromWasm);
        p.on_hook(CallHook::ReturningFromWasm);
        assert_eq!(p.address(), Some(at));
        // A top-level entry far away: the Store ran elsewhere, so its stack is no longer sure.
        std::thread::Builder::new()
            .spawn(move || {
                p.on_hook(CallHook::CallingWasm);
                p.on_hook(CallHook::ReturningFromWasm);
                assert_eq!(p.address(), None);
            })
            .expect("thread")
            .join()
            .expect("joined");
    }

    /// Pages of `range` resident now.
    fn resident(range: &Range<usize>) -> usize {
        let mut vec = vec![0u8; range.len() / PAGE];
        // SAFETY: the range is mapped (the caller's own mapping); `vec` has a byte per page.
        assert_eq!(unsafe { libc::mincore(range.start as *mut libc::c_void, range.len(), vec.as_mut_ptr()) }, 0);
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    #[test]
    fn a_real_stack_shaped_mapping_is_released_and_a_pool_stack_is_checked_once() {
        let len = ASYNC_STACK_BYTES;
        // SAFETY: a fresh private mapping of our own: a guard page, the "stack", and a page above
        // it that no writable neighbour can merge into.
        let base = unsafe {
            let p = libc::mmap(std::ptr::null_mut(), len + 2 * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::mprotect(p, PAGE, libc::PROT_NONE), 0);
            assert_eq!(libc::mprotect(p.cast::<u8>().add(PAGE + len).cast(), PAGE, libc::PROT_NONE), 0);
            p as usize
        };
        let stack = base + PAGE..base + PAGE + len;
        let touch = || {
            for page in 1..=3 {
                // SAFETY: inside the writable part of our mapping.
                unsafe { ((stack.end - page * PAGE) as *mut u8).write_volatile(1) };
            }
        };
        touch();
        assert_eq!(resident(&stack), 3);
        let probe = |pooled, epoch| StackProbe { depth: 0, at: stack.end - 100, mixed: false, epoch, pooled };

        // A stack not known yet is never checked by `release` itself: it asks for the maps.
        let mut sweep = Sweep::default();
        assert_eq!(sweep.release(&probe(true, 0)), None);
        assert_eq!(sweep.release(&probe(false, 0)), None);
        assert!(!sweep.has_read_maps());
        assert_eq!(resident(&stack), 3);
        // Recorded after any read of the maps (epoch beyond): neither kind is released unchecked.
        assert!(!release(&probe(false, u64::MAX)));
        assert!(!release(&probe(true, u64::MAX)));
        assert_eq!(resident(&stack), 3);
        // Recorded before: released, and, for a pool stack, remembered.
        let before = MAPS_EPOCH.load(Ordering::SeqCst);
        assert!(release(&probe(true, before)));
        assert_eq!(resident(&stack), 0);
        // SAFETY: as above; the page reads as zero after the release.
        assert_eq!(unsafe { ((stack.end - PAGE) as *const u8).read_volatile() }, 0);
        touch();
        // Now a pool stack needs no read of the maps (an epoch that would fail the check);
        // an on-demand one still does.
        assert!(!release(&probe(false, u64::MAX)));
        let mut sweep = Sweep::default();
        assert_eq!(sweep.release(&probe(true, u64::MAX)), Some(true));
        assert!(!sweep.has_read_maps());
        assert_eq!(resident(&stack), 0);
        // Not a top-level entry's address, or still in wasm: nothing.
        touch();
        let deep = StackProbe { at: stack.start + 100, ..probe(true, before) };
        assert!(!release(&deep));
        let running = StackProbe { depth: 1, ..probe(true, before) };
        assert!(!release(&running));
        assert_eq!(resident(&stack), 3);

        // Forget it before unmapping: the address range may be mapped again by anything.
        pool_stacks().remove(&stack.start);
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(base as *mut libc::c_void, len + 2 * PAGE) };
    }

    #[test]
    fn this_process_has_its_maps_read() {
        let m = Maps::read().expect("Linux has /proc/self/maps");
        let local = 0u8;
        // The test thread's own stack is mapped, but is no fiber stack of ours.
        let here = std::hint::black_box(&local) as *const u8 as usize;
        assert!(m.containing(here).is_some_and(|v| v.rw));
        assert!(MAPS_EPOCH.load(Ordering::SeqCst) > m.epoch);
    }
}
