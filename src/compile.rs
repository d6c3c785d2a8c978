//! Compiling: a module's shape checked against the compile limits, then compiled by the compiler
//! the shape allows (or the one asked for: the baseline compiler of a tier-up), checked against
//! the host and pre-linked; one compile job in flight per (digest, engine) in the whole process,
//! running on the runtime's blocking threads at most one per core (and one in the background, at
//! lower priority; a call that comes to wait for that one while it runs races it with a second
//! compile at its own priority, see `unless_hurried`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{watch, AcquireError, Notify};
use wasmtime::Module;

use crate::abi;
use crate::compile_turns::Owner;
pub use crate::compile_panics::{panicked, quiet_known_panics};
#[cfg(test)]
pub(crate) use crate::compile_slots::{hold_background_slots, hold_call_slots, hold_large_slots};
use crate::compile_slots::{background_slots, call_slot, takes_large_slot, Slot};
use crate::digest::{sha256, Digest};
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::compiled_module::Facts;
use crate::modules::{prepare, Compiled, CompiledModule, Loaded};
use crate::refused_compiles;
use crate::shape::{self, CompileLimits, Shape};

/// Checks a module's shape against the compile limits, then compiles it with the compiler its
/// shape allows, and checks it against the host and the guest ABI. Blocking: run it off the
/// caller's thread.
pub fn compile(bytes: &[u8], kind: EngineKind, limits: &CompileLimits) -> Result<CompiledModule, ExecError> {
    compile_digested(bytes, sha256(bytes), kind, limits, false)
}

/// `compile` of bytes whose digest is known. Every compile walks the instructions first, a
/// component's on the baseline compiler too (~60 ms for the 12 MB JavaScript component, skipped
/// until review AD): the estimate of the machine code they make (`maxCodeBytes`) bounds the
/// compile's memory. `tier_up`: the optimized code of a module already running on baseline
/// code, refused for a shape that needs the baseline compiler (it would be compiled again as it is).
pub(crate) fn compile_digested(bytes: &[u8], digest: Digest, kind: EngineKind, limits: &CompileLimits, tier_up: bool) -> Result<CompiledModule, ExecError> {
    compile_shaped(bytes, digest, kind, shape::check(bytes, limits)?, tier_up)
}

/// `compile_digested` of a module whose shape was checked.
fn compile_shaped(bytes: &[u8], digest: Digest, kind: EngineKind, shape: Shape, tier_up: bool) -> Result<CompiledModule, ExecError> {
    if tier_up && shape.needs_baseline() && !kind.baseline() {
        return Err(ExecError::CompileLimit(format!(
            "a function's shape (locals × blocks = {}) keeps the module on the baseline compiler",
            shape.cost
        )));
    }
    compile_checked(bytes, digest, kind, &shape)
}

fn compile_checked(bytes: &[u8], digest: Digest, kind: EngineKind, shape: &Shape) -> Result<CompiledModule, ExecError> {
    // A shape the optimizing compiler would take too long over goes to the baseline one; a
    // baseline compile asked for (tier-up) stays baseline.
    let kind = if shape.needs_baseline() { kind.with_baseline(true) } else { kind };
    if abi::is_component(bytes) {
        let component = wasmtime::component::Component::new(engine(kind)?, bytes).map_err(|e| {
            ExecError::InvalidModule(format!("{e:#}"))
        })?;
        let facts = Facts { has_start: true, state_in_memory: false, instance_bytes: shape.charged_instance_bytes() };
        return prepare(Compiled::Component(component), digest, kind, facts);
    }
    // The compiled module is the instrumented one: its whole state can be read and restored.
    let (instrumented, _) = crate::instrument::instrument(bytes)?;
    let module = Module::new(engine(kind)?, &instrumented).map_err(|e| {
        let e = format!("{e:#}");
        if kind.baseline() {
            ExecError::CompileLimit(format!(
                "a function's shape (locals × blocks = {}) needs the baseline compiler, which cannot compile it: {e}",
                shape.cost
            ))
        } else {
            ExecError::InvalidModule(e)
        }
    })?;
    let facts = Facts { has_start: shape.has_start, state_in_memory: !shape.state_outside_memory, instance_bytes: shape.charged_instance_bytes() };
    prepare(Compiled::Core(module), digest, kind, facts)
}

