//! `options.signal`: an AbortSignal wired to the core `CancelFlag`s of the calls given it. The
//! signal is user code: a getter or method of it that throws is a coded error at the start.
//!
//! One listener per signal, however many calls share it: the signal's `Hub` holds the flags of
//! its calls in flight, and is found again through `abort_hubs.js`'s WeakMap. Each call used to
//! add a listener of its own and remove it as it settled: more than 10 calls at once on one
//! signal (a workflow's, say) printed Node's `MaxListenersExceededWarning` (review BV2), and a
//! signal's `removeEventListener` ran at every call's end. A call now takes its place in the hub
//! and leaves it as it settles, with no JS run; the listener stays with the signal, which takes
//! it (and the hub) along when it goes.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::Object;
use napi::JsValue;
use napi::{sys, Env};

use super::js;
use crate::error::ExecError;
use crate::limits::CancelFlag;

/// The calls in flight that were given one signal, by a number of their own.
#[derive(Default)]
struct Hub {
    calls: Mutex<(u64, HashMap<u64, CancelFlag>)>,
}

impl Hub {
    fn join(&self, cancel: &CancelFlag) -> u64 {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.0 += 1;
        let id = calls.0;
        calls.1.insert(id, cancel.clone());
        id
    }

    /// The signal aborted: every call in flight is cancelled (and leaves as it settles).
    fn cancel_all(&self) {
        let flags: Vec<CancelFlag> = self.calls.lock().unwrap_or_else(|p| p.into_inner()).1.values().cloned().collect();
        for f in flags {
            f.cancel();
        }
    }
}

/// A call's place in its signal's hub; it leaves when dropped (the call settled).
pub struct AbortHook {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for AbortHook {
    fn drop(&mut self) {
        self.hub.calls.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&self.id);
    }
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

/// The hub `hubs` keeps for `signal`, if it keeps one (an External of ours: nothing else is
/// ever stored there).
fn hub_of(env: sys::napi_env, hubs: sys::napi_value, signal: sys::napi_value) -> Option<Arc<Hub>> {
    let mut undefined = ptr::null_mut();
    unsafe { sys::napi_get_undefined(env, &mut undefined) };
    let found = js::call(env, undefined, hubs, &[signal]).ok()?;
    let mut t = 0;
    unsafe { sys::napi_typeof(env, found, &mut t) };
    if t != sys::ValueType::napi_external {
        return None;
    }
    let mut data: *mut c_void = ptr::null_mut();
    if unsafe { sys::napi_get_value_external(env, found, &mut data) } != sys::Status::napi_ok || data.is_null() {
        return None;
    }
    // SAFETY: the External was made below from `Arc::into_raw` of a `Hub`, and owns that count
    // until its finalizer runs; this adds a count of its own.
    unsafe {
        Arc::increment_strong_count(data as *const Hub);
        Some(Arc::from_raw(data as *const Hub))
    }
}

unsafe extern "C" fn drop_hub(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `data` is the `Arc::into_raw` the External was made with; its finalizer runs once.
    drop(unsafe { Arc::from_raw(data as *const Hub) });
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
    let hubs = js::cached(raw_env, 6)?;
    if let Some(hub) = hub_of(raw_env, hubs, sig) {
        let id = hub.join(cancel);
        return Ok(Some(AbortHook { hub, id }));
    }
    js::take_exception(raw_env);
    let add = js::get(raw_env, sig, "addEventListener", "options.signal.addEventListener")?;
    let mut t = 0;
    unsafe { sys::napi_typeof(raw_env, add, &mut t) };
    if t != sys::ValueType::napi_function {
        return Err(ExecError::InvalidArgument("options.signal is not an AbortSignal (no addEventListener)".into()));
    }
    let hub = Arc::new(Hub::default());
    let listening = hub.clone();
    let listener = env
        .create_function_from_closure::<(), (), _>("onAbort", move |_| {
            listening.cancel_all();
            Ok(())
        })
        .map_err(ExecError::internal)?;
    // In the hub before the listener is added: a signal that aborts as it is added (its own
    // `addEventListener` may dispatch) cancels this call too.
    let id = hub.join(cancel);
    let hook = AbortHook { hub: hub.clone(), id };
    let event = abort_event(raw_env)?;
    js::call(raw_env, sig, add, &[event, listener.raw()])
        .map_err(|msg| ExecError::InvalidArgument(format!("options.signal.addEventListener threw: {msg}")))?;
    // Kept for the next calls given this signal; without it (no External could be made), each
    // call adds a listener of its own, as before.
    let raw = Arc::into_raw(hub) as *mut c_void;
    let mut external = ptr::null_mut();
    // SAFETY: the External owns one count of the hub, given back by `drop_hub` when collected.
    let made = unsafe { sys::napi_create_external(raw_env, raw, Some(drop_hub), ptr::null_mut(), &mut external) } == sys::Status::napi_ok;
    if !made {
        // SAFETY: not handed to an External: the count is given back here.
        drop(unsafe { Arc::from_raw(raw as *const Hub) });
        js::take_exception(raw_env);
        return Ok(Some(hook));
    }
    let mut undefined = ptr::null_mut();
    unsafe { sys::napi_get_undefined(raw_env, &mut undefined) };
    let _ = js::call(raw_env, undefined, hubs, &[sig, external]);
    Ok(Some(hook))
}

impl AbortHook {
    /// Leaves the signal's hub: the call settled. No JS runs.
    pub fn detach(self, _env: &Env) {}
}
