//! What tests look at in an executor's actors (idle ones only: a busy actor's lock is held).

use std::sync::atomic::Ordering;

use super::{ActorKey, Actors};

impl Actors {
    /// Whether an idle actor's instance records its fiber stack (none: busy, or no instance).
    pub fn stack_watched(&self, key: &ActorKey) -> Option<bool> {
        let lru = self.shared.lru();
        let st = lru.peek(key)?.state.try_lock().ok()?;
        st.instance.as_ref().map(|i| i.stack_watched())
    }

    /// A `dropActor` landing between two holders: the slot is let go and not yet taken.
    pub fn mark_reset(&self, key: &ActorKey) {
        if let Some(slot) = self.shared.lru().peek(key) {
            slot.reset.store(true, Ordering::Release);
        }
    }

    /// The last heartbeat an idle actor's instance holds (none: busy, or no instance).
    pub fn idle_heartbeat(&self, key: &ActorKey) -> Option<Option<String>> {
        let lru = self.shared.lru();
        let st = lru.peek(key)?.state.try_lock().ok()?;
        st.instance.as_ref().map(|i| i.last_heartbeat())
    }

    /// The engine an idle actor's instance runs on (none: busy, or no instance).
    pub fn instance_kind(&self, key: &ActorKey) -> Option<crate::engine::EngineKind> {
        let lru = self.shared.lru();
        let st = lru.peek(key)?.state.try_lock().ok()?;
        st.instance.as_ref().map(|i| i.kind)
    }

    /// What calls under way have grown their actors by, not yet in `held_memory`.
    pub fn growing_memory(&self) -> u64 {
        self.shared.growing.load(Ordering::Acquire)
    }

    /// What its actors' memory counts now (`maxActorMemoryMB`).
    pub fn held_memory(&self) -> u64 {
        self.shared.memory.load(Ordering::Acquire)
    }

    /// The resident bytes of its idle actors' stacks now, and how many idle actors have an
    /// instance.
    pub fn stacks_resident(&self) -> (u64, usize) {
        let lru = self.shared.lru();
        let mut total = (0, 0);
        for (_, slot) in lru.iter() {
            if let Ok(st) = slot.state.try_lock() {
                if let Some(i) = st.instance.as_ref() {
                    total = (total.0 + i.stack_resident_bytes(), total.1 + 1);
                }
            }
        }
        total
    }
}
