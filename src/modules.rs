//! The compiled-module cache: an LRU of compiled modules (with their `InstancePre`) keyed by the
//! sha256 of the module bytes and the engine asked for, bounded by count and by bytes; an index
//! from a definition (name, version, blob path) to its digest; one load in flight per
//! (definition, engine, pin); one compile in flight per (digest, engine, compile limits), which outlives the
//! callers that wait for it and is bounded in time for them; behind it the code the process's
//! other executors hold (`shared_code`) and the artifact tiers.
//!
//! A `clear` wins over loads in flight: it bumps a generation, and a load that started before
//! a clear of everything or of its own activity serves its own callers but is not cached
//! (`State::unchanged_for`); `clear(name)` finds the modules loaded for `name` by the names noted
//! with each module (`State::names`), not through the bounded index alone.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::artifacts::ArtifactCache;
use crate::artifacts::Checked;
use crate::digest::{hex, sha256, Digest};
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::module_artifacts;
use crate::shape::CompileLimits;
use crate::store::BlobSource;
pub use crate::compile::compile;
use crate::compile::{compile_job, Urgency};
pub(crate) use crate::compiled_module::prepare;
pub use crate::compiled_module::{Code, Compiled, CompiledModule};

/// What identifies an activity's module before its bytes are known. Shared: a call's key is
/// cloned into its actor's place in line, its module lookup and its host calls, and an actor
/// handle makes its key once (each clone of three strings was three allocations per call).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DefKey(Arc<DefKeyParts>);

/// The parts of a `DefKey` (read through it: `key.name`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DefKeyParts {
    pub name: String,
    pub version: String,
    pub path: String,
}

impl DefKey {
    pub fn new(name: String, version: String, path: String) -> DefKey {
        DefKey(Arc::new(DefKeyParts { name, version, path }))
    }
}

impl std::ops::Deref for DefKey {
    type Target = DefKeyParts;
    fn deref(&self) -> &DefKeyParts {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Modules held now.
    pub modules: usize,
    /// Calls served without loading.
    pub hits: u64,
    /// Loads started (a download, then a compile unless the same bytes were compiled already).
    pub misses: u64,
    /// Modules compiled.
    pub compiles: u64,
    /// Modules loaded from a compiled artifact (disk or shared store) instead of compiling.
    pub artifact_hits: u64,
    /// Modules whose optimized code replaced their baseline code after the first calls.
    pub tier_ups: u64,
    /// Modules loaded unpooled from an artifact before the instance pool was built, whose pooled
    /// copy then took their place (`unpooled_first`).
    pub pooled_later: u64,
    /// Modules taken from another executor of the process that held the same code (`shareCode`).
    pub shared_hits: u64,
    /// Artifact loads started from a definition's hint while its download ran (`artifact_hints`),
    /// and kept: the bytes were the hinted module. Counted in `artifact_hits` too.
    pub hinted: u64,
    /// Compiled code held, in bytes.
    pub code_bytes: usize,
}

/// Bounds on loading a module (executor options).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadLimits {
    /// How long a download may take (`BLOB_UNAVAILABLE` past it).
    pub load_timeout: Duration,
    /// How long callers wait for a compile (`COMPILE_LIMIT` past it).
    pub compile_timeout: Duration,
    pub compile: CompileLimits,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            load_timeout: Duration::from_secs(60),
            compile_timeout: Duration::from_secs(60),
            compile: CompileLimits::default(),
        }
    }
}

pub(crate) use crate::cache_state::State;
/// A load in flight: its definition, engine, pin and whether baseline code will do (a load
/// wanting optimized code must not join one that gives baseline code).
type Flight = (DefKey, EngineKind, Option<Digest>, bool);
pub(crate) type Loaded = Result<Arc<CompiledModule>, ExecError>;
type Loading = Arc<InFlight>;

#[path = "modules_flight.rs"]
mod flight;
use flight::InFlight;

/// A caller's hold on a load's flight: the only reference to its cell the caller has. The last
/// caller to leave (finished, or dropped midway) takes the flight out of the map, unless a later
/// flight has taken its place.
struct LeaveFlight<'a> {
    loading: &'a Mutex<HashMap<Flight, Loading>>,
    flight: Flight,
    cell: Option<Loading>,
}

