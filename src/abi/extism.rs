//! The Extism ABI: plugins built with Extism's PDKs run unmodified. The host implements the
//! `extism:host/env` kernel itself: a block memory of its own (offsets are i64; 0 is "none"),
//! where the call's input is placed and from which the plugin's output, error and log messages
//! are read; `config_get` reads `definition.config`; `var_get`/`var_set` keep vars, per actor (and
//! in its snapshots) or fresh per stateless call. The entrypoint (`definition.entrypoint`,
//! default `execute`) is `() -> i32`: 0 is success; anything else, or `error_set`, is
//! `GUEST_ERROR` with the plugin's message. Every offset and length a plugin passes is checked; a
//! bad one traps. Kernel memory counts against the call's memory cap.

use wasmtime::{Caller, Instance, Linker, Module, Store, ValType};

#[path = "extism_kernel.rs"]
mod kernel;
use kernel::trap;
pub use kernel::Kernel;

use crate::error::ExecError;
use crate::host::HostState;

pub const MODULE: &str = "extism:host/env";
/// Vars a plugin may keep, in bytes (keys and values, and `VAR_OVERHEAD` per var).
pub const MAX_VAR_BYTES: usize = 1024 * 1024;
/// What a var costs the host besides its key and value bytes (its map entry and their headers),
/// counted against `MAX_VAR_BYTES`: 400,000 vars of 3 bytes held 54 MiB where 1.2 MB was counted;
/// review BE2 measured about 110 bytes each (a B-tree entry, a key of at least 32), where 64 were.
pub const VAR_OVERHEAD: usize = 128;

/// The kernel functions this host implements, with their types (i64 pointers).
const I: ValType = ValType::I32;
const L: ValType = ValType::I64;
pub const FUNCTIONS: &[(&str, &[ValType], &[ValType])] = &[
    ("input_length", &[], &[L]),
    ("input_offset", &[], &[L]),
    ("input_load_u8", &[L], &[I]),
    ("input_load_u64", &[L], &[L]),
    ("length", &[L], &[L]),
    ("length_unsafe", &[L], &[L]),
    ("alloc", &[L], &[L]),
    ("free", &[L], &[]),
    ("load_u8", &[L], &[I]),
    ("load_u64", &[L], &[L]),
    ("store_u8", &[L, I], &[]),
    ("store_u64", &[L, L], &[]),
    ("output_set", &[L, L], &[]),
    ("error_set", &[L], &[]),
    ("error_get", &[], &[L]),
    ("config_get", &[L], &[L]),
    ("var_get", &[L], &[L]),
    ("var_set", &[L, L], &[]),
    ("log_trace", &[L], &[]),
    ("log_debug", &[L], &[]),
    ("log_info", &[L], &[]),
    ("log_warn", &[L], &[]),
    ("log_error", &[L], &[]),
    ("get_log_level", &[], &[I]),
    ("http_request", &[L, L], &[L]),
    ("http_status_code", &[], &[I]),
    ("http_headers", &[], &[L]),
];

/// Whether a core module is an Extism plugin this host can run.
pub fn check(module: &Module) -> Result<(), String> {
    super::has_memory(module)?;
    for imp in module.imports().filter(|i| i.module() == MODULE) {
        if !FUNCTIONS.iter().any(|(name, _, _)| *name == imp.name()) {
            return Err(format!("imports {MODULE}.{}, which this host does not implement", imp.name()));
        }
    }
    Ok(())
}

