//! Raw Node-API helpers that leave nothing behind: a JS exception raised by user code (a getter
//! that throws, a method that throws) is taken and cleared, never left pending, and becomes a
//! coded error; strings are read as UTF-16 so distinct JS strings stay distinct.

use std::cell::RefCell;
use std::ptr;

use napi::sys;

use crate::error::ExecError;

/// Takes the pending JS exception, if any, and describes it (its `message`, or its text).
pub fn take_exception(env: sys::napi_env) -> Option<String> {
    let mut pending = false;
    unsafe {
        if sys::napi_is_exception_pending(env, &mut pending) != sys::Status::napi_ok || !pending {
            return None;
        }
        let mut err = ptr::null_mut();
        if sys::napi_get_and_clear_last_exception(env, &mut err) != sys::Status::napi_ok {
            return Some("a JavaScript exception".into());
        }
        Some(describe(env, err))
    }
}

/// The longest text of a JS error that is read (UTF-16 units). Longer, it is not read at all: V8
/// makes a string whole before any of it can be copied out, and a message made by `repeat` costs
/// its maker nothing (review AB: a host function's 512M-character message took 2 GB and 1.3 s of
/// the event loop to read, to be cut to 64 KiB after).
pub const MAX_READ_TEXT_UNITS: usize = 1 << 20;

/// `text` as `read_string` reads it, or, past `MAX_READ_TEXT_UNITS`, a note of its length.
pub fn read_text(env: sys::napi_env, value: sys::napi_value) -> Result<String, ()> {
    let mut len = 0usize;
    // SAFETY: a length query (no buffer) on a value of this env.
    if unsafe { sys::napi_get_value_string_utf16(env, value, ptr::null_mut(), 0, &mut len) } != sys::Status::napi_ok {
        return Err(());
    }
    if len > MAX_READ_TEXT_UNITS {
        return Ok(format!("(a text of {len} characters, too long to read)"));
    }
    read_string(env, value)
}

/// `value.message` when it is a string, else `String(value)`; never throws. Text past
/// `MAX_READ_TEXT_UNITS` is not read (see `read_text`).
pub fn describe(env: sys::napi_env, value: sys::napi_value) -> String {
    unsafe {
        let mut t = 0;
        if sys::napi_typeof(env, value, &mut t) == sys::Status::napi_ok && t == sys::ValueType::napi_object {
            let mut msg = ptr::null_mut();
            if sys::napi_get_named_property(env, value, c"message".as_ptr(), &mut msg) == sys::Status::napi_ok {
                if let Ok(s) = read_text(env, msg) {
                    return s;
                }
            }
            take_exception(env);
        }
        let mut s = ptr::null_mut();
        if sys::napi_coerce_to_string(env, value, &mut s) == sys::Status::napi_ok {
            if let Ok(s) = read_text(env, s) {
                return s;
            }
        }
        take_exception(env);
        "a JavaScript value that cannot be shown".into()
    }
}

/// Reads a JS string as UTF-16. A string that is not well-formed (a lone surrogate) is refused:
/// it would not survive the trip into Rust unchanged, and two such strings could collapse into
/// one key.
pub fn read_string(env: sys::napi_env, value: sys::napi_value) -> Result<String, ()> {
    unsafe {
        let mut len = 0usize;
        if sys::napi_get_value_string_utf16(env, value, ptr::null_mut(), 0, &mut len) != sys::Status::napi_ok {
            return Err(());
        }
        let mut buf = vec![0u16; len + 1];
        let mut written = 0usize;
        if sys::napi_get_value_string_utf16(env, value, buf.as_mut_ptr(), buf.len(), &mut written) != sys::Status::napi_ok {
            return Err(());
        }
        buf.truncate(written);
        crate::text::string_from_utf16(&buf).ok_or(())
    }
}

/// A string argument or property, strictly: `INVALID_ARGUMENT` for a non-string or a string
/// with lone surrogates.
pub fn strict_string(env: sys::napi_env, value: sys::napi_value, what: &str) -> Result<String, ExecError> {
    let mut t = 0;
    unsafe { sys::napi_typeof(env, value, &mut t) };
    if t != sys::ValueType::napi_string {
        return Err(ExecError::InvalidArgument(format!("{what} must be a string")));
    }
    read_string(env, value).map_err(|_| {
        ExecError::InvalidArgument(format!(
            "{what} must be a well-formed string (it holds a lone surrogate, which would not stay distinct)"
        ))
    })
}

/// `obj[key]`; a getter that throws is `INVALID_ARGUMENT` naming the property (`what`), with the
/// exception cleared.
pub fn get(env: sys::napi_env, obj: sys::napi_value, key: &str, what: &str) -> Result<sys::napi_value, ExecError> {
    read_property(env, obj, key, || what.to_string())
}