/// One compile job in flight per (digest, engine, compile limits) in the whole process (two
/// compiles while a call races a running background one); its result is sent to everyone waiting.
/// The limits are part of the key: a job checks the module's shape against its first caller's
/// limits, so an executor with other limits joining it would get its verdict (review S: a
/// `maxFunctions: 1` executor's compile failed another executor's valid module, and a strict one
/// got code its limits refuse). It runs to the end even if they all stop waiting (a compile cannot be
/// interrupted), so a retried call joins it instead of starting another.
type CompileKey = (Digest, EngineKind, CompileLimits);

/// A compile in flight: its result, for everyone waiting, and whether a call waits for it.
#[derive(Clone)]
pub(crate) struct Job {
    pub rx: watch::Receiver<Option<Loaded>>,
    hurried: Arc<Hurried>,
}

/// Whether a background job is still of use, asked when its slot comes: a tier-up's module may
/// have left its cache (cleared, evicted, its executor dropped) while it queued.
pub(crate) type Wanted = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
struct Hurried {
    yes: AtomicBool,
    notify: Notify,
    /// Those who asked for it in the background: it runs if any still wants it.
    wanted: Mutex<Vec<Wanted>>,
}

impl Hurried {
    fn still_wanted(&self) -> bool {
        // Asked without the list's lock held (each takes its cache's lock).
        let wanted: Vec<Wanted> = self.wanted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.yes.load(Ordering::SeqCst) || wanted.iter().any(|w| w())
    }
}

impl Job {
    /// A call waits for this compile now: a background one still queued for its slot takes a
    /// call's slot instead and runs at the calls' priority; one running already is raced by a
    /// compile at the calls' priority (`unless_hurried`).
    pub(crate) fn hurry(&self) {
        self.hurried.yes.store(true, Ordering::SeqCst);
        self.hurried.notify.notify_waiters();
    }
}

pub(crate) fn compiles() -> &'static Mutex<HashMap<CompileKey, Job>> {
    static COMPILES: OnceLock<Mutex<HashMap<CompileKey, Job>>> = OnceLock::new();
    COMPILES.get_or_init(Default::default)
}

/// Whether a call waits for a compile now (`Now`), or nobody does (`Background`: the optimized
/// code of a tier-up, whose module already runs on baseline code).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Urgency {
    Now,
    Background,
}

/// The nice value of the background compiles' threads: below the calls' compiles and guest
/// threads (`threads::NICE`, 10), which are below the event loop (0). Where a call's compile or a
/// guest waits for the CPU, a background compile gets about a quarter of it (the kernel's
/// weights for nice 10 and 15 are 110 and 36); on idle cores, all of it.
const BACKGROUND_NICE: i32 = crate::threads::NICE + 5;

/// The threads background compiles run on, at lower priority: wasmtime compiles a module's
/// functions in parallel on the rayon pool it is called in, and on the process's shared pool a
/// tier-up's hundreds of functions queued ahead of those of a module a call waits for. None if
/// no thread could be started (background compiles then share the common pool).
fn background_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| compile_pool("loom-wasm-tier-up", || crate::threads::set_nice(BACKGROUND_NICE))).as_ref()
}

/// A pool of a thread per CPU named `name-<i>`, each running `start` first; None if no thread
/// could be started.
fn compile_pool(name: &'static str, start: fn()) -> Option<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(crate::threads::cpus())
        .thread_name(move |i| format!("{name}-{i}"))
        .start_handler(move |_| start())
        .build()
        .ok()
}

/// Modules past this many bytes, or whose code is estimated past this, compile on a pool of
/// their own (`large_pool`).
const LARGE_MODULE_BYTES: usize = 1 << 20;
pub(crate) const LARGE_CODE_ESTIMATE: u64 = 16 << 20;

