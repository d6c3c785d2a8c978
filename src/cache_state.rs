//! The compiled-module cache's state: its slots (an LRU bounded by count and by bytes), the
//! index from a definition to its module's digest, its counters and its generation (`modules`).

use std::num::NonZeroUsize;
use std::sync::{Arc, Weak};

use lru::LruCache;

use crate::digest::Digest;
use crate::engine::EngineKind;
use crate::modules::{CacheStats, CompiledModule, DefKey};
use crate::shape::CompileLimits;

/// A cache slot: the content and the engine asked for (`Plain` or `Metered`; the module in it
/// may be for that engine's baseline twin, or, for `Plain`, its unpooled twin: `unpooled_first`).
pub(crate) type Slot = (Digest, EngineKind);
pub(crate) struct State {
    pub(crate) lru: LruCache<Slot, Arc<CompiledModule>>,
    capacity: usize,
    /// Least recently used first: many one-off definitions push out one another, not those in use
    /// (review L: with an arbitrary entry evicted, 20 definitions in use were downloaded again
    /// 16,118 times among 3,000 one-off names).
    pub(crate) index: LruCache<DefKey, Digest>,
    pub(crate) stats: CacheStats,
    max_bytes: usize,
    /// Bumped by every `clear`.
    pub(crate) generation: u64,
    /// Code is shared with the process's other executors (`shared_code`).
    pub(crate) share: bool,
    /// The executor's compile limits, which code it shares was checked against.
    pub(crate) compile_limits: CompileLimits,
    /// When the `cacheDir` artifacts of the modules held here were last marked used
    /// (`ModuleCache::count_hit`).
    pub(crate) refreshed: std::time::Instant,
}

impl State {
    pub(crate) fn new(capacity: NonZeroUsize, max_bytes: usize, share: bool, compile_limits: CompileLimits) -> State {
        State {
            // Unbounded map, bounded by `insert`: capacity is not allocated up front.
            lru: LruCache::unbounded(),
            capacity: capacity.get(),
            index: LruCache::unbounded(),
            stats: CacheStats::default(),
            max_bytes,
            generation: 0,
            share,
            compile_limits,
            refreshed: std::time::Instant::now(),
        }
    }

    pub(crate) fn insert(&mut self, key: Option<&DefKey>, slot: Slot, m: Arc<CompiledModule>) {
        if let Some(key) = key {
            // Bounded: many definitions naming the same bytes each kept an entry while those
            // stayed cached (review K: 20,000 names of 16 KiB, +359 MiB with one module). A
            // definition whose entry went finds its module again by digest after its download.
            self.index.put(key.clone(), m.digest);
            while self.index.len() > self.max_index() {
                self.index.pop_lru();
            }
        }
        self.stats.code_bytes += m.code_bytes;
        if self.share {
            crate::shared_code::offer(slot.1, &self.compile_limits, &m);
        }
        if let Some(old) = self.lru.put(slot, m) {
            self.stats.code_bytes -= old.code_bytes;
        }
        self.evict_over_bounds();
    }

    /// How many definitions the index names modules for: a few per cached module.
    pub(crate) fn max_index(&self) -> usize {
        self.capacity.saturating_mul(4).max(1024)
    }

    /// Newer code of a module (its tier-up, its pooled copy) in the slot where `old` is, if it is
    /// still there; whether the new code is in the cache after (larger code may push the cache
    /// past its byte bound, and the slot out with it). Not a use: the slot keeps its place in the
    /// eviction order (a tier-up landing must not keep a module that calls stopped using, and
    /// evict one they use).
    pub(crate) fn swap(&mut self, slot: &Slot, old: &Weak<CompiledModule>, new: Arc<CompiledModule>) -> bool {
        if !self.holds(slot, old) {
            return false;
        }
        let Some(held) = self.lru.peek_mut(slot) else { return false };
        let (added, removed) = (new.code_bytes, held.code_bytes);
        if self.share {
            crate::shared_code::offer(slot.1, &self.compile_limits, &new);
        }
        *held = new;
        self.stats.code_bytes = self.stats.code_bytes + added - removed;
        self.evict_over_bounds();
        self.lru.contains(slot)
    }

    /// Whether `slot` holds `module` (not looked up as a use).
    pub(crate) fn holds(&self, slot: &Slot, module: &Weak<CompiledModule>) -> bool {
        self.lru.peek(slot).is_some_and(|m| module.upgrade().is_some_and(|o| Arc::ptr_eq(m, &o)))
    }

    /// Past a bound, evicts the least recently used (but never the last module).
    fn evict_over_bounds(&mut self) {
        while (self.stats.code_bytes > self.max_bytes || self.lru.len() > self.capacity) && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => self.stats.code_bytes -= old.code_bytes,
                None => break,
            }
        }
        let lru = &self.lru;
        retain_index(&mut self.index, |_, d| lru.contains(&(*d, EngineKind::Plain)) || lru.contains(&(*d, EngineKind::Metered)));
    }

    pub(crate) fn remove(&mut self, slot: &Slot) {
        if let Some(old) = self.lru.pop(slot) {
            self.stats.code_bytes -= old.code_bytes;
        }
    }
}

/// Keeps the index entries for which `keep` holds (in their order of use).
pub(crate) fn retain_index(index: &mut LruCache<DefKey, Digest>, keep: impl Fn(&DefKey, &Digest) -> bool) {
    let gone: Vec<DefKey> = index.iter().filter(|(k, d)| !keep(k, d)).map(|(k, _)| k.clone()).collect();
    for k in gone {
        index.pop(&k);
    }
}
