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

/// The longest string argument read (a definition's field, an option, a config value, a name):
/// UTF-16 units, measured before any is copied. A call's input is bounded by `maxInputBytes`
/// instead (`input_text`).
pub const MAX_ARGUMENT_UNITS: usize = 1 << 20;

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

/// Clears the pending JS exception, if any, without looking at it: one thrown while an error is
/// described is not described in turn (an error whose `message` getter and `toString` throw
/// such errors recursed twice per level: the event loop hung, review AB).
fn clear_exception(env: sys::napi_env) {
    let mut pending = false;
    let mut err = ptr::null_mut();
    unsafe {
        if sys::napi_is_exception_pending(env, &mut pending) == sys::Status::napi_ok && pending {
            sys::napi_get_and_clear_last_exception(env, &mut err);
        }
    }
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
            clear_exception(env);
        }
        let mut s = ptr::null_mut();
        if sys::napi_coerce_to_string(env, value, &mut s) == sys::Status::napi_ok {
            if let Ok(s) = read_text(env, s) {
                return s;
            }
        }
        clear_exception(env);
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

/// A call's input text (a JS string), copied only if it may be within `max` UTF-8 bytes: else
/// its size in UTF-8 bytes, measured without a copy (a JS string's UTF-16 units are at most its
/// UTF-8 bytes). Review AX2: a 200-million-character input under `maxInputBytes: 1024` was
/// copied whole (220 MB, half a second of the JS thread) before it was refused.
pub fn input_text(env: sys::napi_env, value: sys::napi_value, max: u64) -> Result<Result<String, u64>, ()> {
    unsafe {
        let mut units = 0usize;
        if sys::napi_get_value_string_utf16(env, value, ptr::null_mut(), 0, &mut units) != sys::Status::napi_ok {
            return Err(());
        }
        let mut bytes = 0usize;
        if sys::napi_get_value_string_utf8(env, value, ptr::null_mut(), 0, &mut bytes) != sys::Status::napi_ok {
            return Err(());
        }
        if units as u64 > max {
            return Ok(Err(bytes as u64));
        }
        // JSON.stringify's text is well-formed (it escapes lone surrogates), and Node writes any
        // string as UTF-8 (a lone surrogate as U+FFFD): checked all the same.
        let mut buf = vec![0u8; bytes + 1];
        let mut written = 0usize;
        if sys::napi_get_value_string_utf8(env, value, buf.as_mut_ptr().cast(), buf.len(), &mut written) != sys::Status::napi_ok {
            return Err(());
        }
        buf.truncate(written);
        String::from_utf8(buf).map(Ok).map_err(|_| ())
    }
}

/// A string argument or property, strictly: `INVALID_ARGUMENT` for a non-string or a string
/// with lone surrogates.
/// Whether `value` is an ArrayBuffer (asked of V8: no code of the value's runs).
pub fn is_arraybuffer(env: sys::napi_env, value: sys::napi_value) -> bool {
    let mut yes = false;
    // SAFETY: a type query on a live value of this env.
    unsafe { sys::napi_is_arraybuffer(env, value, &mut yes) == sys::Status::napi_ok && yes }
}

/// The length of a JS string in UTF-16 units, measured without copying it; `None` for a value
/// that is no string.
pub fn string_units(env: sys::napi_env, value: sys::napi_value) -> Option<usize> {
    let mut t = 0;
    unsafe { sys::napi_typeof(env, value, &mut t) };
    if t != sys::ValueType::napi_string {
        return None;
    }
    let mut units = 0usize;
    // SAFETY: a length query (no buffer) on a value of this env.
    (unsafe { sys::napi_get_value_string_utf16(env, value, ptr::null_mut(), 0, &mut units) } == sys::Status::napi_ok).then_some(units)
}

