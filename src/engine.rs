//! The process's wasmtime engines and the one epoch ticker that drives their deadlines.
//!
//! Engines differ by two choices, each fixed per compiled module (so the module cache keys on
//! the kind), and the optimized, unmetered one has an unpooled twin (`PlainUnpooled`): whether
//! code counts fuel (`maxFuel`; ~20 % slower, so only calls that set a budget
//! pay for it), and which compiler made it: Cranelift (optimizing; the normal tier) or Winch (a
//! baseline compiler, linear in the size of the code, for modules whose shape would make
//! Cranelift's compile time explode).
//!
//! Every engine enables the same WebAssembly proposals, listed here one by one: what the guest
//! ABIs need and nothing else (README lists them).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Strategy, WasmFeatures};

use crate::error::ExecError;

/// How often the ticker bumps the epoch while any call runs: the granularity of timeouts and
/// cancellation.
pub const TICK: Duration = Duration::from_millis(1);
/// Ticks the ticker goes on after the last call ends before it parks.
const LINGER_TICKS: u32 = 20;
/// Instances the pooled engine holds at once, across all executors of the process (running
/// calls plus live actors), unless the first executor asks for more (`reserve_pool`).
pub const DEFAULT_POOL_INSTANCES: u32 = 1024;
/// The most instances a pool may be sized for (each reserves address space for its memory), so
/// that the pool, full, stays inside the process's memory mappings (`pool_mappings`). It was 8,192,
/// which with its stacks and memories (~59,000 mappings) and instances outside the pool passed
/// `vm.max_map_count` (a review reached 65,518; past it Node aborts).
pub const MAX_POOL_INSTANCES: u32 = 6144;
/// What a process may map, counted here: the pool and the instances outside it
/// (`unpooled_slots`) share it, leaving the rest of `vm.max_map_count`'s default (65,530) to
/// compiled modules (`compiled_module::MAX_LIVE_MODULES`, 2-3 mappings each), Node, V8 and files.
pub const MAPPINGS_BUDGET: usize = 56_000;
/// Linear memory a pool slot keeps resident (reset in place) for its next instance: what an
/// AssemblyScript guest given a 100 KB JSON payload touches (436 page faults a call otherwise,
/// 1.5-2 ms of its 4). The reset is blind: every byte below this and below the memory's size is
/// reset, touched or not (2 MiB: ~45 us), so a module with a larger memory it hardly touches (a C
/// guest's 16 MiB) pays that much more per call, and its freed slot keeps 2 MiB. Nothing trims
/// freed slots later: after a burst of N instances, up to N slots keep up to this much each until
/// they are used again (`cacheStats().poolIdleResidentBytes`). Wasmtime's PAGEMAP_SCAN mode would
/// reset only the pages written, but it skips dirty pages that are swapped out, and the next
/// instance in the slot would read them (wasmtime PR 14357): off.
pub const KEEP_RESIDENT_BYTES: usize = 2 * 1024 * 1024;
/// Freed slots kept for their module's next instance before allocation takes the least recently
/// freed slot rather than a never-used one (split across the pool's shards, one per CPU): fewer
/// slots touched over a process's life than wasmtime's default of 100.
pub const UNUSED_WARM_SLOTS: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Cranelift, epoch interruption only, pooled instances: the fast path.
    Plain,
    /// Cranelift with fuel metering.
    Metered,
    /// Winch (baseline), epoch interruption.
    Baseline,
    /// Winch with fuel metering.
    BaselineMetered,
    /// `Plain`'s settings without the instance pool, so it loads `Plain`'s artifacts (they name
    /// the same fingerprint). Building the pool takes 3-6 ms (one guard-page `mprotect` per
    /// fiber stack), so an artifact loaded before it exists runs here while the pool is built in
    /// the background, and then gives its cache slot to its pooled copy (`unpooled_first`).
    PlainUnpooled,
}

impl EngineKind {
    pub fn new(metered: bool, baseline: bool) -> EngineKind {
        match (metered, baseline) {
            (false, false) => EngineKind::Plain,
            (true, false) => EngineKind::Metered,
            (false, true) => EngineKind::Baseline,
            (true, true) => EngineKind::BaselineMetered,
        }
    }
    pub fn metered(self) -> bool {
        matches!(self, EngineKind::Metered | EngineKind::BaselineMetered)
    }
    pub fn baseline(self) -> bool {
        matches!(self, EngineKind::Baseline | EngineKind::BaselineMetered)
    }
    /// The same engine with the other compiler (`PlainUnpooled` gives its baseline twin, and
    /// `Plain` back: the unpooled twin is only chosen by `unpooled_first`).
    pub fn with_baseline(self, baseline: bool) -> EngineKind {
        EngineKind::new(self.metered(), baseline)
    }
    pub const ALL: [EngineKind; 5] =
        [EngineKind::Plain, EngineKind::Metered, EngineKind::Baseline, EngineKind::BaselineMetered, EngineKind::PlainUnpooled];

