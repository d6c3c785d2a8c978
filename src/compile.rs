//! Compiling: a module's shape checked against the compile limits, then compiled by the compiler
//! the shape allows (or the one asked for: the baseline compiler of a tier-up), checked against
//! the host and pre-linked; one compile in flight per (digest, engine) in the whole process,
//! running on the runtime's blocking threads at most one per core.

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

/// Compiles running at once in the process; more wait, and one whose callers all left by its
/// turn is dropped without compiling.
fn compile_slots() -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))))
}

/// The compile of `bytes` for `kind`: joined if one is in flight, else started.
pub(crate) fn compile_job(bytes: Vec<u8>, digest: Digest, kind: EngineKind, limits: CompileLimits) -> watch::Receiver<Option<Loaded>> {
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
        let result = match compile_slots().clone().acquire_owned().await {
            // Only the map's own receiver is left: nobody waits any more.
            Ok(_) if tx.receiver_count() <= 1 => None,
            Ok(permit) => {
                let r = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    compile(&bytes, kind, &limits).map(Arc::new)
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

