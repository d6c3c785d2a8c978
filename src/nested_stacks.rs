//! Fiber stacks for host-to-guest calls made from inside a host function.
//!
//! A host function's text result goes back to an AssemblyScript guest through the guest's own
//! `__new`, called from the host function (`host_functions::write_as`). That call runs on a fiber
//! stack of its own while its activity call's fiber keeps its stack, so it takes a second stack
//! from the instance pool, which keeps `engine::nested_stacks` of them beyond one per instance.
//!
//! How long a guest's `__new` runs is the guest's to decide: a hostile one spins there until its
//! call's deadline. One such call per guest thread spins; the others, first run on the caller's
//! thread and moved mid-`__new` past their inline budget, wait for a guest thread holding their
//! second stack. Unbounded, those took every spare stack (a review found it; the test made 44 of
//! 220 such calls, 20 of 20 honest calls of another module and a call resumed from a host function
//! fail `BUSY`, the pool full of stacks). So a process-wide count holds such calls to the spare
//! stacks: a call past it waits, its concurrency slot given back, until one is free. Its deadline
//! and cancellation cover the wait as they do the host function's.
//!
//! The count is sized once, from the pool's size when first needed: the pool is built at its size
//! before any call runs on it, and it can only be sized larger than the default (it is never
//! below `engine::DEFAULT_POOL_INSTANCES`), so the count never exceeds the spare stacks. Calls on
//! the engines without a pool count too: they wait only when the count is full.

use std::sync::OnceLock;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::ExecError;
use crate::host_functions::HostAccess;

fn spare() -> &'static Semaphore {
    static SPARE: OnceLock<Semaphore> = OnceLock::new();
    SPARE.get_or_init(|| Semaphore::new(crate::engine::nested_stacks(crate::engine::pool_size()) as usize))
}

/// A spare stack's place, held while a host-to-guest call runs.
pub struct SpareStack(#[allow(dead_code)] SemaphorePermit<'static>);

/// Takes a spare stack's place for a host-to-guest call, if one is free.
pub fn try_take() -> Option<SpareStack> {
    spare().try_acquire().ok().map(SpareStack)
}

/// Waits for a spare stack's place for a host-to-guest call of `access`'s call, with the call's
/// concurrency slot given back meanwhile.
pub async fn wait(access: &HostAccess) -> Result<SpareStack, ExecError> {
    match access.without_slot(spare().acquire()).await {
        Ok(p) => Ok(SpareStack(p)),
        Err(_) => Err(ExecError::internal("the spare fiber stacks' count was closed")),
    }
}