/// `f` on `pool`'s threads (its parallel parts on them), or on the process's shared pool.
fn in_pool<T: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// The threads calls' compiles of large modules run on: on the process's shared pool, the
/// hundreds of functions of one queued ahead of every other call's, so that one tenant's 12 MB
/// component held another's 2 KB module for the whole of its compile (1.4-1.9 s with the
/// baseline compiler; 12-19 s, past `compileTimeoutMs`, with the optimizing one: review AD).
/// Small modules keep the shared pool to themselves; large ones share this one. None if no
/// thread could be started (they then share the common pool).
pub(crate) fn large_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| compile_pool("loom-wasm-compile-large", crate::threads::lower_priority)).as_ref()
}

/// How long after a call's heavy compile its freed memory is given back (`give_back_memory`).
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Gives the compile's freed memory back to the system: the allocator keeps what a large
/// compile freed (review AD: 0.8-1 GB stayed resident after background compiles of 400 KB
/// modules whose code expands most; 1.2 GB after a call's compile of 200,000 tiny functions
/// with `tierUp` off). Run after heavy compiles, on a blocking thread of its own (it walks the
/// allocator's arenas, locking each): at once after a tier-up, `TRIM_AFTER` a call's, not while
/// the call instantiates and runs the module.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc's malloc_trim takes only the padding to keep; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A compile slot for a job: a call's, or, for a background job, the background one, unless a
/// call comes to wait for the job before that is free.
async fn slot(urgency: Urgency, owner: Owner, large: bool, hurried: &Hurried) -> Result<Slot, AcquireError> {
    if urgency == Urgency::Now {
        return Ok(call_slot(owner, large).await);
    }
    loop {
        let hurry = hurried.notify.notified();
        tokio::pin!(hurry);
        hurry.as_mut().enable();
        if hurried.yes.load(Ordering::SeqCst) {
            return Ok(call_slot(owner, large).await);
        }
        tokio::select! {
            permit = background_slots().clone().acquire_owned() => return permit.map(Slot::Background),
            _ = &mut hurry => {}
        }
    }
}

/// Whether a job whose slot came is of no use any more, and if so takes it out of the map. Only
/// the map's own receiver left (nobody waits), or a tier-up of modules that all left their caches
/// meanwhile. Decided under the map's lock: a caller joining meanwhile either made it wanted (its
/// receiver; a call's hurry) or finds it gone and starts its own, never a dropped job's `Cancelled`.
fn dropped_unwanted(key: CompileKey, urgency: Urgency, tx: &watch::Sender<Option<Loaded>>, hurried: &Hurried) -> bool {
    let mut jobs = compiles().lock().unwrap_or_else(|p| p.into_inner());
    let unwanted = tx.receiver_count() <= 1 || (urgency == Urgency::Background && !hurried.still_wanted());
    if unwanted {
        jobs.remove(&key);
    }
    unwanted
}

