//! Evicting idle actors: past an executor's `maxActorMemoryMB` or `maxActors` (`Shared`'s trims),
//! and across every executor of the process when the instance pool runs short. Only idle actors
//! go (their lock free, held by the LRU alone); a busy one never does.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use lru::LruCache;

use super::{ActorKey, ActorSlot, ActorState, Shared};

impl Shared {
    /// Evicts the least recently used idle actors (never `keep`) until its actors hold at most
    /// `max_memory` (review P: 20 idle actors of 150 MiB each held 3 GB, bounded only by
    /// `maxActors` × a `maxMemoryMB` each definition chooses). Only as many as cover the excess
    /// are looked at (review U: collecting every idle actor made each call on a new actor 16×
    /// slower with 5,000 of them). When all the idle ones cannot cover it, they go all the same
    /// unless busy actors alone hold more than the cap (one big actor in a long call had every
    /// other actor evicted at each call's end, for nothing): the actor that just ran (`keep`,
    /// holding `kept`) may be over the cap by itself (review AA: twelve idle actors of 80 MiB
    /// under a cap of 64 MiB all stayed, 944 MiB, since no other could cover the excess its own
    /// share made).
    /// Idle actors' counted fiber stacks are given back first, least recently used first: that
    /// costs them nothing but a few page faults on their next call (see `stacks`).
    pub(super) fn trim_memory(&self, keep: &Arc<ActorSlot>, kept: u64) {
        let mut lru = self.lru();
        let mut excess = self.memory.load(Ordering::Acquire).saturating_sub(self.max_memory);
        if excess == 0 {
            return;
        }
        // First the idle actors' counted stacks. Those not checked against the process's maps
        // yet are left to the sweep, which reads them holding no lock, soon.
        let mut sweep = crate::fiber_stacks::Sweep::default();
        let mut sweep_soon = false;
        // Busy actors' counted stacks: each gives its pages back as its call ends, when past the
        // cap (`release_own_stack`), so no idle actor is evicted for them.
        let mut busy_stacks = 0u64;
        for (_, s) in lru.iter().rev() {
            if excess == 0 {
                break;
            }
            if Arc::ptr_eq(s, keep) || s.stack_counted() == 0 {
                continue;
            }
            let idle = if Arc::strong_count(s) == 1 { s.state.try_lock().ok() } else { None };
            let Some(mut st) = idle else {
                busy_stacks = busy_stacks.saturating_add(s.stack_counted());
                continue;
            };
            match st.instance.as_mut().and_then(|i| i.release_stack(&mut sweep)) {
                Some(true) => excess = excess.saturating_sub(s.stack_released(&mut st)),
                None => {
                    excess = excess.saturating_sub(s.stack_counted());
                    sweep_soon = true;
                }
                Some(false) => {}
            }
        }
        excess = excess.saturating_sub(busy_stacks);
        let mut chosen = Vec::new();
        let mut covered = 0u64;
        for (k, s) in lru.iter().rev() {
            if excess == 0 {
                break;
            }
            if Arc::ptr_eq(s, keep) || Arc::strong_count(s) != 1 {
                continue;
            }
            let Ok(st) = s.state.try_lock() else { continue };
            // What its eviction gives back beyond a stack the sweep is to give back anyway.
            let pending = s.stack_counted() > 0 && sweep_soon;
            let rest = if pending { st.charged.saturating_sub(s.stack_counted()) } else { st.charged };
            if rest == 0 {
                continue;
            }
            covered = covered.saturating_add(rest);
            chosen.push(k.clone());
            if covered >= excess {
                break;
            }
        }
        if sweep_soon {
            crate::fiber_stacks::sweep_soon();
        }
        if covered < excess {
            // Every idle actor was looked at: the rest is held by `keep` and busy actors.
            let busy = self.memory.load(Ordering::Acquire).saturating_sub(kept).saturating_sub(covered);
            if busy >= self.max_memory {
                return;
            }
        }
        for k in chosen {
            if lru.peek(&k).is_some_and(|s| evict_if_idle(s)) {
                self.pop(&mut lru, &k);
            }
        }
    }

