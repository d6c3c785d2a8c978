//! Tests of `extism`: the kernel's block memory.
use super::kernel::{BLOCK_OVERHEAD, FREE_STEPS};
use super::*;
use crate::limits::MemoryLimiter;
use crate::test_pages::resident_pages;

#[test]
fn freed_blocks_are_reused_zeroed_without_overlap_and_given_back() {
    let mut lim = MemoryLimiter::new(32 << 20);
    let mut k = Kernel::default();
    k.begin(b"{}", &mut lim).expect("begin");
    let (base, base_len) = (lim.total_bytes(), k.mem.len());
    // Review V: alloc(1 MiB) and free in a loop met a 32 MiB cap after 32 rounds.
    for _ in 0..1000 {
        let b = k.alloc(1 << 20, &mut lim).expect("alloc");
        k.free(b, &mut lim);
    }
    assert_eq!((lim.total_bytes(), k.mem.len()), (base, base_len));
    // The freed pages go back to the OS (the capacity stays, for growth): resident no more.
    let pages = resident_pages(k.mem.as_ptr(), k.mem.capacity());
    assert!(pages <= 2, "{pages} pages of 1 MiB freed stay resident");
    // A freed block inside the memory is reused, smallest fit first, split, and zeroed.
    let a = k.alloc(100, &mut lim).expect("a");
    let small = k.alloc(20, &mut lim).expect("small");
    let b = k.alloc(10, &mut lim).expect("b");
    k.mem[a as usize..a as usize + 100].fill(0xff);
    k.mem[small as usize..small as usize + 20].fill(0xee);
    k.free(a, &mut lim);
    k.free(small, &mut lim);
    assert_eq!(k.alloc(15, &mut lim).expect("fits the small one"), small);
    let c = k.alloc(40, &mut lim).expect("c");
    let d = k.alloc(60, &mut lim).expect("d");
    assert_eq!((c, d), (a, a + 40));
    assert!(k.mem[a as usize..a as usize + 100].iter().all(|&x| x == 0), "handed out zeroed");
    let mut ranges: Vec<(u64, u64)> = k.blocks.iter().map(|(&o, &l)| (o, o + l)).collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0), "no two blocks overlap: {ranges:?}");
    assert_eq!(k.mem.len() as u64, b + 10, "nothing grew");
    // A second free, or of what is no block, changes nothing.
    let held = lim.total_bytes();
    k.free(a + 1, &mut lim);
    k.free(0, &mut lim);
    k.free(u64::MAX, &mut lim);
    assert_eq!(lim.total_bytes(), held);
    // Freed from the end back, every byte and record goes back.
    for off in [b, d, c, small, small + 15, 1] {
        k.free(off, &mut lim);
    }
    assert_eq!((lim.total_bytes(), k.mem.len()), (base - 2 - BLOCK_OVERHEAD, 1), "the input freed too");
    // Under a cap, reuse needs no more than the split's record.
    let mut tight = MemoryLimiter::new(1000);
    let mut k = Kernel::default();
    k.begin(b"", &mut tight).expect("begin");
    let big = k.alloc(700, &mut tight).expect("fits");
    let _pin = k.alloc(1, &mut tight).expect("fits");
    assert!(k.alloc(700, &mut tight).is_err(), "over the cap");
    k.free(big, &mut tight);
    assert_eq!(k.alloc(700, &mut tight).expect("reused"), big);
}

#[test]
fn one_free_gives_back_a_bounded_number_of_blocks_and_later_frees_the_rest() {
    let mut lim = MemoryLimiter::new(1 << 30);
    let mut k = Kernel::default();
    k.begin(b"", &mut lim).expect("begin");
    let base = lim.total_bytes();
    let n = FREE_STEPS * 2 + 10;
    let blocks: Vec<u64> = (0..n).map(|_| k.alloc(1, &mut lim).expect("alloc")).collect();
    // All but the last freed from the front: none of them is at the end, so nothing goes back.
    for &b in &blocks[..n - 1] {
        k.free(b, &mut lim);
    }
    assert_eq!(k.freed.len(), n - 1);
    k.free(blocks[n - 1], &mut lim);
    assert_eq!(k.freed.len(), n - FREE_STEPS, "one call gave back FREE_STEPS blocks");
    // A second free of that block is no free; the next frees take the rest, in turn.
    k.free(blocks[n - 1], &mut lim);
    assert_eq!(k.freed.len(), n - FREE_STEPS);
    let b = k.alloc(1, &mut lim).expect("alloc");
    k.free(b, &mut lim);
    assert_eq!(k.freed.len(), n - 2 * FREE_STEPS);
    let c = k.alloc(1, &mut lim).expect("alloc");
    k.free(c, &mut lim);
    assert!(k.freed.is_empty(), "{} left", k.freed.len());
    assert_eq!((lim.total_bytes(), k.mem.len()), (base, 1));
}

