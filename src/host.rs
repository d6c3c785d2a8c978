//! What the host offers every guest: the per-Store state and the functions a guest may import
//! (`env.abort`, `env.seed`, `env.trace`, `env.Date.now`, `loom.log`). WASI preview1 is linked
//! only for modules that import it, and such a module runs only when its definition was granted
//! env or filesystem (see `capabilities`); its WASI context holds just what was granted.
//!
//! WASI's functions are linked in their async form: one that waits (a sleep in `poll_oneoff`,
//! file I/O) suspends the call's fiber instead of blocking a thread, so the call's deadline and
//! cancellation, which the executor watches around the whole call, end it mid-wait.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Module};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::WasiCtxBuilder;

use crate::abi::assemblyscript::read_text_lossy_up_to;
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::limits::MemoryLimiter;

/// Where guest log lines go (`loom.log(level, message)` and `env.trace`).
pub trait LogSink: Send + Sync {
    fn log(&self, level: &str, message: &str);
    /// A warning of the host's own (a snapshot not stored, a collection that failed, memory
    /// growth): it must not be lost to guests flooding the sink.
    fn warn(&self, message: &str) {
        self.log("warn", message)
    }
    /// As `BlobSource::release`: nothing logs after it.
    fn release(&self) {}
}

/// Where a call's heartbeats go (`loom.progress(json)`): the call's `onProgress`.
pub trait ProgressSink: Send + Sync {
    fn progress(&self, detail: &str);
    /// A heartbeat the rate limit holds back: kept as the newest, for delivery when the call
    /// settles should no later one be sent (a call ended from outside never sends it).
    fn held(&self, _detail: &str) {}
}

/// How often heartbeats are delivered at most; the latest one always is, at the end of the call.
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// Characters of one heartbeat kept.
pub const MAX_PROGRESS_CHARS: usize = 64 * 1024;
/// The longest log line handed to `onLog`, in characters (as AssemblyScript's messages); past it
/// the line is cut and ends with `…`.
pub const MAX_LOG_CHARS: usize = 4096;

/// The first `max` characters of `s`, the cut marked with `…` (as `truncate_chars`, copying only
/// what is kept).
pub fn cut_chars(s: &str, max: usize) -> String {
    if s.len() > max {
        if let Some((at, _)) = s.char_indices().nth(max) {
            return format!("{}…", &s[..at]);
        }
    }
    s.to_string()
}

/// Cuts `s` to `max` characters, marking the cut with `…`.
pub fn truncate_chars(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    if let Some((at, _)) = s.char_indices().nth(max) {
        s.truncate(at);
        s.push('…');
    }
}

/// Heartbeat bytes the process delivers to the JS thread per `PROGRESS_INTERVAL`, all calls
/// together; past them a due heartbeat is held as one within the interval is (the latest is
/// delivered when the call ends). Per call only, 32 calls at once sending 64K characters each
/// held the JS thread 2.3-5.9 s (review AE's second follow-up).
pub const PROGRESS_BYTES_PER_INTERVAL: u64 = 512 * 1024;
/// A call's heartbeat goes past the process's budget after this long without one delivered, or
/// if it is at most `PROGRESS_SMALL_BYTES`.
pub const PROGRESS_STARVED: std::time::Duration = std::time::Duration::from_secs(1);
pub const PROGRESS_SMALL_BYTES: usize = 1024;

/// The process's heartbeat bytes in the current interval.
pub(crate) struct ProgressWindow(std::sync::Mutex<(Option<std::time::Instant>, u64)>);

impl ProgressWindow {
    pub(crate) const fn new() -> ProgressWindow {
        ProgressWindow(std::sync::Mutex::new((None, 0)))
    }

