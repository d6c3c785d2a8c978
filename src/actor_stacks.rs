//! The sweep of idle actors' fiber stacks: every actor in the process idle for a while gives its
//! stack's pages back (see `fiber_stacks`), one actor at a time under its executor's LRU lock, so
//! a call taking its ticket meanwhile waits for the release and one holding the actor is skipped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{now_ms, registry, ActorKey, Shared};

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
    for ex in executors {
        let now = now_ms();
        let due: Vec<ActorKey> = {
            let lru = ex.lru();
            let resident = lru.iter().filter(|(_, s)| s.stack_resident.load(Ordering::Acquire));
            let (due, recent): (Vec<_>, Vec<_>) =
                resident.partition(|(_, s)| now.saturating_sub(s.last_used.load(Ordering::Relaxed)) >= idle_ms);
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
    if now_ms().saturating_sub(slot.last_used.load(Ordering::Relaxed)) < idle_ms {
        return Released::Busy;
    }
    // Released or not (no /proc, a stack not surely its own), it is not looked at again until
    // its next call.
    if let Some(instance) = st.instance.as_mut() {
        if instance.release_stack(sweep).is_none() {
            return Released::NeedsMaps;
        }
    }
    slot.stack_resident.store(false, Ordering::Release);
    Released::Done
}
