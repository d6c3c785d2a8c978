//! Reading Loom's JS objects (definitions, options) into core types, with `INVALID_ARGUMENT`
//! errors that name the offending field.

use std::num::NonZeroUsize;

use napi::bindgen_prelude::{FnArgs, Function, JsObjectValue, Object, Unknown};
use napi::{JsValue, ValueType};

use crate::error::ExecError;
use crate::capabilities::{Capabilities, FilesystemConfig};
use crate::executor::{Definition, ExecutorOptions};
use crate::limits::{LimitOverrides, MIB};

fn bad(what: &str, want: &str) -> ExecError {
    ExecError::InvalidArgument(format!("{what} must be {want}"))
}

fn kind(v: &Unknown) -> Result<ValueType, ExecError> {
    v.get_type().map_err(ExecError::internal)
}

/// A property, or `None` when it is missing, `undefined` or `null`.
pub fn prop<'e>(obj: &Object<'e>, key: &str) -> Result<Option<Unknown<'e>>, ExecError> {
    let v: Unknown = obj.get_named_property(key).map_err(ExecError::internal)?;
    Ok(match kind(&v)? {
        ValueType::Undefined | ValueType::Null => None,
        _ => Some(v),
    })
}

pub fn object<'e>(v: Unknown<'e>, what: &str) -> Result<Object<'e>, ExecError> {
    match kind(&v)? {
        ValueType::Object | ValueType::Function => unsafe { v.cast::<Object>() }.map_err(ExecError::internal),
        _ => Err(bad(what, "an object")),
    }
}

pub fn string(v: Unknown, what: &str) -> Result<String, ExecError> {
    match kind(&v)? {
        ValueType::String => unsafe { v.cast::<String>() }.map_err(ExecError::internal),
        _ => Err(bad(what, "a string")),
    }
}

fn number(v: Unknown, what: &str) -> Result<f64, ExecError> {
    match kind(&v)? {
        ValueType::Number => unsafe { v.cast::<f64>() }.map_err(ExecError::internal),
        _ => Err(bad(what, "a number")),
    }
}

fn boolean(v: Unknown, what: &str) -> Result<bool, ExecError> {
    match kind(&v)? {
        ValueType::Boolean => unsafe { v.cast::<bool>() }.map_err(ExecError::internal),
        _ => Err(bad(what, "a boolean")),
    }
}

fn opt<'e, T>(
    obj: &Object<'e>,
    key: &str,
    what: &str,
    read: impl Fn(Unknown<'e>, &str) -> Result<T, ExecError>,
) -> Result<Option<T>, ExecError> {
    let path = format!("{what}.{key}");
    prop(obj, key)?.map(|v| read(v, &path)).transpose()
}

fn req_string(obj: &Object, key: &str, what: &str) -> Result<String, ExecError> {
    opt(obj, key, what, string)?.ok_or_else(|| bad(&format!("{what}.{key}"), "a string"))
}

fn string_list(v: Unknown, what: &str) -> Result<Vec<String>, ExecError> {
    let arr = object(v, what)?;
    if !arr.is_array().map_err(ExecError::internal)? {
        return Err(bad(what, "an array of strings"));
    }
    let len = arr.get_array_length().map_err(ExecError::internal)?;
    (0..len)
        .map(|i| string(arr.get_element::<Unknown>(i).map_err(ExecError::internal)?, &format!("{what}[{i}]")))
        .collect()
}

/// Loom's `ActivityDefinition`.
pub fn definition(v: Unknown) -> Result<Definition, ExecError> {
    let obj = object(v, "definition")?;
    let mut def = Definition {
        name: req_string(&obj, "name", "definition")?,
        version: req_string(&obj, "version", "definition")?,
        wasm_blob_path: req_string(&obj, "wasmBlobPath", "definition")?,
        sha256: opt(&obj, "sha256", "definition", string)?,
        ..Default::default()
    };
    if let Some(l) = opt(&obj, "limits", "definition", object)? {
        let w = "definition.limits";
        def.limits = LimitOverrides {
            max_memory_mb: opt(&l, "maxMemoryMB", w, number)?,
            max_execution_ms: opt(&l, "maxExecutionMs", w, number)?,
            max_fuel: opt(&l, "maxFuel", w, number)?,
        };
    }
    if let Some(c) = opt(&obj, "capabilities", "definition", object)? {
        let w = "definition.capabilities";
        def.capabilities = Capabilities {
            network: opt(&c, "network", w, boolean)?.unwrap_or(false),
            filesystem: opt(&c, "filesystem", w, boolean)?.unwrap_or(false),
            env: opt(&c, "env", w, string_list)?.unwrap_or_default(),
        };
    }
    Ok(def)
}

