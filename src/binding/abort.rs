//! `options.signal`: an AbortSignal wired to a core `CancelFlag` for the life of one call.

use std::ptr;

use napi::bindgen_prelude::{JsObjectValue, Object};
use napi::JsValue;
use napi::{sys, Env};

use crate::limits::CancelFlag;

/// The listener a call added to its signal; removed when the call settles.
pub struct AbortHook {
    signal: sys::napi_ref,
    listener: sys::napi_ref,
}

unsafe fn call_method(env: sys::napi_env, this: sys::napi_value, name: &std::ffi::CStr, args: &[sys::napi_value]) -> bool {
    let mut f = ptr::null_mut();
    let mut out = ptr::null_mut();
    unsafe {
        sys::napi_get_named_property(env, this, name.as_ptr(), &mut f) == sys::Status::napi_ok
            && sys::napi_call_function(env, this, f, args.len(), args.as_ptr(), &mut out) == sys::Status::napi_ok
    }
}

/// Cancels `cancel` now if `signal` is already aborted, or when it aborts during the call.
pub fn attach(env: &Env, signal: &Object, cancel: &CancelFlag) -> napi::Result<Option<AbortHook>> {
    if signal.get_named_property::<Option<bool>>("aborted")?.unwrap_or(false) {
        cancel.cancel();
        return Ok(None);
    }
    let flag = cancel.clone();
    let listener = env.create_function_from_closure::<(), (), _>("onAbort", move |_| {
        flag.cancel();
        Ok(())
    })?;
    let raw_env = env.raw();
    let mut event = ptr::null_mut();
    let mut hook = AbortHook { signal: ptr::null_mut(), listener: ptr::null_mut() };
    unsafe {
        sys::napi_create_string_utf8(raw_env, c"abort".as_ptr(), 5, &mut event);
        if !call_method(raw_env, signal.raw(), c"addEventListener", &[event, listener.raw()]) {
            return Err(napi::Error::from_reason("options.signal is not an AbortSignal (no addEventListener)"));
        }
        sys::napi_create_reference(raw_env, signal.raw(), 1, &mut hook.signal);
        sys::napi_create_reference(raw_env, listener.raw(), 1, &mut hook.listener);
    }
    Ok(Some(hook))
}

impl AbortHook {
    /// Removes the listener; call on the JS thread once the call has settled.
    pub fn detach(self, env: &Env) {
        let raw_env = env.raw();
        unsafe {
            let mut signal = ptr::null_mut();
            let mut listener = ptr::null_mut();
            let mut event = ptr::null_mut();
            if sys::napi_get_reference_value(raw_env, self.signal, &mut signal) == sys::Status::napi_ok
                && sys::napi_get_reference_value(raw_env, self.listener, &mut listener) == sys::Status::napi_ok
                && sys::napi_create_string_utf8(raw_env, c"abort".as_ptr(), 5, &mut event) == sys::Status::napi_ok
            {
                call_method(raw_env, signal, c"removeEventListener", &[event, listener]);
            }
            sys::napi_delete_reference(raw_env, self.signal);
            sys::napi_delete_reference(raw_env, self.listener);
        }
    }
}
