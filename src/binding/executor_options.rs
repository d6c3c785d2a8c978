//! The executor's options (`new WasmActivityExecutor(store, options)`), read and checked
//! against their documented ranges (README's "Executor options").

use napi::bindgen_prelude::{Object, Unknown};
use napi::{JsValue, ValueType};

use super::args::{bad, boolean, bytes, count, kind, number, object, only_known, opt, ranged, req_string, string, string_list, string_map};
use crate::capabilities::FilesystemConfig;
use crate::error::ExecError;
use crate::executor::{ranges, ExecutorOptions};
use crate::limits::LimitOverrides;

/// Bytes from a string (its UTF-8) or a Uint8Array/Buffer.
fn secret(v: Unknown, what: &str) -> Result<Vec<u8>, ExecError> {
    if kind(&v)? == ValueType::String {
        return string(v, what).map(String::into_bytes);
    }
    bytes(v, what).map_err(|_| bad(what, "a string or a Uint8Array"))
}

/// Every option the constructor reads (README's "Executor options"). A key that is none of them
/// is refused: a misspelt limit (`maxMemoryMb`, `maxExecutionMS`) would otherwise leave its
/// default in force, silently, and a misspelt grant (`writeable`) a different one than asked for.
const EXECUTOR_OPTIONS: [&str; 33] = [
    "maxCachedModules", "maxCacheBytes", "cacheDir", "maxCacheDirBytes", "artifactStore", "artifactKey", "maxActors", "maxActorMemoryMB",
    "maxConcurrency", "maxMemoryMB", "maxExecutionMs", "maxInputBytes", "maxOutputBytes", "maxOutputDepth",
    "loadTimeoutMs", "compileTimeoutMs", "maxModuleBytes", "maxFunctions", "maxFunctionBytes", "maxLocals",
    "maxInitInstructions", "maxCodeBytes", "allowedBlobUrls", "transactional", "tierUp", "shareCode", "actorStore", "persist",
    "onLog", "filesystem", "env", "hostFunctions", "network",
];