    /// Whether a heartbeat of `bytes` may go now (counted if so). The first of an interval always
    /// may, whatever its size, and so does one `forced`.
    pub(crate) fn admit(&self, bytes: u64, now: std::time::Instant, forced: bool) -> bool {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.is_none_or(|start| now.duration_since(start) >= PROGRESS_INTERVAL) {
            *w = (Some(now), 0);
        }
        if !forced && w.1 > 0 && w.1.saturating_add(bytes) > PROGRESS_BYTES_PER_INTERVAL {
            return false;
        }
        w.1 = w.1.saturating_add(bytes);
        true
    }
}

fn progress_window() -> &'static ProgressWindow {
    static WINDOW: ProgressWindow = ProgressWindow::new();
    &WINDOW
}

/// A call's heartbeats: the latest (kept for errors: `lastProgress`) and the rate limit.
#[derive(Clone)]
pub struct Progress {
    pub sink: Option<Arc<dyn ProgressSink>>,
    /// The latest heartbeat of the call, shared with the executor (read when the call fails).
    pub last: Arc<std::sync::Mutex<Option<String>>>,
    /// The call's `maxOutputDepth`: a heartbeat nested deeper arrives as text.
    pub max_depth: u32,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { sink: None, last: Default::default(), max_depth: crate::limits::DEFAULT_MAX_OUTPUT_DEPTH }
    }
}

#[derive(Default)]
struct ProgressState {
    sent_at: Option<std::time::Instant>,
    pending: bool,
}

/// Log lines one call may emit; past it lines are dropped (a guest logging in a loop must not
/// flood the host), with one final line saying so.
pub const LOG_LINES_PER_CALL: u32 = 1000;

/// The data of one Store.
pub struct HostState {
    pub limiter: MemoryLimiter,
    pub log: Option<Arc<dyn LogSink>>,
    /// Lines this call may still log.
    pub log_budget: u32,
    /// The WASI context, for modules that import WASI.
    pub wasi: Option<Box<WasiP1Ctx>>,
    /// For a deterministic call: the time and randomness the guest sees.
    pub det: Option<crate::replay::Determinism>,
    /// The Extism kernel's state (an Extism plugin's input, output, vars).
    pub extism: crate::abi::extism::Kernel,
    /// The call's heartbeats.
    pub progress: Progress,
    /// The host functions and network this call may reach (none between calls).
    pub access: crate::host_functions::HostAccess,
    /// A component's WASI preview 2 state (`wasi_http`).
    pub component: Option<Box<crate::wasi_http::ComponentWasi>>,
    /// The granted directory's lock of looks and renames (`wasi_open`), with a filesystem grant.
    pub paths: Option<crate::wasi_open::PathLock>,
    /// Which fiber stack the Store's guest code runs on (recorded for actors only).
    pub stack: crate::fiber_stacks::StackProbe,
    /// A component's "hostcall fuel" for its result (see `component::on_call_hook`); its
    /// imports' arguments keep wasmtime's default.
    pub result_fuel: Option<usize>,
    /// The host is calling into the guest (its `__new`, for a host function's result): a host
    /// function called from there is refused (each nested call would take another fiber stack).
    pub in_guest_for_host: bool,
    progress_state: ProgressState,
}

impl HostState {
    pub fn new(max_memory_bytes: u64, log: Option<Arc<dyn LogSink>>) -> Self {
        HostState {
            limiter: MemoryLimiter::new(max_memory_bytes),
            log,
            log_budget: LOG_LINES_PER_CALL,
            wasi: None,
            det: None,
            extism: Default::default(),
            progress: Progress::default(),
            access: Default::default(),
            component: None,
            paths: None,
            stack: Default::default(),
            result_fuel: None,
            in_guest_for_host: false,
            progress_state: ProgressState::default(),
        }
    }

