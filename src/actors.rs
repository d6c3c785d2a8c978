//! Stateful actors: one live instance per (activity, actor id), kept between calls so guest
//! globals persist.
//!
//! - A slot's lock is a fair queue: calls to one actor run one at a time, in the order they
//!   arrived (a call takes its place in line when it is made, before any waiting).
//! - Only idle actors are ever evicted (past `maxActors`, or when the process's instance pool runs
//!   short): an actor with a call running or queued keeps its slot, so no call ever runs beside
//!   another on a second instance of the same actor.
//! - `dropActor` on a busy actor marks it: the running call finishes and its instance goes; the
//!   calls queued behind it start fresh.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use lru::LruCache;
use tokio::sync::OwnedMutexGuard;

pub use crate::actor_growth::Growth;
pub use stacks::{release_idle_stacks, Swept};

#[path = "actor_stacks.rs"]
mod stacks;
#[path = "actor_eviction.rs"]
mod eviction;
#[path = "actor_memory_cap.rs"]
mod memory_cap;
pub use memory_cap::MemoryCap;
#[cfg(test)]
#[path = "actor_inspect.rs"]
mod inspect;
pub use eviction::evict_idle_anywhere;
use eviction::{evict_if_idle, registry};
use crate::instance::GuestInstance;
use crate::modules::DefKey;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActorKey {
    pub def: DefKey,
    pub actor_id: String,
}

/// An actor's kept instance; `None` until its first call, or after a call left it unusable.
#[derive(Default)]
pub struct ActorState {
    pub instance: Option<GuestInstance>,
    /// The state after its last good call, for transactional calls (and the module it is of):
    /// a failed call is undone by restoring it into a fresh instance.
    pub shadow: Option<(crate::digest::Digest, crate::snapshot::State)>,
    /// How its memory has grown over its calls (to warn of a runtime that never frees).
    pub growth: Growth,
    /// For a durable actor: the version of its snapshot in the actor store that `shadow` is
    /// (none: not stored yet).
    pub persisted: Option<crate::actor_store::Version>,
    /// `shadow` is the state a fresh instance was made with (no call has counted since): a call
    /// restored from it runs on a fresh actor (`actorCreated`).
    pub pristine: bool,
    /// What its executor's actor memory (`maxActorMemoryMB`) counts for it now.
    charged: u64,
    /// The ABI its state is of: that of the instance last made for it.
    pub abi: Option<crate::abi::Abi>,
}

impl ActorState {
    /// It holds nothing a fresh actor would not have: no instance, no stored version, and no
    /// shadow but the fresh state it was made with (a first call that failed).
    fn is_empty(&self) -> bool {
        self.instance.is_none() && self.persisted.is_none() && (self.shadow.is_none() || self.pristine)
    }

    /// What it holds in memory: its instance's (`Instance::held_bytes`) and its shadow.
    fn held_bytes(&self) -> u64 {
        let instance = self.instance.as_ref().map_or(0, |i| i.held_bytes());
        let shadow = self.shadow.as_ref().map_or(0, |(_, s)| {
            (s.memory.len() + s.globals.len() * std::mem::size_of::<crate::snapshot::GlobalValue>() + s.host.len()) as u64
        });
        instance.saturating_add(shadow)
    }
}

impl ActorState {
    /// The module its state is of, if it holds any (its live instance, else its shadow).
    pub fn state_digest(&self) -> Option<crate::digest::Digest> {
        self.instance.as_ref().map(|i| i.digest).or_else(|| self.shadow.as_ref().map(|(d, _)| *d))
    }

    /// `INVALID_ARGUMENT` if it holds state made under another ABI than `abi` (its state is
    /// kept): a call forcing another ran the kept instance's old entry and reset the actor, or,
    /// restored from its last good state, ran it under the other ABI (review AT3, AU1).
    pub fn check_abi(&self, abi: crate::abi::Abi, name: &str) -> Result<(), crate::error::ExecError> {
        match self.abi.filter(|a| *a != abi && (self.instance.is_some() || self.shadow.is_some())) {
            Some(made) => Err(crate::error::ExecError::InvalidArgument(format!(
                "actor of {name:?} holds state of the {} ABI (made or restored under it); the {} ABI cannot run on it (dropActor to change)",
                made.name(),
                abi.name(),
            ))),
            None => Ok(()),
        }
    }

