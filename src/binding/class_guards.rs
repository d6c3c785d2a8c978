//! Coded errors for calls of the classes that the native side never sees as such: a constructor
//! called without `new` (napi wrapped `this`, the global object, as an executor nothing could
//! close), a method called on another object (V8's "Illegal invocation"), an argument napi
//! converts and refuses. `class_guards.js`, run once per Node environment as the addon loads,
//! replaces the exported constructors and guards the prototypes' methods; see there.

use napi::bindgen_prelude::{Object, Unknown};
use napi::{sys, Env, JsValue};

use super::js;

const SCRIPT: &str = include_str!("class_guards.js");

/// Installs the guards on `exports`; returns `coded(error, what)` for `fast_paths.js`. Should the
/// script fail, the classes stay as napi made them (errors without codes there, as before).
pub fn install(env: &Env, exports: &Object) -> Option<sys::napi_value> {
    let raw = env.raw();
    let installed = (|| -> napi::Result<sys::napi_value> {
        let script: Unknown = env.run_script(SCRIPT)?;
        let mut undefined = std::ptr::null_mut();
        unsafe { sys::napi_get_undefined(raw, &mut undefined) };
        js::call(raw, undefined, script.raw(), &[exports.raw()]).map_err(napi::Error::from_reason)
    })();
    match installed {
        Ok(coded) => Some(coded),
        Err(_) => {
            js::take_exception(raw);
            None
        }
    }
}
