//! What a call is made of: a definition (Loom's `ActivityDefinition`), the executor's options
//! and a call's options, with the ranges numeric options must fall in.

use std::num::NonZeroUsize;
use std::sync::Arc;

use crate::actor_store::ActorStore;
use crate::artifacts::ArtifactCache;
use crate::capabilities::{Capabilities, EnvOffer, FilesystemConfig};
use crate::durable::Persist;
use crate::error::ExecError;
use crate::host::LogSink;
use crate::host_functions::HostFunctions;
use crate::limits::{CancelFlag, LimitOverrides, Limits};
use crate::modules::{DefKey, LoadLimits};
use crate::network::Network;

/// Loom's `ActivityDefinition`, as far as execution goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definition {
    pub name: String,
    pub version: String,
    pub wasm_blob_path: String,
    /// Hex sha256 the module's bytes must hash to (`INTEGRITY_MISMATCH` otherwise).
    pub sha256: Option<String>,
    pub limits: LimitOverrides,
    pub capabilities: Capabilities,
    /// The guest's clock and randomness come from the call (`CallOptions::now`, `seed`): replay.
    pub deterministic: bool,
    /// The guest ABI to run the module with (detected when `None`).
    pub abi: Option<crate::abi::Abi>,
    /// The export an Extism plugin's call runs (default `execute`).
    pub entrypoint: Option<String>,
    /// What an Extism plugin's `config_get` reads.
    pub config: std::collections::BTreeMap<String, String>,
}

impl Definition {
    pub(crate) fn key(&self) -> DefKey {
        DefKey::new(self.name.clone(), self.version.clone(), self.wasm_blob_path.clone())
    }

    /// Validated, with its key and config made once for the calls that pass the result in
    /// `CallOptions::checked` (with this same definition).
    pub fn checked(&self) -> Result<CheckedDefinition, ExecError> {
        self.validate()?;
        Ok(CheckedDefinition { key: self.key(), config: Arc::new(self.config.clone()) })
    }

    pub(crate) fn validate(&self) -> Result<(), ExecError> {
        for (field, v) in [("name", &self.name), ("version", &self.version), ("wasmBlobPath", &self.wasm_blob_path)] {
            if v.is_empty() {
                return Err(ExecError::InvalidArgument(format!("definition.{field} must be a non-empty string")));
            }
            // The field's path made only for the refusal (three allocations per call otherwise).
            if v.len() > MAX_KEY_BYTES {
                check_length(&format!("definition.{field}"), v)?;
            }
        }
        let config = config_bytes(&self.config);
        if config > MAX_CONFIG_BYTES {
            return Err(ExecError::InvalidArgument(format!(
                "definition.config takes {config} bytes (its keys and values, and {CONFIG_ENTRY_BYTES} for each of its {} entries), over the limit of {MAX_CONFIG_BYTES}",
                self.config.len()
            )));
        }
        Ok(())
    }
}

/// What `config` counts: its keys and values, and `CONFIG_ENTRY_BYTES` for each entry.
pub fn config_bytes(config: &std::collections::BTreeMap<String, String>) -> usize {
    config.iter().map(|(k, v)| k.len() + v.len() + CONFIG_ENTRY_BYTES).sum()
}

/// The most bytes of keys and values `definition.config` may hold. Each actor keeps its call's
/// copy: unbounded, 40 actors of a 16 MiB config held 640 MiB outside `maxActorMemoryMB`
/// (review AB). Larger data is the call's input.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// What each entry of `definition.config` counts besides its key and value: what the host keeps
/// for it (10,000 entries of 6 bytes had held 1.6 MiB per actor: follow-up review AB).
pub const CONFIG_ENTRY_BYTES: usize = 64;

/// The longest `name`, `version`, `wasmBlobPath` and actor id, in UTF-8 bytes. Each is kept as a
/// key (the module index, the actor cache, failed downloads, dropped actors): unbounded, 1,000
/// actor ids of 256 KiB held 271 MiB (review K). A presigned object-store URL is 1-2 KB.
pub const MAX_KEY_BYTES: usize = 8 * 1024;