    /// `SNAPSHOT_MISMATCH` if it holds state of another module than `digest` (its state is kept).
    pub fn check_module(&self, digest: &crate::digest::Digest) -> Result<(), crate::error::ExecError> {
        match self.state_digest().filter(|d| d != digest) {
            Some(other) => Err(crate::error::ExecError::SnapshotMismatch {
                expected: crate::digest::hex(digest),
                actual: crate::digest::hex(&other),
            }),
            None => Ok(()),
        }
    }
}

pub struct ActorSlot {
    /// Its key in the executor's actors (to leave them when it ends up holding nothing).
    key: ActorKey,
    /// It holds state (`!ActorState::is_empty` when its last call ended): it counts toward
    /// `maxActors` (`Shared::holding`). Changed under the LRU's lock only.
    holds: AtomicBool,
    state: Arc<tokio::sync::Mutex<ActorState>>,
    /// Its executor's count of the memory its actors hold (`maxActorMemoryMB`).
    memory: Arc<AtomicU64>,
    /// Set by `dropActor` on a busy actor: its instance goes when the call holding the slot
    /// ends, or, set after that call let the slot go, as the next call takes it (`Held::reset_before`).
    reset: AtomicBool,
    /// When a call last finished on it (ms since the process's epoch), for LRU eviction.
    last_used: AtomicU64,
    /// A call has ended on it since its fiber stack's pages were last given back.
    stack_resident: AtomicBool,
    /// Its fiber stack's resident bytes as counted in its charge (measured as its last call
    /// ended), or `stacks::UNMEASURED` (see `stacks`). Changed under the actor's lock.
    stack: AtomicU64,
    /// Its executor's count of actors whose stacks are unmeasured (`Shared::unmeasured`).
    unmeasured: Arc<AtomicU64>,
    /// Set while the last place taken in its line is a `dropActor`'s: that drop's flag, which the
    /// next drop sets if it comes right behind (see `drop_ticket`).
    last_drop: std::sync::Mutex<Option<Arc<AtomicBool>>>,
}

impl ActorSlot {
    /// Its actor holds nothing now (evicted, dropped): its count goes.
    fn uncharge(&self, st: &mut ActorState) {
        let charged = std::mem::take(&mut st.charged);
        self.memory.fetch_sub(charged, Ordering::AcqRel);
    }

    /// Drops its instance and its shadow (an eviction), and their count.
    fn forget_state(&self, st: &mut ActorState) {
        st.instance = None;
        st.shadow = None;
        self.stack_gone();
        self.uncharge(st);
    }
}

/// A call's place in an actor's line, taken when the call is made; awaiting it gives the slot.
pub type Ticket = Pin<Box<dyn Future<Output = Held> + Send>>;

/// The slot, held by one call.
pub struct Held {
    /// Released in `drop` before the actor is forgotten (see there).
    pub guard: std::mem::ManuallyDrop<OwnedMutexGuard<ActorState>>,
    slot: Arc<ActorSlot>,
    /// The executor's actors, to evict down to `maxActors` when this call ends (only when more
    /// were held than that, which a burst of calls on new actors leaves).
    shared: Weak<Shared>,
    /// A `dropActor` came after the last holder let the slot go and before this call took it:
    /// the call starts fresh. One that comes while this call holds the slot applies when it ends
    /// (`Drop`): taken at the start of the call, it had the call start fresh and keep its state,
    /// the drop undone (review AY2: 38 rounds of 500 saw a call made before the drop survive it).
    reset_before: bool,
    /// The cap its call's instance asks as it grows (`memory_cap`): what it admitted counts until
    /// the actor's memory is counted as this holder lets it go.
    caps: Option<Arc<MemoryCap>>,
}

