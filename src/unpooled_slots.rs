//! Instances outside the instance pool, process-wide: at most `MAX_UNPOOLED` live at once.
//!
//! Calls with `maxFuel`, calls on baseline code during a tier-up and a fresh process's first calls
//! on an artifact are not pooled: each such instance maps its own linear memory (with its
//! 4 GiB reservation), tables and stack, about six memory mappings. Nothing bounded them but
//! `maxActors` and the calls' own count: review P parked 12,000 `maxFuel` calls in an async host
//! function, the process reached `vm.max_map_count` (65,530 mappings), calls failed as
//! `INVALID_MODULE` or `TRAP`, and Node aborted (V8 could not map its heap; a wasmtime munmap
//! panicked in a destructor). Past the cap an instantiation is `BUSY` (retryable), as a full
//! pool is, after idle actors outside the pool are evicted to make room.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::ExecError;

/// Live instances outside the pool the process allows: ~12,000 mappings and 8 TiB of address
/// space at most, well inside what Linux gives a process.
pub const MAX_UNPOOLED: usize = 2000;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// One live instance outside the pool, counted until dropped.
#[derive(Debug)]
pub struct UnpooledSlot(());

impl UnpooledSlot {
    /// A slot, or `BUSY` when `MAX_UNPOOLED` instances outside the pool are live.
    pub fn take() -> Result<UnpooledSlot, ExecError> {
        LIVE.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_UNPOOLED).then_some(n + 1))
            .map(|_| UnpooledSlot(()))
            .map_err(|_| {
                ExecError::Busy(format!(
                    "{MAX_UNPOOLED} instances outside the instance pool are live in this process (maxFuel calls, calls during a tier-up); retry when some have ended"
                ))
            })
    }
}

impl Drop for UnpooledSlot {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Instances outside the pool live now.
pub fn live() -> usize {
    LIVE.load(Ordering::Acquire)
}