/// Adds the kernel functions to the linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    type C<'a> = Caller<'a, HostState>;
    linker.func_wrap(MODULE, "input_length", |c: C| c.data().extism.input.1 as i64)?;
    linker.func_wrap(MODULE, "input_offset", |c: C| c.data().extism.input.0 as i64)?;
    linker.func_wrap(MODULE, "input_load_u8", |c: C, i: i64| -> wasmtime::Result<i32> {
        let k = &c.data().extism;
        let r = k.range(k.input.0.wrapping_add(i as u64), 1).filter_ok(|_| (i as u64) < k.input.1)?;
        Ok(k.mem[r.start] as i32)
    })?;
    linker.func_wrap(MODULE, "input_load_u64", |c: C, i: i64| -> wasmtime::Result<i64> {
        let k = &c.data().extism;
        let r = k.range(k.input.0.wrapping_add(i as u64), 8).filter_ok(|_| (i as u64).saturating_add(8) <= k.input.1)?;
        Ok(i64::from_le_bytes(k.mem[r].try_into().map_err(trap_msg)?))
    })?;
    linker.func_wrap(MODULE, "length", |c: C, off: i64| c.data().extism.blocks.get(&(off as u64)).copied().unwrap_or(0) as i64)?;
    linker.func_wrap(MODULE, "length_unsafe", |c: C, off: i64| c.data().extism.blocks.get(&(off as u64)).copied().unwrap_or(0) as i64)?;
    // A block of more than `ZERO_STEP` is zeroed (`alloc`) or given back (`free`) off the JS
    // thread: a call running there (inline, see How it works) moves to a guest thread first
    // (review BZ1: one alloc of 1 GiB held the event loop 600-740 ms).
    let off_js_thread = |big: bool| async move {
        if big && crate::limits::in_inline_window() {
            crate::executor::leave_caller_thread().await;
        }
    };
    linker.func_wrap_async(MODULE, "alloc", move |mut c: C, (n,): (i64,)| {
        Box::new(async move {
            off_js_thread(n as u64 > kernel::ZERO_STEP).await;
            let d = c.data_mut();
            let access = &d.access;
            Ok(d.extism.alloc_within(n as u64, &mut d.limiter, &|| access.ended())? as i64)
        })
    })?;
    linker.func_wrap_async(MODULE, "free", move |mut c: C, (off,): (i64,)| {
        Box::new(async move {
            off_js_thread(c.data().extism.blocks.get(&(off as u64)).is_some_and(|&len| len > kernel::ZERO_STEP)).await;
            let d = c.data_mut();
            d.extism.free(off as u64, &mut d.limiter);
            Ok(())
        })
    })?;
    linker.func_wrap(MODULE, "load_u8", |c: C, off: i64| -> wasmtime::Result<i32> {
        let k = &c.data().extism;
        Ok(k.mem[k.range(off as u64, 1)?.start] as i32)
    })?;
    linker.func_wrap(MODULE, "load_u64", |c: C, off: i64| -> wasmtime::Result<i64> {
        let k = &c.data().extism;
        Ok(i64::from_le_bytes(k.mem[k.range(off as u64, 8)?].try_into().map_err(trap_msg)?))
    })?;
    linker.func_wrap(MODULE, "store_u8", |mut c: C, off: i64, v: i32| -> wasmtime::Result<()> {
        let k = &mut c.data_mut().extism;
        let r = k.range(off as u64, 1)?;
        k.mem[r.start] = v as u8;
        Ok(())
    })?;
    linker.func_wrap(MODULE, "store_u64", |mut c: C, off: i64, v: i64| -> wasmtime::Result<()> {
        let k = &mut c.data_mut().extism;
        let r = k.range(off as u64, 8)?;
        k.mem[r].copy_from_slice(&v.to_le_bytes());
        Ok(())
    })?;
    linker.func_wrap(MODULE, "output_set", |mut c: C, off: i64, len: i64| -> wasmtime::Result<()> {
        let k = &mut c.data_mut().extism;
        // No bytes is no output, wherever: Extism's kernel reads none, and `output_set(0, 0)`
        // (a plugin's "nothing to say") had trapped here as out of bounds.
        if len == 0 {
            k.output = None;
            return Ok(());
        }
        k.range(off as u64, len as u64)?;
        k.output = Some((off as u64, len as u64));
        Ok(())
    })?;
    linker.func_wrap(MODULE, "error_set", |mut c: C, off: i64| -> wasmtime::Result<()> {
        let k = &mut c.data_mut().extism;
        if off != 0 {
            k.block(off as u64)?;
        }
        k.error = (off != 0).then_some(off as u64);
        Ok(())
    })?;
    linker.func_wrap(MODULE, "error_get", |c: C| c.data().extism.error.unwrap_or(0) as i64)?;
    linker.func_wrap(MODULE, "config_get", |mut c: C, off: i64| -> wasmtime::Result<i64> {
        let d = c.data_mut();
        // No key longer than the longest there is can match: not decoded (a 256 MiB block of
        // invalid UTF-8 decoded to 768 MiB of replacement characters).
        let longest = d.extism.config.keys().map(String::len).max().unwrap_or(0);
        if d.extism.block(off as u64)?.len() > longest {
            return Ok(0);
        }
        let key = d.extism.key(off as u64)?;
        let Some(value) = d.extism.config.get(&key).cloned() else { return Ok(0) };
        let at = d.extism.alloc(value.len() as u64, &mut d.limiter)?;
        d.extism.mem[at as usize..at as usize + value.len()].copy_from_slice(value.as_bytes());
        Ok(at as i64)
    })?;
    linker.func_wrap(MODULE, "var_get", |mut c: C, off: i64| -> wasmtime::Result<i64> {
        let d = c.data_mut();
        if d.extism.block(off as u64)?.len() > MAX_VAR_BYTES {
            return Ok(0);
        }
        let key = d.extism.key(off as u64)?;
        let Some(value) = d.extism.vars.get(&key).cloned() else { return Ok(0) };
        let at = d.extism.alloc(value.len() as u64, &mut d.limiter)?;
        d.extism.mem[at as usize..at as usize + value.len()].copy_from_slice(&value);
        Ok(at as i64)
    })?;
    linker.func_wrap(MODULE, "var_set", |mut c: C, key: i64, value: i64| -> wasmtime::Result<()> {
        let k = &mut c.data_mut().extism;
        let over = |requested: usize| {
            wasmtime::Error::new(ExecError::OutOfMemory { limit_bytes: MAX_VAR_BYTES as u64, requested_bytes: requested as u64 })
        };
        // Sizes first: nothing is decoded or copied past the limit.
        let key_len = k.block(key as u64)?.len();
        let value_len = if value == 0 { 0 } else { k.block(value as u64)?.len() };
        if key_len > MAX_VAR_BYTES {
            return if value == 0 { Ok(()) } else { Err(over(key_len + value_len)) };
        }
        let name = k.key(key as u64)?;
        if value == 0 {
            k.remove_var(&name);
            return Ok(());
        }
        let requested = k.vars_bytes_with(&name, value_len) as usize;
        if requested > MAX_VAR_BYTES {
            return Err(over(requested));
        }
        let bytes = k.block(value as u64)?.to_vec();
        k.set_var(name, bytes);
        Ok(())
    })?;
    for (name, level) in [("log_trace", "trace"), ("log_debug", "debug"), ("log_info", "info"), ("log_warn", "warn"), ("log_error", "error")] {
        linker.func_wrap(MODULE, name, move |mut c: C, off: i64| -> wasmtime::Result<()> {
            // The handle is checked whether or not the line is kept: a bad one trapped only with
            // an `onLog` (review BP2: a plugin passed without one and trapped with one).
            c.data().extism.block(off as u64)?;
            if c.data().log.is_none() || c.data().log_budget == 0 {
                return Ok(());
            }
            // Only what a line can show is read (a block may be the whole kernel memory).
            let text = c.data().extism.text_prefix(off as u64, crate::host::MAX_LOG_CHARS * 4 + 4)?;
            c.data_mut().emit(level, &text);
            Ok(())
        })?;
    }
    linker.func_wrap(MODULE, "get_log_level", |c: C| if c.data().log.is_some() { 0 } else { i32::MAX })?;
    // The network capability, with Extism's semantics: `http_request(request JSON, body)` returns
    // the response body's block; `http_status_code` and `http_headers` tell of that response. A
    // request the grant refuses fails the call (NETWORK_DENIED).
    linker.func_wrap_async(MODULE, "http_request", |mut c: C, (req, body): (i64, i64)| {
        Box::new(async move {
            c.data().access.may_request().map_err(wasmtime::Error::new)?;
            let json = c.data().extism.read_text_capped(req as u64, crate::host_functions::MAX_HOST_ARG_BYTES)?;
            let mut request = crate::network::HttpRequest::from_json(&json).map_err(wasmtime::Error::new)?;
            // Granted and within maxRequestBytes before its body is copied (review BE2: a 512 MiB
            // body block was copied whole, then the request denied).
            let access = c.data().access.clone();
            let net = access.admit_request(&request.url).map_err(wasmtime::Error::new)?;
            if body != 0 {
                let block = c.data().extism.block(body as u64)?;
                let max = net.network.config().max_request_bytes;
                if block.len() as u64 > max {
                    let message = format!("the request's body is {} bytes, over maxRequestBytes {max}", block.len());
                    return Err(wasmtime::Error::new(ExecError::NetworkDenied { host: url::Url::parse(&request.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default(), message }));
                }
                request.body = block.to_vec();
            }
            let max_bytes = c.data().limiter.max_bytes();
            let resp = access.send_admitted(&net, request, || max_bytes, |r| r).await.map_err(wasmtime::Error::new)?;
            let d = c.data_mut();
            d.extism.http_status = resp.status;
            d.extism.http_headers = Some(resp.headers_json());
            Ok(d.extism.write_bytes(&resp.body, &mut d.limiter)? as i64)
        })
    })?;
    linker.func_wrap(MODULE, "http_status_code", |c: C| c.data().extism.http_status as i32)?;
    linker.func_wrap(MODULE, "http_headers", |mut c: C| -> wasmtime::Result<i64> {
        let d = c.data_mut();
        let Some(h) = d.extism.http_headers.clone() else { return Ok(0) };
        Ok(d.extism.write_bytes(h.as_bytes(), &mut d.limiter)? as i64)
    })?;
    Ok(())
}

