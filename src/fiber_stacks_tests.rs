//! Tests of `fiber_stacks`: real stack-shaped mappings released, the probe, the maps and the
//! kernel queries.
use super::*;

const PAGE: usize = 4096;

thread_local! {
    /// This test thread checks stacks against the maps as on a kernel that cannot be queried.
    pub(super) static NO_QUERY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A sweep's release as the sweeper makes it: asked again after reading the maps.
fn release(probe: &mut StackProbe) -> bool {
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
    NO_QUERY.with(|c| c.set(true));
    let touch = || {
        for page in 1..=3 {
            // SAFETY: inside the writable part of our mapping.
            unsafe { ((stack.end - page * PAGE) as *mut u8).write_volatile(1) };
        }
    };
    touch();
    assert_eq!(resident(&stack), 3);
    let probe = |pooled, epoch| StackProbe { depth: 0, at: stack.end - 100, mixed: false, epoch, pooled, checked: Default::default() };

    // A stack not known yet is never checked by `release` itself: it asks for the maps.
    let mut sweep = Sweep::default();
    assert_eq!(sweep.release(&mut probe(true, 0)), None);
    assert_eq!(sweep.release(&mut probe(false, 0)), None);
    assert!(!sweep.has_read_maps());
    assert_eq!(resident(&stack), 3);
    // Recorded after any read of the maps (epoch beyond): neither kind is released unchecked.
    assert!(!release(&mut probe(false, u64::MAX)));
    assert!(!release(&mut probe(true, u64::MAX)));
    assert_eq!(resident(&stack), 3);
    // Recorded before: released, and, for a pool stack, remembered.
    let before = MAPS_EPOCH.load(Ordering::SeqCst);
    assert!(release(&mut probe(true, before)));
    assert_eq!(resident(&stack), 0);
    // SAFETY: as above; the page reads as zero after the release.
    assert_eq!(unsafe { ((stack.end - PAGE) as *const u8).read_volatile() }, 0);
    touch();
    // Now a pool stack needs no read of the maps (an epoch that would fail the check);
    // an on-demand one still does.
    assert!(!release(&mut probe(false, u64::MAX)));
    // An on-demand stack checked once stays known to its Store's probe: no read again.
    let mut own = probe(false, before);
    assert!(release(&mut own));
    touch();
    let mut sweep = Sweep::default();
    assert_eq!(sweep.release(&mut own), Some(true));
    assert!(!sweep.has_read_maps());
    assert_eq!(resident(&stack), 0);
    // Asked for, a Store's stack is checked by the sweeper's next read of the maps (here
    // the sweeper's thread or this one, whichever takes the ask): then its release needs none.
    touch();
    let mut asked = probe(false, before);
    assert_eq!(Sweep::default().release(&mut asked), None, "not checked yet");
    ask_check(&asked);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while asked.checked.range.get().is_none() {
        assert!(std::time::Instant::now() < deadline, "never checked");
        Sweep::default().check_asked();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut sweep = Sweep::default();
    assert_eq!(sweep.release(&mut asked), Some(true));
    assert!(!sweep.has_read_maps());
    assert_eq!(resident(&stack), 0);
    touch();
    let mut sweep = Sweep::default();
    assert_eq!(sweep.release(&mut probe(true, u64::MAX)), Some(true));
    assert!(!sweep.has_read_maps());
    assert_eq!(resident(&stack), 0);
    // Not a top-level entry's address, or still in wasm: nothing.
    touch();
    let mut deep = StackProbe { at: stack.start + 100, ..probe(true, before) };
    assert!(!release(&mut deep));
    let mut running = StackProbe { depth: 1, ..probe(true, before) };
    assert!(!release(&mut running));
    assert_eq!(resident(&stack), 3);

    // Where the kernel can be queried, a stack is checked by queries: no read of the maps.
    NO_QUERY.with(|c| c.set(false));
    if crate::vma_query::supported() {
        touch();
        let mut sweep = Sweep::default();
        assert_eq!(sweep.release(&mut probe(false, before)), Some(true));
        assert!(!sweep.has_read_maps());
        assert_eq!(resident(&stack), 0);
        // Recorded after the query, or not a stack's address: refused as by the maps.
        assert_eq!(sweep.release(&mut probe(false, u64::MAX)), Some(false));
        assert_eq!(sweep.release(&mut StackProbe { at: stack.start + 100, ..probe(false, before) }), Some(false));
        assert!(!sweep.has_read_maps());
    }

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
