//! Descriptors guests hold: at most `MAX_PER_INSTANCE` open files and directories per instance,
//! and none numbered into the process's reserve.
//!
//! A guest granted a directory can open files and keep them: a WASI open is one host descriptor,
//! held until the guest closes it or its instance goes (an actor's instance stays while it is
//! idle). Without a bound, one guest opening its directory 30,000 times took every descriptor of
//! the process: Node's own opens, sockets and the instance pool's memfds then failed, for every
//! tenant. So an open a guest asks for (preview 1 `path_open`; preview 2 `open-at` and
//! `read-directory`, whose listing counts as one: `wasi_listing`) is refused, with what the OS would answer
//! (`EMFILE` / `ENFILE` in preview 1), when its instance holds `MAX_PER_INSTANCE` already, or when
//! the process's lowest free descriptor is in the reserve: the top quarter of its
//! `RLIMIT_NOFILE` soft limit (at least `MIN_RESERVE`). The OS hands out the lowest free number,
//! so guests never hold a descriptor in the reserve, and the process always has that many for
//! itself. Calls opening at the same instant may each pass the look: the reserve absorbs them.

/// Open files and directories one instance may hold (its preopened directory included).
pub const MAX_PER_INSTANCE: usize = 1024;

/// The least number of descriptors kept for the process (its sockets, memfds, its own files).
pub const MIN_RESERVE: u64 = 64;

/// Why an open is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The instance holds `MAX_PER_INSTANCE` (EMFILE).
    Instance,
    /// The process's descriptors left are its reserve (ENFILE).
    Process,
}

/// Whether an instance holding `held` descriptors may open one more.
pub fn admit(held: usize) -> Result<(), Refusal> {
    if held >= MAX_PER_INSTANCE {
        return Err(Refusal::Instance);
    }
    if !process_has_room() {
        return Err(Refusal::Process);
    }
    Ok(())
}

/// The process's `RLIMIT_NOFILE` soft limit now (`None`: unlimited or unknown).
pub fn soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes the limit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    Some(lim.rlim_cur)
}

/// The first descriptor number of the reserve, from the soft limit now.
fn reserve_start() -> u64 {
    let Some(soft) = soft_limit() else { return u64::MAX };
    soft.saturating_sub((soft / 4).max(MIN_RESERVE))
}

/// Whether the lowest free descriptor is below the reserve: it opens `/` (which always exists)
/// and looks at the number the OS gave, then closes it.
pub fn process_has_room() -> bool {
    lowest_free().is_some_and(|fd| fd < reserve_start())
}

/// The lowest free descriptor number now (`None` if none is free).
fn lowest_free() -> Option<u64> {
    // SAFETY: opening a constant, NUL-terminated path; the descriptor is closed right after.
    let fd = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was opened above and is owned here alone.
    unsafe { libc::close(fd) };
    Some(fd as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_holding_its_maximum_is_refused() {
        assert_eq!(admit(0), Ok(()));
        assert_eq!(admit(MAX_PER_INSTANCE - 1), Ok(()));
        assert_eq!(admit(MAX_PER_INSTANCE), Err(Refusal::Instance));
    }
}
