//! The component ABI: a WebAssembly component of the world in `wit/activity.wit` (package
//! `loom:activity`): it exports `execute: func(input: string) -> result<string, string>` and may
//! import `loom:activity/host` (`log`, `progress`, `call` for host functions, `http` for the
//! network capability). `ok(json)` is the output, `err(message)` a
//! `GUEST_ERROR`. Run with wasmtime's component model under the same Store, limiter, epochs and
//! fuel as core modules; an actor keeps its component instance. A component's internal state
//! cannot be read or set from outside, so components cannot be snapshotted (transactional and
//! durable actor calls are refused for them).

use std::sync::OnceLock;

use wasmtime::component::{Component, Instance, Linker, TypedFunc, WasmStr};
use wasmtime::{Engine, Store};

use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::host::HostState;

pub const HOST_INTERFACE: &str = "loom:activity/host";
const LOG_LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

pub type Execute = TypedFunc<(String,), (Result<String, String>,)>;

fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    // WASI preview 2 (its context holds only what was granted) and wasi:http (sent under the
    // network grant: see `wasi_http`).
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::wasi_open::shadow_p2(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    crate::wasi_http::shadow(&mut linker)?;
    crate::wasi_http_kept::shadow(&mut linker)?;
    crate::pollables::shadow(&mut linker)?;
    let mut host = linker.instance(HOST_INTERFACE)?;
    // The strings are read in place in the guest's memory: only what is kept is copied (taken as
    // `String`s, wasmtime copied a guest's whole string, up to its memory, into the host first).
    host.func_wrap("log", |mut store: wasmtime::StoreContextMut<'_, HostState>, (level, message): (WasmStr, WasmStr)| {
        if store.data().log.is_none() || store.data().log_budget == 0 {
            return Ok(());
        }
        let level = {
            let level = level.to_str(&store)?;
            LOG_LEVELS.iter().find(|l| **l == level).copied().unwrap_or("info")
        };
        let message = crate::host::cut_chars(&message.to_str(&store)?, crate::host::MAX_LOG_CHARS);
        store.data_mut().emit(level, &message);
        Ok(())
    })?;
    host.func_wrap("progress", |mut store: wasmtime::StoreContextMut<'_, HostState>, (detail,): (WasmStr,)| {
        let detail = crate::host::cut_chars(&detail.to_str(&store)?, crate::host::MAX_PROGRESS_CHARS);
        store.data_mut().heartbeat(detail);
        Ok(())
    })?;
    // A host function's failure is the guest's to handle (err(message)); a name the definition
    // was not granted, a timeout or a cancellation ends the call.
    host.func_wrap_async("call", |store: wasmtime::StoreContextMut<'_, HostState>, (name, input): (WasmStr, WasmStr)| {
        let access = store.data().access.clone();
        let args = owned_within(&store, &name, "the name of a host function").and_then(|name| {
            let input = owned_within(&store, &input, &format!("the argument of host function {}", crate::trap_text::short(&name)))?;
            Ok((name, input))
        });
        Box::new(async move {
            let (name, input) = args?;
            match access.call(&name, input).await {
                Ok(out) => Ok((Ok(out),)),
                Err(ExecError::HostFunctionError { message, .. }) => Ok((Err(message),)),
                Err(e) => Err(wasmtime::Error::new(e)),
            }
        })
    })?;
    // An HTTP request under the network grant: a failure on the way is err(message) (as
    // fetch rejects); a request the grant refuses ends the call (NETWORK_DENIED).
    host.func_wrap_async("http", |store: wasmtime::StoreContextMut<'_, HostState>, (request,): (WasmStr,)| {
        let access = store.data().access.clone();
        let max_bytes = store.data().limiter.max_bytes();
        let request = owned_within(&store, &request, "an HTTP request");
        Box::new(async move {
            let request = crate::network::HttpRequest::from_json(&request?).map_err(wasmtime::Error::new)?;
            match access.http(request, max_bytes).await {
                Ok(resp) => Ok((Ok(resp.to_json_within(max_bytes, crate::http_client::TextUnits::Utf8).map_err(wasmtime::Error::new)?),)),
                Err(ExecError::NetworkError { message, .. }) => Ok((Err(message),)),
                Err(e) => Err(wasmtime::Error::new(e)),
            }
        })
    })?;
    Ok(linker)
}