impl Drop for LeaveFlight<'_> {
    fn drop(&mut self) {
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        // Counted and released under the lock: of two callers leaving at once, the second sees
        // the first gone.
        if let Some(cell) = self.cell.take() {
            let mine = loading.get(&self.flight).is_some_and(|c| Arc::ptr_eq(c, &cell));
            // Held by the map and by this caller alone.
            if mine && Arc::strong_count(&cell) == 2 {
                loading.remove(&self.flight);
            }
            drop(cell);
        }
    }
}

pub struct ModuleCache {
    pub(crate) state: Arc<Mutex<State>>,
    loading: Mutex<HashMap<Flight, Loading>>,
    /// Definitions whose last download failed: no guessed artifact for them until one succeeds
    /// (review H: callers retrying through a store's outage each had a 37 MB artifact loaded).
    /// Held as keyed hashes of their `DefKey` (review K: 1,024 failed paths of 256 KiB each held
    /// 265 MiB); a collision only costs a definition its guess.
    unfetched: Mutex<std::collections::HashSet<u64>>,
    unfetched_keys: std::collections::hash_map::RandomState,
    pub(crate) artifacts: ArtifactCache,
    pub(crate) limits: LoadLimits,
    /// Compile new modules with the baseline compiler first, the optimizing one in the background.
    tier_up: bool,
    /// Whether the instance pool is built (else a `Plain` artifact loads unpooled first; tests
    /// replace this to take that path in a process whose pool exists).
    pub(crate) pool_ready: fn() -> bool,
    /// Whose turn its compiles take (`compile_turns`).
    pub(crate) compile_owner: crate::compile_turns::Owner,
    /// The background fetches of pinned modules' bytes for their tier-up (`tier_up_fetching`),
    /// at most one per module and engine, stopped when the whole cache is cleared or closed.
    pub(crate) fetches: Mutex<HashMap<(Digest, EngineKind), tokio::task::AbortHandle>>,
}

