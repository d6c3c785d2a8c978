//! Reading Loom's JS objects (definitions, options) into core types, with `INVALID_ARGUMENT`
//! errors that name the offending field. Every read goes through `js`: a getter that throws is a
//! coded error (never a pending exception), strings are read strictly as UTF-16, and every
//! number is checked against its documented range.

use std::num::NonZeroUsize;

use napi::bindgen_prelude::{FnArgs, FromNapiValue, Function, Object, Unknown};
use napi::{sys, JsValue, ValueType};

use super::js;
use crate::capabilities::Capabilities;
use crate::error::ExecError;
use crate::executor::Definition;
use crate::limits::{whole_in, LimitOverrides};

pub(super) fn bad(what: &str, want: &str) -> ExecError {
    ExecError::InvalidArgument(format!("{what} must be {want}"))
}

pub(super) fn kind(v: &Unknown) -> Result<ValueType, ExecError> {
    v.get_type().map_err(ExecError::internal)
}

fn env_of<'e>(v: &impl JsValue<'e>) -> sys::napi_env {
    v.value().env
}

/// A property, or `None` when it is missing, `undefined` or `null`, or comes from
/// `Object.prototype` (see `js::inherited_from_object`). `what` names the object (`definition`,
/// `options`) in errors.
pub fn prop<'e>(obj: &Object<'e>, key: &str, what: &str) -> Result<Option<Unknown<'e>>, ExecError> {
    let env = env_of(obj);
    let raw = js::get_prop(env, obj.raw(), key, what)?;
    let v = present(unsafe { Unknown::from_napi_value(env, raw) }.map_err(ExecError::internal)?)?;
    if v.is_some() {
        let name = std::ffi::CString::new(key).map_err(|_| ExecError::internal("a property name with a NUL"))?;
        if js::inherited_from_object(env, obj.raw(), &name, || format!("{what}.{key}"))? {
            return Ok(None);
        }
    }
    Ok(v)
}

pub fn object<'e>(v: Unknown<'e>, what: &str) -> Result<Object<'e>, ExecError> {
    match kind(&v)? {
        ValueType::Object | ValueType::Function => unsafe { v.cast::<Object>() }.map_err(ExecError::internal),
        _ => Err(bad(what, "an object")),
    }
}

pub fn string(v: Unknown, what: &str) -> Result<String, ExecError> {
    js::strict_string(env_of(&v), v.raw(), what)
}

pub fn number(v: Unknown, what: &str) -> Result<f64, ExecError> {
    match kind(&v)? {
        ValueType::Number => unsafe { v.cast::<f64>() }.map_err(ExecError::internal),
        _ => Err(bad(what, "a number")),
    }
}

pub fn boolean(v: Unknown, what: &str) -> Result<bool, ExecError> {
    match kind(&v)? {
        ValueType::Boolean => unsafe { v.cast::<bool>() }.map_err(ExecError::internal),
        _ => Err(bad(what, "a boolean")),
    }
}

pub(super) fn opt<'e, T>(
    obj: &Object<'e>,
    key: &str,
    what: &str,
    read: impl Fn(Unknown<'e>, &str) -> Result<T, ExecError>,
) -> Result<Option<T>, ExecError> {
    as_field(prop(obj, key, what)?, what, key, read)
}

pub(super) fn req_string(obj: &Object, key: &str, what: &str) -> Result<String, ExecError> {
    required_string(prop(obj, key, what)?, what, key)
}

/// A field that must be a string (`{what}.{key}` in errors).
pub(super) fn required_string(v: Option<Unknown>, what: &str, key: &str) -> Result<String, ExecError> {
    as_field(v, what, key, string)?.ok_or_else(|| bad(&format!("{what}.{key}"), "a string"))
}

#[path = "args_lists.rs"]
mod lists;
pub use lists::{keys, string_list, MAX_LIST_UNITS};
pub(super) use lists::{keys_within, string_map, string_map_within, Room};
use lists::{not_plain, too_many_keys};

/// Loom's `ActivityDefinition`, read property by property.
pub fn definition(v: Unknown) -> Result<Definition, ExecError> {
    let obj = object(v, "definition")?;
    definition_from(|key| prop(&obj, key, "definition"), KeyCheck::List)
}