impl Held {
    /// Whether a `dropActor` made before this call took its place asked the actor to start over;
    /// clears the request.
    fn take_reset(&mut self) -> bool {
        std::mem::take(&mut self.reset_before)
    }

    /// Applies a `dropActor` made before this holder took the slot: the actor starts over (its
    /// stored version read again). Every holder does so before it looks at the state: a
    /// `snapshotActor` had taken the dropped state, and a `restoreActor`'s instance had gone when
    /// it let the slot go, the restore lost though it succeeded (review AZ1).
    pub fn apply_reset(&mut self) {
        if self.take_reset() {
            self.guard.instance = None;
            self.guard.shadow = None;
            self.guard.persisted = None;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slot.last_used.store(now_ms(), Ordering::Relaxed);
        // A drop before this call (not taken: the call failed before it ran), or during it.
        if std::mem::take(&mut self.reset_before) | self.slot.reset.swap(false, Ordering::AcqRel) {
            // `persisted` stays: the stored version that `dropActor`'s delete, next in line,
            // removes alone (a call next in line loads the actor again, which sets it).
            self.guard.instance = None;
            self.guard.shadow = None;
        }
        let shared = self.shared.upgrade();
        // Its call's growth counted apart goes, as what it holds is counted (right below).
        if let Some(cap) = self.caps.take() {
            cap.release();
        }
        // What the actor holds now counts against its executor's `maxActorMemoryMB`: with its
        // fiber stack's pages when they are measured (`stacks`).
        let stack = self.slot.stack_after_call(&self.guard, shared.as_deref());
        let now = self.guard.held_bytes().saturating_add(stack);
        let before = std::mem::replace(&mut self.guard.charged, now);
        let mut total = if now >= before {
            self.slot.memory.fetch_add(now - before, Ordering::AcqRel) + (now - before)
        } else {
            self.slot.memory.fetch_sub(before - now, Ordering::AcqRel) - (before - now)
        };
        if shared.as_ref().is_some_and(|s| total > s.max_memory) {
            total -= self.slot.release_own_stack(&mut self.guard).min(total);
        }
        let now = self.guard.charged;
        // Still under the actor's lock: the sweeper clears the flag under it too.
        if self.guard.instance.is_some() && !self.slot.stack_resident.swap(true, Ordering::AcqRel) {
            crate::fiber_stacks::wake_sweeper();
        }
        let empty = self.guard.is_empty();
        if let Some(shared) = &shared {
            shared.count(&self.slot, !empty);
            if total > shared.max_memory {
                shared.trim_memory(&self.slot, now);
            }
        }
        // SAFETY: dropped once, here; never used after (`drop` ends below).
        unsafe { std::mem::ManuallyDrop::drop(&mut self.guard) };
        // An actor left holding nothing is forgotten once its lock is free: a call cancelled in
        // line while this one ended looks again then (`InLine`), and whichever looks last finds
        // nobody else wanting it (follow-up reviews AB).
        if let (true, Some(shared)) = (empty, shared) {
            shared.forget_if_empty(&self.slot, 2);
        }
    }
}

/// A call's place in line until it holds the slot: dropped before then (its call cancelled or
/// timed out in line), the slot is settled as a call's end settles it, should it hold nothing
/// and nobody else want it (review AB: a first call that failed while the next in line was
/// cancelled left an empty actor behind, and enough of them evicted the live ones).
struct InLine {
    slot: Arc<ActorSlot>,
    shared: Weak<Shared>,
    /// Still in line (cleared once the slot is held).
    armed: bool,
}

impl Drop for InLine {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade().filter(|_| self.armed) {
            shared.forget_if_empty(&self.slot, 2);
        }
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

struct Shared {
    lru: Mutex<LruCache<ActorKey, Arc<ActorSlot>>>,
    capacity: usize,
    /// The memory its actors hold together (`ActorState::charged`), and its cap.
    memory: Arc<AtomicU64>,
    max_memory: u64,
    /// What calls under way have grown their actors by (admitted by `MemoryCap`), not yet in
    /// `memory`: counted in as each call ends.
    growing: AtomicU64,
    /// How many of its actors hold state (`ActorSlot::holds`): what `capacity` bounds. Actors
    /// in their first call, and those whose first call failed, hold nothing and do not count:
    /// they had evicted actors with state (review AB).
    holding: std::sync::atomic::AtomicUsize,
    /// How many of its actors' fiber stacks are unmeasured: each may hold a whole stack.
    unmeasured: Arc<AtomicU64>,
}

impl Shared {
    fn lru(&self) -> MutexGuard<'_, LruCache<ActorKey, Arc<ActorSlot>>> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn over(&self) -> bool {
        self.holding.load(Ordering::Acquire) > self.capacity
    }

