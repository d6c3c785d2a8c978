//! A module compiled for one engine, checked against the host and its guest ABI and pre-linked:
//! what the module cache holds and instances are made from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use wasmtime::{InstancePre, Module};

use crate::abi::{self, Abi};
use crate::digest::Digest;
use crate::engine::EngineKind;
use crate::error::ExecError;
use crate::host::{check_imports, linker, HostState};
use crate::initial_images::InitialImages;
use crate::inline;

/// Compiled modules the process may hold at once, across executors: each maps its code (2-3
/// memory mappings; a review compiled 30,079 tiny modules into one cache, with `maxCachedModules`
/// at 100,000, before the process reached `vm.max_map_count` and crashed). With the pool and the
/// instances outside it (`engine::MAPPINGS_BUDGET`), under the limit.
pub const MAX_LIVE_MODULES: usize = 2000;

/// The most compiled modules the process holds now: `MAX_LIVE_MODULES`, and no more than a
/// quarter of its descriptors' soft limit (`open_files::soft_limit`). A module with data keeps a
/// memfd open for its memory image (copy-on-write instantiation): review BB2, under `ulimit -n
/// 1024`, twelve executors' default caches (1,536 modules) took every descriptor, and Node's own
/// opens and sockets failed with `EMFILE`. A quarter leaves the top quarter to the process
/// (`open_files`' reserve) and half to guests' files and sockets.
pub fn max_live_modules() -> usize {
    match crate::open_files::soft_limit() {
        Some(soft) => MAX_LIVE_MODULES.min((soft / 4).max(1) as usize),
        None => MAX_LIVE_MODULES,
    }
}

static LIVE_MODULES: AtomicUsize = AtomicUsize::new(0);

/// Whether caches should let a module go as they take one: the process holds all but an eighth
/// of `max_live_modules` (at most 64), which is left for compiles under way, a tier-up's
/// optimized module beside its baseline one above all (at the bound itself, one executor
/// loading new modules one after another met `BUSY` while its tier-ups held the last places).
pub fn crowded() -> bool {
    let max = max_live_modules();
    live_modules() + (max / 8).clamp(1, 64) >= max
}

/// Compiled modules alive in the process now.
pub fn live_modules() -> usize {
    LIVE_MODULES.load(Ordering::Acquire)
}

/// One compiled module alive, counted until dropped.
#[derive(Debug)]
pub struct LiveModule(());

impl LiveModule {
    /// A place for one more compiled module, or `BUSY` when the process holds `max_live_modules`
    /// (caches evict their least recently used as they pass it: see `cache_state`).
    pub fn take() -> Result<LiveModule, ExecError> {
        let max = max_live_modules();
        LIVE_MODULES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map(|_| LiveModule(()))
            .map_err(|_| {
                ExecError::Busy(format!(
                    "the process holds {max} compiled modules, the most it may (each maps memory and may hold a descriptor: at most {MAX_LIVE_MODULES}, and a quarter of RLIMIT_NOFILE); retry when executors have let some go (maxCachedModules, clearCache, close)"
                ))
            })
    }
}

