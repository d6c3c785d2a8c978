//! An instance's state as data: what makes an actor what it is (its linear memory, its mutable
//! globals, the guest ABI's own host-side state), captured from a live instance and restored into
//! a fresh one of the same module. The same machinery serves three uses:
//!
//! - a **shadow** of the last good state, kept beside a transactional actor and brought up to date
//!   after each successful call by copying only the pages that changed; a failed call is undone by
//!   restoring it into a fresh instance;
//! - a **snapshot**: the state as bytes, only the pages that differ from the module's initial
//!   image, each run LZ4-compressed, in a versioned format that names the module's sha256 and ends
//!   with a checksum of everything before it;
//! - **persistence**: snapshots written to an actor store (see `durable`).
//!
//! A snapshot is parsed and checked whole (format, version, module, sizes, every page) before
//! anything is restored, and it is restored into a new instance that replaces the old one only
//! once complete: a corrupt snapshot is `SNAPSHOT_INVALID` and a foreign one `SNAPSHOT_MISMATCH`,
//! never a crash or a half-restored actor.

use crate::digest::{hex, same, sha256, Digest};
use crate::error::ExecError;

/// Bytes compared and copied as one unit.
pub const PAGE: usize = 4096;
const MAGIC: &[u8; 8] = b"LOOMSNAP";
pub const VERSION: u32 = 1;

/// A mutable global's value, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
    V128(u128),
}

impl GlobalValue {
    fn tag(&self) -> u8 {
        match self {
            GlobalValue::I32(_) => 0,
            GlobalValue::I64(_) => 1,
            GlobalValue::F32(_) => 2,
            GlobalValue::F64(_) => 3,
            GlobalValue::V128(_) => 4,
        }
    }
    fn bits(&self) -> u128 {
        match *self {
            GlobalValue::I32(v) => v as u32 as u128,
            GlobalValue::I64(v) => v as u64 as u128,
            GlobalValue::F32(v) => v as u128,
            GlobalValue::F64(v) => v as u128,
            GlobalValue::V128(v) => v,
        }
    }
    fn from(tag: u8, bits: u128) -> Option<GlobalValue> {
        Some(match tag {
            0 => GlobalValue::I32(bits as u32 as i32),
            1 => GlobalValue::I64(bits as u64 as i64),
            2 => GlobalValue::F32(bits as u32),
            3 => GlobalValue::F64(bits as u64),
            4 => GlobalValue::V128(bits),
            _ => return None,
        })
    }
}

/// An instance's whole state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    pub memory: Vec<u8>,
    /// The mutable globals, in the module's order (see `instrument::StateExports`).
    pub globals: Vec<GlobalValue>,
    /// The guest ABI's host-side state (opaque here), e.g. Extism's vars.
    pub host: Vec<u8>,
}

impl State {
    /// Brings `self` (a shadow) up to `now`, copying only the pages that differ. Returns how many
    /// bytes changed (0: nothing did; memory it grew by counts whole).
    pub fn update_from(&mut self, memory: &[u8], globals: &[GlobalValue], host: &[u8]) -> usize {
        let mut copied = 0;
        if self.memory.len() > memory.len() {
            self.memory.truncate(memory.len());
        }
        let common = self.memory.len();
        if memory.len() > common {
            // Grown: into zeroed memory that the allocator maps lazily, only the pages that hold
            // data are written (extending the copy wrote every page: a guest that grew by 512 MiB
            // and touched none made 512 MiB resident in the host, and took half a second, at
            // every transactional call that grew: review AB).
            let mut grown = vec![0u8; memory.len()];
            write_memory(&mut grown[..common], 0, &self.memory);
            write_memory(&mut grown[common..], 0, &memory[common..]);
            self.memory = grown;
            copied += memory.len() - common;
        }
        for (old, new) in self.memory[..common].chunks_mut(PAGE).zip(memory[..common].chunks(PAGE)) {
            if old != new {
                old.copy_from_slice(new);
                copied += new.len();
            }
        }
        if self.globals != globals {
            self.globals = globals.to_vec();
            copied += globals.len() * 16;
        }
        if self.host != host {
            self.host = host.to_vec();
            copied += host.len();
        }
        copied
    }
}