    /// Records a heartbeat; delivers it unless one was delivered within `PROGRESS_INTERVAL`.
    pub(crate) fn heartbeat(&mut self, mut detail: String) {
        truncate_chars(&mut detail, MAX_PROGRESS_CHARS);
        if crate::output::depth(&detail, self.progress.max_depth) > self.progress.max_depth {
            // As the JSON of its text, which parses to the text: as outputs, no deeper than
            // `maxOutputDepth` reaches JS (review AI: a heartbeat 32,768 levels deep made the
            // JSON.stringify of `lastProgress` throw RangeError).
            detail = serde_json::Value::String(detail).to_string();
        }
        if let Ok(mut last) = self.progress.last.lock() {
            *last = Some(detail.clone());
        }
        let Some(sink) = &self.progress.sink else { return };
        let due = self.progress_state.sent_at.is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL);
        // A call's first heartbeat, one after a second without any, and a small one go whatever
        // the process's budget: else calls flooding it starved every other tenant's (a 2-byte
        // heartbeat waited 4.6 s: review AE's third follow-up).
        let starved = self.progress_state.sent_at.is_none_or(|t| t.elapsed() >= PROGRESS_STARVED);
        let force = starved || detail.len() <= PROGRESS_SMALL_BYTES;
        if due && progress_window().admit(detail.len() as u64, std::time::Instant::now(), force) {
            sink.progress(&detail);
            self.progress_state.sent_at = Some(std::time::Instant::now());
            self.progress_state.pending = false;
        } else {
            sink.held(&detail);
            self.progress_state.pending = true;
        }
    }

    /// At the end of a call: delivers a heartbeat held back by the rate limit.
    pub fn flush_progress(&mut self) {
        if !std::mem::take(&mut self.progress_state.pending) {
            return;
        }
        let last = self.progress.last.lock().ok().and_then(|l| l.clone());
        if let (Some(sink), Some(detail)) = (&self.progress.sink, last) {
            sink.progress(&detail);
        }
    }

    /// Readies the state for a new call's heartbeats.
    pub fn set_progress(&mut self, progress: Progress) {
        self.progress = progress;
        self.progress_state = ProgressState::default();
    }

    /// Sends one line to the sink, within the call's budget.
    pub(crate) fn emit(&mut self, level: &str, message: &str) {
        let Some(sink) = &self.log else { return };
        match self.log_budget {
            0 => {}
            1 => sink.log("warn", &format!("log limit of {LOG_LINES_PER_CALL} lines per call reached; dropping the rest")),
            _ if message.len() > MAX_LOG_CHARS => {
                // Each line becomes a JS string on the event loop: a guest's 200 MB line stalled it.
                let mut line = message.to_string();
                truncate_chars(&mut line, MAX_LOG_CHARS);
                sink.log(level, &line)
            }
            _ => sink.log(level, message),
        }
        self.log_budget = self.log_budget.saturating_sub(1);
    }
}

/// Imports the linker satisfies, as (module, name).
pub const PROVIDED: &[(&str, &str)] =
    &[("env", "abort"), ("env", "seed"), ("env", "trace"), ("env", "Date.now"), ("loom", "log"), ("loom", "progress")];

const LOG_LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

fn memory_text(caller: &mut Caller<'_, HostState>, ptr: i32) -> String {
    memory_text_up_to(caller, ptr, crate::abi::assemblyscript::MAX_ABORT_TEXT_CHARS)
}

/// `memory_text`, cut at `max_units` UTF-16 units.
fn memory_text_up_to(caller: &mut Caller<'_, HostState>, ptr: i32, max_units: usize) -> String {
    match caller.get_export("memory").and_then(|e| e.into_memory()) {
        Some(mem) => read_text_lossy_up_to(mem.data(&*caller), ptr, max_units),
        None => String::new(),
    }
}

