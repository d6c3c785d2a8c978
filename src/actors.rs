//! Stateful actors: one live instance per (activity, actor id), kept between calls in a bounded
//! LRU so guest globals persist. A slot's lock serializes the calls of one actor.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;

use crate::instance::GuestInstance;
use crate::modules::DefKey;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActorKey {
    pub def: DefKey,
    pub actor_id: String,
}

/// An actor's instance; `None` until its first call, or after a call left it unusable.
pub type ActorSlot = Arc<tokio::sync::Mutex<Option<GuestInstance>>>;

pub struct Actors {
    lru: Mutex<LruCache<ActorKey, ActorSlot>>,
}

impl Actors {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Actors { lru: Mutex::new(LruCache::new(capacity)) }
    }

    fn lru(&self) -> MutexGuard<'_, LruCache<ActorKey, ActorSlot>> {
        self.lru.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The actor's slot, created empty if it is new. Creating one past capacity evicts the
    /// least recently used actor (a call still running on it finishes, then its instance goes).
    pub fn slot(&self, key: ActorKey) -> ActorSlot {
        self.lru().get_or_insert(key, Default::default).clone()
    }

    /// Forgets an actor; true if it existed.
    pub fn remove(&self, key: &ActorKey) -> bool {
        self.lru().pop(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.lru().len()
    }
}