impl Drop for LiveModule {
    fn drop(&mut self) {
        LIVE_MODULES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A module compiled for one engine, ready to instantiate.
pub struct CompiledModule {
    /// Bytes of compiled code it holds in memory (for the cache's byte bound).
    pub code_bytes: usize,
    pub digest: Digest,
    /// The engine its code is for (a baseline engine when its shape needed one).
    pub kind: EngineKind,
    pub code: Code,
    /// WASI preview1 functions it imports (it runs only when granted env or filesystem).
    pub wasi_imports: Vec<String>,
    /// Host functions it imports (each granted per definition).
    pub host_imports: Vec<crate::host_functions::HostImport>,
    /// The HTTP function it imports, if any.
    pub network_import: Option<String>,
    /// Whether it has a start function (a trap while instantiating one without is a segment that
    /// does not fit: an invalid module, not a guest trap).
    pub has_start: bool,
    /// Linear memory it starts with, in bytes (all memories).
    pub initial_memory_bytes: u64,
    /// The guest ABI its imports and exports fit (or why none does: said when a call needs it,
    /// since a definition may force one with `abi`).
    pub detected: Result<Abi, ExecError>,
    /// What it exports for snapshots (its memory and every mutable global).
    pub state: Arc<crate::instrument::StateExports>,
    /// Its memory right after instantiation (what snapshots are taken against), once asked for,
    /// per grants: an initializer may copy the environment or files it is granted into memory, and
    /// the module is shared by executors (and joined compiles) of other tenants (`durable::initial_image`).
    pub initial_images: InitialImages,
    /// Its inline back-off.
    pub inline: inline::Gate,
    /// Compiled from bytes in which no instruction changes a table or drops a segment: an
    /// instance's whole state is its memory, its globals and the ABI's host-side state, so an
    /// actor can move to another instance of it (tier-up), and its state can be captured and
    /// restored (snapshots, transactional and durable calls). An artifact's flags carry it.
    pub state_in_memory: bool,
    /// See `Facts::instance_bytes`.
    pub instance_bytes: u64,
    /// Loaded from an artifact: trusted within the key that authenticated it, so never shared
    /// with other executors (`shared_code`), which may hold other keys and would seal it with theirs.
    pub from_artifact: bool,
    /// Counts it among the process's compiled modules (`MAX_LIVE_MODULES`).
    pub live: LiveModule,
}

/// What a module's bytes said that its compiled code cannot (kept in an artifact's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub has_start: bool,
    /// What an instance's own metadata (wasmtime's `VMContext`: its globals, imports, escaping
    /// functions) is counted as against its memory limit (`instance_metadata::charged`).
    pub instance_bytes: u64,
    /// See `CompiledModule::state_in_memory`.
    pub state_in_memory: bool,
}

impl CompiledModule {
    pub fn facts(&self) -> Facts {
        Facts { has_start: self.has_start, state_in_memory: self.state_in_memory, instance_bytes: self.instance_bytes }
    }

    /// Refuses what needs an instance's whole state (transactional and durable calls, snapshots)
    /// for a module whose state is not all in its memory and globals: a component's is out of
    /// reach, and a core module that changes tables or drops segments at run time would be
    /// restored without those changes (its table.set undone by a rollback, silently).
    pub fn check_state_capturable(&self) -> Result<(), ExecError> {
        if self.state_in_memory || self.code.is_component() {
            // (A component is refused where its state is read, with its own reason.)
            return Ok(());
        }
        Err(ExecError::InvalidArgument(
            "the module changes tables or drops segments at run time (table.set, table.grow, table.fill, table.copy, \
             table.init, elem.drop or data.drop), state a snapshot cannot hold: no snapshots, transactional or durable \
             calls for it"
                .into(),
        ))
    }
}

/// Compiled code, pre-linked: a core module or a component.
pub enum Code {
    Core(InstancePre<HostState>),
    Component(wasmtime::component::InstancePre<HostState>),
}

impl Code {
    /// The memory mappings an instance of it outside the pool may hold (`unpooled_slots`): for a
    /// component whose needs are not known before it is instantiated, as many memories and
    /// tables as a Store may hold.
    pub fn unpooled_mappings(&self) -> usize {
        let (memories, tables) = match self {
            Code::Core(pre) => {
                let r = pre.module().resources_required();
                (r.num_memories, r.num_tables)
            }
            Code::Component(pre) => match pre.component().resources_required() {
                Some(r) => (r.num_memories, r.num_tables),
                None => (crate::limits::MAX_MEMORIES as u32, crate::limits::MAX_TABLES as u32),
            },
        };
        crate::unpooled_slots::mappings_of(memories, tables)
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Code::Core(pre) => pre.module().engine(),
            Code::Component(pre) => pre.component().engine(),
        }
    }

    /// wasmtime's serialized form (a compiled artifact's body).
    pub fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Code::Core(pre) => pre.module().serialize(),
            Code::Component(pre) => pre.component().serialize(),
        }
    }

    /// `serialize`, to run off the async runtime (it copies the whole compiled image: 37 MB for
    /// the 12 MB JavaScript component; review AQ2 saw it on a runtime worker).
    pub fn serializer(&self) -> impl FnOnce() -> wasmtime::Result<Vec<u8>> + Send + 'static {
        let code: Result<wasmtime::Module, wasmtime::component::Component> = match self {
            Code::Core(pre) => Ok(pre.module().clone()),
            Code::Component(pre) => Err(pre.component().clone()),
        };
        move || match code {
            Ok(module) => module.serialize(),
            Err(component) => component.serialize(),
        }
    }

    pub fn is_component(&self) -> bool {
        matches!(self, Code::Component(_))
    }
}