#[test]
fn a_new_calls_kernel_memory_keeps_nothing_allocated_before_it_began() {
    // Review BE2: `begin` cleared the block memory but kept its pages, so 200 MiB a start function
    // allocated stayed resident, uncounted once `begin` released their count, through the call.
    let mut lim = MemoryLimiter::new(64 << 20);
    let mut k = Kernel::default();
    let before_start = k.alloc(16 << 20, &mut lim).expect("a start function's alloc");
    k.mem[before_start as usize..].fill(0xff);
    k.begin(b"{}", &mut lim).expect("begin");
    let pages = resident_pages(k.mem.as_ptr(), k.mem.capacity());
    assert!(pages <= 2, "{pages} pages of the start function's 16 MiB stay resident");
    assert!(lim.total_bytes() < 1 << 20, "counted: {}", lim.total_bytes());
}

#[test]
fn text_a_host_reads_from_invalid_utf8_is_no_longer_than_its_limit() {
    // Review BE2: each invalid byte became U+FFFD (3 bytes): 64 MiB of 0xFF made 192 MiB of text
    // before the request it was meant to be was refused.
    let mut lim = MemoryLimiter::new(64 << 20);
    let mut k = Kernel::default();
    k.begin(b"{}", &mut lim).expect("begin");
    let block = k.alloc(3000, &mut lim).expect("alloc");
    k.mem[block as usize..block as usize + 3000].fill(0xff);
    let text = k.read_text_capped(block, 3000).expect("read");
    assert!(text.len() <= 3000, "{} bytes of text", text.len());
    assert!(text.chars().all(|c| c == '\u{fffd}'));
    let valid = k.write_bytes("é".repeat(1000).as_bytes(), &mut lim).expect("write");
    assert_eq!(k.read_text_capped(valid, 2000).expect("read"), "é".repeat(1000), "valid text whole");
}

#[test]
fn an_alloc_stops_zeroing_when_its_call_ends_and_leaves_the_kernel_as_it_was() {
    // Review BZ1: one alloc(1 GiB) zeroed it in one host call, 0.7-0.9 s past a 50 ms deadline.
    use std::cell::Cell;
    let mut lim = MemoryLimiter::new(2 << 30);
    let mut k = Kernel::default();
    k.begin(b"{}", &mut lim).expect("begin");
    let (base, base_len) = (lim.total_bytes(), k.mem.len());
    // The call ends after its second look: two steps zeroed, then nothing more.
    let looks = Cell::new(0);
    let ended = || {
        looks.set(looks.get() + 1);
        (looks.get() >= 2).then_some(ExecError::Timeout { limit_ms: 50, during: "" })
    };
    let e = k.alloc_within(1 << 30, &mut lim, &ended).expect_err("the call ended");
    assert_eq!(e.downcast_ref::<ExecError>().map(ExecError::code), Some("TIMEOUT"));
    assert_eq!(looks.get(), 2);
    assert_eq!((lim.total_bytes(), k.mem.len()), (base, base_len));
    // A freed block handed out again is zeroed in steps too, and stays free if the call ends.
    let big = k.alloc(3 * kernel::ZERO_STEP, &mut lim).expect("big");
    k.mem[big as usize..].fill(0xff);
    // A block after it keeps it inside the memory when freed (reused, not given back).
    let _after = k.alloc(1, &mut lim).expect("after");
    k.free(big, &mut lim);
    let held = lim.total_bytes();
    looks.set(0);
    assert!(k.alloc_within(3 * kernel::ZERO_STEP, &mut lim, &ended).is_err());
    assert_eq!(lim.total_bytes(), held);
    let again = k.alloc_within(3 * kernel::ZERO_STEP, &mut lim, &|| None).expect("whole");
    assert_eq!(again, big);
    assert!(k.mem[again as usize..(again + 3 * kernel::ZERO_STEP) as usize].iter().all(|&b| b == 0));
}
