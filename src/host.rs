//! What the host offers every guest: the per-Store state and the functions a guest may import
//! (`env.abort`, `env.seed`, `env.trace`, `env.Date.now`, `loom.log`). Nothing else is linked:
//! no WASI, no host access. Capabilities that grant more are checked before linking.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module};

use crate::abi::assemblyscript::read_text_lossy;
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::limits::MemoryLimiter;

/// Where guest log lines go (`loom.log(level, message)` and `env.trace`).
pub trait LogSink: Send + Sync {
    fn log(&self, level: &str, message: &str);
}

/// The data of one Store.
pub struct HostState {
    pub limiter: MemoryLimiter,
    pub log: Option<Arc<dyn LogSink>>,
}

impl HostState {
    pub fn new(max_memory_bytes: u64, log: Option<Arc<dyn LogSink>>) -> Self {
        HostState { limiter: MemoryLimiter::new(max_memory_bytes), log }
    }
}

/// Imports the linker satisfies, as (module, name).
pub const PROVIDED: &[(&str, &str)] =
    &[("env", "abort"), ("env", "seed"), ("env", "trace"), ("env", "Date.now"), ("loom", "log")];

const LOG_LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

fn memory_text(caller: &mut Caller<'_, HostState>, ptr: i32) -> String {
    match caller.get_export("memory").and_then(|e| e.into_memory()) {
        Some(mem) => read_text_lossy(mem.data(&*caller), ptr),
        None => String::new(),
    }
}

fn build_linker(kind: EngineKind) -> Result<Linker<HostState>, String> {
    let engine = engine(kind).map_err(|e| e.to_string())?;
    let mut linker = Linker::new(engine);
    let def = |r: wasmtime::Result<&mut Linker<HostState>>| r.map(|_| ()).map_err(|e| format!("{e:#}"));
    def(linker.func_wrap(
        "env",
        "abort",
        |mut caller: Caller<'_, HostState>, msg: i32, file: i32, line: i32, col: i32| -> wasmtime::Result<()> {
            let message = memory_text(&mut caller, msg);
            let file = memory_text(&mut caller, file);
            Err(wasmtime::Error::new(ExecError::GuestAbort {
                message,
                file,
                line: line as u32,
                column: col as u32,
            }))
        },
    ))?;
    def(linker.func_wrap("env", "seed", || -> f64 {
        // AssemblyScript seeds Math.random with this; a fresh value per call, like `Date.now()`.
        let mut h = RandomState::new().build_hasher();
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        (h.finish() >> 11) as f64
    }))?;
    def(linker.func_wrap("env", "Date.now", || -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as f64).unwrap_or(0.0)
    }))?;
    def(linker.func_wrap(
        "env",
        "trace",
        |mut caller: Caller<'_, HostState>, msg: i32, n: i32, a0: f64, a1: f64, a2: f64, a3: f64, a4: f64| {
            if caller.data().log.is_none() {
                return;
            }
            let mut line = memory_text(&mut caller, msg);
            for v in [a0, a1, a2, a3, a4].iter().take(n.clamp(0, 5) as usize) {
                line.push_str(&format!(" {v}"));
            }
            if let Some(sink) = &caller.data().log {
                sink.log("trace", &line);
            }
        },
    ))?;
    def(linker.func_wrap("loom", "log", |mut caller: Caller<'_, HostState>, level: i32, msg: i32| {
        if caller.data().log.is_none() {
            return;
        }
        let text = memory_text(&mut caller, msg);
        let level = LOG_LEVELS.get(level.clamp(0, 3) as usize).copied().unwrap_or("info");
        if let Some(sink) = &caller.data().log {
            sink.log(level, &text);
        }
    }))?;
    Ok(linker)
}

/// The process-wide linker for an engine kind.
pub fn linker(kind: EngineKind) -> Result<&'static Linker<HostState>, ExecError> {
    static PLAIN: OnceLock<Result<Linker<HostState>, String>> = OnceLock::new();
    static METERED: OnceLock<Result<Linker<HostState>, String>> = OnceLock::new();
    let cell = match kind {
        EngineKind::Plain => &PLAIN,
        EngineKind::Metered => &METERED,
    };
    cell.get_or_init(|| build_linker(kind)).as_ref().map_err(|e| ExecError::Internal(e.clone()))
}

/// Refuses imports the host does not offer: WASI (not granted) as `CAPABILITY_DENIED`, anything
/// else unknown as `INVALID_MODULE`, each naming the imports.
pub fn check_imports(module: &Module) -> Result<(), ExecError> {
    let mut wasi = Vec::new();
    let mut unknown = Vec::new();
    for imp in module.imports() {
        let (m, n) = (imp.module(), imp.name());
        if PROVIDED.contains(&(m, n)) {
            continue;
        }
        let name = format!("{m}.{n}");
        if m.starts_with("wasi") {
            wasi.push(name);
        } else {
            unknown.push(name);
        }
    }
    if !wasi.is_empty() {
        return Err(ExecError::CapabilityDenied(format!(
            "the module imports WASI functions, which are not granted: {}",
            wasi.join(", ")
        )));
    }
    if !unknown.is_empty() {
        return Err(ExecError::InvalidModule(format!(
            "unknown import(s): {} (the host provides {})",
            unknown.join(", "),
            PROVIDED.iter().map(|(m, n)| format!("{m}.{n}")).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}