pub fn strict_string(env: sys::napi_env, value: sys::napi_value, what: &str) -> Result<String, ExecError> {
    let mut t = 0;
    unsafe { sys::napi_typeof(env, value, &mut t) };
    if t != sys::ValueType::napi_string {
        return Err(ExecError::InvalidArgument(format!("{what} must be a string")));
    }
    // Measured before it is copied: a string `repeat` made costs its maker nothing, and its copy
    // (flattened, UTF-16 then UTF-8) cost 2 GB and 1.3-4.7 s of the event loop before an 8 KiB
    // field refused it (review BH2).
    let mut units = 0usize;
    // SAFETY: a length query (no buffer) on a value of this env.
    if unsafe { sys::napi_get_value_string_utf16(env, value, ptr::null_mut(), 0, &mut units) } != sys::Status::napi_ok {
        return Err(ExecError::InvalidArgument(format!("{what} must be a string")));
    }
    if units > MAX_ARGUMENT_UNITS {
        return Err(ExecError::InvalidArgument(format!(
            "{what} is {units} characters long; a string argument may be at most {MAX_ARGUMENT_UNITS}"
        )));
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

/// Whether `obj` has `key` as its own property (an array's hole does not: reading it reads
/// `Array.prototype`, which anyone may have added to); a throw (a Proxy's trap) is
/// `INVALID_ARGUMENT` naming the property (`what`), with the exception cleared.
pub fn has_own(env: sys::napi_env, obj: sys::napi_value, key: &str, what: impl Fn() -> String) -> Result<bool, ExecError> {
    let mut key_value = ptr::null_mut();
    if unsafe { sys::napi_create_string_utf8(env, key.as_ptr().cast(), key.len() as isize, &mut key_value) } != sys::Status::napi_ok {
        return Err(ExecError::internal("cannot make a property name"));
    }
    let mut own = false;
    let status = unsafe { sys::napi_has_own_property(env, obj, key_value, &mut own) };
    if let Some(msg) = take_exception(env) {
        return Err(ExecError::InvalidArgument(format!("reading {} threw: {msg}", what())));
    }
    if status != sys::Status::napi_ok {
        return Err(ExecError::InvalidArgument(format!("{} cannot be read (status {status})", what())));
    }
    Ok(own)
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
    /// `inherited.js`'s `inherited(o, k)`.
    pub inherited: sys::napi_value,
    /// `call_quietly.js`'s `callQuietly(f, value)`.
    pub call_quietly: sys::napi_value,
    /// `abort_hubs.js`'s `hubs(signal[, hub])`.
    pub abort_hubs: sys::napi_value,
}

thread_local! {
    /// Per `napi_env` of this thread, the references to `JSON`, `JSON.stringify`, `JSON.parse`,
    /// `Object.prototype` and `inherited.js`'s function (an entry leaves when its environment is
    /// torn down). Usually one; each
    /// further load of the addon into a Node environment (a module registry reset, a VM
    /// context) registers the module again with a new `napi_env`, used alongside the first.
    static JSON_REFS: RefCell<Vec<(usize, [usize; 7])>> = const { RefCell::new(Vec::new()) };
}

/// Its argument is the `napi_env` the references were made in, so each registration is unique:
/// Node aborts the process on a cleanup hook added twice with the same function and argument.
unsafe extern "C" fn forget_json_refs(env: *mut std::ffi::c_void) {
    JSON_REFS.with(|r| r.borrow_mut().retain(|(e, _)| *e != env as usize));
}

/// Whether `obj[key]` (just read, `present`) comes from `Object.prototype`: a key someone added
/// there (a prototype pollution elsewhere in the process: `Object.prototype.filesystem = ...`)
/// is no field of a definition or an option, and obeying it would be a grant nobody made.
/// Prototypes of the caller's own (a class's getters, `Object.create(base)`) still count. A few
/// Node-API calls when `Object.prototype` lacks the key, as it does unless polluted; the walk
/// is `inherited.js` (JS's own, which sees through a Proxy). Covers data put there: an accessor
/// put there runs when the field is read, before this looks.
pub fn inherited_from_object(
    env: sys::napi_env,
    obj: sys::napi_value,
    key: &std::ffi::CStr,
    what: impl Fn() -> String,
) -> Result<bool, ExecError> {
    let object_prototype = cached(env, 3)?;
    // The cheap answer holds for an object whose prototype is this realm's Object.prototype: only
    // this realm's pollution is under it. Any other object (another realm's, a class's instance, a
    // Proxy, whose prototype reads as null here) takes inherited.js's walk (review BH2).
    let mut prototype = ptr::null_mut();
    let mut plain = false;
    if unsafe { sys::napi_get_prototype(env, obj, &mut prototype) } == sys::Status::napi_ok
        && unsafe { sys::napi_strict_equals(env, prototype, object_prototype, &mut plain) } == sys::Status::napi_ok
        && plain
    {
        let mut polluted = false;
        if unsafe { sys::napi_has_named_property(env, object_prototype, key.as_ptr(), &mut polluted) } != sys::Status::napi_ok || !polluted {
            take_exception(env);
            return Ok(false);
        }
    }
    take_exception(env);
    let mut key_value = ptr::null_mut();
    if unsafe { sys::napi_create_string_utf8(env, key.as_ptr(), key.to_bytes().len() as isize, &mut key_value) } != sys::Status::napi_ok {
        return Err(ExecError::internal("cannot make a property name"));
    }
    let mut undefined = ptr::null_mut();
    unsafe { sys::napi_get_undefined(env, &mut undefined) };
    let answer = call(env, undefined, cached(env, 4)?, &[obj, key_value])
        .map_err(|msg| ExecError::InvalidArgument(format!("reading {} threw: {msg}", what())))?;
    let mut inherited = false;
    unsafe { sys::napi_get_value_bool(env, answer, &mut inherited) };
    Ok(inherited)
}

/// One of `json_fns`' values (by its index there), read alone: one Node-API call.
pub fn cached(env: sys::napi_env, index: usize) -> Result<sys::napi_value, ExecError> {
    let r = JSON_REFS.with(|r| r.borrow().iter().find(|(e, _)| *e == env as usize).map(|(_, refs)| refs[index]));
    let mut v = ptr::null_mut();
    match r {
        Some(r) if unsafe { sys::napi_get_reference_value(env, r as sys::napi_ref, &mut v) } == sys::Status::napi_ok && !v.is_null() => Ok(v),
        _ => {
            let fns = json_fns(env)?;
            Ok([fns.json, fns.stringify, fns.parse, fns.object_prototype, fns.inherited, fns.call_quietly, fns.abort_hubs][index])
        }
    }
}

pub fn json_fns(env: sys::napi_env) -> Result<JsonFns, ExecError> {
    let cached = JSON_REFS.with(|r| r.borrow().iter().find(|(e, _)| *e == env as usize).map(|(_, refs)| *refs));
    if let Some(refs) = cached {
        let mut vals = [ptr::null_mut(); 7];
        for (r, v) in refs.iter().zip(vals.iter_mut()) {
            let status = unsafe { sys::napi_get_reference_value(env, *r as sys::napi_ref, v) };
            if status != sys::Status::napi_ok || v.is_null() {
                return Err(ExecError::internal("the cached JSON functions are gone"));
            }
        }
        return Ok(JsonFns { json: vals[0], stringify: vals[1], parse: vals[2], object_prototype: vals[3], inherited: vals[4], call_quietly: vals[5], abort_hubs: vals[6] });
    }
    let mut global = ptr::null_mut();
    unsafe { sys::napi_get_global(env, &mut global) };
    let json = get(env, global, "JSON", "JSON").map_err(ExecError::internal)?;
    let stringify = get(env, json, "stringify", "JSON.stringify").map_err(ExecError::internal)?;
    let parse = get(env, json, "parse", "JSON.parse").map_err(ExecError::internal)?;
    let object = get(env, global, "Object", "Object").map_err(ExecError::internal)?;
    let object_prototype = get(env, object, "prototype", "Object.prototype").map_err(ExecError::internal)?;
    let inherited = run_script(env, INHERITED)?;
    let call_quietly = call_quietly(env)?;
    let abort_hubs = run_script(env, ABORT_HUBS)?;
    // Cached only when all five references and the cleanup hook are had; otherwise the
    // references made are deleted at once (never one leaked per call) and this call still has
    // what it needs.
    let mut refs = [0usize; 7];
    let mut made = 0;
    for (v, r) in [json, stringify, parse, object_prototype, inherited, call_quietly, abort_hubs].iter().zip(refs.iter_mut()) {
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
    Ok(JsonFns { json, stringify, parse, object_prototype, inherited, call_quietly, abort_hubs })
}

const INHERITED: &str = include_str!("inherited.js");
const CALL_QUIETLY: &str = include_str!("call_quietly.js");
const ABORT_HUBS: &str = include_str!("abort_hubs.js");

/// `call_quietly.js`'s `callQuietly`, made with V8's own promise test.
fn call_quietly(env: sys::napi_env) -> Result<sys::napi_value, ExecError> {
    let make = run_script(env, CALL_QUIETLY)?;
    let mut test = ptr::null_mut();
    let name = "isPromise";
    // SAFETY: a function of this env whose callback only reads its argument.
    if unsafe { sys::napi_create_function(env, name.as_ptr().cast(), name.len() as isize, Some(is_promise), ptr::null_mut(), &mut test) } != sys::Status::napi_ok {
        return Err(ExecError::internal("cannot make a function"));
    }
    let mut undefined = ptr::null_mut();
    unsafe { sys::napi_get_undefined(env, &mut undefined) };
    call(env, undefined, make, &[test]).map_err(|msg| ExecError::internal(format!("an addon script does not run: {msg}")))
}

/// `isPromise(value)`: whether V8 holds `value` a promise (a Proxy or thenable is none); no code
/// of the value's runs.
unsafe extern "C" fn is_promise(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let mut argc = 1usize;
    let mut argv = [ptr::null_mut(); 1];
    let mut yes = false;
    if sys::napi_get_cb_info(env, info, &mut argc, argv.as_mut_ptr(), ptr::null_mut(), ptr::null_mut()) == sys::Status::napi_ok && argc >= 1 {
        if sys::napi_is_promise(env, argv[0], &mut yes) != sys::Status::napi_ok {
            yes = false;
        }
    }
    let mut out = ptr::null_mut();
    sys::napi_get_boolean(env, yes, &mut out);
    out
}

/// The value of a script's text (the addon's own scripts).
fn run_script(env: sys::napi_env, text: &str) -> Result<sys::napi_value, ExecError> {
    let mut source = ptr::null_mut();
    let mut out = ptr::null_mut();
    let ok = unsafe {
        sys::napi_create_string_utf8(env, text.as_ptr().cast(), text.len() as isize, &mut source) == sys::Status::napi_ok
            && sys::napi_run_script(env, source, &mut out) == sys::Status::napi_ok
    };
    if !ok {
        let msg = take_exception(env).unwrap_or_default();
        return Err(ExecError::internal(format!("an addon script does not run: {msg}")));
    }
    Ok(out)
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