/// What comes out of compiling (or deserializing) bytes, before it is checked and pre-linked.
pub enum Compiled {
    Core(Module),
    Component(wasmtime::component::Component),
}

impl CompiledModule {
    /// The ABI a call runs it with: the definition's `abi` if it fits, else the detected one.
    pub fn abi_for(&self, forced: Option<Abi>) -> Result<Abi, ExecError> {
        match (forced, &self.code) {
            (Some(abi), _) if Ok(abi) == self.detected => Ok(abi),
            (Some(abi), Code::Core(pre)) => abi::detect(pre.module(), Some(abi)),
            (Some(abi), Code::Component(_)) => {
                Err(ExecError::MissingExport(format!("a component cannot run with the {} ABI", abi.name())))
            }
            (None, _) => self.detected.clone(),
        }
    }
}


/// Checks compiled code against the host and the guest ABI and pre-links it.
pub(crate) fn prepare(compiled: Compiled, digest: Digest, kind: EngineKind, facts: Facts) -> Result<CompiledModule, ExecError> {
    let Facts { has_start, state_in_memory, instance_bytes } = facts;
    let module = match compiled {
        Compiled::Core(module) => module,
        Compiled::Component(component) => return prepare_component(component, digest, kind, instance_bytes),
    };
    let live = LiveModule::take()?;
    let imports = check_imports(&module)?;
    let detected = abi::detect(&module, None);
    let base = linker(kind)?;
    let linked;
    let linker = if imports.host.is_empty() {
        base
    } else {
        linked = crate::host_functions::link(base, &module, &imports.host)?;
        &linked
    };
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| ExecError::InvalidModule(format!("cannot link: {e:#}")))?;
    let range = module.image_range();
    let code_bytes = (range.end as usize).saturating_sub(range.start as usize);
    let res = module.resources_required();
    let initial_memory_bytes =
        (res.num_memories as u64).saturating_mul(res.max_initial_memory_size.unwrap_or(0).saturating_mul(65536));
    let state = Arc::new(crate::instrument::StateExports::of(&module));
    Ok(CompiledModule {
        code_bytes,
        digest,
        kind,
        code: Code::Core(pre),
        wasi_imports: imports.wasi,
        host_imports: imports.host,
        network_import: imports.network,
        has_start,
        initial_memory_bytes,
        detected,
        state,
        initial_images: Default::default(),
        inline: inline::Gate::default(),
        state_in_memory,
        instance_bytes,
        from_artifact: false,
        live,
    })
}

fn prepare_component(
    component: wasmtime::component::Component,
    digest: Digest,
    kind: EngineKind,
    instance_bytes: u64,
) -> Result<CompiledModule, ExecError> {
    let live = LiveModule::take()?;
    let engine = component.engine().clone();
    let http = abi::component::check(&component, &engine)?;
    let pre = abi::component::linker(kind)?
        .instantiate_pre(&component)
        .map_err(|e| ExecError::InvalidModule(format!("cannot link the component: {e:#}")))?;
    let range = component.image_range();
    let code_bytes = (range.end as usize).saturating_sub(range.start as usize);
    let res = component.resources_required();
    let initial_memory_bytes = res
        .map(|r| (r.num_memories as u64).saturating_mul(r.max_initial_memory_size.unwrap_or(0).saturating_mul(65536)))
        // Not known until instantiation: assume large (it starts on a guest thread).
        .unwrap_or(u64::MAX);
    Ok(CompiledModule {
        code_bytes,
        digest,
        kind,
        code: Code::Component(pre),
        wasi_imports: Vec::new(),
        host_imports: Vec::new(),
        network_import: http,
        has_start: true,
        initial_memory_bytes,
        detected: Ok(Abi::Component),
        state: Default::default(),
        initial_images: Default::default(),
        inline: inline::Gate::default(),
        state_in_memory: false,
        instance_bytes,
        from_artifact: false,
        live,
    })
}
