//! For tests: how much of a range of memory is resident.

/// How many 4 KiB pages of the `len` bytes from `at` are resident (mincore). A page only read
/// since it was mapped counts too (it maps the zero page): look before anything reads the range.
pub fn resident_pages(at: *const u8, len: usize) -> usize {
    let page = 4096usize;
    let start = (at as usize) & !(page - 1);
    let end = (at as usize + len).next_multiple_of(page);
    let mut vec = vec![0u8; (end - start) / page];
    // SAFETY: mincore only reads the page tables of the range and writes one byte per page.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore");
    vec.iter().filter(|&&v| v & 1 == 1).count()
}
