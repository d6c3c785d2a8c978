//! Instances outside the instance pool, process-wide: at most `MAX_UNPOOLED` live at once, fewer
//! beside a large pool (what the mappings budget leaves, `max_unpooled_for`).
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

/// Live instances outside the pool the process allows at most: 8 TiB of address space.
pub const MAX_UNPOOLED: usize = 2000;
/// Memory mappings one instance outside the pool may hold: its memory (with a data image mapped
/// at an offset), table and fiber stack with their guard pages, and a second stack while a call
/// waits after a host function's text result (8-9 measured).
pub const MAPPINGS_PER_UNPOOLED: usize = 9;

/// Instances outside the pool the process allows beside a pool of `pool` instances: what the
/// mappings budget leaves (`engine::MAPPINGS_BUDGET`), at most `MAX_UNPOOLED`.
pub fn max_unpooled_for(pool: u32) -> usize {
    (crate::engine::MAPPINGS_BUDGET.saturating_sub(crate::engine::pool_mappings(pool)) / MAPPINGS_PER_UNPOOLED).min(MAX_UNPOOLED)
}

/// `max_unpooled_for` the process's pool (its size is fixed before any instance is made).
fn max_unpooled() -> usize {
    max_unpooled_for(crate::engine::pool_size())
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// One live instance outside the pool, counted until dropped.
#[derive(Debug)]
pub struct UnpooledSlot(());

impl UnpooledSlot {
    /// A slot, or `BUSY` when `max_unpooled()` instances outside the pool are live.
    pub fn take() -> Result<UnpooledSlot, ExecError> {
        let max = max_unpooled();
        LIVE.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map(|_| UnpooledSlot(()))
            .map_err(|_| {
                ExecError::Busy(format!(
                    "{max} instances outside the instance pool are live in this process (maxFuel calls, calls during a tier-up); retry when some have ended"
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
