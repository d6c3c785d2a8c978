//! The compiled-module cache's state: its slots (an LRU bounded by count and by bytes), the
//! index from a definition to its module's digest, its counters and its generation (`modules`).

use std::collections::HashMap;
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
    /// The activity names each cached module was loaded for, for `clear(name)`: an index entry may
    /// have been evicted while its module stays, and a pinned module loaded from its artifact has
    /// none (it is found by digest).
    pub(crate) names: HashMap<Digest, Names>,
    pub(crate) stats: CacheStats,
    max_bytes: usize,
    /// Bumped by every `clear`.
    pub(crate) generation: u64,
    /// The generation of the last `clear` of everything.
    cleared_all: u64,
    /// The last `clear(name)`s, with their generations (at most `CLEARS_KEPT`), and the newest
    /// generation of those let go: a load that began before it cannot tell whether its name was
    /// cleared, and counts as cleared.
    cleared_names: std::collections::VecDeque<(String, u64)>,
    forgotten_clears: u64,
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
            names: HashMap::new(),
            stats: CacheStats::default(),
            max_bytes,
            generation: 0,
            cleared_all: 0,
            cleared_names: Default::default(),
            forgotten_clears: 0,
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
            self.note_name(m.digest, &key.name);
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

    /// Records a `clear` (of everything, or of the activity `name`).
    pub(crate) fn note_clear(&mut self, name: Option<&str>) {
        self.generation += 1;
        match name {
            None => {
                self.cleared_all = self.generation;
                self.cleared_names.clear();
            }
            Some(name) => {
                self.cleared_names.push_back((name.to_owned(), self.generation));
                while self.cleared_names.len() > CLEARS_KEPT {
                    if let Some((_, g)) = self.cleared_names.pop_front() {
                        self.forgotten_clears = g;
                    }
                }
            }
        }
    }

    /// Whether a load of the activity `name` (`None`: of no name) that began at generation `since`
    /// may still cache what it loaded: no `clear` of everything since, nor of `name`. A
    /// `clear(name)` of another activity does not void it (it made every load in flight, tier-up
    /// and pooled copy of all the others give up: their modules stayed on baseline or unpooled code).
    pub(crate) fn unchanged_for(&self, since: u64, name: Option<&str>) -> bool {
        if self.generation == since {
            return true;
        }
        let Some(name) = name else { return false };
        self.cleared_all <= since
            && self.forgotten_clears <= since
            && !self.cleared_names.iter().any(|(n, g)| *g > since && n == name)
    }

    /// Notes that the module `digest` was loaded for the activity `name`.
    pub(crate) fn note_name(&mut self, digest: Digest, name: &str) {
        self.names.entry(digest).or_default().add(name);
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

    /// Past a bound, evicts the least recently used (but never the last module). One bound is the
    /// process's: near `max_live_modules` compiled modules (`crowded`), each insert evicts this cache's least
    /// recently used, so that the next load finds room unless other executors (or calls) hold
    /// them all.
    fn evict_over_bounds(&mut self) {
        let mut gone = Vec::new();
        // One for the process's bound (what goes may still be held elsewhere: no more for it).
        let mut for_process = crate::compiled_module::crowded();
        while (self.stats.code_bytes > self.max_bytes || self.lru.len() > self.capacity || for_process) && self.lru.len() > 1 {
            for_process = false;
            match self.lru.pop_lru() {
                Some(((digest, _), old)) => {
                    self.stats.code_bytes -= old.code_bytes;
                    gone.push(digest);
                }
                None => break,
            }
        }
        // Only when something went: a walk of the index at every insert made loads of new names
        // cost O(index) each (review: 3.2 ms a load at 120,000 entries).
        self.forget_gone(&gone);
    }

    /// Drops the index entries and names of these modules, if no longer held.
    fn forget_gone(&mut self, digests: &[Digest]) {
        let lru = &self.lru;
        let held = |d: &Digest| lru.contains(&(*d, EngineKind::Plain)) || lru.contains(&(*d, EngineKind::Metered));
        let gone: Vec<Digest> = digests.iter().filter(|d| !held(d)).copied().collect();
        if gone.is_empty() {
            return;
        }
        retain_index(&mut self.index, |_, d| !gone.contains(d));
        for d in &gone {
            self.names.remove(d);
        }
    }

    pub(crate) fn remove(&mut self, slot: &Slot) {
        if let Some(old) = self.lru.pop(slot) {
            self.stats.code_bytes -= old.code_bytes;
            self.forget_gone(&[slot.0]);
        }
    }

    /// Forgets every module and name.
    pub(crate) fn clear_all(&mut self) {
        self.lru.clear();
        self.index.clear();
        self.names.clear();
        self.stats.code_bytes = 0;
    }

    /// Drops the modules loaded for the activity `name` only, and its index entries: a module
    /// another activity was loaded for too stays (so does one past `Names`' count, unless known to be
    /// `name`'s alone).
    pub(crate) fn clear_name(&mut self, name: &str) {
        retain_index(&mut self.index, |k, _| k.name != name);
        let dropped: Vec<Digest> = self.names.iter_mut().filter_map(|(d, n)| n.forget(name).then_some(*d)).collect();
        for d in dropped {
            self.remove(&(d, EngineKind::Plain));
            self.remove(&(d, EngineKind::Metered));
        }
    }
}

/// The activity names a module was loaded for: at most `NAMES_KEPT` (review K: 20,000 names of
/// the same bytes), then only that there were more.
#[derive(Default)]
pub(crate) struct Names {
    list: Vec<String>,
    more: bool,
}

const NAMES_KEPT: usize = 16;
/// `clear(name)`s remembered for the loads in flight (`State::unchanged_for`).
const CLEARS_KEPT: usize = 64;

impl Names {
    fn add(&mut self, name: &str) {
        if self.list.iter().any(|n| n == name) {
            return;
        }
        if self.list.len() < NAMES_KEPT {
            self.list.push(name.to_owned());
        } else {
            self.more = true;
        }
    }

    /// Forgets `name`; whether it was the module's last known name (its module may go).
    fn forget(&mut self, name: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|n| n != name);
        self.list.len() < before && self.list.is_empty() && !self.more
    }
}

/// Keeps the index entries for which `keep` holds (in their order of use).
pub(crate) fn retain_index(index: &mut LruCache<DefKey, Digest>, keep: impl Fn(&DefKey, &Digest) -> bool) {
    let gone: Vec<DefKey> = index.iter().filter(|(k, d)| !keep(k, d)).map(|(k, _)| k.clone()).collect();
    for k in gone {
        index.pop(&k);
    }
}
