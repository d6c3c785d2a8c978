//! One mapping of the process looked up by address, without reading all of /proc/self/maps:
//! Linux's `PROCMAP_QUERY` (6.11 and later), half a microsecond a query where a read of the
//! maps takes milliseconds (10-20 ms with thousands of actors' stacks mapped). On kernels
//! without it, `query` says so and callers read the maps instead.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// A mapping: its range and whether it is readable and writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub lo: usize,
    pub hi: usize,
    pub rw: bool,
}

/// The kernel's `struct procmap_query` (uapi linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: u64 = (3 << 30) | ((std::mem::size_of::<ProcmapQuery>() as u64) << 16) | ((b'f' as u64) << 8) | 17;
const VMA_READABLE: u64 = 1;
const VMA_WRITABLE: u64 = 2;

/// 0: not tried yet, 1: the kernel answers, 2: it does not.
static SUPPORTED: AtomicU8 = AtomicU8::new(0);

fn maps_file() -> Option<&'static std::fs::File> {
    static FILE: OnceLock<Option<std::fs::File>> = OnceLock::new();
    FILE.get_or_init(|| std::fs::File::open("/proc/self/maps").ok()).as_ref()
}

/// Whether the kernel answers queries (as far as known: true until one has failed).
pub fn supported() -> bool {
    cfg!(target_os = "linux") && SUPPORTED.load(Ordering::Relaxed) != 2
}

/// The mapping that holds `addr` now: `Ok(None)` if none does; `Err` if the kernel cannot say.
#[cfg(target_os = "linux")]
pub fn query(addr: usize) -> Result<Option<Mapping>, ()> {
    use std::os::fd::AsRawFd;
    if SUPPORTED.load(Ordering::Relaxed) == 2 {
        return Err(());
    }
    let Some(file) = maps_file() else {
        SUPPORTED.store(2, Ordering::Relaxed);
        return Err(());
    };
    let mut q = ProcmapQuery { size: std::mem::size_of::<ProcmapQuery>() as u64, query_addr: addr as u64, ..Default::default() };
    // SAFETY: the request reads and writes `q`, a `procmap_query` of the size it states; no name
    // or build id is asked for (their sizes are 0).
    let r = unsafe { libc::ioctl(file.as_raw_fd(), PROCMAP_QUERY as _, &mut q as *mut ProcmapQuery) };
    if r == 0 {
        SUPPORTED.store(1, Ordering::Relaxed);
        let rw = q.vma_flags & (VMA_READABLE | VMA_WRITABLE) == VMA_READABLE | VMA_WRITABLE;
        return Ok(Some(Mapping { lo: q.vma_start as usize, hi: q.vma_end as usize, rw }));
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => {
            // ENOTTY before 6.11; anything else: not to be relied on.
            SUPPORTED.store(2, Ordering::Relaxed);
            Err(())
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub fn query(_addr: usize) -> Result<Option<Mapping>, ()> {
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mapping_of_an_address_as_the_maps_list_it() {
        let local = 0u8;
        let here = std::hint::black_box(&local) as *const u8 as usize;
        let Ok(found) = query(here) else {
            // A kernel before 6.11: callers read the maps instead.
            assert!(!supported());
            return;
        };
        let m = found.expect("the thread's stack is mapped");
        assert!(m.lo <= here && here < m.hi && m.rw, "{m:?}");
        let text = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let line = text.lines().find(|l| l.starts_with(&format!("{:x}-", m.lo))).expect("listed");
        assert!(line.starts_with(&format!("{:x}-{:x} rw", m.lo, m.hi)), "{line}");
        // Nothing is mapped at the first page.
        assert_eq!(query(16), Ok(None));
        // SAFETY: a fresh private mapping of our own, made read-only, then unmapped.
        unsafe {
            let p = libc::mmap(std::ptr::null_mut(), 3 * 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            assert_ne!(p, libc::MAP_FAILED);
            let q = query(p as usize + 4096).expect("answers").expect("mapped");
            assert!(!q.rw && q.lo <= p as usize && p as usize + 3 * 4096 <= q.hi, "{q:?}");
            libc::munmap(p, 3 * 4096);
        }
    }
}