/// The executor's options (all optional), each checked against its documented range.
pub fn executor_options(obj: Option<&Object>) -> Result<ExecutorOptions, ExecError> {
    // Code is shared between the process's executors unless an executor says not to.
    let mut o = ExecutorOptions { share_code: true, ..ExecutorOptions::default() };
    let Some(obj) = obj else { return Ok(o) };
    let w = "options";
    only_known(obj, w, &EXECUTOR_OPTIONS)?;
    let num = |key: &str| opt(obj, key, w, number);
    if let Some(n) = opt(obj, "maxCachedModules", w, |v, p| count(v, p, ranges::MAX_CACHED_MODULES))? {
        o.max_cached_modules = n;
    }
    if let Some(n) = opt(obj, "maxCacheBytes", w, |v, p| ranged(v, p, ranges::MAX_CACHE_BYTES))? {
        o.max_cache_bytes = n as usize;
    }
    if let Some(dir) = opt(obj, "cacheDir", w, string)? {
        o.artifacts.dir = Some(dir.into());
    }
    if let Some(n) = opt(obj, "maxCacheDirBytes", w, |v, p| ranged(v, p, ranges::MAX_CACHE_DIR_BYTES))? {
        o.artifacts.max_dir_bytes = Some(n);
    }
    if let Some(key) = opt(obj, "artifactKey", w, secret)? {
        o.artifacts.key = Some(key.into());
    }
    if let Some(n) = opt(obj, "maxActors", w, |v, p| count(v, p, ranges::MAX_ACTORS))? {
        o.max_actors = n;
    }
    if let Some(mb) = opt(obj, "maxActorMemoryMB", w, |v, p| ranged(v, p, ranges::MAX_ACTOR_MEMORY_MB))? {
        o.max_actor_memory_bytes = mb.saturating_mul(1024 * 1024);
    }
    if let Some(n) = opt(obj, "maxConcurrency", w, |v, p| count(v, p, ranges::MAX_CONCURRENCY))? {
        o.max_concurrency = n;
    }
    // Executor-wide defaults use the same validation as a definition's limits.
    let defaults = LimitOverrides { max_memory_mb: num("maxMemoryMB")?, max_execution_ms: num("maxExecutionMs")?, max_fuel: None };
    o.defaults = o.defaults.with_overrides(&defaults)?;
    if let Some(n) = opt(obj, "maxInputBytes", w, |v, p| ranged(v, p, ranges::PAYLOAD_BYTES))? {
        o.defaults.max_input_bytes = n;
    }
    if let Some(n) = opt(obj, "maxOutputBytes", w, |v, p| ranged(v, p, ranges::OUTPUT_BYTES))? {
        o.defaults.max_output_bytes = n;
    }
    if let Some(n) = opt(obj, "maxOutputDepth", w, |v, p| ranged(v, p, ranges::OUTPUT_DEPTH))? {
        o.defaults.max_output_depth = n as u32;
    }
    let ms = |v, p: &str| ranged(v, p, ranges::TIMEOUT_MS).map(std::time::Duration::from_millis);
    if let Some(d) = opt(obj, "loadTimeoutMs", w, ms)? {
        o.load.load_timeout = d;
    }
    if let Some(d) = opt(obj, "compileTimeoutMs", w, ms)? {
        o.load.compile_timeout = d;
    }
    let c = &mut o.load.compile;
    if let Some(n) = opt(obj, "maxModuleBytes", w, |v, p| ranged(v, p, ranges::MODULE_BYTES))? {
        c.max_module_bytes = n;
    }
    if let Some(n) = opt(obj, "maxFunctions", w, |v, p| ranged(v, p, ranges::FUNCTIONS))? {
        c.max_functions = n;
    }
    if let Some(n) = opt(obj, "maxFunctionBytes", w, |v, p| ranged(v, p, ranges::FUNCTION_BYTES))? {
        c.max_function_bytes = n;
    }
    if let Some(n) = opt(obj, "maxLocals", w, |v, p| ranged(v, p, ranges::LOCALS))? {
        c.max_locals = n;
    }
    if let Some(n) = opt(obj, "maxInitInstructions", w, |v, p| ranged(v, p, ranges::INIT_INSTRUCTIONS))? {
        c.max_init_instructions = n;
    }
    if let Some(n) = opt(obj, "maxCodeBytes", w, |v, p| ranged(v, p, ranges::CODE_BYTES))? {
        c.max_code_bytes = n;
    }
    if let Some(urls) = opt(obj, "allowedBlobUrls", w, string_list)? {
        o.allowed_blob_urls = urls;
    }
    if let Some(t) = opt(obj, "transactional", w, boolean)? {
        o.transactional = t;
    }
    if let Some(t) = opt(obj, "tierUp", w, boolean)? {
        o.tier_up = t;
    }
    if let Some(t) = opt(obj, "shareCode", w, boolean)? {
        o.share_code = t;
    }
    if let Some(p) = opt(obj, "persist", w, string)? {
        o.persist = match p.as_str() {
            "sync" => crate::durable::Persist::Sync,
            "async" => crate::durable::Persist::Async,
            _ => return Err(bad("options.persist", "'sync' or 'async'")),
        };
    }
    if let Some(fs) = opt(obj, "filesystem", w, object)? {
        let w = "options.filesystem";
        only_known(&fs, w, &["hostDir", "guestDir", "writable"])?;
        let host_dir = req_string(&fs, "hostDir", w)?;
        let guest_dir = opt(&fs, "guestDir", w, string)?.unwrap_or_else(|| "/data".into());
        // The name guests see the directory under: a path (a NUL, an empty name or 1 MiB of one
        // were taken as they came: review AB).
        if guest_dir.is_empty() || guest_dir.len() > 4096 || guest_dir.contains('\0') {
            return Err(bad("options.filesystem.guestDir", "a path of 1 to 4096 bytes, without NUL"));
        }
        let writable = opt(&fs, "writable", w, boolean)?.unwrap_or(false);
        if !std::path::Path::new(&host_dir).is_dir() {
            return Err(bad("options.filesystem.hostDir", "an existing directory"));
        }
        o.filesystem = Some(FilesystemConfig { host_dir: host_dir.into(), guest_dir, writable });
    }
    if let Some(env) = opt(obj, "env", w, |v, p| env_offer(v, p))? {
        o.env = env;
    }
    if let Some(net) = opt(obj, "network", w, object)? {
        o.network = Some(crate::network::Network::new(network_config(&net)?)?);
    }
    Ok(o)
}

