//! Lists and objects read from JS (`capabilities.env`, an object's keys, `config`, the
//! executor's lists): what lists a key per element is refused before its keys are listed, an
//! object has at most 10,000 keys, and the strings of one hold at most `MAX_LIST_UNITS`
//! characters together, each measured before it is copied.

use napi::bindgen_prelude::{FromNapiValue, Object, Unknown};
use napi::{sys, JsValue};

use super::{bad, env_of, number, object, prop, string};
use crate::binding::js;
use crate::error::ExecError;

pub fn string_list(v: Unknown, what: &str) -> Result<Vec<String>, ExecError> {
    string_list_within(v, what, &mut Room::new(what, MAX_LIST_UNITS))
}

/// The most characters (UTF-16 units) the strings of one list or object read from JS hold
/// together: as many as one string argument. Each string is measured before it is copied and
/// refused once the list's strings would pass it (review BU2: one 1 Mi-character string, free to
/// make with `repeat`, named 1,000 times in `capabilities.hostFunctions` was copied 1,000 times:
/// 3.1 GB and 3 s of the event loop, the copies held by the actor after).
pub const MAX_LIST_UNITS: usize = js::MAX_ARGUMENT_UNITS;

/// What is left of a list's (or object's) characters, `MAX_LIST_UNITS` or less.
pub(in crate::binding) struct Room<'a> {
    left: usize,
    max: usize,
    what: &'a str,
}

impl<'a> Room<'a> {
    pub(in crate::binding) fn new(what: &'a str, max: usize) -> Room<'a> {
        Room { left: max, max, what }
    }

    /// Takes `units` of the room, or refuses the whole list.
    fn take(&mut self, units: usize) -> Result<(), ExecError> {
        match self.left.checked_sub(units) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(self.over()),
        }
    }

    pub(in crate::binding) fn over(&self) -> ExecError {
        ExecError::InvalidArgument(format!("{}: its strings hold more than {} characters together, over the limit", self.what, self.max))
    }

    /// `string(v, what)`, its length taken from the room before it is copied (a string too long
    /// on its own is refused as `string` refuses it).
    pub(in crate::binding) fn string(&mut self, v: Unknown, what: &str) -> Result<String, ExecError> {
        match js::string_units(env_of(&v), v.raw()) {
            Some(units) if units <= js::MAX_ARGUMENT_UNITS => self.take(units)?,
            _ => {}
        }
        string(v, what)
    }
}

fn string_list_within(v: Unknown, what: &str, room: &mut Room) -> Result<Vec<String>, ExecError> {
    let arr = object(v, what)?;
    if !arr.is_array().map_err(ExecError::internal)? {
        return Err(bad(what, "an array of strings"));
    }
    let len = prop(&arr, "length", what)?.map(|l| number(l, what)).transpose()?.unwrap_or(0.0) as u32;
    if len > 10_000 {
        return Err(bad(what, "an array of at most 10000 strings"));
    }
    (0..len)
        .map(|i| {
            let key = i.to_string();
            let item = prop(&arr, &key, what)?;
            let own = item.is_some() && js::has_own(env_of(&arr), arr.raw(), &key, || format!("{what}[{i}]"))?;
            let item = item.filter(|_| own).ok_or_else(|| bad(&format!("{what}[{i}]"), "a string (a hole is none, whatever Array.prototype holds)"))?;
            room.string(item, &format!("{what}[{i}]"))
        })
        .collect()
}

/// An object's own enumerable string keys (not its prototypes': a key someone added to
/// `Object.prototype` is no option); a throw (a Proxy's `ownKeys` trap, a revoked Proxy) is
/// `INVALID_ARGUMENT`, with the exception cleared.
pub fn keys(obj: &Object, what: &str) -> Result<Vec<String>, ExecError> {
    keys_within(obj, what, &mut Room::new(what, MAX_LIST_UNITS))
}

