//! An actor call's share of its executor's `maxActorMemoryMB`, asked as its instance grows.
//!
//! Idle actors are evicted as a call ends while the executor's actors hold more than the cap;
//! busy ones never are, and an actor is busy from when a call is made on it, also while that call
//! waits for a concurrency slot. So calls queued behind running ones kept every actor they were
//! for, with all the memory the running calls had grown, whatever the cap (review CA1: 40 actors
//! grown to 60 MiB, each with a call waiting, held 2.4 GB under a cap of 128 MiB). Now a call's
//! growth (its instance made, or its memories and tables grown) is refused with `BUSY` (retryable)
//! when it would take the actors past the cap even once every idle actor is evicted, unless no
//! other actor is busy holding memory (an actor over the cap by itself stays, as before). The
//! eviction itself still happens as the call ends. Calls growing at the same moment see each
//! other's memory as it was when their last calls ended: the actors can pass the cap by what the
//! running calls (at most `maxConcurrency`) grow at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{ActorSlot, Held, Shared};
use crate::error::ExecError;
use crate::limits::SharedCap;

/// The cap as one call of one actor sees it.
pub struct MemoryCap {
    shared: Weak<Shared>,
    slot: Weak<ActorSlot>,
    /// What the instance held when the call started (0 for one made for the call): its growth
    /// is what it holds past this.
    base: u64,
    /// What the actor counted in the executor's actor memory as its last call ended.
    own: u64,
}

impl Held {
    /// The cap for this call's instance, which held `base` bytes as the call started.
    pub fn memory_cap(&self, base: u64) -> Arc<MemoryCap> {
        Arc::new(MemoryCap { shared: self.shared.clone(), slot: Arc::downgrade(&self.slot), base, own: self.guard.charged })
    }
}

impl SharedCap for MemoryCap {
    fn admit(&self, total: u64) -> Result<(), ExecError> {
        let grown = total.saturating_sub(self.base);
        let Some(shared) = self.shared.upgrade().filter(|_| grown > 0) else { return Ok(()) };
        let held = shared.memory.load(Ordering::Acquire);
        let projected = held.saturating_add(grown);
        if projected <= shared.max_memory {
            return Ok(());
        }
        let Some(slot) = self.slot.upgrade() else { return Ok(()) };
        let idle = shared.idle_memory(&slot);
        let busy_others = held.saturating_sub(self.own).saturating_sub(idle);
        let after_evictions = projected.saturating_sub(idle);
        if busy_others == 0 || after_evictions <= shared.max_memory {
            return Ok(());
        }
        Err(ExecError::Busy(format!(
            "this call would take the executor's actors to {after_evictions} bytes, past maxActorMemoryMB ({} bytes), while \
             other busy actors (a call running or waiting in their lines) hold {busy_others} of them: retry once they are done",
            shared.max_memory
        )))
    }
}