fn count(v: Unknown, what: &str) -> Result<NonZeroUsize, ExecError> {
    let n = number(v, what)?;
    if n.fract() != 0.0 || !(1.0..=1e9).contains(&n) {
        return Err(bad(what, "a whole number >= 1"));
    }
    NonZeroUsize::new(n as usize).ok_or_else(|| bad(what, "a whole number >= 1"))
}

fn bytes(v: Unknown, what: &str) -> Result<u64, ExecError> {
    let n = number(v, what)?;
    if !(n.is_finite() && n >= 1.0) {
        return Err(bad(what, "a positive number of bytes"));
    }
    Ok(n as u64)
}

/// `options.onLog`, if given: a function `(level, message) => void`.
pub fn log_callback<'e>(
    v: Option<Unknown<'e>>,
) -> Result<Option<Function<'e, FnArgs<(String, String)>, ()>>, ExecError> {
    let Some(v) = v.filter(|v| matches!(v.get_type(), Ok(ValueType::Object))) else { return Ok(None) };
    let obj = object(v, "options")?;
    let Some(f) = prop(&obj, "onLog")? else { return Ok(None) };
    if kind(&f)? != ValueType::Function {
        return Err(bad("options.onLog", "a function"));
    }
    unsafe { f.cast() }.map(Some).map_err(ExecError::internal)
}

/// The executor's options (all optional).
pub fn executor_options(v: Option<Unknown>) -> Result<ExecutorOptions, ExecError> {
    let mut o = ExecutorOptions::default();
    let Some(v) = v else { return Ok(o) };
    if matches!(kind(&v)?, ValueType::Undefined | ValueType::Null) {
        return Ok(o);
    }
    let obj = object(v, "options")?;
    let w = "options";
    if let Some(n) = opt(&obj, "maxCachedModules", w, count)? {
        o.max_cached_modules = n;
    }
    if let Some(n) = opt(&obj, "maxCacheBytes", w, bytes)? {
        o.max_cache_bytes = n.min(usize::MAX as u64) as usize;
    }
    if let Some(dir) = opt(&obj, "cacheDir", w, string)? {
        o.artifacts.dir = Some(dir.into());
    }
    if let Some(n) = opt(&obj, "maxActors", w, count)? {
        o.max_actors = n;
    }
    if let Some(n) = opt(&obj, "maxConcurrency", w, count)? {
        o.max_concurrency = n;
    }
    // Executor-wide defaults use the same validation as a definition's limits.
    let defaults = LimitOverrides {
        max_memory_mb: opt(&obj, "maxMemoryMB", w, number)?,
        max_execution_ms: opt(&obj, "maxExecutionMs", w, number)?,
        max_fuel: None,
    };
    o.defaults = o.defaults.with_overrides(&defaults)?;
    if let Some(n) = opt(&obj, "maxInputBytes", w, bytes)? {
        o.defaults.max_input_bytes = n;
    }
    if let Some(n) = opt(&obj, "maxOutputBytes", w, bytes)? {
        o.defaults.max_output_bytes = n.min(4096 * MIB);
    }
    if let Some(fs) = opt(&obj, "filesystem", w, object)? {
        let w = "options.filesystem";
        let host_dir = req_string(&fs, "hostDir", w)?;
        let guest_dir = opt(&fs, "guestDir", w, string)?.unwrap_or_else(|| "/data".into());
        let writable = opt(&fs, "writable", w, boolean)?.unwrap_or(false);
        if !std::path::Path::new(&host_dir).is_dir() {
            return Err(bad("options.filesystem.hostDir", "an existing directory"));
        }
        o.filesystem = Some(FilesystemConfig { host_dir: host_dir.into(), guest_dir, writable });
    }
    Ok(o)
}