/// Writes a state's memory `src` over an instance's memory `dst` (the same length), whose bytes
/// from `fresh` on are known to be zero (pages the memory just grew by): only the state's
/// nonzero pages are written there. A state's memory is mostly zero when its snapshot claimed a
/// large memory with little data; writing it whole made the whole memory resident (review X: a
/// 3 KB snapshot made 1 GiB resident and took a second of host time).
pub fn write_memory(dst: &mut [u8], fresh: usize, src: &[u8]) {
    static ZERO: [u8; PAGE] = [0; PAGE];
    let fresh = fresh.min(dst.len()).min(src.len());
    dst[..fresh].copy_from_slice(&src[..fresh]);
    for (to, from) in dst[fresh..].chunks_mut(PAGE).zip(src[fresh..].chunks(PAGE)) {
        if from != &ZERO[..from.len()] {
            to.copy_from_slice(from);
        }
    }
}

fn invalid(why: impl std::fmt::Display) -> ExecError {
    ExecError::SnapshotInvalid(why.to_string())
}

/// The most bytes a snapshot of an instance with at most `max_memory` bytes of memory can take,
/// generously: its memory, LZ4's worst case on it, and 64 MiB for globals, host state and
/// headers. A stored "snapshot" over it is refused before it is read.
pub fn max_encoded_len(max_memory: u64) -> u64 {
    max_memory.saturating_add(max_memory / 32).saturating_add(64 << 20)
}

/// Serializes `state` of the module `digest`, keeping only the pages that differ from `initial`
/// (the module's memory right after instantiation).
pub fn encode(digest: &Digest, state: &State, initial: &[u8]) -> Vec<u8> {
    match encode_within::<std::convert::Infallible>(digest, state, initial, &mut || Ok(())) {
        Ok(bytes) => bytes,
        Err(never) => match never {},
    }
}

/// Pages compared, compressed or hashed between two asks of `encode_within`'s `go_on`: 4 MiB.
const PAGES_PER_ASK: usize = 1024;

/// `encode`, asking `go_on` every `PAGES_PER_ASK` pages of work, and stopping with its error:
/// a durable actor's call checks its deadline and cancel there. Whole, a 200 MiB memory of noise
/// took a call of 100 ms to 0.6-1.3 s, and one with `persist: 'async'` succeeded after 1.2-1.7 s
/// (review AM2). A run of changed pages is written as runs of at most `PAGES_PER_ASK` pages
/// (consecutive runs decode as one).
pub fn encode_within<E>(digest: &Digest, state: &State, initial: &[u8], go_on: &mut dyn FnMut() -> Result<(), E>) -> Result<Vec<u8>, E> {
    let mut out = Vec::with_capacity(64 + state.globals.len() * 17);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(digest);
    out.extend_from_slice(&(state.memory.len() as u64).to_le_bytes());
    out.extend_from_slice(&(state.globals.len() as u32).to_le_bytes());
    for g in &state.globals {
        out.push(g.tag());
        out.extend_from_slice(&g.bits().to_le_bytes());
    }
    out.extend_from_slice(&(state.host.len() as u32).to_le_bytes());
    out.extend_from_slice(&state.host);
    // Runs of consecutive pages that differ from the initial image.
    let pages = state.memory.len().div_ceil(PAGE);
    let differs = |p: usize| {
        let lo = p * PAGE;
        let hi = (lo + PAGE).min(state.memory.len());
        let now = &state.memory[lo..hi];
        match initial.get(lo..hi.min(initial.len())) {
            Some(init) if init.len() == now.len() => init != now,
            _ => now.iter().any(|b| *b != 0),
        }
    };
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut p = 0;
    while p < pages {
        if p % PAGES_PER_ASK == 0 {
            go_on()?;
        }
        if differs(p) {
            match runs.last_mut() {
                Some((start, end)) if *end == p && p - *start < PAGES_PER_ASK => *end = p + 1,
                _ => runs.push((p, p + 1)),
            }
        }
        p += 1;
    }
    out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
    for (start, end) in runs {
        go_on()?;
        let lo = start * PAGE;
        let hi = (end * PAGE).min(state.memory.len());
        let packed = lz4_flex::block::compress(&state.memory[lo..hi]);
        out.extend_from_slice(&(start as u32).to_le_bytes());
        out.extend_from_slice(&((hi - lo) as u32).to_le_bytes());
        out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        out.extend_from_slice(&packed);
    }
    let mut sum = <sha2::Sha256 as sha2::Digest>::new();
    for chunk in out.chunks(PAGES_PER_ASK * PAGE) {
        go_on()?;
        sha2::Digest::update(&mut sum, chunk);
    }
    let sum: Digest = sha2::Digest::finalize(sum).into();
    out.extend_from_slice(&sum);
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ExecError> {
        if self.0.len() < n {
            return Err(invalid("the snapshot ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, ExecError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(invalid)?))
    }
    fn u64(&mut self) -> Result<u64, ExecError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(invalid)?))
    }
}