/// `INVALID_ARGUMENT` for a key longer than `MAX_KEY_BYTES`.
pub(crate) fn check_length(field: &str, v: &str) -> Result<(), ExecError> {
    if v.len() > MAX_KEY_BYTES {
        return Err(ExecError::InvalidArgument(format!("{field} is {} bytes long, over the limit of {MAX_KEY_BYTES}", v.len())));
    }
    Ok(())
}

/// Ranges of the executor's numeric options (outside them: `INVALID_ARGUMENT`).
pub mod ranges {
    pub const MAX_CACHED_MODULES: (f64, f64) = (1.0, 100_000.0);
    pub const MAX_CACHE_BYTES: (f64, f64) = (1.0, 1e12);
    /// `maxCacheDirBytes`: what `cacheDir`'s artifacts and hints may take on disk.
    pub const MAX_CACHE_DIR_BYTES: (f64, f64) = (1.0, 1e15);
    pub const MAX_ACTORS: (f64, f64) = (1.0, 1_000_000.0);
    /// `maxActorMemoryMB`.
    pub const MAX_ACTOR_MEMORY_MB: (f64, f64) = (1.0, 1e9);
    pub const MAX_CONCURRENCY: (f64, f64) = (1.0, crate::threads::MAX_THREADS as f64);
    pub const PAYLOAD_BYTES: (f64, f64) = (1.0, crate::limits::MAX_PAYLOAD_BYTES as f64);
    /// Outputs: at most the longest string V8 makes (2^29 - 24 UTF-16 units).
    pub const OUTPUT_BYTES: (f64, f64) = (1.0, crate::limits::MAX_OUTPUT_BYTES as f64);
    pub const OUTPUT_DEPTH: (f64, f64) = (1.0, 100_000.0);
    pub const TIMEOUT_MS: (f64, f64) = (1.0, crate::limits::MAX_TIMEOUT_MS);
    pub const MODULE_BYTES: (f64, f64) = (8.0, 1024.0 * 1024.0 * 1024.0);
    pub const FUNCTIONS: (f64, f64) = (1.0, 1_000_000.0);
    pub const FUNCTION_BYTES: (f64, f64) = (1.0, 7_654_321.0);
    pub const LOCALS: (f64, f64) = (1.0, 50_000.0);
    /// `maxCodeBytes`: 1 MiB to 64 GiB of estimated machine code.
    pub const CODE_BYTES: (f64, f64) = (1048576.0, 68_719_476_736.0);
    /// At most twice the default: the baseline engine's start-up code keeps a stack slot or a few
    /// per item (`initializers`), and 60,000 data segments outgrew a fiber stack.
    pub const INIT_INSTRUCTIONS: (f64, f64) = (1.0, 20_000.0);
}

#[derive(Clone)]
pub struct ExecutorOptions {
    pub max_cached_modules: NonZeroUsize,
    /// Compiled code the module cache may hold, in bytes.
    pub max_cache_bytes: usize,
    /// Compiled artifacts on disk and/or in a shared store, and their key.
    pub artifacts: ArtifactCache,
    pub max_actors: NonZeroUsize,
    /// The memory this executor's live actors may hold together (their instances' memories and
    /// the shadows of transactional and durable ones); past it, idle actors are evicted, least
    /// recently used first.
    pub max_actor_memory_bytes: u64,
    /// Calls running guest code at once; more wait in a queue.
    pub max_concurrency: NonZeroUsize,
    /// Limits for definitions that name none.
    pub defaults: Limits,
    /// Download and compile bounds.
    pub load: LoadLimits,
    pub log: Option<Arc<dyn LogSink>>,
    /// The directory granted to definitions that ask for `capabilities.filesystem`.
    pub filesystem: Option<FilesystemConfig>,
    /// The environment variables definitions may ask for in `capabilities.env`.
    pub env: EnvOffer,
    /// URL prefixes a `wasmBlobPath` may name directly (bypassing the store); none by default.
    pub allowed_blob_urls: Vec<String>,
    /// Actor calls are transactional unless a call says otherwise: a failed call leaves the actor
    /// as it was before it.
    pub transactional: bool,
    /// Where durable actors' snapshots live (see `durable`).
    pub actor_store: Option<Arc<dyn ActorStore>>,
    pub persist: Persist,
    /// Functions guests may call by import (`options.hostFunctions`), each only when its
    /// definition names it in `capabilities.hostFunctions`.
    pub host_functions: Option<Arc<dyn HostFunctions>>,
    /// The network granted to definitions that ask for `capabilities.network`.
    pub network: Option<Arc<Network>>,
    /// New modules run on baseline code first while optimized code compiles (see `modules`).
    pub tier_up: bool,
    /// Code is shared with the process's other executors (`shared_code`). Off by default here
    /// (the JS binding turns it on): this crate's tests count compiles per executor while other
    /// tests compile the same guests at the same time.
    pub share_code: bool,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        let cpus = NonZeroUsize::new(crate::threads::cpus()).unwrap_or(NonZeroUsize::MIN);
        ExecutorOptions {
            max_cached_modules: NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
            max_cache_bytes: 512 * 1024 * 1024,
            artifacts: ArtifactCache::default(),
            max_actors: NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN),
            max_actor_memory_bytes: default_actor_memory_bytes(),
            max_concurrency: cpus,
            defaults: Limits::default(),
            load: LoadLimits::default(),
            log: None,
            filesystem: None,
            env: EnvOffer::Nothing,
            allowed_blob_urls: Vec::new(),
            transactional: false,
            actor_store: None,
            persist: Persist::Sync,
            host_functions: None,
            network: None,
            tier_up: true,
            share_code: false,
        }
    }
}