/// The keys `definition.limits` takes.
pub const LIMIT_FIELDS: [&str; 3] = ["maxMemoryMB", "maxExecutionMs", "maxFuel"];
/// The keys `definition.capabilities` takes.
pub const CAPABILITY_FIELDS: [&str; 4] = ["network", "filesystem", "env", "hostFunctions"];

/// How a call's objects (`definition.limits`, `definition.capabilities`, the options) are checked
/// for keys they do not take: a misspelt limit (`maxExecutionMS`) would leave the default in force,
/// a misspelt `actorID` run the call on a fresh instance, each silently.
pub enum KeyCheck<'a> {
    /// List the object's keys here (through Node-API).
    List,
    /// `fast_paths.js` listed them (`Object.keys` there is far cheaper): the path of the first key
    /// no object took (`definition.limits.maxExecutionMS`), if any.
    Found(Option<&'a str>),
}

impl KeyCheck<'_> {
    /// `INVALID_ARGUMENT` if `obj` (`what`) has an own enumerable key not in `known`.
    pub fn check(&self, obj: Option<&Object>, what: &str, known: &[&str]) -> Result<(), ExecError> {
        match (self, obj) {
            (KeyCheck::List, Some(obj)) => only_known(obj, what, known),
            (KeyCheck::List, None) => Ok(()),
            // An ArrayBuffer has no key "0" nor own `length`: `fast_paths.js` cannot tell one
            // without running code of the object's (review BV1: `execute` ran with one as
            // `limits`, the native read refused it). Checked first, as `indexed` checks it.
            (KeyCheck::Found(_), Some(obj)) if js::is_arraybuffer(env_of(obj), obj.raw()) => Err(not_plain(what)),
            (KeyCheck::Found(found), _) => match found.and_then(|f| found_refusal(f, what, known)) {
                Some(e) => Err(e),
                None => Ok(()),
            },
        }
    }
}

/// The refusal `fast_paths.js` found for the keys of `what` (its `firstUnknown`), worded as the
/// native listing (`keys`, then `only_known`) words it:
/// - `{what}`: it lists a key per element (`indexed`);
/// - `many {what}`: more than 10,000 keys;
/// - `long {what}[{i}] {n}`: key `i` is `n` characters long, over a string argument's limit;
/// - `together {what}`: its keys hold more than `MAX_LIST_UNITS` characters together;
/// - `{what}.{key}`: the first key it does not take.
/// A key's text crosses only once it is known to be short (review BV1: a key of 500 million
/// characters was copied whole to be named in the refusal, 1.9-2.7 s of the event loop).
fn found_refusal(found: &str, what: &str, known: &[&str]) -> Option<ExecError> {
    if found == what {
        return Some(not_plain(what));
    }
    if found.strip_prefix("many ") == Some(what) {
        return Some(too_many_keys(what));
    }
    if found.strip_prefix("together ") == Some(what) {
        return Some(Room::new(what, MAX_LIST_UNITS).over());
    }
    if let Some((at, units)) = found.strip_prefix("long ").and_then(|r| r.rsplit_once(' ')) {
        if at.strip_prefix(what).is_some_and(|i| i.starts_with('[')) {
            return Some(ExecError::InvalidArgument(format!(
                "{at} is {units} characters long; a string argument may be at most {}",
                js::MAX_ARGUMENT_UNITS
            )));
        }
        return None;
    }
    let key = found.strip_prefix(what)?.strip_prefix('.')?;
    Some(unknown_key(what, key.to_string(), known))
}

/// The definition's own properties, in the order they are read (`fast_paths.js` reads them in
/// this order and hands them over as they are).
pub const DEFINITION_FIELDS: [&str; 10] =
    ["name", "version", "wasmBlobPath", "sha256", "deterministic", "entrypoint", "abi", "config", "limits", "capabilities"];

/// A getter that threw while `fast_paths.js` read the fields (`at`: `definition.version`, say).
/// The read is refused as the all-native read refuses it: at that field, once the fields before
/// it are checked (an earlier bad field is the error, as it would have stopped the read there).
pub struct Threw {
    at: String,
    error: ExecError,
}

