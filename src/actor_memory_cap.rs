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
//! eviction itself still happens as the call ends.
//!
//! A call's growth counts in `Shared::growing` from when it is admitted until the call ends and
//! the actor's memory is counted as it is (`Held`'s drop): calls waiting in a host function (or
//! for the network, or an actor store) give their concurrency slot back, and when the check saw
//! only what ended calls held, any number of them grew one after the other (review CC1: 20 calls
//! each grown to 56 MiB and waiting in a host function held 1.2 GB under a cap of 64 MiB).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::{ActorSlot, Held, Shared};
use crate::error::ExecError;
use crate::limits::SharedCap;

/// The cap as one call of one actor sees it.
pub struct MemoryCap {
    shared: Weak<Shared>,
    slot: Weak<ActorSlot>,
    /// What the instance held when the call started: its growth is what it holds past this, times
    /// `copies`, plus `fixed`.
    base: u64,
    /// 2 for an actor that keeps a shadow of its state (transactional, durable): the shadow grows
    /// with the instance as the call ends (review CD1: counted once, 20 transactional actors of
    /// 30 MiB let through under a cap of 128 MiB held 240 MiB).
    copies: u64,
    /// What the call holds besides the instance's growth: an instance made for it (and the shadow
    /// taken of it), or the old instance a move to optimized code keeps until the call has counted
    /// (review CD1: uncounted, 4 moved actors of 30 MiB held 240 MiB under a cap of 128).
    fixed: u64,
    /// What the actor counted in the executor's actor memory as its last call ended.
    own: u64,
    /// Its growth admitted so far, counted in `Shared::growing` until `release`.
    counted: AtomicU64,
}

impl Held {
    /// The cap for this call's instance, which holds `base` bytes now; what the call holds past
    /// it is `(total - base) * copies + fixed` (see `MemoryCap`). What it admits counts until this
    /// holder lets the actor go (its memory then counted as it is).
    pub fn memory_cap(&mut self, base: u64, copies: u64, fixed: u64) -> Arc<MemoryCap> {
        let cap = Arc::new(MemoryCap {
            shared: self.shared.clone(),
            slot: Arc::downgrade(&self.slot),
            base,
            copies,
            fixed,
            own: self.guard.charged,
            counted: AtomicU64::new(0),
        });
        if let Some(before) = self.caps.replace(cap.clone()) {
            before.release();
        }
        cap
    }
}

impl MemoryCap {
    /// What the call holds past what the actor counted, with its instance at `total` bytes.
    fn grown(&self, total: u64) -> u64 {
        total.saturating_sub(self.base).saturating_mul(self.copies).saturating_add(self.fixed)
    }

    /// Its growth no longer counts apart (the actor's memory is counted as it is now).
    pub(super) fn release(&self) {
        let counted = self.counted.swap(0, Ordering::AcqRel);
        if let (true, Some(shared)) = (counted > 0, self.shared.upgrade()) {
            shared.growing.fetch_sub(counted, Ordering::AcqRel);
        }
    }
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        self.release();
    }
}

impl SharedCap for MemoryCap {
    fn took_back(&self, total: u64) {
        let grown = self.grown(total);
        let before = self.counted.fetch_min(grown, Ordering::AcqRel);
        if let (true, Some(shared)) = (before > grown, self.shared.upgrade()) {
            shared.growing.fetch_sub(before - grown, Ordering::AcqRel);
        }
    }


    fn admit(&self, total: u64) -> Result<(), ExecError> {
        let grown = self.grown(total);
        let before = self.counted.load(Ordering::Acquire);
        let Some(shared) = self.shared.upgrade().filter(|_| grown > before) else { return Ok(()) };
        // Counted first, then checked: calls growing at once each see the others' growth.
        let delta = grown - before;
        let growing = shared.growing.fetch_add(delta, Ordering::AcqRel).saturating_add(delta);
        let held = shared.memory.load(Ordering::Acquire);
        let projected = held.saturating_add(growing);
        // Past the cap, evicting every idle actor must bring it back under, unless no other busy
        // actor holds memory (one over the cap by itself stays).
        let idle = match self.slot.upgrade() {
            Some(slot) if projected > shared.max_memory => shared.idle_memory(&slot),
            _ => 0,
        };
        let busy_others = held.saturating_sub(self.own).saturating_sub(idle).saturating_add(growing.saturating_sub(grown));
        let after_evictions = projected.saturating_sub(idle);
        if after_evictions <= shared.max_memory || busy_others == 0 || self.slot.strong_count() == 0 {
            self.counted.fetch_add(delta, Ordering::AcqRel);
            return Ok(());
        }
        shared.growing.fetch_sub(delta, Ordering::AcqRel);
        Err(ExecError::Busy(format!(
            "this call would take the executor's actors to {after_evictions} bytes, past maxActorMemoryMB ({} bytes), while \
             other busy actors (a call running, waiting in a host function or in their lines) hold the rest: retry once they are done",
            shared.max_memory
        )))
    }
}
