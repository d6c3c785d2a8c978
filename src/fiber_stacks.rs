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
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
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
    /// The stack `at` is on, once checked against the process's maps: the Store holds it, mapped,
    /// for its whole life (an on-demand stack's maps need not be read again). The sweeper fills
    /// it in for a probe that asked (`ask_check`) through a weak reference: it lives and dies with
    /// the Store.
    checked: Arc<Checked>,
}

#[derive(Debug, Default)]
struct Checked {
    range: OnceLock<(usize, usize)>,
    asked: std::sync::atomic::AtomicBool,
}

/// Stacks whose Stores asked to have them checked against the process's maps (at the address
/// and epoch they recorded), for the sweeper's next read of them.
fn to_check() -> std::sync::MutexGuard<'static, Vec<(usize, u64, Weak<Checked>)>> {
    static TO_CHECK: OnceLock<Mutex<Vec<(usize, u64, Weak<Checked>)>>> = OnceLock::new();
    TO_CHECK.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks the sweeper to check the stack `probe` recorded against the process's maps, soon, off
/// the calls' path (a read takes milliseconds), so that the Store's next call end can give its
/// pages back at once (`Sweep::release` then needs no read). Once per Store.
pub fn ask_check(probe: &StackProbe) {
    let Some(at) = probe.address() else { return };
    if probe.checked.range.get().is_some() || probe.checked.asked.swap(true, Ordering::AcqRel) {
        return;
    }
    if can_query() || (probe.pooled && known_pool_stack(at).is_some()) {
        // Checked where it is released, by a query.
        probe.checked.asked.store(false, Ordering::Release);
        return;
    }
    to_check().push((at, probe.epoch, Arc::downgrade(&probe.checked)));
    sweep_soon();
}

fn known_pool_stack(addr: usize) -> Option<Range<usize>> {
    let pool = pool_stacks();
    pool.range(..=addr).next_back().map(|(lo, hi)| *lo..*hi).filter(|r| r.contains(&addr) && r.end - addr <= NEAR_TOP)
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
        let guard = v.lo.checked_sub(self.page).and_then(|g| self.containing(g)).map(|g| g.rw);
        is_stack(addr, (v.lo, v.hi, v.rw), guard, self.page).then_some(v.lo..v.hi)
    }
}

/// Whether the mapping `(lo, hi, rw)` holding `addr`, above a page mapped writable or not
/// (`guard`; `None`: nothing mapped there), is a whole fiber stack with `addr` near its top.
fn is_stack(addr: usize, (lo, hi, rw): (usize, usize, bool), guard: Option<bool>, page: usize) -> bool {
    rw && hi - lo == ASYNC_STACK_BYTES.next_multiple_of(page) && guard == Some(false) && hi - addr <= NEAR_TOP
}

/// Whether the kernel can be asked for one mapping (`vma_query`) on this thread.
fn can_query() -> bool {
    #[cfg(test)]
    if tests::NO_QUERY.with(|c| c.get()) {
        return false;
    }
    crate::vma_query::supported()
}

/// `Maps::stack_of` from two queries of the kernel (`vma_query`) instead of a read of all the
/// maps: `None` when the kernel cannot answer them.
fn query_stack_of(addr: usize, recorded: u64) -> Option<Option<Range<usize>>> {
    if !can_query() {
        return None;
    }
    let page = page_size()?;
    let epoch = MAPS_EPOCH.fetch_add(1, Ordering::SeqCst);
    if recorded == 0 || recorded > epoch {
        return Some(None);
    }
    let Some(v) = crate::vma_query::query(addr).ok()? else { return Some(None) };
    let guard = match v.lo.checked_sub(page) {
        Some(g) => crate::vma_query::query(g).ok()?.map(|g| g.rw),
        None => None,
    };
    Some(is_stack(addr, (v.lo, v.hi, v.rw), guard, page).then_some(v.lo..v.hi))
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

/// One sweep's releases: a stack not checked before (a pool stack is checked once for the life
/// of the process, an on-demand one once for its Store's) is looked up in the kernel
/// (`vma_query`), or, where it cannot answer, in the process's maps, read at most once a sweep.
/// `release` never reads them itself: its caller may hold locks a call waits on, and a read takes
/// milliseconds (22 ms with 7,000 actors). It asks for them (`None`); the caller lets go of its
/// locks, calls `read_maps`, and asks again.
#[derive(Default)]
pub struct Sweep {
    maps: Option<Option<Maps>>,
}

impl Sweep {
    /// Releases the resident pages of the stack `probe` recorded. The caller guarantees that the
    /// probe's Store is idle (out of wasm, no fiber of it running or suspended): its stack holds
    /// nothing live, and its next fiber writes its own first frame. `None`: the stack must be
    /// checked against the maps first (`read_maps`; only where the kernel cannot be queried);
    /// after that read it is never `None`.
    pub fn release(&mut self, probe: &mut StackProbe) -> Option<bool> {
        let Some(addr) = probe.address() else { return Some(false) };
        let known = match probe.checked.range.get() {
            Some(&(lo, hi)) => Some(lo..hi),
            None if probe.pooled => known_pool_stack(addr),
            None => None,
        };
        let stack = match known {
            Some(stack) => stack,
            None => {
                let found = match query_stack_of(addr, probe.epoch) {
                    Some(found) => found,
                    None => self.maps.as_ref()?.as_ref().and_then(|maps| maps.stack_of(addr, probe.epoch)),
                };
                let Some(stack) = found else { return Some(false) };
                if probe.pooled {
                    pool_stacks().insert(stack.start, stack.end);
                }
                stack
            }
        };
        let _ = probe.checked.range.set((stack.start, stack.end));
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

    /// Checks the stacks asked for (`ask_check`) against the process's maps, reading them if
    /// any was asked for (holding no lock). A Store gone since has nobody to tell.
    pub fn check_asked(&mut self) {
        let asked = std::mem::take(&mut *to_check());
        if asked.is_empty() {
            return;
        }
        self.read_maps();
        let Some(Some(maps)) = self.maps.as_ref() else { return };
        for (at, epoch, checked) in asked {
            let Some(checked) = checked.upgrade() else { continue };
            // The Store lives: it has held the stack it recorded since (see `Maps::stack_of`).
            if let Some(stack) = maps.stack_of(at, epoch) {
                let _ = checked.range.set((stack.start, stack.end));
            }
        }
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
#[path = "fiber_stacks_tests.rs"]
mod tests;