impl Threw {
    pub fn new(env: sys::napi_env, at: String, thrown: sys::napi_value) -> Threw {
        // `keys of {path}`: listing the object's keys threw (a Proxy's `ownKeys`), worded as
        // `keys` words it, and refused at that object.
        // `index {path}[0]` (or `.length`): a read of `indexed`'s on the object at `path` threw.
        let (at, error) = match (at.strip_prefix("keys of "), at.strip_prefix("index ")) {
            (Some(path), _) => (path.to_string(), format!("listing the keys of {path} threw: {}", js::describe(env, thrown))),
            (_, Some(read)) => {
                let path = read.strip_suffix("[0]").or_else(|| read.strip_suffix(".length")).unwrap_or(read);
                (path.to_string(), format!("reading {read} threw: {}", js::describe(env, thrown)))
            }
            _ => (at.clone(), format!("reading {at} threw: {}", js::describe(env, thrown))),
        };
        Threw { at, error: ExecError::InvalidArgument(error) }
    }

    /// Refuses the field `{what}.{key}` if it is the one whose getter threw.
    pub fn check(threw: Option<&Threw>, what: &str, key: &str) -> Result<(), ExecError> {
        match threw {
            Some(t) if t.at.split_once('.') == Some((what, key)) => Err(t.error.clone()),
            _ => Ok(()),
        }
    }

    /// Refuses the object `what` itself if listing its keys threw (a Proxy's `ownKeys`).
    pub fn check_whole(threw: Option<&Threw>, what: &str) -> Result<(), ExecError> {
        match threw {
            Some(t) if t.at == what => Err(t.error.clone()),
            _ => Ok(()),
        }
    }
}

/// The field `key` of `values`, handed over from JS in the order of `names`.
pub fn field_of<'e>(values: &[Unknown<'e>], names: &[&str], key: &str) -> Result<Option<Unknown<'e>>, ExecError> {
    match names.iter().position(|n| *n == key).and_then(|i| values.get(i)) {
        Some(v) => present(*v),
        None => Err(ExecError::internal(format!("no field {key} was handed over"))),
    }
}

/// A value handed over from JS, as `prop` reports a property: `None` for `undefined` and `null`.
pub fn present(v: Unknown) -> Result<Option<Unknown>, ExecError> {
    Ok(match kind(&v)? {
        ValueType::Undefined | ValueType::Null => None,
        _ => Some(v),
    })
}

/// A definition from its fields (`field(key)`, `None` when missing): read from the object here,
/// or already read by `fast_paths.js`. Each field is checked as it is taken, in
/// `DEFINITION_FIELDS` order; the first bad one is the error.
pub fn definition_from<'e>(
    mut field: impl FnMut(&str) -> Result<Option<Unknown<'e>>, ExecError>,
    keys: KeyCheck,
) -> Result<Definition, ExecError> {
    const W: &str = "definition";
    let mut def = Definition {
        name: required_string(field("name")?, W, "name")?,
        version: required_string(field("version")?, W, "version")?,
        wasm_blob_path: required_string(field("wasmBlobPath")?, W, "wasmBlobPath")?,
        sha256: as_field(field("sha256")?, W, "sha256", string)?,
        deterministic: as_field(field("deterministic")?, W, "deterministic", boolean)?.unwrap_or(false),
        entrypoint: as_field(field("entrypoint")?, W, "entrypoint", string)?,
        ..Default::default()
    };
    if let Some(abi) = as_field(field("abi")?, W, "abi", string)? {
        def.abi = Some(crate::abi::Abi::parse(&abi)?);
    }
    if let Some(config) = as_field(field("config")?, W, "config", object)? {
        // Refused by its characters before they are all copied: each is a byte or more, and
        // `Definition::validate` counts its bytes exactly after.
        def.config = string_map_within(&config, "definition.config", &mut Room::new("definition.config", crate::options::MAX_CONFIG_BYTES))?;
    }
    if let Some(l) = as_field(field("limits")?, W, "limits", object)? {
        let w = "definition.limits";
        keys.check(Some(&l), w, &LIMIT_FIELDS)?;
        def.limits = LimitOverrides {
            max_memory_mb: opt(&l, "maxMemoryMB", w, number)?,
            max_execution_ms: opt(&l, "maxExecutionMs", w, number)?,
            max_fuel: opt(&l, "maxFuel", w, number)?,
        };
    }
    if let Some(c) = as_field(field("capabilities")?, W, "capabilities", object)? {
        let w = "definition.capabilities";
        keys.check(Some(&c), w, &CAPABILITY_FIELDS)?;
        def.capabilities = Capabilities {
            network: opt(&c, "network", w, boolean)?.unwrap_or(false),
            filesystem: opt(&c, "filesystem", w, boolean)?.unwrap_or(false),
            env: opt(&c, "env", w, string_list)?.unwrap_or_default(),
            host_functions: opt(&c, "hostFunctions", w, string_list)?.unwrap_or_default(),
        };
    }
    Ok(def)
}