impl ModuleCache {
    pub fn new(capacity: NonZeroUsize, max_bytes: usize, artifacts: ArtifactCache, limits: LoadLimits, tier_up: bool, share: bool) -> Self {
        ModuleCache {
            state: Arc::new(Mutex::new(State::new(capacity, max_bytes, share, limits.compile))),
            loading: Mutex::new(HashMap::new()),
            unfetched: Mutex::new(Default::default()),
            unfetched_keys: Default::default(),
            artifacts,
            limits,
            tier_up,
            pool_ready: || crate::engine::built(EngineKind::Plain),
            compile_owner: crate::compile_turns::new_owner(),
            fetches: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every panic-free path; recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cached module: by the pinned digest when there is one (content-addressed, and the
    /// definition's index entry is left alone), else by the definition's index entry. Counts no
    /// hit (the caller counts it once the call starts).
    pub fn peek(&self, key: &DefKey, kind: EngineKind, pinned: Option<&Digest>) -> Option<Arc<CompiledModule>> {
        let mut st = self.state();
        let digest = match pinned {
            Some(d) => *d,
            None => *st.index.get(key)?,
        };
        st.lru.get(&(digest, kind)).cloned()
    }

    /// `peek`, and without tier-up only optimized code (the cache may hold baseline code).
    fn peek_tier(&self, key: &DefKey, kind: EngineKind, pinned: Option<&Digest>, tier_up: bool) -> Option<Arc<CompiledModule>> {
        self.peek(key, kind, pinned).filter(|m| tier_up || !m.kind.baseline())
    }

    /// Counts a hit; with a `cacheDir`, every `REFRESH_EVERY` also marks the artifacts of the
    /// modules held here, and the hints of the definitions that name them, used
    /// (`cache_dir_bound`): a module served from memory for days would otherwise see its artifact
    /// pruned as unused, and the next process compile it again (or, its hint gone, download
    /// before it loads the artifact).
    pub fn count_hit(&self) {
        let mut st = self.state();
        st.stats.hits += 1;
        if self.artifacts.dir.is_some() && st.refreshed.elapsed() >= crate::cache_dir_bound::REFRESH_EVERY {
            st.refreshed = std::time::Instant::now();
            let held: Vec<(Digest, EngineKind)> = st.lru.iter().map(|(_, m)| (m.digest, m.kind)).collect();
            let named: Vec<DefKey> = st.index.iter().map(|(k, _)| k.clone()).collect();
            drop(st);
            self.artifacts.refresh(held, named);
        }
    }

    /// The compiled module of a definition: from the cache, or downloaded and compiled once no
    /// matter how many calls ask at the same time. A failed load is not cached. With a pin, the
    /// module returned is always the pinned one.
    pub async fn get_or_load(
        &self,
        key: &DefKey,
        kind: EngineKind,
        pinned: Option<&Digest>,
        source: &Arc<dyn BlobSource>,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        self.get_or_load_for(key, kind, pinned, source, false).await
    }

    /// The same for a call: a deterministic definition's run on optimized code only (review BB4:
    /// baseline and optimized code differ where WebAssembly lets them, the NaN scalar min/max
    /// return of two NaNs and the depth a stack overflows at, so a replay's result hung on whether
    /// a worker's module had tiered up).
    pub async fn get_or_load_for(
        &self,
        key: &DefKey,
        kind: EngineKind,
        pinned: Option<&Digest>,
        source: &Arc<dyn BlobSource>,
        deterministic: bool,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        self.get_or_load_tiered(key, kind, pinned, source, self.tier_up && !deterministic).await
    }

    /// The same, with tier-up or without (`precompile`, deterministic calls: optimized code only,
    /// also where the cache holds the baseline code of a tier-up under way).
    pub async fn get_or_load_tiered(
        &self,
        key: &DefKey,
        kind: EngineKind,
        pinned: Option<&Digest>,
        source: &Arc<dyn BlobSource>,
        tier_up: bool,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        let module = match self.peek_tier(key, kind, pinned, tier_up) {
            Some(m) => {
                self.count_hit();
                m
            }
            // Boxed: a miss is rare, and its state would otherwise enlarge every call's future.
            None => Box::pin(self.load_once(key, kind, pinned, source, tier_up)).await?,
        };
        if let Some(expected) = pinned {
            if module.digest != *expected {
                return Err(ExecError::IntegrityMismatch {
                    path: key.path.clone(),
                    expected: hex(expected),
                    actual: hex(&module.digest),
                });
            }
        }
        Ok(module)
    }

    async fn load_once(
        &self,
        key: &DefKey,
        kind: EngineKind,
        pinned: Option<&Digest>,
        source: &Arc<dyn BlobSource>,
        tier_up: bool,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        let flight = (key.clone(), kind, pinned.copied(), tier_up);
        let cell = {
            let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
            loading.entry(flight.clone()).or_default().clone()
        };
        // The flight leaves the map when its last caller leaves, finished or dropped midway (a
        // call cancelled or past its deadline; review K: 12,000 aborted loads of distinct names
        // kept their entries, +237 MiB). Not before: callers coming meanwhile join it (review L:
        // removed when any caller was cancelled, each later caller downloaded and compiled again).
        let leave = LeaveFlight { loading: &self.loading, flight, cell: Some(cell) };
        let Some(cell) = leave.cell.as_ref() else { return Err(ExecError::internal("a load without its flight")) };
        let mut led = false;
        let result = cell
            .cell
            .get_or_init(|| {
                led = true;
                async move {
                    // A load that finished between this caller's look in the cache and here (it
                    // left no flight to join): no second load.
                    if let Some(m) = self.peek_tier(key, kind, pinned, tier_up) {
                        self.count_hit();
                        return Ok(m);
                    }
                    self.load(key, kind, pinned, source, tier_up, cell).await
                }
            })
            .await
            .clone();
        if !led {
            self.state().stats.hits += 1;
        }
        result
    }

    async fn load(
        &self,
        key: &DefKey,
        kind: EngineKind,
        pinned: Option<&Digest>,
        source: &Arc<dyn BlobSource>,
        tier_up: bool,
        flight: &InFlight,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        let generation = {
            let mut st = self.state();
            st.stats.misses += 1;
            st.generation
        };
        // The artifact store lookups of this load, all together, take at most `loadTimeoutMs`.
        let mut lookups = self.artifacts.lookup_time();
        // Pinned and compiled already: no download. The pin names the code, and an artifact under
        // that digest (authenticated by the artifact key) is that code compiled, so what runs
        // is what the pin allows, whatever the blob store holds now. With tier-up, a baseline
        // artifact too (the process that compiled the module ended before its optimized code
        // was stored, as short-lived workers and test files do): the bytes its tier-up needs
        // are fetched in the background (review AY1: the call downloaded first, and failed with
        // a store that was down). `precompile` (no tier-up) wants the optimized code, compiled.
        let baseline = kind.with_baseline(true);
        let probed: &[EngineKind] = if tier_up && baseline != kind { &[kind, baseline] } else { &[kind] };
        if let Some(&digest) = pinned {
            if let Some((compiled, checked)) = self.load_artifact(digest, probed, &mut lookups).await {
                let mut st = self.state();
                st.stats.artifact_hits += 1;
                // By digest only: the blob store was not asked what the name holds, so unpinned
                // callers of the name still get its own bytes.
                if st.unchanged_for(generation, Some(&key.name)) {
                    st.insert(None, (digest, kind), compiled.clone());
                    st.note_name(digest, &key.name);
                    drop(st);
                    if compiled.kind == EngineKind::PlainUnpooled {
                        self.pool_later(digest, &compiled, checked);
                    }
                    if compiled.kind.baseline() && compiled.kind != kind {
                        self.tier_up_fetching(source.clone(), key.path.clone(), digest, kind, generation, &compiled);
                    }
                }
                return Ok(compiled);
            }
        }
        // With a cacheDir, the artifact of the module this definition named last time loads
        // while the download and its sha256 run; it is kept only if the bytes are that module.
        let (hint, mut guess) = if pinned.is_none() { self.speculate(key, kind).await } else { (None, None) };
        let max = self.limits.compile.max_module_bytes;
        let fetch = flight.download(source, &key.path, max, self.limits.load_timeout);
        let fetched = module_artifacts::beside(fetch, &mut guess).await;
        let bytes = {
            let mut unfetched = self.unfetched.lock().unwrap_or_else(|p| p.into_inner());
            match fetched {
                Ok(bytes) => {
                    unfetched.remove(&self.unfetched_keys.hash_one(key));
                    bytes
                }
                Err(e) => {
                    // Bounded: past 1,024 definitions failing at once, guesses resume for all.
                    if unfetched.len() >= 1024 {
                        unfetched.clear();
                    }
                    unfetched.insert(self.unfetched_keys.hash_one(key));
                    return Err(e);
                }
            }
        };
        if bytes.len() as u64 > max {
            return Err(ExecError::CompileLimit(format!(
                "the module's size in bytes is {}, over the limit of {max} (maxModuleBytes)",
                bytes.len()
            )));
        }
        let digest = sha256(&bytes);
        if let Some(expected) = pinned {
            if *expected != digest {
                return Err(ExecError::IntegrityMismatch {
                    path: key.path.clone(),
                    expected: hex(expected),
                    actual: hex(&digest),
                });
            }
        }
        // Only when it changed (a first load, new bytes): a warm start writes nothing.
        if hint != Some(digest) && pinned.is_none() {
            if let Some(dir) = self.artifacts.dir.clone().filter(|_| self.artifacts.is_enabled()) {
                crate::artifact_hints::write(&self.artifacts, dir, &key.name, &key.version, &key.path, digest).await;
            }
        }
        // A wrong guess stops (dropped here; on an early return above, there).
        let guessed = match guess.filter(|_| hint == Some(digest)) {
            Some(guess) => guess.finish().await,
            None => None,
        };
        // Without tier-up (`precompile`, a deterministic call), baseline code will not do, from
        // wherever it comes: the cache (a tier-up under way), the hint, the artifact tiers (a
        // baseline artifact only) or the slot re-read below (review BD1: each gave a
        // deterministic call baseline code).
        let wanted = |m: &Arc<CompiledModule>| tier_up || !m.kind.baseline();
        // The same bytes under another name (or a cleared index entry) need no compile.
        let cached = self.state().lru.get(&(digest, kind)).filter(|m| wanted(m)).cloned();
        if cached.is_none() {
            if let Some(shared) = self.take_shared(&digest, kind, Some(key), generation, tier_up.then_some(&bytes)).await {
                return Ok(shared);
            }
        }
        let (compiled, from_artifact, checked) = match cached {
            Some(m) => (m, None, None),
            // The pinned probe above already looked for the artifacts in `probed` (an
            // artifactStore lookup is a network round trip): only the others are left to try.
            None => match match guessed.filter(|(m, _)| wanted(m)) {
                Some(found) => {
                    self.state().stats.hinted += 1;
                    Some(found)
                }
                None if pinned.is_some() && probed.len() == 2 => None,
                None => self.from_artifact(digest, kind, pinned.is_some(), &mut lookups).await.filter(|(m, _)| wanted(m)),
            } {
                Some((m, checked)) => {
                    // A baseline artifact of a tier-up (the optimized one was not stored yet):
                    // optimize in the background again (refused there for a shape that needs
                    // the baseline compiler). Only with tier-up: without, baseline code was not
                    // wanted above, and is compiled here now (`precompile` had stopped at the
                    // baseline code and written no optimized artifact; `tierUp: false` would
                    // run it for good).
                    if m.kind.baseline() && m.kind != kind {
                        self.tier_up_later(bytes, digest, kind, generation, &m);
                    }
                    (m, Some(true), Some(checked))
                }
                None if tier_up => (self.compile_tiered(bytes, digest, kind, generation).await?, Some(false), None),
                None => (self.compile(bytes, digest, kind).await?, Some(false), None),
            },
        };
        let mut st = self.state();
        match from_artifact {
            Some(true) => st.stats.artifact_hits += 1,
            Some(false) => st.stats.compiles += 1,
            None => {}
        }
        let slot = (digest, kind);
        // Found cached, it may have given its slot to newer code since (a tier-up, a pooled
        // copy): the newer code stays, and is what this call runs.
        let compiled = match (from_artifact, st.lru.peek(&slot)) {
            (None, Some(now)) if wanted(now) => now.clone(),
            _ => compiled,
        };
        if st.unchanged_for(generation, Some(&key.name)) {
            st.insert(Some(key), slot, compiled.clone());
            drop(st);
            // Loaded before the pool was built: its pooled copy takes the slot later.
            if let (EngineKind::PlainUnpooled, Some(checked)) = (compiled.kind, checked) {
                self.pool_later(digest, &compiled, checked);
            }
        }
        Ok(compiled)
    }

    /// Drops every module, or only those of the activity `name`. Loads in flight are not
    /// cached when they finish, and calls after this start new ones.
    pub fn clear(&self, name: Option<&str>) {
        let mut st = self.state();
        st.note_clear(name);
        self.loading.lock().unwrap_or_else(|p| p.into_inner()).retain(|(k, _, _, _), _| name.is_some_and(|n| k.name != n));
        match name {
            None => st.clear_all(),
            Some(name) => st.clear_name(name),
        }
        drop(st);
        // A clear of one name leaves them: a module dropped from its slot is tiered up no more.
        if name.is_none() {
            for (_, fetch) in self.fetches.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                fetch.abort();
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.state();
        CacheStats { modules: st.lru.len(), ..st.stats }
    }

    /// The sha256 (hex) of every cached module, most recently used first.
    pub fn digests(&self) -> Vec<String> {
        let st = self.state();
        let mut out: Vec<String> = st.lru.iter().map(|((d, _), _)| hex(d)).collect();
        out.dedup();
        out
    }
}

#[path = "modules_found.rs"]
mod found;

#[cfg(test)]
#[path = "modules_tests.rs"]
mod tests;