/// `obj[key]` as `get`, the property named `{what}.{key}` in errors: that text is made only when
/// there is an error (a dozen properties are read per call).
pub fn get_prop(env: sys::napi_env, obj: sys::napi_value, key: &str, what: &str) -> Result<sys::napi_value, ExecError> {
    read_property(env, obj, key, || format!("{what}.{key}"))
}

fn read_property(
    env: sys::napi_env,
    obj: sys::napi_value,
    key: &str,
    what: impl Fn() -> String,
) -> Result<sys::napi_value, ExecError> {
    let mut out = ptr::null_mut();
    let name = std::ffi::CString::new(key).map_err(|_| ExecError::internal("a property name with a NUL"))?;
    let status = unsafe { sys::napi_get_named_property(env, obj, name.as_ptr(), &mut out) };
    if let Some(msg) = take_exception(env) {
        return Err(ExecError::InvalidArgument(format!("reading {} threw: {msg}", what())));
    }
    if status != sys::Status::napi_ok {
        return Err(ExecError::InvalidArgument(format!("{} cannot be read (status {status})", what())));
    }
    Ok(out)
}

/// Calls `f` with `this` and `args`; a throw is `Err` with its description (cleared).
pub fn call(
    env: sys::napi_env,
    this: sys::napi_value,
    f: sys::napi_value,
    args: &[sys::napi_value],
) -> Result<sys::napi_value, String> {
    let mut out = ptr::null_mut();
    let status = unsafe { sys::napi_call_function(env, this, f, args.len(), args.as_ptr(), &mut out) };
    if let Some(msg) = take_exception(env) {
        return Err(msg);
    }
    if status != sys::Status::napi_ok {
        return Err(format!("the call failed (status {status})"));
    }
    Ok(out)
}

/// `JSON`, `JSON.stringify` and `JSON.parse` as they were when this thread's environment first
/// needed them: every call uses both, and three property reads per call were measurable. With
/// them, `Object.prototype` (for `inherited_from_object`).
pub struct JsonFns {
    pub json: sys::napi_value,
    pub stringify: sys::napi_value,
    pub parse: sys::napi_value,
    pub object_prototype: sys::napi_value,
}

thread_local! {
    /// Per `napi_env` of this thread, the references to `JSON`, `JSON.stringify`, `JSON.parse`
    /// and `Object.prototype` (an entry leaves when its environment is torn down). Usually one; each
    /// further load of the addon into a Node environment (a module registry reset, a VM
    /// context) registers the module again with a new `napi_env`, used alongside the first.
    static JSON_REFS: RefCell<Vec<(usize, [usize; 4])>> = const { RefCell::new(Vec::new()) };
}

/// Its argument is the `napi_env` the references were made in, so each registration is unique:
/// Node aborts the process on a cleanup hook added twice with the same function and argument.
unsafe extern "C" fn forget_json_refs(env: *mut std::ffi::c_void) {
    JSON_REFS.with(|r| r.borrow_mut().retain(|(e, _)| *e != env as usize));
}

/// `Object.prototype` as it was when the addon loaded in `env` (`json_fns` caches it): what a
/// key read from an object must not come from (see `inherited_from_object`).
fn object_prototype(env: sys::napi_env) -> Result<sys::napi_value, ExecError> {
    let cached = JSON_REFS.with(|r| r.borrow().iter().find(|(e, _)| *e == env as usize).map(|(_, refs)| refs[3]));
    let mut v = ptr::null_mut();
    match cached {
        Some(r) if unsafe { sys::napi_get_reference_value(env, r as sys::napi_ref, &mut v) } == sys::Status::napi_ok && !v.is_null() => Ok(v),
        _ => json_fns(env).map(|j| j.object_prototype),
    }
}

/// Whether `obj[key]` (just read, `present`) comes from `Object.prototype`: a key someone added
/// there (a prototype pollution elsewhere in the process: `Object.prototype.filesystem = ...`)
/// is no field of a definition or an option, and obeying it would be a grant nobody made.
/// Prototypes of the caller's own (a class's getters, `Object.create(base)`) still count. One
/// Node-API call when `Object.prototype` lacks the key, as it does unless polluted.
pub fn inherited_from_object(
    env: sys::napi_env,
    obj: sys::napi_value,
    key: &std::ffi::CStr,
    what: impl Fn() -> String,
) -> Result<bool, ExecError> {
    let proto = object_prototype(env)?;
    let mut polluted = false;
    if unsafe { sys::napi_has_named_property(env, proto, key.as_ptr(), &mut polluted) } != sys::Status::napi_ok || !polluted {
        take_exception(env);
        return Ok(false);
    }
    let threw = |env| {
        let msg = take_exception(env).unwrap_or_else(|| "it cannot be read".into());
        ExecError::InvalidArgument(format!("reading {} threw: {msg}", what()))
    };
    let mut at = obj;
    // A Proxy's prototype chain may not end: at most this many steps.
    for _ in 0..10_000 {
        let mut same = false;
        if unsafe { sys::napi_strict_equals(env, at, proto, &mut same) } != sys::Status::napi_ok {
            return Err(threw(env));
        }
        if same {
            return Ok(true);
        }
        let mut key_value = ptr::null_mut();
        let mut own = false;
        let ok = unsafe {
            sys::napi_create_string_utf8(env, key.as_ptr(), key.to_bytes().len() as isize, &mut key_value) == sys::Status::napi_ok
                && sys::napi_has_own_property(env, at, key_value, &mut own) == sys::Status::napi_ok
        };
        if !ok {
            return Err(threw(env));
        }
        if own {
            return Ok(false);
        }
        let mut next = ptr::null_mut();
        if unsafe { sys::napi_get_prototype(env, at, &mut next) } != sys::Status::napi_ok {
            return Err(threw(env));
        }
        let mut t = 0;
        unsafe { sys::napi_typeof(env, next, &mut t) };
        if t == sys::ValueType::napi_null {
            return Ok(false);
        }
        at = next;
    }
    Err(ExecError::InvalidArgument(format!("{}: its prototype chain does not end", what())))
}