    /// This kind's place in `ALL` (per-kind tables are indexed by it).
    pub fn index(self) -> usize {
        self as usize
    }
}

static POOL_SIZE: AtomicU32 = AtomicU32::new(0);

/// Asks for a pool of at least `instances` (clamped to `[DEFAULT_POOL_INSTANCES,
/// MAX_POOL_INSTANCES]`). Only effective before the pooled engine is first used: the first
/// executor of a process sizes the pool for everyone (later ones share it).
pub fn reserve_pool(instances: u64) {
    let n = instances.clamp(DEFAULT_POOL_INSTANCES as u64, MAX_POOL_INSTANCES as u64) as u32;
    let _ = POOL_SIZE.compare_exchange(0, n, Ordering::SeqCst, Ordering::SeqCst);
}

/// The pool an executor asks for: room for its actors and its calls (a call may hold a few
/// instances at once). Actors may never take the pool's last eighth (`call::instantiate` evicts
/// idle ones first), so `max_actors` and the calls must fit in seven eighths of it, or actors
/// would be evicted before `maxActors` is reached.
pub fn pool_for(max_actors: u64, max_concurrency: u64) -> u64 {
    let calls = 4 * max_concurrency;
    (max_actors + calls + 256).max((max_actors + calls) * 8 / 7 + 1)
}

/// How much of a freed fiber stack stays resident, zeroed (a warm call touches a few KiB of it).
const STACK_KEEP_RESIDENT: usize = 16 * 1024;

/// Fiber stacks the pool keeps per instance. A call runs on one; a host function returning text
/// to an AssemblyScript guest calls the guest's `__new` on a second (the guest's own host calls
/// from there are refused, so never a third), and wasmtime caches that second stack in the Store
/// until the call's own fiber ends (then it goes back to the pool, and the call's is cached). So
/// a call that goes on to wait in another host function holds two: with an eighth to spare, 576
/// such calls took every stack of a pool of 1,024, and every other call was `BUSY`.
pub const STACKS_PER_INSTANCE: u32 = 2;

/// Memory mappings a pool of `instances` may hold at most: two per fiber stack (its guard page
/// and the stack), and about four per slot once used (its memory, a module's data image mapped
/// into it at an offset, and the rest of its reservation; measured 4.07 per slot for a Rust
/// guest's image at 1 MiB, 3.0 for AssemblyScript's; freed slots keep theirs).
pub fn pool_mappings(instances: u32) -> usize {
    let n = instances as usize;
    2 * STACKS_PER_INSTANCE as usize * n + 4 * n
}

/// The instances the pooled engine holds (its size once created).
pub fn pool_size() -> u32 {
    match POOL_SIZE.load(Ordering::SeqCst) {
        0 => DEFAULT_POOL_INSTANCES,
        n => n,
    }
}

/// The WebAssembly proposals every engine enables, and those it refuses, deliberately.
fn features(cfg: &mut Config) {
    // Enabled: what AssemblyScript, Rust, C/Zig (clang) and componentize-js emit by default.
    cfg.wasm_multi_value(true) // functions returning several values (Rust, C ABIs)
        .wasm_bulk_memory(true) // memory.copy / memory.fill (AssemblyScript, LLVM)
        .wasm_features(WasmFeatures::REFERENCE_TYPES, true) // funcref tables (LLVM, componentize-js)
        .wasm_simd(true) // 128-bit SIMD: deterministic
        .wasm_extended_const(true) // constant expressions LLVM emits
        .wasm_component_model(true); // components (the `component` ABI)
    // Refused: more attack surface than any guest ABI here needs, or behaviour that differs by
    // host (relaxed SIMD), or state the sandbox does not account for (shared memory, threads).
    cfg.wasm_features(WasmFeatures::THREADS, false) // shared memory and atomics.wait (also compiled out)
        .wasm_shared_everything_threads(false)
        .wasm_multi_memory(false) // one memory per module (the limiter counts all of a Store's anyway)
        .wasm_memory64(false) // the ABIs pass 32-bit pointers
        .wasm_relaxed_simd(false) // results differ across CPUs: breaks replay
        .wasm_tail_call(false) // not supported by the baseline compiler
        .wasm_features(WasmFeatures::GC | WasmFeatures::FUNCTION_REFERENCES, false)
        .wasm_features(WasmFeatures::EXCEPTIONS | WasmFeatures::LEGACY_EXCEPTIONS, false)
        .wasm_features(WasmFeatures::STACK_SWITCHING, false)
        .wasm_wide_arithmetic(false)
        .wasm_custom_page_sizes(false)
        .wasm_features(WasmFeatures::CM_ASYNC, false);
}