trait FilterOk<T> {
    fn filter_ok(self, f: impl FnOnce(&T) -> bool) -> wasmtime::Result<T>;
}

impl<T> FilterOk<T> for wasmtime::Result<T> {
    fn filter_ok(self, f: impl FnOnce(&T) -> bool) -> wasmtime::Result<T> {
        match self {
            Ok(v) if f(&v) => Ok(v),
            Ok(_) => Err(trap("input read past its end")),
            Err(e) => Err(e),
        }
    }
}

fn trap_msg(e: impl std::fmt::Display) -> wasmtime::Error {
    trap(e.to_string())
}

/// Runs the plugin's entrypoint on `input`; its output as text.
pub async fn call(
    store: &mut Store<HostState>,
    instance: &Instance,
    entrypoint: &str,
    input: &str,
    max_output_bytes: u64,
    classify: impl Fn(wasmtime::Error) -> ExecError,
) -> Result<String, ExecError> {
    let f = instance.get_typed_func::<(), i32>(&mut *store, entrypoint).map_err(|_| {
        ExecError::MissingExport(format!("the plugin does not export `{entrypoint}` as () -> i32 (definition.entrypoint)"))
    })?;
    {
        let d = store.data_mut();
        d.extism.begin(input.as_bytes(), &mut d.limiter)?;
    }
    // A plugin built for WASI may end with `proc_exit(n)`: its return code n, as Extism's own
    // runtime takes it (0 a success), not a trap.
    // Classified all the same: its code stopped midway, and an actor's instance is not kept.
    let rc = match f.call_async(&mut *store, ()).await {
        Ok(rc) => Ok(rc),
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|exit| exit.0) {
            Some(code) => {
                let _ = classify(e);
                Ok(code)
            }
            None => Err(e),
        },
    };
    let out = match rc {
        Ok(rc) => outcome(&store.data().extism, rc, max_output_bytes, &classify),
        Err(e) => Err(classify(e)),
    };
    // The call's blocks go now, however it ended: an idle actor kept the last call's kernel
    // memory (its pages touched, no longer counted), twice its cap per actor.
    let d = store.data_mut();
    d.extism.end(&mut d.limiter);
    out
}