/// A field's value through `read`, its path (`{what}.{key}`) made only when it is there.
pub(super) fn as_field<'e, T>(
    v: Option<Unknown<'e>>,
    what: &str,
    key: &str,
    read: impl FnOnce(Unknown<'e>, &str) -> Result<T, ExecError>,
) -> Result<Option<T>, ExecError> {
    v.map(|v| read(v, &format!("{what}.{key}"))).transpose()
}

pub(super) fn ranged(v: Unknown, what: &str, (min, max): (f64, f64)) -> Result<u64, ExecError> {
    whole_in(what, number(v, what)?, min, max)
}

pub(super) fn count(v: Unknown, what: &str, range: (f64, f64)) -> Result<NonZeroUsize, ExecError> {
    NonZeroUsize::new(ranged(v, what, range)? as usize).ok_or_else(|| bad(what, "at least 1"))
}

/// `options.onLog`, if given: a function `(level, message) => void`.
pub fn log_callback<'e>(options: Option<&Object<'e>>) -> Result<Option<Function<'e, FnArgs<(String, String)>, ()>>, ExecError> {
    let Some(obj) = options else { return Ok(None) };
    let Some(f) = prop(obj, "onLog", "options")? else { return Ok(None) };
    if kind(&f)? != ValueType::Function {
        return Err(bad("options.onLog", "a function"));
    }
    unsafe { f.cast() }.map(Some).map_err(ExecError::internal)
}

/// `options` as an object, or `None` for `undefined`/`null`.
pub fn options_object<'e>(v: Option<Unknown<'e>>) -> Result<Option<Object<'e>>, ExecError> {
    match v {
        None => Ok(None),
        Some(v) if matches!(kind(&v)?, ValueType::Undefined | ValueType::Null) => Ok(None),
        Some(v) => object(v, "options").map(Some),
    }
}

/// The bytes of a Uint8Array/Buffer, copied.
pub fn bytes(v: Unknown, what: &str) -> Result<Vec<u8>, ExecError> {
    if kind(&v)? != ValueType::Object {
        return Err(bad(what, "a Uint8Array"));
    }
    let env = env_of(&v);
    unsafe { napi::bindgen_prelude::Uint8Array::from_napi_value(env, v.raw()) }.map(|a| a.to_vec()).map_err(|_| {
        js::take_exception(env);
        bad(what, "a Uint8Array")
    })
}

/// `INVALID_ARGUMENT` for the first own enumerable key of `obj` that is not in `known`, naming the
/// known key nearest to it if it is a likely misspelling (at most two edits, case aside).
pub fn only_known(obj: &Object, what: &str, known: &[&str]) -> Result<(), ExecError> {
    match keys(obj, what)?.into_iter().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(unknown_key(what, k, known)),
        None => Ok(()),
    }
}

/// The error for key `k` of `what`, which takes only `known`.
fn unknown_key(what: &str, k: String, known: &[&str]) -> ExecError {
    let near = known.iter().map(|n| (edits(&n.to_ascii_lowercase(), &k.to_ascii_lowercase()), n)).filter(|(d, _)| *d <= 2).min();
    let options = what.starts_with("options");
    let hint = match near.map(|(_, n)| n) {
        Some(n) => format!(" (did you mean {n}?)"),
        None if options => format!(" (the options are {})", known.join(", ")),
        None => format!(" (it takes {})", known.join(", ")),
    };
    // A key is named whole only if short: the message is not the caller's 100 KB key again.
    let shown: String = if k.chars().count() > 64 { k.chars().take(64).chain("...".chars()).collect() } else { k };
    let what_it_is = if options { "an option".to_string() } else { format!("a field of {what}") };
    ExecError::InvalidArgument(format!("{what}.{shown} is not {what_it_is}{hint}"))
}

/// Levenshtein distance between two short strings (option names; a key longer than 64 bytes is
/// no near miss and is not compared).
fn edits(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() > 64 || b.len() > 64 {
        return usize::MAX;
    }
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}
