//! The compiled-module cache: an LRU of compiled modules (with their `InstancePre`) keyed by the
//! sha256 of the module bytes and the engine kind, an index from a definition
//! (name, version, blob path) to its digest, and one load in flight per definition.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use lru::LruCache;
use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;
use wasmtime::{InstancePre, Module};

use crate::abi::assemblyscript;
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
    pub digest: Digest,
    pub kind: EngineKind,
    pub pre: InstancePre<HostState>,
    /// WASI preview1 functions it imports (it runs only when granted env or filesystem).
    pub wasi_imports: Vec<String>,
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
}

type Slot = (Digest, EngineKind);
type Loading = Arc<OnceCell<Result<Arc<CompiledModule>, ExecError>>>;

struct State {
    lru: LruCache<Slot, Arc<CompiledModule>>,
    index: HashMap<DefKey, Digest>,
    stats: CacheStats,
}

pub struct ModuleCache {
    state: Mutex<State>,
    loading: Mutex<HashMap<(DefKey, EngineKind), Loading>>,
}

/// Compiles bytes for an engine and checks them against the host and the guest ABI.
pub fn compile(bytes: &[u8], kind: EngineKind) -> Result<CompiledModule, ExecError> {
    let digest: Digest = Sha256::digest(bytes).into();
    let module = Module::new(engine(kind)?, bytes).map_err(|e| ExecError::InvalidModule(format!("{e:#}")))?;
    let wasi_imports = check_imports(&module)?;
    assemblyscript::check_exports(&module)?;
    let pre = linker(kind, !wasi_imports.is_empty())?
        .instantiate_pre(&module)
        .map_err(|e| ExecError::InvalidModule(format!("cannot link: {e:#}")))?;
    Ok(CompiledModule { digest, kind, pre, wasi_imports })
}

impl ModuleCache {
    pub fn new(capacity: NonZeroUsize) -> Self {
        ModuleCache {
            state: Mutex::new(State { lru: LruCache::new(capacity), index: HashMap::new(), stats: CacheStats::default() }),
            loading: Mutex::new(HashMap::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every panic-free path; recover from poisoning.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, key: &DefKey, kind: EngineKind) -> Option<Arc<CompiledModule>> {
        let mut st = self.state();
        let digest = *st.index.get(key)?;
        let m = st.lru.get(&(digest, kind)).cloned();
        if m.is_some() {
            st.stats.hits += 1;
        }
        m
    }

    /// The compiled module of a definition: from the cache, or downloaded and compiled once no
    /// matter how many calls ask at the same time. A failed load is not cached.
    pub async fn get_or_load(
        &self,
        key: &DefKey,
        kind: EngineKind,
        source: &dyn BlobSource,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        if let Some(m) = self.lookup(key, kind) {
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
                self.load(key, kind, source)
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

    async fn load(&self, key: &DefKey, kind: EngineKind, source: &dyn BlobSource) -> Result<Arc<CompiledModule>, ExecError> {
        self.state().stats.misses += 1;
        let bytes = source.fetch(&key.path).await?;
        let digest: Digest = Sha256::digest(&bytes).into();
        // The same bytes under another name (or a cleared index entry) need no compile.
        let known = {
            let mut st = self.state();
            let m = st.lru.get(&(digest, kind)).cloned();
            if m.is_some() {
                st.index.insert(key.clone(), digest);
            }
            m
        };
        if let Some(m) = known {
            return Ok(m);
        }
        let compiled = tokio::task::spawn_blocking(move || compile(&bytes, kind))
            .await
            .map_err(|e| ExecError::internal(format!("compile task failed: {e}")))??;
        let compiled = Arc::new(compiled);
        let mut st = self.state();
        st.stats.compiles += 1;
        st.index.insert(key.clone(), digest);
        if let Some(((evicted, _), _)) = st.lru.push((digest, kind), compiled.clone()) {
            if evicted != digest && !st.lru.iter().any(|((d, _), _)| *d == evicted) {
                st.index.retain(|_, d| *d != evicted);
            }
        }
        Ok(compiled)
    }

    /// Drops every module, or only those of the activity `name`.
    pub fn clear(&self, name: Option<&str>) {
        let mut st = self.state();
        match name {
            None => {
                st.lru.clear();
                st.index.clear();
            }
            Some(name) => {
                let dropped: Vec<Digest> = st.index.iter().filter(|(k, _)| k.name == name).map(|(_, d)| *d).collect();
                st.index.retain(|k, _| k.name != name);
                for d in dropped {
                    if !st.index.values().any(|v| *v == d) {
                        st.lru.pop(&(d, EngineKind::Plain));
                        st.lru.pop(&(d, EngineKind::Metered));
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
}