/// Per-call options.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Run on this actor's kept instance instead of a fresh one.
    pub actor_id: Option<String>,
    pub cancel: CancelFlag,
    /// For an actor call: undo the call's effects on the actor if it fails (default: the
    /// executor's `transactional`).
    pub transactional: Option<bool>,
    /// For a deterministic definition: the time (ms since the epoch) and seed the guest sees
    /// (default 0 and 0).
    pub now: Option<f64>,
    pub seed: Option<f64>,
    /// Where the call's heartbeats (`loom.progress`) go.
    pub progress: Option<Arc<dyn crate::host::ProgressSink>>,
    /// The input's size in UTF-8 bytes when the caller did not copy it, being over
    /// `maxInputBytes` (`Executor::max_input_bytes`): the input text is then empty, and the call
    /// is refused with `INPUT_TOO_LARGE` in its turn.
    pub input_bytes: Option<u64>,
    /// The call's definition as `Definition::checked` made it (an actor handle's, once): not
    /// validated again, its key and config not copied again.
    pub checked: Option<CheckedDefinition>,
}

/// A definition validated once, and the parts of it each call takes, made once: for the calls of
/// an actor handle, whose definition does not change (`Definition::checked`).
#[derive(Clone)]
pub struct CheckedDefinition {
    pub(crate) key: DefKey,
    pub(crate) config: Arc<std::collections::BTreeMap<String, String>>,
}

/// `maxActorMemoryMB` unless set: half the machine's physical memory.
pub fn default_actor_memory_bytes() -> u64 {
    physical_memory_bytes() / 2
}

/// The machine's physical memory (8 GiB where it cannot be read).
pub fn physical_memory_bytes() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(pages), Ok(page)) if pages > 0 && page > 0 => pages.saturating_mul(page),
        _ => 8 << 30,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_holds_at_most_64_kib_of_keys_and_values() {
        let def = |entries: &[(&str, usize)]| Definition {
            name: "p".into(),
            version: "1".into(),
            wasm_blob_path: "p.wasm".into(),
            config: entries.iter().map(|(k, n)| (k.to_string(), "v".repeat(*n))).collect(),
            ..Default::default()
        };
        let fits = MAX_CONFIG_BYTES - 2 - 2 * CONFIG_ENTRY_BYTES;
        assert!(def(&[("a", fits), ("b", 0)]).validate().is_ok());
        let over = def(&[("a", fits), ("b", 1)]).validate().map_err(|e| e.code());
        assert_eq!(over, Err("INVALID_ARGUMENT"));
        // Many small entries count what each costs the host.
        let many: Vec<(String, usize)> = (0..1000).map(|i| (format!("{i:03}"), 3)).collect();
        let many: Vec<(&str, usize)> = many.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(def(&many).validate().map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
        assert_eq!(def(&[("a", 16 << 20)]).validate().map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
    }
}
