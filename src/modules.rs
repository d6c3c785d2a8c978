//! The compiled-module cache: an LRU of compiled modules (with their `InstancePre`) keyed by the
//! sha256 of the module bytes and the engine kind, bounded by count and by bytes; an index from a
//! definition (name, version, blob path) to its digest; one load in flight per definition; and
//! behind it the artifact tiers (disk, shared store) consulted before compiling.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use wasmtime::{InstancePre, Module};

use crate::abi::assemblyscript;
use crate::artifacts::ArtifactCache;
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::host::{check_imports, linker, HostState};
use crate::store::BlobSource;

pub type Digest = [u8; 32];

pub fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What identifies an activity's module before its bytes are known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DefKey {
    pub name: String,
    pub version: String,
    pub path: String,
}

/// A module compiled for one engine, ready to instantiate.
pub struct CompiledModule {
    /// Bytes of compiled code it holds in memory (for the cache's byte bound).
    pub code_bytes: usize,
    pub digest: Digest,
    pub kind: EngineKind,
    pub pre: InstancePre<HostState>,
    /// WASI preview1 functions it imports (it runs only when granted env or filesystem).
    pub wasi_imports: Vec<String>,
    /// Whether its calls are worth trying inline (cleared when one runs past the inline budget,
    /// set again when one finishes well within it).
    pub inline_ok: std::sync::atomic::AtomicBool,
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
    /// Compiled code held, in bytes.
    pub code_bytes: usize,
}

type Slot = (Digest, EngineKind);
type Loading = Arc<OnceCell<Result<Arc<CompiledModule>, ExecError>>>;

struct State {
    lru: LruCache<Slot, Arc<CompiledModule>>,
    index: HashMap<DefKey, Digest>,
    stats: CacheStats,
    max_bytes: usize,
}

impl State {
    fn insert(&mut self, key: &DefKey, m: Arc<CompiledModule>) {
        self.index.insert(key.clone(), m.digest);
        self.stats.code_bytes += m.code_bytes;
        if let Some((_, old)) = self.lru.push((m.digest, m.kind), m.clone()) {
            self.stats.code_bytes -= old.code_bytes;
        }
        // Past the byte bound, evict the least recently used (but never the module just added).
        while self.stats.code_bytes > self.max_bytes && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => self.stats.code_bytes -= old.code_bytes,
                None => break,
            }
        }
        let lru = &self.lru;
        self.index.retain(|_, d| lru.contains(&(*d, EngineKind::Plain)) || lru.contains(&(*d, EngineKind::Metered)));
    }

    fn remove(&mut self, slot: &Slot) {
        if let Some(old) = self.lru.pop(slot) {
            self.stats.code_bytes -= old.code_bytes;
        }
    }
}

pub struct ModuleCache {
    state: Mutex<State>,
    loading: Mutex<HashMap<(DefKey, EngineKind), Loading>>,
    artifacts: ArtifactCache,
}

/// Parses a definition's `sha256` (64 hex digits).
pub fn parse_digest(hex_text: &str) -> Result<Digest, ExecError> {
    let bad = || ExecError::InvalidArgument(format!("definition.sha256 must be 64 hex digits, got {hex_text:?}"));
    if hex_text.len() != 64 || !hex_text.is_ascii() {
        return Err(bad());
    }
    let mut d = [0u8; 32];
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex_text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(d)
}

/// Compiles bytes for an engine and checks them against the host and the guest ABI.
pub fn compile(bytes: &[u8], kind: EngineKind) -> Result<CompiledModule, ExecError> {
    let digest: Digest = Sha256::digest(bytes).into();
    let module = Module::new(engine(kind)?, bytes).map_err(|e| ExecError::InvalidModule(format!("{e:#}")))?;
    prepare(module, digest, kind)
}

/// Checks a compiled module against the host and the guest ABI and pre-links it.
fn prepare(module: Module, digest: Digest, kind: EngineKind) -> Result<CompiledModule, ExecError> {
    let wasi_imports = check_imports(&module)?;
    assemblyscript::check_exports(&module)?;
    let pre = linker(kind, !wasi_imports.is_empty())?
        .instantiate_pre(&module)
        .map_err(|e| ExecError::InvalidModule(format!("cannot link: {e:#}")))?;
    let range = module.image_range();
    let code_bytes = (range.end as usize).saturating_sub(range.start as usize);
    Ok(CompiledModule { code_bytes, digest, kind, pre, wasi_imports, inline_ok: true.into() })
}

