//! `execute` with its JSON in JS: `fast_paths.js`, run once per Node environment as the addon
//! loads, wraps `WasmActivityExecutor.prototype.execute` and `WasmActor.prototype.execute` so that
//! the input's `JSON.stringify` and the output's `JSON.parse` run in JS, not through Node-API
//! calls from Rust. The executor's wrapper also reads the definition's and the options' fields in
//! JS (a property read there costs a few nanoseconds; through Node-API, each costs a string key
//! made and looked up, a guarded call and a check for an exception) and hands them over as
//! arguments, checked here as the all-native path checks them. The native halves
//! (`__executeFlat`, `__executeJson`) are taken off the prototypes by the script.

use napi::bindgen_prelude::{FromNapiValue, JsObjectValue, Object, Unknown};
use napi::{Env, JsValue, ValueType};
use napi_derive::napi;

use super::call::{self, start_call, Input, Options, Settle};
use super::{args, js, Raw, WasmActivityExecutor};

#[napi]
impl WasmActivityExecutor {
    /// `execute` for `fast_paths.js`, which read the definition's fields and the options' fields
    /// (in `args::DEFINITION_FIELDS` and `call::OPTION_FIELDS` order) and stringified the input:
    /// `input` is its JSON text, or a value whose `JSON.stringify` throws what the caller's did.
    /// Should a getter have thrown, `threw_at` names its field (`definition.version`), `thrown` is
    /// what it threw, and the fields after it are `undefined`. `unknown` is the path of the first
    /// key of `limits`, `capabilities` or the options that none of them takes
    /// (`options.actorID`), if the script found one. Returns the output's JSON text when
    /// the call finished on the spot, else the call's promise.
    #[allow(clippy::too_many_arguments)]
    #[napi(js_name = "__executeFlat", skip_typescript)]
    pub fn execute_flat<'env>(
        &self,
        env: &'env Env,
        input: Unknown<'env>,
        threw_at: Unknown<'env>,
        thrown: Unknown<'env>,
        unknown: Unknown<'env>,
        name: Unknown<'env>,
        version: Unknown<'env>,
        wasm_blob_path: Unknown<'env>,
        sha256: Unknown<'env>,
        deterministic: Unknown<'env>,
        entrypoint: Unknown<'env>,
        abi: Unknown<'env>,
        config: Unknown<'env>,
        limits: Unknown<'env>,
        capabilities: Unknown<'env>,
        actor_id: Unknown<'env>,
        transactional: Unknown<'env>,
        now: Unknown<'env>,
        seed: Unknown<'env>,
        on_progress: Unknown<'env>,
        signal: Unknown<'env>,
        options: Unknown<'env>,
    ) -> napi::Result<Unknown<'env>> {
        let threw = match threw_at.get_type() {
            // SAFETY: a string (checked), in this call's scope.
            Ok(ValueType::String) => Some(Box::new(args::Threw::new(env.raw(), unsafe { String::from_napi_value(env.raw(), threw_at.raw()) }?, thrown.raw()))),
            _ => None,
        };
        let unknown = match unknown.get_type() {
            // SAFETY: a string (checked), in this call's scope.
            Ok(ValueType::String) => Some(unsafe { String::from_napi_value(env.raw(), unknown.raw()) }?),
            _ => None,
        };
        let fields = [name, version, wasm_blob_path, sha256, deterministic, entrypoint, abi, config, limits, capabilities];
        let def = args::definition_from(
            |key| {
                args::Threw::check(threw.as_deref(), "definition", key)?;
                args::field_of(&fields, &args::DEFINITION_FIELDS, key)
            },
            args::KeyCheck::Found(unknown.as_deref()),
        );
        let input = match input.get_type() {
            Ok(ValueType::String) => Input::Json(input),
            _ => Input::Value(input),
        };
        // SAFETY: an object (checked), in this call's scope.
        let options_object = match options.get_type() {
            Ok(ValueType::Object | ValueType::Function) => Some(unsafe { options.cast::<Object>() }?),
            _ => None,
        };
        let options = Options::Fields([actor_id, transactional, now, seed, on_progress, signal], threw, unknown, options_object);
        start_call(&self.inner, env, def.as_ref().map_err(Clone::clone), None, input, options, Settle::TextNow)
    }
}

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
    let coded = super::class_guards::install(&env, &exports);
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
        // The keys each object takes (JSON), from the lists the native side checks against.
        let known = serde_json::json!({
            "limits": args::LIMIT_FIELDS,
            "capabilities": args::CAPABILITY_FIELDS,
            "options": call::OPTION_FIELDS,
        });
        let known = env.create_string(&known.to_string())?;
        let coded = coded.unwrap_or(undefined);
        let inherited = js::json_fns(raw).map(|j| j.inherited).map_err(|e| napi::Error::from_reason(e.to_string()))?;
        js::call(raw, undefined, script.raw(), &[executor.raw(), actor.raw(), settle.raw(), known.raw(), coded, inherited])
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
                for half in [c"__executeJson", c"__executeFlat"] {
                    let mut key = std::ptr::null_mut();
                    let mut deleted = false;
                    unsafe {
                        napi::sys::napi_create_string_utf8(raw, half.as_ptr(), half.to_bytes().len() as isize, &mut key);
                        napi::sys::napi_delete_property(raw, proto, key, &mut deleted);
                    }
                }
            }
            js::take_exception(raw);
        }
    }
    Ok(())
}
