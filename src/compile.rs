//! Compiling: a module's shape checked against the compile limits, then compiled by the compiler
//! the shape allows (or the one asked for: the baseline compiler of a tier-up), checked against
//! the host and pre-linked; one compile in flight per (digest, engine) in the whole process,
//! running on the runtime's blocking threads at most one per core (and one in the background, at
//! lower priority).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{watch, Semaphore};
use wasmtime::Module;

use crate::abi;
use crate::digest::{sha256, Digest};
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::modules::{prepare, Compiled, CompiledModule, Loaded};
use crate::shape::{self, CompileLimits, Shape};

/// Checks a module's shape against the compile limits, then compiles it with the compiler its
/// shape allows, and checks it against the host and the guest ABI. Blocking: run it off the
/// caller's thread.
pub fn compile(bytes: &[u8], kind: EngineKind, limits: &CompileLimits) -> Result<CompiledModule, ExecError> {
    let shape = shape::check(bytes, limits)?;
    compile_checked(bytes, kind, &shape)
}

fn compile_checked(bytes: &[u8], kind: EngineKind, shape: &Shape) -> Result<CompiledModule, ExecError> {
    // A shape the optimizing compiler would take too long over goes to the baseline one; a
    // baseline compile asked for (tier-up) stays baseline.
    let kind = if shape.needs_baseline() { kind.with_baseline(true) } else { kind };
    let digest = sha256(bytes);
    if abi::is_component(bytes) {
        let component = wasmtime::component::Component::new(engine(kind)?, bytes).map_err(|e| {
            ExecError::InvalidModule(format!("{e:#}"))
        })?;
        return prepare(Compiled::Component(component), digest, kind, true);
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
    let mut prepared = prepare(Compiled::Core(module), digest, kind, shape.has_start)?;
    prepared.state_in_memory = !shape.state_outside_memory;
    Ok(prepared)
}

/// One compile in flight per (digest, engine) in the whole process; its result is sent to
/// everyone waiting. It runs to the end even if they all stop waiting (a compile cannot be
/// interrupted), so a retried call joins it instead of starting another.
type CompileKey = (Digest, EngineKind);

pub(crate) fn compiles() -> &'static Mutex<HashMap<CompileKey, watch::Receiver<Option<Loaded>>>> {
    static COMPILES: OnceLock<Mutex<HashMap<CompileKey, watch::Receiver<Option<Loaded>>>>> = OnceLock::new();
    COMPILES.get_or_init(Default::default)
}

/// Whether a call waits for a compile now (`Now`), or nobody does (`Background`: the optimized
/// code of a tier-up, whose module already runs on baseline code).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Urgency {
    Now,
    Background,
}

/// Compiles running at once in the process; more wait, and one whose callers all left by its
/// turn is dropped without compiling. Background compiles have a slot of their own: they never
/// hold one a call waits for (a worker's first calls of new modules, one after another, each
/// waited behind the tier-ups of the modules before).
fn compile_slots(urgency: Urgency) -> &'static Arc<Semaphore> {
    static NOW: OnceLock<Arc<Semaphore>> = OnceLock::new();
    static BACKGROUND: OnceLock<Arc<Semaphore>> = OnceLock::new();
    match urgency {
        Urgency::Now => NOW.get_or_init(|| Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())))),
        Urgency::Background => BACKGROUND.get_or_init(|| Arc::new(Semaphore::new(1))),
    }
}

/// How much lower than the process's the background compiles' threads run (their nice value):
/// where a call waits for the CPU, they get about a tenth of it (the kernel's weights for nice 0
/// and 10 are 1024 and 110); on idle cores, all of it.
const BACKGROUND_NICE: libc::c_int = 10;

/// The threads background compiles run on, at lower priority: wasmtime compiles a module's
/// functions in parallel on the rayon pool it is called in, and on the process's shared pool a
/// tier-up's hundreds of functions queued ahead of those of a module a call waits for. None if
/// no thread could be started (background compiles then share the common pool).
fn background_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
            .thread_name(|i| format!("loom-wasm-tier-up-{i}"))
            .start_handler(|_| lower_this_threads_priority())
            .build()
            .ok()
    })
    .as_ref()
}

/// Raises the calling thread's nice value (on Linux the nice value is per thread). Best effort:
/// a thread that stays at the process's priority only competes as before.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread; no memory is passed.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (now + BACKGROUND_NICE).min(19));
    }
}

/// The nice value of the calling thread (for tests).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn this_threads_nice() -> i32 {
    // SAFETY: as above.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

/// The compile of `bytes` for `kind`: joined if one is in flight (whatever its urgency), else
/// started.
pub(crate) fn compile_job(bytes: Vec<u8>, digest: Digest, kind: EngineKind, limits: CompileLimits, urgency: Urgency) -> watch::Receiver<Option<Loaded>> {
    let mut jobs = compiles().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rx) = jobs.get(&(digest, kind)) {
        return rx.clone();
    }
    let (tx, rx) = watch::channel(None);
    jobs.insert((digest, kind), rx.clone());
    drop(jobs);
    let Some(rt) = crate::runtime::handle() else {
        let _ = tx.send(Some(Err(ExecError::internal("no async runtime for compiling"))));
        return rx;
    };
    rt.spawn(async move {
        let result = match compile_slots(urgency).clone().acquire_owned().await {
            // Only the map's own receiver is left: nobody waits any more.
            Ok(_) if tx.receiver_count() <= 1 => None,
            Ok(permit) => {
                let r = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let run = || compile(&bytes, kind, &limits).map(Arc::new);
                    match (urgency, background_pool()) {
                        (Urgency::Background, Some(pool)) => pool.install(run),
                        _ => run(),
                    }
                })
                .await
                .unwrap_or_else(|e| Err(ExecError::internal(format!("the compile panicked: {e}"))));
                Some(r)
            }
            Err(_) => Some(Err(ExecError::internal("compile slots closed"))),
        };
        compiles().lock().unwrap_or_else(|p| p.into_inner()).remove(&(digest, kind));
        let _ = tx.send(Some(result.unwrap_or_else(|| Err(ExecError::Cancelled))));
    });
    rx
}


#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn background_compiles_run_at_lower_priority_than_the_process() {
        let here = this_threads_nice();
        let pool = background_pool().expect("a background pool");
        let (nice, name) = pool.install(|| (this_threads_nice(), std::thread::current().name().map(String::from)));
        assert_eq!(nice, (here + BACKGROUND_NICE).min(19), "on {name:?}");
        assert!(name.is_some_and(|n| n.starts_with("loom-wasm-tier-up-")));
        // The caller's thread keeps its priority.
        assert_eq!(this_threads_nice(), here);
    }
}