/// The module digest a snapshot names (checked: format, version, checksum), before decoding it.
pub fn module_of(bytes: &[u8]) -> Result<Digest, ExecError> {
    let body_len = bytes.len().checked_sub(32).ok_or_else(|| invalid("the snapshot is too short"))?;
    let (body, sum) = bytes.split_at(body_len);
    let mut r = Reader(body);
    if r.take(8)? != MAGIC {
        return Err(invalid("not a loom-wasm-executor snapshot"));
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(invalid(format!("snapshot format version {version}; this executor reads version {VERSION}")));
    }
    if !same(&sha256(body), sum) {
        return Err(invalid("the snapshot's checksum does not match (corrupt or truncated)"));
    }
    r.take(32)?.try_into().map_err(invalid)
}

/// The memory size a snapshot states (unchecked: `decode` checks it), or None if it has no header.
pub fn stated_memory(bytes: &[u8]) -> Option<u64> {
    let at = 8 + 4 + 32;
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a snapshot of the module `digest` over `initial`, refusing one larger than
/// `max_memory` bytes of memory.
pub fn decode(bytes: &[u8], digest: &Digest, initial: &[u8], max_memory: u64, globals: usize) -> Result<State, ExecError> {
    let named = module_of(bytes)?;
    if named != *digest {
        return Err(ExecError::SnapshotMismatch { expected: hex(digest), actual: hex(&named) });
    }
    let mut r = Reader(&bytes[8 + 4 + 32..bytes.len() - 32]);
    let memory_len = r.u64()?;
    if memory_len > max_memory || memory_len % 65536 != 0 {
        return Err(invalid(format!("a memory of {memory_len} bytes (the limit is {max_memory}, in whole 64 KiB pages)")));
    }
    // The module's count, checked before any is read: a forged count of 20 million filled the
    // snapshot's whole size bound with globals, decoded at 32 bytes each (1 GiB of host memory
    // for maxMemoryMB 256, past the call's deadline, again at every call: review AM2).
    let n_globals = r.u32()? as usize;
    if n_globals != globals {
        return Err(invalid(format!("the state has {n_globals} mutable globals, the module {globals}")));
    }
    let mut globals = Vec::with_capacity(n_globals);
    for _ in 0..n_globals {
        let tag = r.take(1)?[0];
        let bits = u128::from_le_bytes(r.take(16)?.try_into().map_err(invalid)?);
        globals.push(GlobalValue::from(tag, bits).ok_or_else(|| invalid("a global of an unknown type"))?);
    }
    let host_len = r.u32()? as usize;
    let host = r.take(host_len)?.to_vec();
    let mut memory = vec![0u8; memory_len as usize];
    let keep = initial.len().min(memory.len());
    memory[..keep].copy_from_slice(&initial[..keep]);
    // Every run's header is read and checked before any is decompressed: in order, apart and
    // inside the memory, so decompressing costs at most the memory's size once, and a snapshot
    // that is invalid anywhere costs nothing. (A forged one whose runs each covered the whole
    // memory made 25.6 GiB of decompression, 24 s, from 100 MiB, before its last byte failed it.)
    let runs = r.u32()?;
    // Runs are apart and none is empty: there cannot be more than pages (a forged snapshot of
    // millions of empty runs held 32 bytes each before it failed: 1.4 GiB from 300 MiB).
    if runs as usize > memory.len().div_ceil(PAGE) {
        return Err(invalid(format!("{runs} runs of pages in a memory of {} pages", memory.len().div_ceil(PAGE))));
    }
    let mut pages = Vec::with_capacity(runs as usize);
    let mut next = 0usize;
    for _ in 0..runs {
        let start = (r.u32()? as usize).checked_mul(PAGE).ok_or_else(|| invalid("a page outside the memory"))?;
        let len = r.u32()? as usize;
        let packed_len = r.u32()? as usize;
        let packed = r.take(packed_len)?;
        if start < next {
            return Err(invalid("runs of pages out of order or overlapping"));
        }
        if len == 0 {
            return Err(invalid("an empty run of pages"));
        }
        let end = start.checked_add(len).filter(|e| *e <= memory.len()).ok_or_else(|| invalid("a page outside the memory"))?;
        next = end;
        pages.push((start..end, packed));
    }
    if !r.0.is_empty() {
        return Err(invalid("bytes after the last page"));
    }
    for (range, packed) in pages {
        let len = range.len();
        let wrote = lz4_flex::block::decompress_into(packed, &mut memory[range])
            .map_err(|e| invalid(format!("a page does not decompress: {e}")))?;
        if wrote != len {
            return Err(invalid("a page decompresses to the wrong size"));
        }
    }
    Ok(State { memory, globals, host })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let mut memory = vec![0u8; 3 * 65536];
        memory[10] = 1;
        memory[70_000..70_010].copy_from_slice(b"0123456789");
        State { memory, globals: vec![GlobalValue::I32(-5), GlobalValue::F64(1.5f64.to_bits())], host: b"vars".to_vec() }
    }

    #[test]
    fn a_mostly_empty_state_writes_only_its_data_into_fresh_memory() {
        let len = 64 << 20;
        let mut src = vec![0u8; len];
        src[5] = 7; // in the part that is not fresh
        src[3 << 20] = 1;
        src[len - 1] = 2;
        // Fresh memory: zero pages nothing has touched (a large calloc is a fresh mapping).
        let mut dst = vec![0u8; len];
        dst[..PAGE].fill(9); // what the instance had before: overwritten whole
        write_memory(&mut dst, PAGE, &src);
        // Before anything reads it (a read maps the zero page, which mincore counts).
        let resident = crate::test_pages::resident_pages(dst.as_ptr(), dst.len());
        assert!(resident <= 8, "{resident} pages of the fresh memory resident for 3 pages of data");
        assert!(dst == src, "the memory reads as the state");
        // A state shorter than the memory, or a fresh mark past it, writes what both have.
        let mut short = vec![1u8; 3 * PAGE];
        write_memory(&mut short, 10 * PAGE, &src[..2 * PAGE]);
        assert_eq!((short[5], short[6], short[2 * PAGE]), (7, 0, 1));
    }

    #[test]
    fn round_trips_with_only_changed_pages() {
        let s = state();
        let initial = vec![0u8; 65536];
        let d = [9u8; 32];
        let bytes = encode(&d, &s, &initial);
        assert!(bytes.len() < 2000, "{} bytes for 2 changed pages of 48", bytes.len());
        assert_eq!(module_of(&bytes).expect("valid"), d);
        assert_eq!(decode(&bytes, &d, &initial, 1 << 30, 2).expect("decodes"), s);
    }

    #[test]
    fn an_encoding_asks_to_go_on_every_few_mib_and_stops_when_told() {
        let mut memory = vec![0u8; 16 << 20];
        let mut x = 88172645463325252u64;
        for chunk in memory.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let s = State { memory, globals: vec![GlobalValue::I32(1)], host: vec![] };
        let d = [7u8; 32];
        let mut asks = 0;
        let bytes = encode_within::<()>(&d, &s, &[], &mut || {
            asks += 1;
            Ok(())
        })
        .expect("goes on");
        // 4 to compare the 4,096 pages, 4 to compress them (in runs of at most 1,024 pages, which
        // decode as one), 5 to hash 16 MiB of noise and its headers.
        assert_eq!(asks, 13);
        assert_eq!(bytes, encode(&d, &s, &[]));
        assert_eq!(decode(&bytes, &d, &[], 1 << 30, 1).expect("decodes"), s);
        let mut left = 5;
        let stopped = encode_within(&d, &s, &[], &mut || {
            left -= 1;
            if left == 0 { Err("stop") } else { Ok(()) }
        });
        assert_eq!(stopped, Err("stop"));
    }

    #[test]
    fn refuses_corrupt_foreign_and_oversized_snapshots() {
        let s = state();
        let d = [9u8; 32];
        let bytes = encode(&d, &s, &[]);
        let code = |r: Result<State, ExecError>| r.map(|_| ()).map_err(|e| e.code());
        assert_eq!(code(decode(&bytes, &[1u8; 32], &[], 1 << 30, 2)), Err("SNAPSHOT_MISMATCH"));
        assert_eq!(code(decode(&bytes, &d, &[], 65536, 2)), Err("SNAPSHOT_INVALID"));
        for i in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(code(decode(&bad, &d, &[], 1 << 30, 2)), Err("SNAPSHOT_INVALID"), "byte {i}");
        }
        for cut in [0, 10, 50, bytes.len() - 1] {
            assert_eq!(code(decode(&bytes[..cut], &d, &[], 1 << 30, 2)), Err("SNAPSHOT_INVALID"), "cut at {cut}");
        }
        // Another count of globals than the module's is refused before any is read (review AM2).
        assert_eq!(code(decode(&bytes, &d, &[], 1 << 30, 3)), Err("SNAPSHOT_INVALID"));
        let mut many = Vec::new();
        many.extend_from_slice(MAGIC);
        many.extend_from_slice(&VERSION.to_le_bytes());
        many.extend_from_slice(&d);
        many.extend_from_slice(&65536u64.to_le_bytes());
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        many.extend_from_slice(&[0u8; 17 * 1000]);
        let sum = sha256(&many);
        many.extend_from_slice(&sum);
        let e = decode(&many, &d, &[], 1 << 30, 2).expect_err("a forged count");
        assert!(e.to_string().contains("4294967295 mutable globals, the module 2"), "{e}");
        assert_eq!(code(decode(b"garbage that is long enough to have a checksum at its end....", &d, &[], 1 << 30, 2)), Err("SNAPSHOT_INVALID"));
    }

    /// A snapshot of `memory_len` bytes of memory with `runs` (start page, bytes, packed bytes)
    /// as given and a valid checksum.
    fn forged(d: &Digest, memory_len: u64, runs: &[(u32, u32, Vec<u8>)], trailer: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(d);
        out.extend_from_slice(&memory_len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(runs.len() as u32).to_le_bytes());
        for (start, len, packed) in runs {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            out.extend_from_slice(packed);
        }
        out.extend_from_slice(trailer);
        let sum = sha256(&out);
        out.extend_from_slice(&sum);
        out
    }

    #[test]
    fn runs_out_of_order_overlapping_or_followed_by_bytes_are_refused_before_decompressing() {
        let d = [9u8; 32];
        let whole = 1u32 << 20;
        let zeros = lz4_flex::block::compress(&vec![0u8; whole as usize]);
        let code = |r: Result<State, ExecError>| r.map(|_| ()).map_err(|e| e.to_string());
        // One run over the whole memory decodes.
        let one = forged(&d, whole as u64, &[(0, whole, zeros.clone())], &[]);
        assert!(decode(&one, &d, &[], 1 << 30, 0).is_ok());
        // The same run 100 times over (each decompressed in full, before).
        let bomb: Vec<_> = (0..100).map(|_| (0, whole, zeros.clone())).collect();
        let refused = code(decode(&forged(&d, whole as u64, &bomb, &[]), &d, &[], 1 << 30, 0)).expect_err("overlapping runs");
        assert!(refused.contains("out of order or overlapping"), "{refused}");
        // Runs going backwards.
        let half = whole / 2;
        let second = half / PAGE as u32;
        let halves = lz4_flex::block::compress(&vec![0u8; half as usize]);
        let back = forged(&d, whole as u64, &[(second, half, halves.clone()), (0, half, halves.clone())], &[]);
        assert!(code(decode(&back, &d, &[], 1 << 30, 0)).expect_err("backwards").contains("overlapping"));
        // In order and apart is fine.
        assert!(decode(&forged(&d, whole as u64, &[(0, half, halves.clone()), (second, half, halves)], &[]), &d, &[], 1 << 30, 0).is_ok());
        // A byte after the last run fails it before any run is decompressed: a run whose packed
        // bytes are garbage would otherwise be what it fails on.
        let trailing = forged(&d, whole as u64, &[(0, whole, vec![0xff; 64])], &[0]);
        assert!(code(decode(&trailing, &d, &[], 1 << 30, 0)).expect_err("trailer").contains("bytes after the last page"));
        // Empty runs (each passed the order check, and was held until the end), and more runs than
        // the memory has pages.
        let empty = forged(&d, whole as u64, &[(0, 0, vec![]), (0, 0, vec![])], &[]);
        assert!(code(decode(&empty, &d, &[], 1 << 30, 0)).expect_err("empty").contains("empty run"));
        let pages = (whole as usize / PAGE) as u32;
        let many: Vec<_> = (0..=pages).map(|p| (p, PAGE as u32, vec![])).collect();
        assert!(code(decode(&forged(&d, whole as u64, &many, &[]), &d, &[], 1 << 30, 0)).expect_err("many").contains("runs of pages in a memory"));
    }

    #[test]
    fn a_shadow_copies_only_what_changed() {
        let mut shadow = state();
        let mut now = shadow.clone();
        assert_eq!(shadow.update_from(&now.memory, &now.globals, &now.host), 0);
        now.memory[5000] = 7;
        now.memory.extend_from_slice(&[0u8; 65536]);
        assert_eq!(shadow.update_from(&now.memory, &now.globals, &now.host), PAGE + 65536);
        assert_eq!(shadow, now);
    }
}