    /// What the idle actors other than `keep` count now: what evicting them all would give back.
    pub(super) fn idle_memory(&self, keep: &Arc<ActorSlot>) -> u64 {
        let lru = self.lru();
        let mut idle = 0u64;
        for (_, s) in lru.iter() {
            if Arc::ptr_eq(s, keep) || Arc::strong_count(s) != 1 {
                continue;
            }
            if let Ok(st) = s.state.try_lock() {
                idle = idle.saturating_add(st.charged);
            }
        }
        idle
    }

    /// Evicts the least recently used idle actors holding state (never `keep`) until at most
    /// `capacity` hold state; idle ones holding nothing met on the way go too.
    pub(super) fn trim_locked(&self, lru: &mut LruCache<ActorKey, Arc<ActorSlot>>, keep: &Arc<ActorSlot>) {
        let mut excess = self.holding.load(Ordering::Acquire).saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        // Idle: held by the cache alone (a call holds its slot from its ticket to its end).
        let mut idle = Vec::new();
        for (k, s) in lru.iter().rev() {
            if Arc::ptr_eq(s, keep) || Arc::strong_count(s) != 1 {
                continue;
            }
            idle.push(k.clone());
            if s.holds.load(Ordering::Acquire) {
                excess -= 1;
                if excess == 0 {
                    break;
                }
            }
        }
        for k in idle {
            if lru.peek(&k).is_some_and(|s| evict_if_idle(s)) {
                self.pop(lru, &k);
            }
        }
    }
}

/// Every executor's actors, for eviction across the process when the instance pool runs short.
pub(super) fn registry() -> MutexGuard<'static, Vec<Weak<Shared>>> {
    static REGISTRY: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the instance of an idle actor (one whose lock is free); false if it is busy.
pub(super) fn evict_if_idle(slot: &ActorSlot) -> bool {
    match slot.state.try_lock() {
        Ok(mut st) => {
            slot.forget_state(&mut st);
            true
        }
        Err(_) => false,
    }
}

/// `evict_if_idle` for an actor whose eviction gives the instance pool (`pooled`), or the room for
/// instances outside it, a slot back: not one whose instance lives on the other side (fuel-metered,
/// baseline or unpooled code, or pooled), which would lose its state for nothing. An actor without
/// an instance goes only to make room in the pool, as before.
fn evict_if_idle_in(slot: &ActorSlot, pooled: bool) -> bool {
    let frees = |st: &ActorState| match &st.instance {
        Some(i) => (i.kind == crate::engine::EngineKind::Plain) == pooled,
        None => pooled,
    };
    match slot.state.try_lock() {
        Ok(st) if !frees(&st) => false,
        Ok(mut st) => {
            slot.forget_state(&mut st);
            true
        }
        Err(_) => false,
    }
}

/// Evicts up to `n` idle actors on pooled instances (`pooled`) or on instances outside the pool
/// across every executor of the process, least recently used first, to give the pool (or the
/// process's instances outside it) room. Returns how many went.
pub fn evict_idle_anywhere(n: usize, pooled: bool) -> usize {
    let executors: Vec<Arc<Shared>> = registry().iter().filter_map(Weak::upgrade).collect();
    let mut candidates: Vec<(u64, Arc<Shared>, ActorKey)> = Vec::new();
    for ex in &executors {
        for (k, s) in ex.lru().iter() {
            if Arc::strong_count(s) == 1 {
                candidates.push((s.last_used.load(Ordering::Relaxed), ex.clone(), k.clone()));
            }
        }
    }
    candidates.sort_by_key(|c| c.0);
    let mut evicted = 0;
    for (_, ex, key) in candidates {
        if evicted == n {
            break;
        }
        let mut lru = ex.lru();
        if lru.peek(&key).is_some_and(|s| Arc::strong_count(s) == 1 && evict_if_idle_in(s, pooled)) {
            ex.pop(&mut lru, &key);
            evicted += 1;
        }
    }
    evicted
}