/// A guest's string, copied if it is at most `MAX_HOST_ARG_BYTES` (`what` names it in the error).
fn owned_within(store: &wasmtime::StoreContextMut<'_, HostState>, s: &WasmStr, what: &str) -> wasmtime::Result<String> {
    let text = s.to_str(store)?;
    let max = crate::host_functions::MAX_HOST_ARG_BYTES;
    if text.len() as u64 > max {
        let message = format!("{what} is {} bytes, over the limit of {max}", text.len());
        return Err(wasmtime::Error::new(ExecError::InvalidOutput { message, preview: String::new() }));
    }
    Ok(text.into_owned())
}

/// The process-wide component linker of an engine kind.
pub fn linker(kind: EngineKind) -> Result<&'static Linker<HostState>, ExecError> {
    static CELLS: [OnceLock<Result<Linker<HostState>, String>>; EngineKind::ALL.len()] =
        [const { OnceLock::new() }; EngineKind::ALL.len()];
    CELLS[kind.index()]
        .get_or_init(|| engine(kind).map_err(|e| e.to_string()).and_then(|e| build_linker(e).map_err(|e| format!("{e:#}"))))
        .as_ref()
        .map_err(|e| ExecError::Internal(e.clone()))
}

/// The interfaces whose import means HTTP (they need the network grant): all of wasi:http, its
/// types too, whose resources (headers, unsent requests and bodies) the host holds for the guest
/// (review Q: a component granted nothing held 1.25 GB of `fields` at `maxMemoryMB: 1`).
pub const HTTP_PACKAGE: &str = "wasi:http/";

/// The WASI preview 2 packages the host serves (sockets are refused apart).
const WASI_PACKAGES: [&str; 6] = ["wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:cli/", "wasi:filesystem/", HTTP_PACKAGE];

/// Whether a component fits the world: it exports `execute` of the right type and imports
/// `loom:activity/host` and WASI preview 2 interfaces only (not sockets: network access goes
/// through wasi:http under the grant). Returns its HTTP import, if any.
pub fn check(component: &Component, engine: &Engine) -> Result<Option<String>, ExecError> {
    let ty = component.component_type();
    let mut http = None;
    for (name, _) in ty.imports(engine) {
        let bare = name.split('@').next().unwrap_or(name);
        if bare == HOST_INTERFACE {
            continue;
        }
        if bare.starts_with("wasi:sockets/") {
            return Err(ExecError::CapabilityDenied(format!(
                "the component imports {name}; components reach the network only through wasi:http (or loom:activity/host.http) under the network grant"
            )));
        }
        // Only the WASI packages the host serves: another `wasi:` name (an empty instance under
        // it linked, review BD3) is refused as any other import is.
        if !WASI_PACKAGES.iter().any(|p| bare.starts_with(p)) {
            return Err(ExecError::CapabilityDenied(format!(
                "the component imports {name}; components get {HOST_INTERFACE} and WASI preview 2 (see wit/activity.wit)"
            )));
        }
        if bare.starts_with(HTTP_PACKAGE) {
            // Named by its request interface where it has one.
            if http.is_none() || bare == "wasi:http/outgoing-handler" {
                http = Some(name.to_string());
            }
        }
    }
    if !ty.exports(engine).any(|(name, _)| name == "execute") {
        return Err(ExecError::MissingExport(
            "the component does not export `execute: func(input: string) -> result<string, string>` (wit/activity.wit)".into(),
        ));
    }
    Ok(http)
}

/// The instance's `execute`, typed.
pub fn execute_of(instance: &Instance, store: &mut Store<HostState>) -> Result<Execute, ExecError> {
    instance.get_typed_func::<(String,), (Result<String, String>,)>(&mut *store, "execute").map_err(|e| {
        ExecError::MissingExport(format!("the component's `execute` is not func(input: string) -> result<string, string>: {e:#}"))
    })
}

/// What a guest may hand the host as its result: what a result of `max_output_bytes` (UTF-16)
/// takes in UTF-8, so that any result the limit allows is read, and no more. wasmtime counts a
/// string's bytes against it before it copies them: one longer is `OUTPUT_TOO_LARGE` uncopied.
/// (It was at least wasmtime's default of 128 MiB: under the default 16 MiB limit, a 127 MiB
/// result was copied into the host, outside `maxMemoryMB` and past the call's deadline, before
/// it was found too large; review BD3.)
fn result_fuel(max_output_bytes: u64) -> usize {
    let result = max_output_bytes.saturating_mul(3) / 2 + 64;
    usize::try_from(result).unwrap_or(usize::MAX)
}