impl ModuleCache {
    pub fn new(capacity: NonZeroUsize, max_bytes: usize, artifacts: ArtifactCache) -> Self {
        ModuleCache {
            state: Mutex::new(State {
                lru: LruCache::new(capacity),
                index: HashMap::new(),
                stats: CacheStats::default(),
                max_bytes,
            }),
            loading: Mutex::new(HashMap::new()),
            artifacts,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every panic-free path; recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cached module, by the pinned digest when there is one (content-addressed), else by the
    /// definition's index entry. Counts no hit (the caller counts it once the call starts).
    pub fn peek(&self, key: &DefKey, kind: EngineKind, pinned: Option<&Digest>) -> Option<Arc<CompiledModule>> {
        let mut st = self.state();
        let digest = match pinned {
            Some(d) => *d,
            None => *st.index.get(key)?,
        };
        let m = st.lru.get(&(digest, kind)).cloned();
        if m.is_some() && pinned.is_some() {
            st.index.insert(key.clone(), digest);
        }
        m
    }

    pub fn count_hit(&self) {
        self.state().stats.hits += 1;
    }

    /// The compiled module of a definition: from the cache, or downloaded and compiled once no
    /// matter how many calls ask at the same time. A failed load is not cached.
    pub async fn get_or_load(
        &self,
        key: &DefKey,
        kind: EngineKind,
        pinned: Option<&Digest>,
        source: &dyn BlobSource,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        if let Some(m) = self.peek(key, kind, pinned) {
            self.count_hit();
            return Ok(m);
        }
        let flight = (key.clone(), kind);
        let cell = {
            let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
            loading.entry(flight.clone()).or_default().clone()
        };
        let mut led = false;
        let result = cell
            .get_or_init(|| {
                led = true;
                self.load(key, kind, pinned, source)
            })
            .await
            .clone();
        if !led {
            self.state().stats.hits += 1;
        }
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if loading.get(&flight).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            loading.remove(&flight);
        }
        result
    }

    async fn load(
        &self,
        key: &DefKey,
        kind: EngineKind,
        pinned: Option<&Digest>,
        source: &dyn BlobSource,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        self.state().stats.misses += 1;
        let bytes = source.fetch(&key.path).await?;
        let digest: Digest = Sha256::digest(&bytes).into();
        if let Some(expected) = pinned {
            if *expected != digest {
                return Err(ExecError::IntegrityMismatch {
                    path: key.path.clone(),
                    expected: hex(expected),
                    actual: hex(&digest),
                });
            }
        }
        // The same bytes under another name (or a cleared index entry) need no compile.
        {
            let mut st = self.state();
            if let Some(m) = st.lru.get(&(digest, kind)).cloned() {
                st.index.insert(key.clone(), digest);
                return Ok(m);
            }
        }
        let engine = engine(kind)?;
        let (compiled, from_artifact) = match self.artifacts.load(&digest, engine).await {
            Some((module, _tier)) => {
                let prepared = tokio::task::spawn_blocking(move || prepare(module, digest, kind))
                    .await
                    .map_err(|e| ExecError::internal(format!("prepare task failed: {e}")))??;
                (prepared, true)
            }
            None => {
                let compiled = tokio::task::spawn_blocking(move || compile(&bytes, kind))
                    .await
                    .map_err(|e| ExecError::internal(format!("compile task failed: {e}")))??;
                // Best effort: a cache that cannot be written costs a compile later, not this call.
                let _ = self.artifacts.save(&digest, engine, compiled.pre.module()).await;
                (compiled, false)
            }
        };
        let compiled = Arc::new(compiled);
        let mut st = self.state();
        if from_artifact {
            st.stats.artifact_hits += 1;
        } else {
            st.stats.compiles += 1;
        }
        st.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Drops every module, or only those of the activity `name`.
    pub fn clear(&self, name: Option<&str>) {
        let mut st = self.state();
        match name {
            None => {
                st.lru.clear();
                st.index.clear();
                st.stats.code_bytes = 0;
            }
            Some(name) => {
                let dropped: Vec<Digest> = st.index.iter().filter(|(k, _)| k.name == name).map(|(_, d)| *d).collect();
                st.index.retain(|k, _| k.name != name);
                for d in dropped {
                    if !st.index.values().any(|v| *v == d) {
                        st.remove(&(d, EngineKind::Plain));
                        st.remove(&(d, EngineKind::Metered));
                    }
                }
            }
        }
    }

    /// The digest a definition resolved to, if it is cached.
    pub fn digest_of(&self, key: &DefKey) -> Option<Digest> {
        self.state().index.get(key).copied()
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
