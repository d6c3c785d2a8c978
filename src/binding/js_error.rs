//! Core errors as JS `Error` objects: `code` is the stable code, `message` the text (starting
//! with the code in plain words), `retryable` whether trying again may help, and each variant's
//! details become properties (`file`, `line`, `trapKind`, `actorReset`, ...).

use napi::bindgen_prelude::{JsObjectValue, Unknown};
use napi::{Env, JsError, JsValue};

use crate::error::{Detail, ExecError};

/// A napi error that throws (or rejects with) the JS error object built for `e`.
/// The longest text an error carries into JS (its message, each string detail): every guest
/// text is cut far below this where it is read; this bounds what any path could hand over (a
/// string V8 cannot make left a call's promise unsettled, or Node exiting).
const MAX_ERROR_TEXT_CHARS: usize = 64 * 1024;

fn capped(mut s: String) -> String {
    crate::host::truncate_chars(&mut s, MAX_ERROR_TEXT_CHARS);
    s
}

pub fn to_napi(env: &Env, e: &ExecError) -> napi::Error {
    match build(env, e) {
        Ok(err) => err,
        // Could not build the rich object (the env is going away): fall back to a plain one.
        Err(_) => napi::Error::new(napi::Status::GenericFailure, capped(format!("{}: {e}", e.code()))),
    }
}

fn build(env: &Env, e: &ExecError) -> napi::Result<napi::Error> {
    let base = napi::Error::new(e.code().to_string(), capped(e.to_string()));
    let value: Unknown = JsError::from(base).into_unknown(*env);
    let mut obj = value.coerce_to_object()?;
    obj.set_named_property("retryable", e.retryable())?;
    for (name, detail) in e.details() {
        match detail {
            Detail::Str(s) => obj.set_named_property(name, capped(s))?,
            Detail::Num(n) => obj.set_named_property(name, n)?,
            Detail::Bool(b) => obj.set_named_property(name, b)?,
            Detail::Json(text) => match super::parse_json(env, &text) {
                Some(v) => obj.set_named_property(name, v)?,
                None => obj.set_named_property(name, text)?,
            },
        }
    }
    // Not `napi::Error::from`, which reads the value's `message` and `cause` through Node-API
    // and, when a read throws, describes that throw the same way, without end: near the stack's
    // limit every read throws (V8's "Maximum call stack size exceeded"), and a definition getter
    // that re-entered the executor until then had Node die of a real stack overflow (review AS1).
    // This one reads own data properties only, follows at most 8 causes and clears what throws.
    Ok(napi::Error::from_unknown_without_coercion(value))
}
