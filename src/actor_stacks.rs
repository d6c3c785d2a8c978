//! Actors' fiber stacks: counted in `maxActorMemoryMB` when they may take it past the cap, and
//! given back by a sweep.
//!
//! - A call ends with the pages it touched on its actor's stack still resident: up to a whole
//!   stack (2 MiB) after deep recursion (review BR2: 900 actors recursing 25,000 deep, called
//!   round-robin, held 700 MB under a cap of 64 MB). Measuring them (`mincore`, about 2 us) on
//!   every call would cost a quarter of an actor call, so a call measures only when its
//!   executor's actors are near the cap: when their counted memory and a whole stack for each
//!   actor whose stack is unmeasured (this one too) would pass it. Its measured bytes are then
//!   part of its charge, past its first `DEEP` bytes: those are an actor's own overhead, not
//!   counted, as an instance's metadata under 64 KiB is not (counted, an idle actor's few pages
//!   took actors that filled their cap exactly past it, and one was evicted).
//!   Past the cap, the call's own counted stack goes as it ends, then
//!   idle actors' counted stacks, before any actor is evicted (`Shared::trim_memory`); busy
//!   actors' counted stacks evict nobody (each goes as its call ends). Unmeasured stacks stay
//!   within the room the cap left when they were marked, so an executor's actors and their
//!   stacks hold at most about twice the cap, whatever the guests do (running calls aside).
//! - A stack is given back only once it is known to be one (`fiber_stacks`): checked by a query
//!   of the kernel where it answers (Linux 6.11+), else by the sweeper's read of the maps,
//!   asked for as the stack is measured.
//! - A sweep (its own low-priority thread) gives back the stacks of actors idle for a while,
//!   and of actors whose stacks are counted, one actor at a time under its
//!   executor's LRU lock, so a call taking its ticket meanwhile waits for the release and one
//!   holding the actor is skipped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{now_ms, registry, ActorKey, ActorSlot, ActorState, Shared};
use crate::fiber_stacks::STACK_MAX_RESIDENT;

/// `ActorSlot::stack` of an actor whose stack pages are not measured since its last call.
pub(super) const UNMEASURED: u64 = u64::MAX;
/// What of each stack is not counted: past it, a stack counts, and is given back by the next
/// sweep, idle or not.
pub(super) const DEEP: u64 = 64 * 1024;

impl Shared {
    /// Whether its actors' counted memory, with a whole stack for each unmeasured one and for
    /// one more, would pass `maxActorMemoryMB`.
    fn stacks_pressed(&self) -> bool {
        let unmeasured = self.unmeasured.load(Ordering::Acquire).saturating_add(1);
        self.memory.load(Ordering::Acquire).saturating_add(unmeasured.saturating_mul(STACK_MAX_RESIDENT)) > self.max_memory
    }
}

impl ActorSlot {
    /// Settles its stack's count as a call on it ends (under its lock; `st` its state): the
    /// bytes its charge counts for its stack now.
    pub(super) fn stack_after_call(&self, st: &ActorState, shared: Option<&Shared>) -> u64 {
        let Some(instance) = st.instance.as_ref() else {
            self.stack_gone();
            return 0;
        };
        if shared.is_some_and(Shared::stacks_pressed) {
            let bytes = instance.stack_resident_bytes().saturating_sub(DEEP);
            if bytes > 0 {
                instance.ask_stack_check();
            }
            if self.stack.swap(bytes, Ordering::AcqRel) == UNMEASURED {
                decrement(&self.unmeasured);
            }
            bytes
        } else {
            if self.stack.swap(UNMEASURED, Ordering::AcqRel) != UNMEASURED {
                self.unmeasured.fetch_add(1, Ordering::AcqRel);
            }
            0
        }
    }

    /// Its stack went with its instance, or gave its pages back: nothing counts for it. Returns
    /// the bytes its charge counted for it.
    pub(super) fn stack_gone(&self) -> u64 {
        match self.stack.swap(0, Ordering::AcqRel) {
            UNMEASURED => {
                decrement(&self.unmeasured);
                0
            }
            bytes => bytes,
        }
    }

    /// Its stack gave its pages back (under its lock): its charge loses what it counted for them.
    pub(super) fn stack_released(&self, st: &mut ActorState) -> u64 {
        let bytes = self.stack_gone().min(st.charged);
        st.charged -= bytes;
        self.memory.fetch_sub(bytes, Ordering::AcqRel);
        bytes
    }

    /// Past the cap, its own counted stack gives its pages back as its call ends (the
    /// caller holds its lock, so the stack is idle), before any other actor is evicted: a call
    /// waiting in its line takes the lock next and keeps it from every sweep (review BS1: 60
    /// actors of two calls each, recursing deep, had 21 of 500 idle actors evicted for their
    /// stacks; 2,000 such actors held 1.5 GB under a cap of 64 MB). A stack not checked against
    /// the process's maps yet stays until the sweeper has checked it (asked as the stack was
    /// measured): a read on the call's path took 10 ms, once per stack. Returns the bytes no
    /// longer counted.
    pub(super) fn release_own_stack(&self, st: &mut ActorState) -> u64 {
        if self.stack_counted() == 0 {
            return 0;
        }
        let Some(instance) = st.instance.as_mut() else { return 0 };
        if instance.release_stack(&mut crate::fiber_stacks::Sweep::default()) == Some(true) {
            self.stack_released(st)
        } else {
            0
        }
    }