/// A compile on a blocking thread holding `permit`: in the background pool (`background`, at
/// its lower priority) or where the calls' compiles run.
fn run_compile(
    bytes: Arc<Vec<u8>>,
    digest: Digest,
    kind: EngineKind,
    limits: CompileLimits,
    permit: Option<Slot>,
    background: bool,
) -> impl std::future::Future<Output = Loaded> {
    let compiling = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        #[cfg(test)]
        pool_tests::count_run(&digest);
        #[cfg(test)]
        if background {
            running_held::wait_while_held(&digest);
        }
        let large = takes_large_slot(&bytes);
        let heavy = |shape: &Shape| large || shape.code_estimate > LARGE_CODE_ESTIMATE;
        // Checked and compiled on `pool`'s threads (the walk of a large module's instructions
        // too): the result, and whether the compile was a heavy one (its memory is given back
        // after it, failed or not).
        let on = |pool| {
            in_pool(pool, || match shape::check(&bytes, &limits) {
                Err(e) => (Err(e), false),
                Ok(shape) => {
                    let heavy = heavy(&shape);
                    (compile_shaped(&bytes, digest, kind, shape, background).map(Arc::new), heavy)
                }
            })
        };
        match background {
            true => on(background_pool()),
            false if bytes.len() > LARGE_MODULE_BYTES => on(large_pool()),
            // Small in bytes, but maybe not in work (100,000 tiny functions in 800 KB held a
            // small module 1.2-4.9 s: review AD's follow-up): its shape decides, read here (the
            // walk of a module this small is a few milliseconds, on this thread).
            false => match shape::check(&bytes, &limits) {
                Err(e) => (Err(e), false),
                Ok(shape) => {
                    let heavy = heavy(&shape);
                    (in_pool(heavy.then(large_pool).flatten(), || compile_shaped(&bytes, digest, kind, shape, false)).map(Arc::new), heavy)
                }
            },
        }
    });
    async move {
        let (loaded, heavy) = compiling.await.unwrap_or_else(|e| (Err(panicked("the compile", &e.to_string())), false));
        if heavy {
            // After a call's compile, once the call has most likely instantiated and run.
            let later = if background { Duration::ZERO } else { TRIM_AFTER };
            drop(tokio::spawn(async move {
                tokio::time::sleep(later).await;
                drop(tokio::task::spawn_blocking(give_back_memory));
            }));
        }
        loaded
    }
}

/// A background compile's result; should a call come to wait for it while it runs (at the lower
/// priority, where guests and calls' compiles leave it a quarter of a busy core, and no thread
/// may raise its priority back), a compile at a call's priority races it, in a call's slot while
/// the race lasts. The first success is the job's result (an error only once both failed; one the
/// running compile meets while the call's waits for a slot is the result: the same bytes on the
/// same engine). The
/// other runs to its end (a compile cannot be stopped midway) and is dropped: the background one
/// in its slot, the call's one without a slot (the slot goes to whoever waits for it).
async fn unless_hurried(
    running: impl std::future::Future<Output = Loaded>,
    bytes: Arc<Vec<u8>>,
    digest: Digest,
    kind: EngineKind,
    limits: CompileLimits,
    owner: Owner,
    hurried: &Hurried,
) -> Loaded {
    tokio::pin!(running);
    let hurry = hurried.notify.notified();
    tokio::pin!(hurry);
    hurry.as_mut().enable();
    if !hurried.yes.load(Ordering::SeqCst) {
        tokio::select! {
            done = &mut running => return done,
            _ = &mut hurry => {}
        }
    }
    let permit = tokio::select! {
        done = &mut running => return done,
        slot = call_slot(owner, takes_large_slot(&bytes) || !kind.baseline()) => slot,
    };
    let now = run_compile(bytes, digest, kind, limits, None, false);
    tokio::pin!(now);
    let mut permit = Some(permit);
    let done = tokio::select! {
        done = &mut running => match done {
            Ok(m) => Ok(m),
            Err(_) => now.await,
        },
        done = &mut now => {
            permit = None;
            match done {
                Ok(m) => Ok(m),
                Err(_) => running.await,
            }
        }
    };
    drop(permit);
    done
}