/// The preview1 WASI module name, the only WASI version linked.
pub const WASI_P1: &str = "wasi_snapshot_preview1";

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
    def(linker.func_wrap("env", "seed", |caller: Caller<'_, HostState>| -> f64 {
        // AssemblyScript seeds Math.random with this; a fresh value per call, like `Date.now()`,
        // unless the call is deterministic.
        if let Some(det) = caller.data().det {
            return det.seed_value();
        }
        let mut h = RandomState::new().build_hasher();
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
        (h.finish() >> 11) as f64
    }))?;
    def(linker.func_wrap("env", "Date.now", |caller: Caller<'_, HostState>| -> f64 {
        if let Some(det) = caller.data().det {
            return det.now_ms;
        }
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as f64).unwrap_or(0.0)
    }))?;
    def(linker.func_wrap("loom", "progress", |mut caller: Caller<'_, HostState>, msg: i32| {
        // A heartbeat's whole text, up to its limit (as a diagnostic's, it was cut at 4,096).
        let text = memory_text_up_to(&mut caller, msg, MAX_PROGRESS_CHARS);
        caller.data_mut().heartbeat(text);
    }))?;
    def(linker.func_wrap(
        "env",
        "trace",
        |mut caller: Caller<'_, HostState>, msg: i32, n: i32, a0: f64, a1: f64, a2: f64, a3: f64, a4: f64| {
            if caller.data().log.is_none() || caller.data().log_budget == 0 {
                return;
            }
            let mut line = memory_text(&mut caller, msg);
            for v in [a0, a1, a2, a3, a4].iter().take(n.clamp(0, 5) as usize) {
                line.push_str(&format!(" {v}"));
            }
            caller.data_mut().emit("trace", &line);
        },
    ))?;
    def(linker.func_wrap("loom", "log", |mut caller: Caller<'_, HostState>, level: i32, msg: i32| {
        if caller.data().log.is_none() || caller.data().log_budget == 0 {
            return;
        }
        let text = memory_text(&mut caller, msg);
        let level = LOG_LEVELS.get(level.clamp(0, 3) as usize).copied().unwrap_or("info");
        caller.data_mut().emit(level, &text);
    }))?;
    // A store of a WASI module always gets its context at instantiation; an empty, closed one
    // stands in should that ever be missing (never a panic).
    p1::add_to_linker_async(&mut linker, |s: &mut HostState| &mut **s.wasi.get_or_insert_with(|| Box::new(WasiCtxBuilder::new().build_p1())))
        .map_err(|e| format!("{e:#}"))?;
    crate::wasi_open::shadow_p1(&mut linker).map_err(|e| format!("{e:#}"))?;
    crate::wasi_poll::shadow_p1(&mut linker).map_err(|e| format!("{e:#}"))?;
    // wasmtime-wasi refuses exit codes past 125 (a host error: `TRAP`); any code a guest exits
    // with is its answer (`GUEST_ERROR` with `exitCode`, 0 a success), as its C `exit(255)` means.
    linker.allow_shadowing(true);
    let exit = linker.func_wrap(WASI_P1, "proc_exit", |code: i32| -> wasmtime::Result<()> { Err(wasmtime_wasi::I32Exit(code).into()) }).map(|_| ());
    linker.allow_shadowing(false);
    exit.map_err(|e| format!("{e:#}"))?;
    crate::abi::extism::add_to_linker(&mut linker).map_err(|e| format!("{e:#}"))?;
    Ok(linker)
}

type LinkerCell = OnceLock<Result<Linker<HostState>, String>>;

/// The process-wide linker for an engine kind: every host function a core module may import
/// (what it may call is decided per module and call: `check_imports`, `authorize`).
pub fn linker(kind: EngineKind) -> Result<&'static Linker<HostState>, ExecError> {
    static CELLS: [LinkerCell; EngineKind::ALL.len()] = [const { OnceLock::new() }; EngineKind::ALL.len()];
    CELLS[kind.index()].get_or_init(|| build_linker(kind)).as_ref().map_err(|e| ExecError::Internal(e.clone()))
}

