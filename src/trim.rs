//! Gives memory the allocator keeps back to the system, after work that freed many small
//! allocations outside any compile (`compile::give_back_memory` trims after heavy compiles).
//!
//! glibc keeps what a thread freed in that thread's arena: the tens of millions of block records
//! an Extism plugin's call may make (each counted against its `maxMemoryMB` while it lives) stayed
//! resident after the call, and after `close()` (review BK2: two calls of 10 million 1-byte blocks
//! at once left 998 MB resident for good; a trim took a process at 677 MB to 102 MB).

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether a trim is asked for and not begun: a burst of such calls asks for one.
static ASKED: AtomicBool = AtomicBool::new(false);

/// Asks for a trim on a thread of its own (it walks the allocator's arenas, locking each): at
/// most one waits at a time.
pub fn soon() {
    if ASKED.swap(true, Ordering::SeqCst) {
        return;
    }
    let run = || {
        ASKED.store(false, Ordering::SeqCst);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: glibc's malloc_trim takes only the padding to keep; it is thread-safe.
        unsafe {
            libc::malloc_trim(0);
        }
    };
    match crate::runtime::handle() {
        Some(rt) => drop(rt.spawn_blocking(run)),
        None => run(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_trim_asked_for_is_run_and_can_be_asked_for_again() {
        super::soon();
        // Without a runtime it runs here; with one, on a blocking thread soon after.
        for _ in 0..1000 {
            if !super::ASKED.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the trim never ran");
    }
}