    /// Bytes counted for its stack (none while unmeasured).
    pub(super) fn stack_counted(&self) -> u64 {
        match self.stack.load(Ordering::Acquire) {
            UNMEASURED => 0,
            bytes => bytes,
        }
    }

    /// Whether a sweep gives its stack back now: idle for `idle_ms`, or counted.
    fn stack_due(&self, now: u64, idle_ms: u64) -> bool {
        now.saturating_sub(self.last_used.load(Ordering::Relaxed)) >= idle_ms || self.stack_counted() > 0
    }
}

fn decrement(count: &std::sync::atomic::AtomicU64) {
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
}

/// What a sweep of idle actors' stacks left.
pub struct Swept {
    /// Actors that still hold their stack pages (busy, or not idle long enough).
    pub holding: usize,
    /// Some of those were busy (held by a call): when they will be due is not known.
    pub busy: bool,
    /// In how long the first of those not busy will be idle long enough.
    pub next_due_ms: Option<u64>,
}

/// Gives back the fiber stack pages of every actor in the process idle for `idle_for` (see
/// `fiber_stacks`).
pub fn release_idle_stacks(idle_for: std::time::Duration) -> Swept {
    let executors: Vec<Arc<Shared>> = registry().iter().filter_map(Weak::upgrade).collect();
    let idle_ms = idle_for.as_millis() as u64;
    let mut holding = 0;
    let mut next_due_ms: Option<u64> = None;
    let mut busy = false;
    let mut sweep = crate::fiber_stacks::Sweep::default();
    sweep.check_asked();
    for ex in executors {
        let now = now_ms();
        let due: Vec<ActorKey> = {
            let lru = ex.lru();
            let resident = lru.iter().filter(|(_, s)| s.stack_resident.load(Ordering::Acquire));
            let (due, recent): (Vec<_>, Vec<_>) = resident.partition(|(_, s)| s.stack_due(now, idle_ms));
            holding += recent.len();
            for (_, s) in recent {
                let due_in = idle_ms.saturating_sub(now.saturating_sub(s.last_used.load(Ordering::Relaxed)));
                next_due_ms = Some(next_due_ms.map_or(due_in, |n| n.min(due_in)));
            }
            due.into_iter().map(|(k, _)| k.clone()).collect()
        };
        // One actor at a time under the LRU's lock (as eviction does): a call taking its ticket
        // meanwhile waits for the release, and a call holding the actor is skipped. A stack
        // not checked before waits for a second pass: the maps are read holding no lock.
        let mut unchecked = Vec::new();
        for key in due {
            match release_if_idle(&ex, &key, idle_ms, &mut sweep) {
                Released::Done => {}
                Released::Busy => {
                    holding += 1;
                    busy = true;
                }
                Released::NeedsMaps => unchecked.push(key),
            }
        }
        if !unchecked.is_empty() {
            sweep.read_maps();
            for key in unchecked {
                if let Released::Busy = release_if_idle(&ex, &key, idle_ms, &mut sweep) {
                    holding += 1;
                    busy = true;
                }
            }
        }
    }
    Swept { holding, busy, next_due_ms }
}

enum Released {
    /// Released, or not to be looked at again until the actor's next call.
    Done,
    /// Held by a call, or called within `idle_ms`: its stack stays resident for now.
    Busy,
    /// Its stack needs the process's maps read first.
    NeedsMaps,
}

/// Releases the fiber stack of actor `key` if it is still idle for `idle_ms` and no call holds it.
fn release_if_idle(ex: &Shared, key: &ActorKey, idle_ms: u64, sweep: &mut crate::fiber_stacks::Sweep) -> Released {
    let lru = ex.lru();
    let Some(slot) = lru.peek(key) else { return Released::Done };
    let Ok(mut st) = slot.state.try_lock() else { return Released::Busy };
    // Under the actor's lock: its last call has ended and set both of these.
    if !slot.stack_resident.load(Ordering::Acquire) {
        return Released::Done;
    }
    if !slot.stack_due(now_ms(), idle_ms) {
        return Released::Busy;
    }
    // Released or not (no /proc, a stack not surely its own), it is not looked at again until
    // its next call; a stack not released keeps its count.
    if let Some(instance) = st.instance.as_mut() {
        match instance.release_stack(sweep) {
            None => return Released::NeedsMaps,
            Some(true) => {
                slot.stack_released(&mut st);
            }
            Some(false) => {}
        }
    }
    slot.stack_resident.store(false, Ordering::Release);
    Released::Done
}