fn config(kind: EngineKind, pooled: bool) -> Config {
    let mut cfg = Config::new();
    features(&mut cfg);
    cfg.epoch_interruption(true);
    cfg.consume_fuel(kind.metered());
    cfg.strategy(if kind.baseline() { Strategy::Winch } else { Strategy::Cranelift });
    if kind.baseline() {
        // Winch compiles the functions; Cranelift still compiles the trampolines, one for each
        // function type of the module (host calls) and one per exported function: 22 for the
        // 22 KB mortgage guest, most of its first compile (a module with 17 types compiles in
        // 4-5 ms, one with a single type in 1). Their code barely matters: compile them fast.
        cfg.cranelift_opt_level(OptLevel::None);
        cfg.cranelift_regalloc_algorithm(wasmtime::RegallocAlgorithm::SinglePass);
        // No map from machine code back to wasm offsets: building it is ~5 % of the 12 MB
        // component's first compile (1118 -> 1057 ms, medians of 8 alternating fresh processes).
        // A trap on baseline code (a module's first calls, until it tiers up) names its functions
        // in the backtrace but not their byte offsets; optimized code keeps them.
        cfg.generate_address_map(false);
    } else {
        cfg.cranelift_opt_level(OptLevel::Speed);
    }
    cfg.parallel_compilation(STARTED.get() != Some(&CompileThreads::None));
    cfg.max_wasm_stack(1024 * 1024);
    cfg.async_stack_size(crate::fiber_stacks::ASYNC_STACK_BYTES);
    // Freed pooled stacks are reset (`STACK_KEEP_RESIDENT`).
    cfg.async_stack_zeroing(true);
    if pooled {
        let n = pool_size();
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(n)
            // A component's instances too (wasmtime's default is 1,000, whatever the pool).
            .total_component_instances(n)
            .total_memories(n)
            .total_tables(n)
            // Two stacks per instance: all a Store holds (`STACKS_PER_INSTANCE`).
            .total_stacks(n * STACKS_PER_INSTANCE)
            // A freed stack's first `STACK_KEEP_RESIDENT` bytes are zeroed in place and stay
            // resident; the rest is given back (madvise). Without, a pooled stack kept every page
            // a call touched for the life of the process (review BK2: 1,000 calls at once, each
            // 19,000 frames deep and waiting on a host Promise, left 670 MB resident after they
            // settled, and after `close()`; the pool holds up to 2 stacks of 2 MiB per slot).
            .async_stack_keep_resident(STACK_KEEP_RESIDENT)
            // As many table elements as the limiter allows any instance (the default is 20,000).
            .table_elements(crate::limits::MAX_TABLE_ELEMENTS as usize)
            // No bound of its own on an instance's metadata (wasmtime's default is 1 MiB: a module
            // of 40,000 exported functions ran on the baseline compiler, could not tier up, and
            // was INVALID_MODULE with tierUp: false): it counts against the instance's memory
            // limit (`instance_metadata`) on every engine.
            .max_core_instance_size(1 << 30)
            .max_component_instance_size(1 << 30)
            // A freed slot's first `KEEP_RESIDENT_BYTES` of linear memory are reset in place
            // (memset, or the data image copied back) and stay resident: the next instance skips
            // the page faults (the rest is given back with madvise).
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .max_unused_warm_slots(UNUSED_WARM_SLOTS)
            // Explicitly off, whatever wasmtime's default becomes (see `KEEP_RESIDENT_BYTES`).
            .pagemap_scan(wasmtime::Enabled::No)
            .table_keep_resident(4 * 1024);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

/// Starts the threads compiles spread a module's functions over (rayon's global pool, which
/// wasmtime compiles on), each lowered to the priority of calls' compiles (`threads::NICE`). Threads
/// inherit the priority of the thread that starts them: left to start on first use, they ran at
/// whatever the first thread to compile ran at (the runtime's blocking threads today, by
/// chance; a test's thread at the event loop's priority). Background compiles have a pool of
/// their own (`compile::background_pool`).
fn start_compile_threads() {
    STARTED.get_or_init(|| {
        let mut pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("loom-wasm-compile-{i}"))
            .start_handler(|_| crate::threads::lower_priority());
        // The count is given, so that rayon does not read the cgroup's files again (see
        // threads::cpus), unless RAYON_NUM_THREADS sets it (rayon reads that only when none is).
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            pool = pool.num_threads(crate::threads::cpus());
        }
        let started = pool.build_global();
        // An error with a cause is threads that could not start (a thread limit): rayon's global
        // pool then stays unusable for good, and engines compile on the calling thread instead.
        // Without one, the pool was started already (by another user of rayon) and works.
        match started {
            Err(e) if std::error::Error::source(&e).is_some() => CompileThreads::None,
            _ => CompileThreads::Started,
        }
    });
}