/// The call's result from the kernel's state once the plugin returned `rc`.
fn outcome(k: &Kernel, rc: i32, max_output_bytes: u64, classify: &impl Fn(wasmtime::Error) -> ExecError) -> Result<String, ExecError> {
    if let Some(err) = k.error {
        // Cut as log lines are: a 560 MiB error was longer than any JS string (Node exited).
        // A block freed after `error_set` is a message gone, not a fault of the call's own: it
        // still failed as the plugin said (review BP2: it trapped, which resets an actor).
        let mut message = k.text_prefix(err, crate::host::MAX_LOG_CHARS * 4 + 4).unwrap_or_else(|_| "(the plugin freed its error message)".into());
        crate::host::truncate_chars(&mut message, crate::host::MAX_LOG_CHARS);
        return Err(ExecError::GuestError { message, exit_code: Some(rc) });
    }
    if rc != 0 {
        return Err(ExecError::GuestError { message: format!("the plugin returned {rc}"), exit_code: Some(rc) });
    }
    let Some((off, len)) = k.output else { return Ok(String::new()) };
    if crate::text::surely_over(len, max_output_bytes) {
        return Err(ExecError::OutputTooLarge { size: len.saturating_mul(2) / 3, limit: max_output_bytes });
    }
    let bytes = &k.mem[k.range(off, len).map_err(classify)?];
    let text = String::from_utf8(bytes.to_vec()).map_err(|e| ExecError::InvalidOutput {
        message: format!("the plugin's output is not UTF-8: {e}"),
        preview: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    })?;
    crate::text::check_output_size(&text, max_output_bytes)?;
    Ok(text)
}

#[cfg(test)]
#[path = "extism_tests.rs"]
mod tests;