/// A module's imports beyond what every guest gets.
#[derive(Debug, Clone, Default)]
pub struct Imports {
    /// WASI preview1 functions (they need a grant at call time).
    pub wasi: Vec<String>,
    /// Host functions (and `loom.http`): granted per definition at call time.
    pub host: Vec<crate::host_functions::HostImport>,
    /// The HTTP function it imports, if any (`loom.http`).
    pub network: Option<String>,
}

/// Checks a module's imports against what the host offers. Other WASI versions than preview1
/// are `CAPABILITY_DENIED`; any other import is a host function, granted or refused per call
/// (an unknown import that is not a function is `INVALID_MODULE`).
pub fn check_imports(module: &Module) -> Result<Imports, ExecError> {
    let mut out = Imports::default();
    let mut other_wasi = Vec::new();
    let mut unknown = Vec::new();
    for imp in module.imports() {
        let (m, n) = (imp.module(), imp.name());
        if PROVIDED.contains(&(m, n)) {
            continue;
        }
        // Extism's http_request is refused when called without a grant (Extism's semantics:
        // plugins often import it without using it).
        if m == crate::abi::extism::MODULE && crate::abi::extism::FUNCTIONS.iter().any(|(f, _, _)| *f == n) {
            continue;
        }
        let name = format!("{m}.{n}");
        if m == WASI_P1 {
            out.wasi.push(name);
        } else if m.starts_with("wasi") {
            other_wasi.push(name);
        } else {
            if (m, n) == crate::host_functions::HTTP_IMPORT {
                out.network = Some(name);
            }
            unknown.push((m, n));
        }
    }
    if !other_wasi.is_empty() {
        return Err(ExecError::CapabilityDenied(format!(
            "only {WASI_P1} can be granted; the module imports {}",
            crate::trap_text::name_list(&other_wasi, 20)
        )));
    }
    out.host = crate::host_functions::host_imports(module, unknown.into_iter())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Beats(std::sync::Mutex<Vec<String>>);

    impl ProgressSink for Beats {
        fn progress(&self, detail: &str) {
            self.0.lock().expect("beats").push(detail.into());
        }
    }

    #[test]
    fn a_heartbeat_nested_past_max_output_depth_arrives_as_the_json_of_its_text() {
        let beats = Arc::new(Beats::default());
        let mut state = HostState::new(1 << 20, None);
        state.set_progress(Progress { sink: Some(beats.clone()), last: Default::default(), max_depth: 3 });
        state.heartbeat("[[[1]]]".into());
        state.flush_progress();
        let deep = "[[[[1]]]]".to_string();
        state.set_progress(Progress { sink: Some(beats.clone()), last: state.progress.last.clone(), max_depth: 3 });
        state.heartbeat(deep.clone());
        let quoted = serde_json::Value::String(deep.clone()).to_string();
        assert_eq!(*beats.0.lock().expect("beats"), vec!["[[[1]]]".to_string(), quoted.clone()]);
        assert_eq!(state.progress.last.lock().expect("last").as_deref(), Some(quoted.as_str()), "lastProgress too");
        assert_eq!(serde_json::from_str::<String>(&quoted).expect("parses"), deep);
    }

    #[test]
    fn the_processs_heartbeats_share_a_budget_per_interval() {
        let w = ProgressWindow::new();
        let t0 = Instant::now();
        let each = PROGRESS_BYTES_PER_INTERVAL / 4;
        assert!((0..4).all(|_| w.admit(each, t0, false)));
        assert!(!w.admit(1, t0 + Duration::from_millis(50), false), "past the budget, within the interval");
        assert!(w.admit(1, t0 + Duration::from_millis(50), true), "unless forced (a starved call's, a small one)");
        assert!(w.admit(each, t0 + PROGRESS_INTERVAL, false), "a new interval");
        let big = Instant::now() + Duration::from_secs(5);
        assert!(w.admit(10 * PROGRESS_BYTES_PER_INTERVAL, big, false), "the first of an interval goes, whatever its size");
        assert!(!w.admit(1, big, false));
    }
}
