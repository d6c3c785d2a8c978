//! Raw Node-API helpers that leave nothing behind: a JS exception raised by user code (a getter
//! that throws, a method that throws) is taken and cleared, never left pending, and becomes a
//! coded error; strings are read as UTF-16 so distinct JS strings stay distinct.

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

/// `value.message` when it is a string, else `String(value)`; never throws.
pub fn describe(env: sys::napi_env, value: sys::napi_value) -> String {
    unsafe {
        let mut t = 0;
        if sys::napi_typeof(env, value, &mut t) == sys::Status::napi_ok && t == sys::ValueType::napi_object {
            let mut msg = ptr::null_mut();
            if sys::napi_get_named_property(env, value, c"message".as_ptr(), &mut msg) == sys::Status::napi_ok {
                if let Ok(s) = read_string(env, msg) {
                    return s;
                }
            }
            take_exception(env);
        }
        let mut s = ptr::null_mut();
        if sys::napi_coerce_to_string(env, value, &mut s) == sys::Status::napi_ok {
            if let Ok(s) = read_string(env, s) {
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

/// `obj[key]`; a getter that throws is `INVALID_ARGUMENT` naming the property, with the
/// exception cleared.
pub fn get(env: sys::napi_env, obj: sys::napi_value, key: &str, what: &str) -> Result<sys::napi_value, ExecError> {
    let mut out = ptr::null_mut();
    let name = std::ffi::CString::new(key).map_err(|_| ExecError::internal("a property name with a NUL"))?;
    let status = unsafe { sys::napi_get_named_property(env, obj, name.as_ptr(), &mut out) };
    if let Some(msg) = take_exception(env) {
        return Err(ExecError::InvalidArgument(format!("reading {what} threw: {msg}")));
    }
    if status != sys::Status::napi_ok {
        return Err(ExecError::InvalidArgument(format!("{what} cannot be read (status {status})")));
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