/// What a guest may hand the host in one import call: wasmtime's default.
pub const IMPORT_FUEL: usize = 128 << 20;

/// Whether the call failed reading its result: out of hostcall fuel with no guest code on the
/// stack (an import's arguments run out of it inside the guest, with its frames; wasmtime's
/// error type for it is private, so its text tells it).
fn result_out_of_fuel(e: &wasmtime::Error) -> bool {
    let in_guest = e.downcast_ref::<wasmtime::WasmBacktrace>().is_some_and(|b| !b.frames().is_empty());
    !in_guest && e.chain().any(|c| c.to_string().contains("fuel allocated for hostcalls"))
}

/// Runs `execute(input)`.
pub async fn call(
    store: &mut Store<HostState>,
    execute: &Execute,
    input: &str,
    max_output_bytes: u64,
    classify: impl Fn(wasmtime::Error) -> ExecError,
) -> Result<String, ExecError> {
    // wasmtime copies what a guest hands the host (its result too) on "hostcall fuel", 128 MiB by
    // default: a result the limit allows must not run out of it (review AS3: a 144 MiB result
    // under a 1 GiB `maxOutputBytes` was a `TRAP`), and one that runs out of it is over the limit.
    // The result's fuel is set as the guest returns, an import's as it is called
    // (`instance::on_call_hook`).
    let fuel = result_fuel(max_output_bytes);
    store.data_mut().result_fuel = Some(fuel);
    store.set_hostcall_fuel(IMPORT_FUEL);
    let called = execute.call_async(&mut *store, (input.to_string(),)).await.map_err(|e| {
        let out_of_fuel = result_out_of_fuel(&e);
        // Classified either way: the instance, whose call failed inside wasmtime, is not kept.
        let classified = classify(e);
        match out_of_fuel {
            // More bytes than `fuel`, in UTF-8 at most three halves of its UTF-16.
            true => ExecError::OutputTooLarge { size: (fuel as u64).saturating_mul(2) / 3 + 1, limit: max_output_bytes },
            false => classified,
        }
    });
    // A request the grant refused fails the call, whatever the guest made of its rejection.
    if let Some(e) = store.data().access.take_failure() {
        return Err(e);
    }
    let (result,) = called?;
    match result {
        Ok(out) => crate::text::check_output_size(&out, max_output_bytes).map(|()| out),
        Err(mut message) => {
            crate::host::truncate_chars(&mut message, crate::host::MAX_LOG_CHARS);
            Err(ExecError::GuestError { message, exit_code: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Executor;
    use crate::options::{CallOptions, Definition, ExecutorOptions};
    use crate::store::MemorySource;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl crate::host::LogSink for Seen {
        fn log(&self, _level: &str, message: &str) {
            self.0.lock().expect("seen").push(message.into());
        }
    }

    impl crate::host::ProgressSink for Seen {
        fn progress(&self, detail: &str) {
            self.0.lock().expect("seen").push(detail.into());
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_guests_log_line_heartbeat_and_host_function_name_are_cut_to_what_is_kept() {
        let source = Arc::new(MemorySource::new());
        source.put("h.wasm", crate::test_components::host_strings_component());
        let lines = Arc::new(Seen::default());
        let ex = Arc::new(Executor::new(source, ExecutorOptions { log: Some(lines.clone()), ..Default::default() }).expect("executor"));
        let def = Definition { name: "h".into(), version: "1".into(), wasm_blob_path: "h.wasm".into(), ..Default::default() };
        let beats = Arc::new(Seen::default());
        let n = 200_000;
        let options = CallOptions { progress: Some(beats.clone()), ..Default::default() };
        let err = ex.execute(&def, n.to_string(), options).await.expect_err("an ungranted host function");
        assert_eq!(err.code(), "CAPABILITY_DENIED");
        let text = err.to_string();
        assert!(text.len() < 1024 && text.contains(&format!("({n} bytes)")), "{}", &text[..text.len().min(2048)]);
        let cut = |max: usize| vec![format!("{}…", "x".repeat(max))];
        assert_eq!(*lines.0.lock().expect("lines"), cut(crate::host::MAX_LOG_CHARS));
        assert_eq!(*beats.0.lock().expect("beats"), cut(crate::host::MAX_PROGRESS_CHARS));
        // Short ones whole.
        let beats = Arc::new(Seen::default());
        let options = CallOptions { progress: Some(beats.clone()), ..Default::default() };
        let err = ex.execute(&def, "3".into(), options).await.expect_err("an ungranted host function");
        assert!(err.to_string().contains("host function xxx,"), "{err}");
        assert_eq!(*beats.0.lock().expect("beats"), vec!["xxx".to_string()]);
        assert_eq!(lines.0.lock().expect("lines").last().map(String::as_str), Some("xxx"));
    }

    /// A component whose `execute` returns a JSON string of `"x"`s, as many MiB as its input's
    /// first digit times 16, less two.
    fn big_result_component() -> Vec<u8> {
        wat::parse_str(
            r#"(component
  (core module $m
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $bump))
      (global.set $bump (i32.add (local.get $at) (i32.add (local.get $size) (i32.const 16))))
      (local.get $at))
    (func (export "execute") (param $p i32) (param $l i32) (result i32)
      (local $n i32) (local $at i32)
      (local.set $n (i32.mul (i32.sub (i32.load8_u (i32.add (local.get $p) (i32.const 1))) (i32.const 48)) (i32.const 16777216)))
      (if (i32.eq (memory.grow (i32.add (i32.div_u (local.get $n) (i32.const 65536)) (i32.const 2))) (i32.const -1)) (then unreachable))
      (local.set $at (i32.const 65536))
      (memory.fill (local.get $at) (i32.const 120) (local.get $n))
      (i32.store8 (local.get $at) (i32.const 34))
      (i32.store8 (i32.add (local.get $at) (i32.sub (local.get $n) (i32.const 1))) (i32.const 34))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (local.get $at)) (i32.store (i32.const 72) (local.get $n))
      (i32.const 64)))
  (core instance $i (instantiate $m))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $i "execute") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#,
        )
        .expect("parses")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_result_the_output_limit_allows_is_read_whatever_its_size_and_one_past_it_is_output_too_large() {
        // Review AS3: past wasmtime's 128 MiB of hostcall fuel, a result was a TRAP under any
        // `maxOutputBytes`.
        let source = Arc::new(MemorySource::new());
        source.put("big.wasm", big_result_component());
        let def = Definition {
            name: "big".into(),
            version: "1".into(),
            wasm_blob_path: "big.wasm".into(),
            limits: crate::limits::LimitOverrides { max_memory_mb: Some(400.0), ..Default::default() },
            ..Default::default()
        };
        let mut wide = ExecutorOptions::default();
        wide.defaults.max_output_bytes = 1_073_741_776;
        let ex = Arc::new(Executor::new(source.clone(), wide).expect("executor"));
        let out = ex.execute(&def, "\"9\"".into(), CallOptions::default()).await.expect("144 MiB within the limit");
        assert_eq!(out.output.len(), 9 << 24);
        drop(out);
        ex.close();
        let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
        // 16 MiB (32 MiB of UTF-16: over the default 16 MiB) and 144 MiB (past the default fuel).
        for n in ["1", "9"] {
            let err = ex.execute(&def, format!("\"{n}\""), CallOptions::default()).await.expect_err("over 16 MiB");
            assert_eq!(err.code(), "OUTPUT_TOO_LARGE", "{n}: {err}");
        }
        // Review BD3: 32 MiB is refused by its length, before it is copied (the fuel was never
        // below 128 MiB: it was copied, then measured, 64 MiB of UTF-16).
        match ex.execute(&def, "\"2\"".into(), CallOptions::default()).await {
            Err(ExecError::OutputTooLarge { size, .. }) => assert!(size < 2 << 24, "counted before it was copied: {size}"),
            other => panic!("OUTPUT_TOO_LARGE, not {:?}", other.map(|o| o.output.len())),
        }
        ex.close();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_imports_arguments_keep_the_default_fuel_whatever_the_results() {
        // Review AT1: with the result's fuel raised for the whole call (1.5 GiB under a 1 GiB
        // `maxOutputBytes`), an import's arguments could have the host copy that much too.
        let logs_144_mib = wat::parse_str(
            r#"(component
  (import "loom:activity/host" (instance $h (export "log" (func (param "level" string) (param "message" string)))))
  (core module $libc
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024)))
  (core instance $libc (instantiate $libc))
  (core func $log (canon lower (func $h "log") (memory (core memory $libc "memory"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "log" (func $log (param i32 i32 i32 i32)))
    (data (i32.const 64) "info")
    (data (i32.const 80) "\00\00\00\00\60\00\00\00\01\00\00\00")
    (data (i32.const 96) "1")
    (func (export "execute") (param i32 i32) (result i32)
      (if (i32.eq (memory.grow (i32.const 2320)) (i32.const -1)) (then unreachable))
      (memory.fill (i32.const 65536) (i32.const 120) (i32.const 150994944))
      (call $log (i32.const 64) (i32.const 4) (i32.const 65536) (i32.const 150994944))
      (i32.const 80)))
  (core instance $m (instantiate $main (with "libc" (instance $libc)) (with "host" (instance (export "log" (func $log))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc")))))"#,
        )
        .expect("parses");
        let source = Arc::new(MemorySource::new());
        source.put("log.wasm", logs_144_mib);
        let def = Definition { name: "log".into(), version: "1".into(), wasm_blob_path: "log.wasm".into(), ..Default::default() };
        let mut wide = ExecutorOptions::default();
        wide.defaults.max_output_bytes = 1_073_741_776;
        let ex = Arc::new(Executor::new(source, wide).expect("executor"));
        let err = ex.execute(&def, "1".into(), CallOptions::default()).await.expect_err("144 MiB into an import");
        assert_eq!(err.code(), "TRAP", "{err}");
        assert!(err.to_string().contains("hostcall"), "{err}");
        ex.close();
    }

    fn component(wat: &str) -> Component {
        Component::new(engine(EngineKind::Plain).expect("engine"), wat::parse_str(wat).expect("parses")).expect("valid")
    }

    #[test]
    fn imports_are_the_host_interface_and_wasi_but_never_sockets() {
        let e = engine(EngineKind::Plain).expect("engine");
        let sockets = component(r#"(component (import "wasi:sockets/tcp@0.2.0" (instance)))"#);
        let err = check(&sockets, e).expect_err("sockets refused");
        assert_eq!(err.code(), "CAPABILITY_DENIED");
        assert!(err.to_string().contains("wasi:sockets/tcp"), "{err}");
        let other = component(r#"(component (import "acme:db/query" (instance)))"#);
        assert_eq!(check(&other, e).map_err(|e| e.code()), Err("CAPABILITY_DENIED"));
        // Review BD3: an empty instance under a `wasi:` name the host does not serve linked.
        let unknown = component(r#"(component (import "wasi:nope/thing@0.2.0" (instance)))"#);
        assert_eq!(check(&unknown, e).map_err(|e| e.code()), Err("CAPABILITY_DENIED"));
        let http = component(r#"(component (import "wasi:http/outgoing-handler@0.2.3" (instance)))"#);
        // Imports fine (the network import is named), but no `execute`.
        assert_eq!(check(&http, e).map_err(|e| e.code()), Err("MISSING_EXPORT"));
        // Review Q: wasi:http/types alone is HTTP too (its resources live in the host).
        let exec = r#"(core module $m (func (export "e") (param i32 i32) (result i32) unreachable) (memory (export "mem") 1)
              (func (export "realloc") (param i32 i32 i32 i32) (result i32) unreachable))
            (core instance $i (instantiate $m))
            (func (export "execute") (param "input" string) (result (result string (error string)))
              (canon lift (core func $i "e") (memory (core memory $i "mem")) (realloc (core func $i "realloc"))))"#;
        let types = component(&format!(r#"(component (import "wasi:http/types@0.2.3" (instance)) {exec})"#));
        assert_eq!(check(&types, e).map_err(|e| e.code()), Ok(Some("wasi:http/types@0.2.3".to_string())));
        let both = component(&format!(
            r#"(component (import "wasi:http/types@0.2.3" (instance)) (import "wasi:http/outgoing-handler@0.2.3" (instance)) {exec})"#
        ));
        assert_eq!(check(&both, e).map_err(|e| e.code()), Ok(Some("wasi:http/outgoing-handler@0.2.3".to_string())));
        let none = component(&format!("(component {exec})"));
        assert_eq!(check(&none, e).map_err(|e| e.code()), Ok(None));
    }
}
