//! `execute` with its JSON in JS: `fast_paths.js`, run once per Node environment as the addon
//! loads, wraps `WasmActivityExecutor.prototype.execute` and `WasmActor.prototype.execute` so that
//! the input's `JSON.stringify` and the output's `JSON.parse` run in JS, not through Node-API
//! calls from Rust. The native halves (`__executeJson`) are taken off the prototypes by the script.

use napi::bindgen_prelude::{JsObjectValue, Object, Unknown};
use napi::{Env, JsValue};
use napi_derive::napi;

use super::{call, js, Raw};

const SCRIPT: &str = include_str!("fast_paths.js");

/// Installs the fast paths. Should anything here fail, the classes keep their native `execute`
/// (slower by the JSON crossings, the same otherwise): loading the addon never fails on it.
/// napi-rs keeps one `module_exports` hook per crate (a second would silently replace this one):
/// anything else that must run as the addon loads in an environment belongs here.
#[napi(module_exports)]
pub fn install(exports: Object, env: Env) -> napi::Result<()> {
    let raw = env.raw();
    // The native side's `JSON` functions (`executeDetailed`, errors' details) are taken now too,
    // so that both sides use those the global `JSON` held when the addon loaded.
    let _ = js::json_fns(raw);
    let installed = (|| -> napi::Result<()> {
        let executor: Unknown = exports.get_named_property("WasmActivityExecutor")?;
        let actor: Unknown = exports.get_named_property("WasmActor")?;
        let settle = env.create_function_from_closure::<String, Raw, _>("settleOutput", |ctx| {
            let text: String = ctx.get(0)?;
            call::settle_output(ctx.env, &text).map(|v| Raw(v.raw()))
        })?;
        let script: Unknown = env.run_script(SCRIPT)?;
        let mut undefined = std::ptr::null_mut();
        unsafe { napi::sys::napi_get_undefined(raw, &mut undefined) };
        js::call(raw, undefined, script.raw(), &[executor.raw(), actor.raw(), settle.raw()])
            .map(|_| ())
            .map_err(napi::Error::from_reason)
    })();
    if installed.is_err() {
        js::take_exception(raw);
        // The native halves take text that is never checked as JSON: without their wrappers,
        // they leave the prototypes.
        for class in ["WasmActivityExecutor", "WasmActor"] {
            let proto = js::get(raw, exports.raw(), class, class).and_then(|c| js::get(raw, c, "prototype", class));
            if let Ok(proto) = proto {
                let mut key = std::ptr::null_mut();
                let mut deleted = false;
                unsafe {
                    napi::sys::napi_create_string_utf8(raw, c"__executeJson".as_ptr(), 13, &mut key);
                    napi::sys::napi_delete_property(raw, proto, key, &mut deleted);
                }
            }
            js::take_exception(raw);
        }
    }
    Ok(())
}