    /// Takes `key` out of the actors (its count with it, if it held state).
    fn pop(&self, lru: &mut LruCache<ActorKey, Arc<ActorSlot>>, key: &ActorKey) {
        if let Some(slot) = lru.pop(key) {
            if slot.holds.swap(false, Ordering::AcqRel) {
                self.holding.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// What an actor's call leaves it (`slot`, holding state or not), counted toward `maxActors`;
    /// past it, the least recently used idle actors go (never `slot`: the most recently used;
    /// its lock is held by the caller, and `trim` only tries the others' locks).
    fn count(&self, slot: &Arc<ActorSlot>, holds: bool) {
        // Nothing changes for an actor that keeps holding state under maxActors: no lock.
        if slot.holds.load(Ordering::Acquire) == holds && !self.over() {
            return;
        }
        let mut lru = self.lru();
        // Not its actors' any more (evicted, dropped): nothing to count.
        if !lru.peek(&slot.key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        if slot.holds.swap(holds, Ordering::AcqRel) != holds {
            if holds {
                self.holding.fetch_add(1, Ordering::AcqRel);
            } else {
                self.holding.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if self.over() {
            self.trim_locked(&mut lru, slot);
        }
    }

    /// Forgets `slot` if it holds nothing and nobody but the LRU and the caller (`refs` references
    /// in all) holds it: no call in line, none running (its lock free). Failing calls on new ids
    /// had evicted live actors, and 50,000 with long keys held 1.7 GB (review AB). Under the
    /// LRU's lock, where places in line are taken, with the actor's lock tried under it (as
    /// `trim` does): nothing can come in between.
    fn forget_if_empty(&self, slot: &Arc<ActorSlot>, refs: usize) {
        let mut lru = self.lru();
        if Arc::strong_count(slot) != refs || !lru.peek(&slot.key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        let Ok(mut state) = slot.state.try_lock() else { return };
        if state.is_empty() {
            // A pristine shadow (a transactional first call's) goes with it, and its charge.
            slot.forget_state(&mut state);
            drop(state);
            self.pop(&mut lru, &slot.key);
        }
    }
}

pub struct Actors {
    shared: Arc<Shared>,
}

/// An executor's actors while it lives (`Actors::downgrade`).
pub struct WeakActors(Weak<Shared>);

impl WeakActors {
    pub fn upgrade(&self) -> Option<Actors> {
        self.0.upgrade().map(|shared| Actors { shared })
    }
}

impl Actors {
    pub fn new(capacity: usize, max_memory: u64) -> Self {
        let shared = Arc::new(Shared {
            lru: Mutex::new(LruCache::unbounded()),
            capacity: capacity.max(1),
            holding: Default::default(),
            memory: Arc::new(AtomicU64::new(0)),
            max_memory,
            growing: AtomicU64::new(0),
            unmeasured: Default::default(),
        });
        let mut reg = registry();
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&shared));
        Actors { shared }
    }

    /// A handle that does not keep these actors alive (a background task's).
    pub fn downgrade(&self) -> WeakActors {
        WeakActors(Arc::downgrade(&self.shared))
    }

    /// Takes a place in the actor's line (creating its slot if it is new). Must be polled once
    /// right away to hold the place; the first poll completes at once when the actor is idle.
    pub fn ticket(&self, key: ActorKey) -> Ticket {
        self.line_up(key, None)
    }

    /// A `dropActor`'s place in the actor's line, and its flag: set once another drop has taken
    /// the place right behind it, with nothing between. That drop deletes all this one would (the
    /// store's state when its turn comes, which nothing in between can have changed), so this one
    /// need not try: N drops queued behind a stuck store (a `file://` lock held elsewhere, 30 s
    /// per attempt) held up `close()` N times 30 s.
    pub fn drop_ticket(&self, key: ActorKey) -> (Ticket, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (self.line_up(key, Some(flag.clone())), flag)
    }

    fn line_up(&self, key: ActorKey, dropping: Option<Arc<AtomicBool>>) -> Ticket {
        let slot = {
            let mut lru = self.shared.lru();
            // The key is cloned (into the slot) only for a new actor.
            let slot = match lru.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Arc::new(ActorSlot {
                        key: key.clone(),
                        holds: AtomicBool::new(false),
                        state: Default::default(),
                        memory: self.shared.memory.clone(),
                        reset: AtomicBool::new(false),
                        last_used: AtomicU64::new(now_ms()),
                        stack_resident: AtomicBool::new(false),
                        stack: AtomicU64::new(0),
                        unmeasured: self.shared.unmeasured.clone(),
                        last_drop: Default::default(),
                    });
                    lru.put(key, slot.clone());
                    slot
                }
            };
            // Under the LRU's lock, as the place in line is (the ticket is polled right after).
            {
                let mut last = slot.last_drop.lock().unwrap_or_else(|p| p.into_inner());
                if let (Some(before), Some(_)) = (last.as_ref(), dropping.as_ref()) {
                    before.store(true, Ordering::Release);
                }
                *last = dropping;
            }
            // Past capacity, the least recently used idle actors are evicted when a call leaves
            // its actor holding state (`Shared::settle`), not here: a new actor whose first call
            // fails holds nothing and goes, and must not have pushed out one that holds state.
            slot
        };
        let state = slot.state.clone();
        let in_line = InLine { slot, shared: Arc::downgrade(&self.shared), armed: true };
        Box::pin(async move {
            let mut in_line = in_line;
            let guard = state.lock_owned().await;
            in_line.armed = false;
            let reset_before = in_line.slot.reset.swap(false, Ordering::AcqRel);
            Held { guard: std::mem::ManuallyDrop::new(guard), slot: in_line.slot.clone(), shared: in_line.shared.clone(), reset_before, caps: None }
        })
    }

    /// Forgets an actor and its state; true if it had an instance or a call, and an idle actor's
    /// stored version (`persisted`). A busy actor's running call finishes first, and the calls
    /// queued behind it start fresh (its `persisted` stays for the one next in line).
    pub fn remove(&self, key: &ActorKey) -> (bool, Option<crate::actor_store::Version>) {
        let mut lru = self.shared.lru();
        let Some(slot) = lru.peek(key).cloned() else { return (false, None) };
        // Set before the look: a holder that lets the slot go in between leaves it to the next
        // call to take (as it takes the slot), never to the end of that call.
        slot.reset.store(true, Ordering::Release);
        let idle = slot.state.try_lock().map(|mut st| {
            slot.reset.store(false, Ordering::Release);
            st.shadow = None;
            let had = st.instance.take().is_some();
            slot.stack_gone();
            slot.uncharge(&mut st);
            (had, st.persisted.take())
        });
        match idle {
            Ok(removed) => {
                self.shared.pop(&mut lru, key);
                removed
            }
            Err(_) => (true, None),
        }
    }

    /// Drops every idle actor's instance (an executor closing).
    pub fn clear(&self) {
        let mut lru = self.shared.lru();
        let idle: Vec<ActorKey> =
            lru.iter().filter(|(_, s)| Arc::strong_count(s) == 1).map(|(k, _)| k.clone()).collect();
        for k in idle {
            if lru.peek(&k).is_some_and(|s| evict_if_idle(s)) {
                self.shared.pop(&mut lru, &k);
            }
        }
        for (_, s) in lru.iter() {
            s.reset.store(true, Ordering::Release);
        }
    }

    pub fn len(&self) -> usize {
        self.shared.lru().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