pub(in crate::binding) fn keys_within(obj: &Object, what: &str, room: &mut Room) -> Result<Vec<String>, ExecError> {
    let env = env_of(obj);
    if indexed(env, obj.value().value, what)? {
        return Err(not_plain(what));
    }
    let mut names = std::ptr::null_mut();
    // SAFETY: a plain Node-API call on a live object of this env; `names` is written on success.
    let status = unsafe {
        sys::napi_get_all_property_names(
            env,
            obj.value().value,
            sys::KeyCollectionMode::own_only,
            sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
            sys::KeyConversion::numbers_to_strings,
            &mut names,
        )
    };
    if status != sys::Status::napi_ok {
        return Err(match js::take_exception(env) {
            Some(msg) => ExecError::InvalidArgument(format!("listing the keys of {what} threw: {msg}")),
            None => ExecError::InvalidArgument(format!("the keys of {what} cannot be listed (status {status})")),
        });
    }
    // SAFETY: `names` is the array Node-API just returned for this env.
    let mut count = 0u32;
    // SAFETY: `names` is the array Node-API just returned for this env.
    if unsafe { sys::napi_get_array_length(env, names, &mut count) } == sys::Status::napi_ok && count > 10_000 {
        return Err(too_many_keys(what));
    }
    let names = unsafe { Unknown::from_napi_value(env, names) }.map_err(ExecError::internal)?;
    string_list_within(names, what, room)
}

/// The refusal of an object that lists a key per element where a plain object is expected.
pub(super) fn not_plain(what: &str) -> ExecError {
    bad(what, "a plain object (not an array, typed array, or String object)")
}

/// Whether `value` lists a key per element (an array, a typed array or other view, an
/// ArrayBuffer, a String object, anything with a numeric own `length`): refused where a plain
/// object is expected, before its keys are listed (review BI1: a `new Uint8Array(1.3e8)` as
/// `config` or the executor's options listed 130 million keys, 5.4 GB and minutes of the event
/// loop; a String object of a `repeat()` string, free to make, one per character).
fn indexed(env: sys::napi_env, value: sys::napi_value, what: &str) -> Result<bool, ExecError> {
    let mut yes = false;
    // SAFETY: type queries on a live value of this env.
    unsafe {
        for check in [sys::napi_is_array, sys::napi_is_typedarray, sys::napi_is_dataview, sys::napi_is_arraybuffer] {
            if check(env, value, &mut yes) == sys::Status::napi_ok && yes {
                return Ok(true);
            }
        }
    }
    // A Proxy around one is none of those, and its `length` is not its own: its element 0 shows
    // through (review BJ1). An object with a key "0" is refused too.
    if js::has_own(env, value, "0", || format!("{what}[0]"))? {
        return Ok(true);
    }
    if !js::has_own(env, value, "length", || format!("{what}.length"))? {
        return Ok(false);
    }
    let length = js::get(env, value, "length", &format!("{what}.length"))?;
    let mut t = 0;
    // SAFETY: a type query on the value just read.
    unsafe { sys::napi_typeof(env, length, &mut t) };
    Ok(t == sys::ValueType::napi_number)
}

/// An object of string values (`{ key: 'value' }`).
/// Its keys and values hold at most `MAX_LIST_UNITS` characters together (`room`).
pub(in crate::binding) fn string_map(obj: &Object, what: &str) -> Result<std::collections::BTreeMap<String, String>, ExecError> {
    string_map_within(obj, what, &mut Room::new(what, MAX_LIST_UNITS))
}

pub(in crate::binding) fn string_map_within(obj: &Object, what: &str, room: &mut Room) -> Result<std::collections::BTreeMap<String, String>, ExecError> {
    let keys = keys_within(obj, what, room)?;
    if keys.len() > 10_000 {
        return Err(bad(what, "an object of at most 10000 entries"));
    }
    let mut map = std::collections::BTreeMap::new();
    for k in keys {
        let path = format!("{what}.{k}");
        let v = prop(obj, &k, what)?.ok_or_else(|| bad(&path, "a string"))?;
        map.insert(k, room.string(v, &path)?);
    }
    Ok(map)
}


/// The refusal of an object with more keys than any object read takes.
pub(super) fn too_many_keys(what: &str) -> ExecError {
    bad(what, "an object of at most 10000 entries")
}