/// Whether rayon's global pool is there for wasmtime's parallel compilation.
#[derive(Clone, Copy, PartialEq)]
enum CompileThreads {
    Started,
    None,
}

static STARTED: OnceLock<CompileThreads> = OnceLock::new();

fn build(kind: EngineKind) -> Result<Engine, String> {
    start_compile_threads();
    // The pooling allocator reserves address space up front; where the OS refuses that
    // (a low ulimit -v, say), fall back to allocating on demand rather than failing.
    let pooled = kind == EngineKind::Plain;
    if pooled {
        // Fix the size now: later `reserve_pool` calls cannot change a built pool.
        reserve_pool(pool_size() as u64);
    }
    let engine = Engine::new(&config(kind, pooled))
        .or_else(|e| if pooled { Engine::new(&config(kind, false)) } else { Err(e) })
        .map_err(|e| format!("cannot create the wasmtime engine: {e:#}"))?;
    ticker().engines.lock().map_err(|_| "ticker poisoned".to_string())?.push(engine.clone());
    Ok(engine)
}

static CELLS: [OnceLock<Result<Engine, String>>; EngineKind::ALL.len()] = [const { OnceLock::new() }; EngineKind::ALL.len()];

/// The process-wide engine of this kind, created on first use.
pub fn engine(kind: EngineKind) -> Result<&'static Engine, ExecError> {
    CELLS[kind.index()].get_or_init(|| build(kind)).as_ref().map_err(|e| ExecError::Internal(e.clone()))
}

/// Whether the process's engine of this kind has been built (or failed to build).
pub fn built(kind: EngineKind) -> bool {
    CELLS[kind.index()].get().is_some()
}

/// Linear memory that freed slots of the pooled engine keep resident (0 before it is built).
pub fn pool_idle_resident_bytes() -> u64 {
    match CELLS[EngineKind::Plain.index()].get() {
        Some(Ok(e)) => e.pooling_allocator_metrics().map_or(0, |m| m.unused_memory_bytes_resident() as u64),
        _ => 0,
    }
}

struct Ticker {
    engines: Mutex<Vec<Engine>>,
    running: AtomicUsize,
    /// The ticker is parked, or about to park (a call starting must unpark it).
    parked: AtomicBool,
    thread: OnceLock<Option<Thread>>,
}

fn ticker() -> &'static Ticker {
    static TICKER: OnceLock<Ticker> = OnceLock::new();
    TICKER.get_or_init(|| Ticker {
        engines: Mutex::new(Vec::new()),
        running: AtomicUsize::new(0),
        parked: AtomicBool::new(false),
        thread: OnceLock::new(),
    })
}

fn ticker_thread() -> Option<&'static Thread> {
    ticker()
        .thread
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("loom-wasm-epoch".into())
                .spawn(|| {
                    let t = ticker();
                    let mut idle_ticks = 0;
                    loop {
                        if t.running.load(Ordering::SeqCst) == 0 {
                            idle_ticks += 1;
                            if idle_ticks > LINGER_TICKS {
                                // Idle: sleep until a call starts (spurious wake-ups just loop).
                                t.parked.store(true, Ordering::SeqCst);
                                if t.running.load(Ordering::SeqCst) == 0 {
                                    std::thread::park();
                                }
                                t.parked.store(false, Ordering::SeqCst);
                                idle_ticks = 0;
                                continue;
                            }
                        } else {
                            idle_ticks = 0;
                        }
                        std::thread::sleep(TICK);
                        if let Ok(engines) = t.engines.lock() {
                            for e in engines.iter() {
                                e.increment_epoch();
                            }
                        }
                    }
                })
                .ok()
                .map(|h| h.thread().clone())
        })
        .as_ref()
}

/// Held while guest code may run: keeps the ticker ticking.
pub struct Running(());

impl Running {
    pub fn start() -> Result<Running, ExecError> {
        let thread = ticker_thread()
            .ok_or_else(|| ExecError::Internal("cannot start the epoch ticker thread".into()))?;
        // Unparking costs a system call; the ticker lingers a few ticks after the last call, so
        // calls in quick succession find it awake.
        if ticker().running.fetch_add(1, Ordering::SeqCst) == 0 && ticker().parked.load(Ordering::SeqCst) {
            thread.unpark();
        }
        Ok(Running(()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        ticker().running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