/// The compile of `bytes` for `kind`: joined if one is in flight (whatever its urgency), else
/// started. A background one (`wanted` says whether its result is still of use) is dropped
/// when its slot comes if nobody wants it any more.
///
/// `owner`: the executor whose slot turn the compile takes (`compile_turns`); one that joins
/// another's compile waits for that one's turn.
pub(crate) fn compile_job(
    bytes: Vec<u8>,
    digest: Digest,
    kind: EngineKind,
    limits: CompileLimits,
    urgency: Urgency,
    owner: Owner,
    wanted: Option<Wanted>,
) -> watch::Receiver<Option<Loaded>> {
    let key = (digest, kind, limits);
    // Refused before: refused again, without a compile.
    if let Some(e) = refused_compiles::refused().get(&key) {
        return watch::channel(Some(Err(e))).1;
    }
    let mut jobs = compiles().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(job) = jobs.get(&key) {
        match (urgency, wanted) {
            (Urgency::Now, _) => job.hurry(),
            (Urgency::Background, Some(w)) => job.hurried.wanted.lock().unwrap_or_else(|p| p.into_inner()).push(w),
            (Urgency::Background, None) => {}
        }
        return job.rx.clone();
    }
    let (tx, rx) = watch::channel(None);
    let hurried = Arc::new(Hurried::default());
    if let Some(w) = wanted {
        hurried.wanted.lock().unwrap_or_else(|p| p.into_inner()).push(w);
    }
    jobs.insert(key, Job { rx: rx.clone(), hurried: hurried.clone() });
    drop(jobs);
    let Some(rt) = crate::runtime::handle() else {
        let _ = tx.send(Some(Err(ExecError::internal("no async runtime for compiling"))));
        return rx;
    };
    rt.spawn(async move {
        // An optimizing compile in a call's slot (a deterministic definition's, `tierUp: false`,
        // `precompile`, a hurried tier-up) takes a large module's slot too: its time is not
        // bounded by the module's size (review BN1: an 84 KB module of one function with 12,000
        // values live across 4,000 blocks took Cranelift 9 s; two of them held both slots, and
        // another executor's 1 KB first call waited 8.5-8.9 s). A baseline compile always has a
        // slot left.
        let large = takes_large_slot(&bytes) || !kind.baseline();
        let result = match slot(urgency, owner, large, &hurried).await {
            Ok(_) if dropped_unwanted(key, urgency, &tx, &hurried) => {
                // Out of the map already: a caller from now on starts a compile of its own.
                let _ = tx.send(Some(Err(ExecError::Cancelled)));
                return;
            }
            Ok(permit) => {
                let bytes = Arc::new(bytes);
                if urgency == Urgency::Background && !hurried.yes.load(Ordering::SeqCst) {
                    let running = run_compile(bytes.clone(), digest, kind, limits, Some(permit), true);
                    unless_hurried(running, bytes, digest, kind, limits, owner, &hurried).await
                } else {
                    run_compile(bytes, digest, kind, limits, Some(permit), false).await
                }
            }
            Err(_) => Err(ExecError::internal("compile slots closed")),
        };
        // A call's compile only: a tier-up's refuses shapes a call's compile takes to the
        // baseline compiler.
        if let (Err(e), Urgency::Now) = (&result, urgency) {
            refused_compiles::refused().note(key, e);
        }
        compiles().lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let _ = tx.send(Some(result));
    });
    rx
}

/// Tests: a background compile of a module held here stops once running (its slot taken,
/// before compiling) until the module is released.
#[cfg(test)]
pub(crate) mod running_held {
    use std::collections::HashMap;
    use std::sync::{Condvar, Mutex, OnceLock};

    use crate::digest::Digest;

    /// Held modules, and whether a compile of each waits now.
    fn state() -> &'static (Mutex<HashMap<Digest, bool>>, Condvar) {
        static STATE: OnceLock<(Mutex<HashMap<Digest, bool>>, Condvar)> = OnceLock::new();
        STATE.get_or_init(Default::default)
    }

    pub(crate) fn hold(digest: Digest) {
        state().0.lock().expect("held").insert(digest, false);
    }

    pub(crate) fn release(digest: &Digest) {
        state().0.lock().expect("held").remove(digest);
        state().1.notify_all();
    }

    /// Whether a background compile of `digest` is running and stopped here.
    pub(crate) fn waiting(digest: &Digest) -> bool {
        state().0.lock().expect("held").get(digest).copied().unwrap_or(false)
    }

    pub(crate) fn wait_while_held(digest: &Digest) {
        let (held, released) = state();
        let mut held = held.lock().expect("held");
        while let Some(waiting) = held.get_mut(digest) {
            *waiting = true;
            held = released.wait(held).expect("held");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
#[path = "compile_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "compile_pool_tests.rs"]
mod pool_tests;
