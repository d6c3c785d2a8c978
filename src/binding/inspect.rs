//! `inspectModule(bytes)`: what a module is (digest, imports, exports, which guest ABI it
//! matches), for the CLI's `inspect` and for users checking a module before they deploy it.

use napi::bindgen_prelude::{PromiseRaw, Unknown};
use napi::Env;
use napi_derive::napi;

use super::{args, settle};
use crate::error::ExecError;

#[napi(object)]
pub struct ModuleExport {
    pub name: String,
    pub r#type: String,
}

#[napi(object)]
pub struct ModuleImport {
    pub module: String,
    pub name: String,
    pub r#type: String,
}

#[napi(object)]
pub struct ModuleInfo {
    /// Bytes of the module.
    pub size: f64,
    pub sha256: String,
    pub exports: Vec<ModuleExport>,
    pub imports: Vec<ModuleImport>,
    /// The guest ABI it matches ('assemblyscript'), or null with `notes` saying why not.
    pub abi: Option<String>,
    pub notes: Vec<String>,
}

/// Compiles `bytes` (off the JS thread, within the default compile limits) and describes them:
/// digest, imports and exports with types (the first 10,000 of each, a note saying how many
/// there are past that), and whether (and why not) they match the guest ABI
/// the executor runs. Rejects with `INVALID_MODULE` for bytes that are not WebAssembly and
/// `COMPILE_LIMIT` past a limit.
#[napi(ts_args_type = "bytes: Uint8Array", ts_return_type = "Promise<ModuleInfo>")]
pub fn inspect_module<'env>(env: &'env Env, bytes: Unknown<'env>) -> napi::Result<PromiseRaw<'env, ModuleInfo>> {
    // Anything but bytes rejects with INVALID_ARGUMENT, as every other refusal does.
    let bytes = args::bytes(bytes, "bytes");
    crate::compile::quiet_known_panics();
    let gone = super::env_gone(env);
    let work = async move {
        let bytes = bytes?;
        // A worker that ends drops its inspects still queued, and their bytes (`EnvGone`).
        let _permit = tokio::select! {
            permit = crate::inspect::permits().acquire() => permit.map_err(ExecError::internal)?,
            () = gone.wait() => return Err(ExecError::Cancelled),
        };
        if gone.is_gone() {
            return Err(ExecError::Cancelled);
        }
        tokio::task::spawn_blocking(move || crate::inspect::inspect(&bytes))
            .await
            .map_err(|e| crate::compile::panicked("inspect", &e.to_string()))?
    };
    settle(env, work, |_, i| {
        Ok(ModuleInfo {
            size: i.size as f64,
            sha256: i.sha256,
            exports: i.exports.into_iter().map(|(name, r#type)| ModuleExport { name, r#type }).collect(),
            imports: i.imports.into_iter().map(|(module, name, r#type)| ModuleImport { module, name, r#type }).collect(),
            abi: i.abi,
            notes: i.notes,
        })
    })
}