pub fn json_fns(env: sys::napi_env) -> Result<JsonFns, ExecError> {
    let cached = JSON_REFS.with(|r| r.borrow().iter().find(|(e, _)| *e == env as usize).map(|(_, refs)| *refs));
    if let Some(refs) = cached {
        let mut vals = [ptr::null_mut(); 4];
        for (r, v) in refs.iter().zip(vals.iter_mut()) {
            let status = unsafe { sys::napi_get_reference_value(env, *r as sys::napi_ref, v) };
            if status != sys::Status::napi_ok || v.is_null() {
                return Err(ExecError::internal("the cached JSON functions are gone"));
            }
        }
        return Ok(JsonFns { json: vals[0], stringify: vals[1], parse: vals[2], object_prototype: vals[3] });
    }
    let mut global = ptr::null_mut();
    unsafe { sys::napi_get_global(env, &mut global) };
    let json = get(env, global, "JSON", "JSON").map_err(ExecError::internal)?;
    let stringify = get(env, json, "stringify", "JSON.stringify").map_err(ExecError::internal)?;
    let parse = get(env, json, "parse", "JSON.parse").map_err(ExecError::internal)?;
    let object = get(env, global, "Object", "Object").map_err(ExecError::internal)?;
    let object_prototype = get(env, object, "prototype", "Object.prototype").map_err(ExecError::internal)?;
    // Cached only when all four references and the cleanup hook are had; otherwise the
    // references made are deleted at once (never one leaked per call) and this call still has
    // what it needs.
    let mut refs = [0usize; 4];
    let mut made = 0;
    for (v, r) in [json, stringify, parse, object_prototype].iter().zip(refs.iter_mut()) {
        let mut reference = ptr::null_mut();
        if unsafe { sys::napi_create_reference(env, *v, 1, &mut reference) } != sys::Status::napi_ok {
            break;
        }
        *r = reference as usize;
        made += 1;
    }
    let hooked = made == refs.len()
        && unsafe { sys::napi_add_env_cleanup_hook(env, Some(forget_json_refs), env.cast()) } == sys::Status::napi_ok;
    if hooked {
        JSON_REFS.with(|c| c.borrow_mut().push((env as usize, refs)));
    } else {
        for r in &refs[..made] {
            unsafe { sys::napi_delete_reference(env, *r as sys::napi_ref) };
        }
    }
    Ok(JsonFns { json, stringify, parse, object_prototype })
}

/// UTF-8 text longer than this goes to V8 as UTF-16 (V8's longest string, in units: 2^29 - 24).
const UTF8_DIRECT_MAX: usize = (1 << 29) - 24;

/// A JS string of `text`: ASCII (nearly all JSON) is Latin-1 too, and V8 copies Latin-1 without
/// decoding it.
pub fn new_string(env: sys::napi_env, text: &str) -> Result<sys::napi_value, ExecError> {
    let mut s = ptr::null_mut();
    let status = if text.is_ascii() {
        unsafe { sys::napi_create_string_latin1(env, text.as_ptr().cast(), text.len() as isize, &mut s) }
    } else if text.len() > UTF8_DIRECT_MAX {
        // V8 refuses UTF-8 input longer than its longest string, whatever the string's length
        // would be: long non-ASCII text goes as UTF-16 (CJK of 537 MB in UTF-8 is 358 MB there).
        let units: Vec<u16> = text.encode_utf16().collect();
        unsafe { sys::napi_create_string_utf16(env, units.as_ptr(), units.len() as isize, &mut s) }
    } else {
        unsafe { sys::napi_create_string_utf8(env, text.as_ptr().cast(), text.len() as isize, &mut s) }
    };
    if status != sys::Status::napi_ok {
        take_exception(env);
        return Err(ExecError::internal(format!("cannot hand the output to JS (status {status})")));
    }
    Ok(s)
}