/// `options.env`: names of the process's variables (an array) or the variables themselves (an
/// object of strings). A name holds no `=` or NUL, a value no NUL (WASI could not pass them).
fn env_offer(v: Unknown, what: &str) -> Result<crate::capabilities::EnvOffer, ExecError> {
    use crate::capabilities::EnvOffer;
    let name_ok = |k: &str| !k.is_empty() && !k.contains(['=', '\0']);
    let offer = if object(v, what)?.is_array().map_err(ExecError::internal)? {
        EnvOffer::Names(string_list(v, what)?)
    } else {
        let map = string_map(&object(v, what)?, what)?;
        if let Some((k, _)) = map.iter().find(|(_, v)| v.contains('\0')) {
            return Err(bad(&format!("{what}.{k}"), "a string without NUL"));
        }
        EnvOffer::Values(map.into_iter().collect())
    };
    let names: Vec<&String> = match &offer {
        EnvOffer::Names(n) => n.iter().collect(),
        EnvOffer::Values(v) => v.iter().map(|(k, _)| k).collect(),
        EnvOffer::Nothing => Vec::new(),
    };
    match names.into_iter().find(|k| !name_ok(k)) {
        Some(k) => Err(bad(&format!("{what} ({k:?})"), "variable names, not empty, without '=' or NUL")),
        None => Ok(offer),
    }
}

/// `options.network`: `allowedHosts` (required, may be empty) and its caps.
fn network_config(obj: &Object) -> Result<crate::network::NetworkConfig, ExecError> {
    use crate::network::{ranges as r, HostRule, NetworkConfig};
    let w = "options.network";
    // A grant: a misspelt cap (`maxRedirect`) would be a looser one than asked for, silently.
    only_known(obj, w, &["allowedHosts", "maxResponseBytes", "maxRequestBytes", "maxHeaderBytes", "maxRequestsPerCall", "timeoutMs", "maxRedirects"])?;
    let mut c = NetworkConfig::default();
    let hosts = opt(obj, "allowedHosts", w, string_list)?.ok_or_else(|| bad("options.network.allowedHosts", "an array of host patterns"))?;
    c.allowed_hosts = hosts
        .iter()
        .map(|h| HostRule::parse(h).map_err(|why| ExecError::InvalidArgument(format!("options.network.allowedHosts: {why}"))))
        .collect::<Result<_, _>>()?;
    if let Some(n) = opt(obj, "maxResponseBytes", w, |v, p| ranged(v, p, r::BYTES))? {
        c.max_response_bytes = n;
    }
    if let Some(n) = opt(obj, "maxRequestBytes", w, |v, p| ranged(v, p, r::BYTES))? {
        c.max_request_bytes = n;
    }
    if let Some(n) = opt(obj, "maxHeaderBytes", w, |v, p| ranged(v, p, r::BYTES))? {
        c.max_header_bytes = n;
    }
    if let Some(n) = opt(obj, "maxRequestsPerCall", w, |v, p| ranged(v, p, r::REQUESTS))? {
        c.max_requests_per_call = n as u32;
    }
    if let Some(n) = opt(obj, "timeoutMs", w, |v, p| ranged(v, p, r::TIMEOUT_MS))? {
        c.timeout = std::time::Duration::from_millis(n);
    }
    if let Some(n) = opt(obj, "maxRedirects", w, |v, p| ranged(v, p, r::REDIRECTS))? {
        c.max_redirects = n as u32;
    }
    Ok(c)
}
