//! `options.signal`: an AbortSignal wired to a core `CancelFlag` for the life of one call. The
//! signal is user code: a getter or method of it that throws is a coded error at the start, and
//! ignored (cleared) at the end, so it can never lose a result already computed.

use std::ptr;

use napi::bindgen_prelude::Object;
use napi::JsValue;
use napi::{sys, Env};

use super::js;
use crate::error::ExecError;
use crate::limits::CancelFlag;

/// The listener a call added to its signal; removed when the call settles.
pub struct AbortHook {
    signal: sys::napi_ref,
    listener: sys::napi_ref,
}

fn abort_event(env: sys::napi_env) -> Result<sys::napi_value, ExecError> {
    let mut event = ptr::null_mut();
    match unsafe { sys::napi_create_string_utf8(env, c"abort".as_ptr(), 5, &mut event) } {
        sys::Status::napi_ok => Ok(event),
        s => Err(ExecError::internal(format!("cannot create a string (status {s})"))),
    }
}

fn truthy(env: sys::napi_env, v: sys::napi_value) -> bool {
    let mut b = ptr::null_mut();
    let mut out = false;
    unsafe {
        if sys::napi_coerce_to_bool(env, v, &mut b) != sys::Status::napi_ok
            || sys::napi_get_value_bool(env, b, &mut out) != sys::Status::napi_ok
        {
            js::take_exception(env);
            return false;
        }
    }
    out
}

/// Cancels `cancel` now if `signal` is already aborted, or when it aborts during the call.
pub fn attach(env: &Env, signal: &Object, cancel: &CancelFlag) -> Result<Option<AbortHook>, ExecError> {
    let raw_env = env.raw();
    let sig = signal.raw();
    let aborted = js::get(raw_env, sig, "aborted", "options.signal.aborted")?;
    if truthy(raw_env, aborted) {
        cancel.cancel();
        return Ok(None);
    }
    let add = js::get(raw_env, sig, "addEventListener", "options.signal.addEventListener")?;
    let mut t = 0;
    unsafe { sys::napi_typeof(raw_env, add, &mut t) };
    if t != sys::ValueType::napi_function {
        return Err(ExecError::InvalidArgument("options.signal is not an AbortSignal (no addEventListener)".into()));
    }
    let flag = cancel.clone();
    let listener = env
        .create_function_from_closure::<(), (), _>("onAbort", move |_| {
            flag.cancel();
            Ok(())
        })
        .map_err(ExecError::internal)?;
    let event = abort_event(raw_env)?;
    js::call(raw_env, sig, add, &[event, listener.raw()])
        .map_err(|msg| ExecError::InvalidArgument(format!("options.signal.addEventListener threw: {msg}")))?;
    let mut hook = AbortHook { signal: ptr::null_mut(), listener: ptr::null_mut() };
    unsafe {
        if sys::napi_create_reference(raw_env, sig, 1, &mut hook.signal) != sys::Status::napi_ok
            || sys::napi_create_reference(raw_env, listener.raw(), 1, &mut hook.listener) != sys::Status::napi_ok
        {
            hook.detach(env);
            return Err(ExecError::internal("cannot keep a reference to options.signal"));
        }
    }
    Ok(Some(hook))
}

impl AbortHook {
    /// Removes the listener; call on the JS thread once the call has settled. Whatever the
    /// signal does here (a throwing `removeEventListener`) is cleared and ignored.
    pub fn detach(self, env: &Env) {
        let raw_env = env.raw();
        unsafe {
            let mut signal = ptr::null_mut();
            let mut listener = ptr::null_mut();
            if !self.signal.is_null()
                && !self.listener.is_null()
                && sys::napi_get_reference_value(raw_env, self.signal, &mut signal) == sys::Status::napi_ok
                && sys::napi_get_reference_value(raw_env, self.listener, &mut listener) == sys::Status::napi_ok
                && !signal.is_null()
            {
                if let (Ok(remove), Ok(event)) =
                    (js::get(raw_env, signal, "removeEventListener", "signal.removeEventListener"), abort_event(raw_env))
                {
                    let _ = js::call(raw_env, signal, remove, &[event, listener]);
                }
            }
            if !self.signal.is_null() {
                sys::napi_delete_reference(raw_env, self.signal);
            }
            if !self.listener.is_null() {
                sys::napi_delete_reference(raw_env, self.listener);
            }
            js::take_exception(raw_env);
        }
    }
}
