//! The napi binding: the only code that knows Node. It reads JS arguments into core types,
//! hands the call to the core executor on napi's tokio runtime, and turns the result into JS
//! (`JSON.parse` of the guest's output) or a JS error with a stable `code`.

mod abort;
mod args;
mod js_error;
mod js_log;
mod js_store;
mod object_store;

pub use object_store::ObjectBlobStore;

use std::sync::Arc;

use napi::bindgen_prelude::{FnArgs, Function, JavaScriptClassExt, JsObjectValue, Object, PromiseRaw, Unknown};
use napi::JsValue;
use napi::{Env, JsError, ValueType};
use napi_derive::napi;

use crate::error::ExecError;
use crate::executor::{Attempt, CallOptions, Done, Executor};
use crate::instance::CallOutput;
use js_error::to_napi;
use js_store::{Downloaded, JsBlobSource};

/// `executor.moduleCache`: kept for Loom's tests, which read `moduleCache.size`.
#[napi(object)]
pub struct ModuleCacheView {
    /// Compiled modules held now.
    pub size: u32,
}

#[napi(object)]
pub struct CacheStats {
    /// Compiled modules held now.
    pub modules: u32,
    /// Calls served by a cached (or already loading) module.
    pub hits: f64,
    /// Loads started: downloads, each followed by a compile unless the bytes were known.
    pub misses: f64,
    /// Modules compiled.
    pub compiles: f64,
    /// Modules loaded from a compiled artifact (`cacheDir` or `artifactStore`) instead of compiling.
    pub artifact_hits: f64,
    /// Compiled code held in memory, in bytes.
    pub code_bytes: f64,
    /// sha256 (hex) of each cached module.
    pub digests: Vec<String>,
    /// Live actor instances.
    pub actors: u32,
}

/// Runs Loom activities (WebAssembly modules) on wasmtime, off the Node event loop.
#[napi]
pub struct WasmActivityExecutor {
    inner: Arc<Executor>,
}

/// `options.artifactStore`: an `ObjectBlobStore`, or a URL to open one on.
fn artifact_store(env: &Env, options: Option<Unknown>) -> Result<Option<Arc<crate::store::ObjectSource>>, ExecError> {
    let Some(o) = options.filter(|o| matches!(o.get_type(), Ok(ValueType::Object))) else { return Ok(None) };
    let Some(v) = args::prop(&args::object(o, "options")?, "artifactStore")? else { return Ok(None) };
    if ObjectBlobStore::instance_of(env, &v).map_err(ExecError::internal)? {
        let native = unsafe { v.cast::<napi::bindgen_prelude::ClassInstance<ObjectBlobStore>>() }.map_err(ExecError::internal)?;
        return Ok(Some(native.source.clone()));
    }
    let url = args::string(v, "options.artifactStore")?;
    Ok(Some(Arc::new(crate::store::ObjectSource::open(&url, &[])?)))
}

fn stringify_input(env: &Env, input: Unknown) -> Result<String, ExecError> {
    let json: Object = env.get_global().and_then(|g| g.get_named_property("JSON")).map_err(ExecError::internal)?;
    let stringify: Function<Unknown, Unknown> = json.get_named_property("stringify").map_err(ExecError::internal)?;
    let text = stringify
        .call(input)
        .map_err(|e| ExecError::InvalidInput(format!("input is not JSON-serializable: {}", e.reason)))?;
    match text.get_type().map_err(ExecError::internal)? {
        ValueType::String => unsafe { text.cast::<String>() }.map_err(ExecError::internal),
        // `undefined`, a function or a symbol: JSON has no such value; send null as Loom would.
        _ => Ok("null".to_string()),
    }
}

fn parse_output<'e>(env: &'e Env, text: &str) -> Result<Unknown<'e>, ExecError> {
    let json: Object = env.get_global().and_then(|g| g.get_named_property("JSON")).map_err(ExecError::internal)?;
    let parse: Function<&str, Unknown> = json.get_named_property("parse").map_err(ExecError::internal)?;
    parse.call(text).map_err(|e| ExecError::InvalidOutput {
        message: format!("the guest returned text that is not JSON: {}", e.reason),
        preview: text.chars().take(200).collect(),
    })
}

fn details<'e>(env: &'e Env, out: &CallOutput, output: Unknown<'e>) -> napi::Result<Unknown<'e>> {
    let mut obj = Object::new(env)?;
    obj.set_named_property("output", output)?;
    obj.set_named_property("durationMs", out.duration.as_secs_f64() * 1000.0)?;
    if let Some(fuel) = out.fuel_consumed {
        obj.set_named_property("fuelConsumed", fuel as f64)?;
    }
    obj.set_named_property("peakMemoryBytes", out.peak_memory_bytes as f64)?;
    Ok(obj.to_unknown())
}

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

/// Compiles `bytes` and describes them: digest, imports and exports with types, and whether
/// (and why not) they match the guest ABI the executor runs. Throws `INVALID_MODULE` for
/// bytes that are not WebAssembly.
#[napi]
pub fn inspect_module(env: Env, bytes: napi::bindgen_prelude::Uint8Array) -> napi::Result<ModuleInfo> {
    let i = crate::inspect::inspect(&bytes).map_err(|e| to_napi(&env, &e))?;
    Ok(ModuleInfo {
        size: i.size as f64,
        sha256: i.sha256,
        exports: i.exports.into_iter().map(|(name, r#type)| ModuleExport { name, r#type }).collect(),
        imports: i.imports.into_iter().map(|(module, name, r#type)| ModuleImport { module, name, r#type }).collect(),
        abi: i.abi,
        notes: i.notes,
    })
}

/// An empty async call: one hop to the Rust runtime and back. For `npm run bench` only (the floor
/// that `execute` is measured against).
#[napi]
pub fn bench_floor(env: &Env) -> napi::Result<PromiseRaw<'_, ()>> {
    settle(env, async { Ok(()) }, |_, ()| Ok(()))
}

/// Runs a core future on napi's runtime; resolves with `ok(value)` on the JS thread, or rejects
/// with the coded JS error.
pub(crate) fn settle<'env, T, V, F>(
    env: &'env Env,
    fut: F,
    ok: impl FnOnce(&'env Env, T) -> napi::Result<V> + 'static,
) -> napi::Result<PromiseRaw<'env, V>>
where
    T: Send + 'static,
    V: napi::bindgen_prelude::ToNapiValue,
    F: std::future::Future<Output = Result<T, ExecError>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(fut.await) }, move |env, result: Result<T, ExecError>| {
        let value = result.map_err(|e| to_napi(env, &e))?;
        ok(env, value)
    })
}

#[napi]
impl WasmActivityExecutor {
    /// `blobStore` is any object with `download(path): Promise<Buffer | Uint8Array>` (Loom's
    /// `BlobStore`); it is called with `this` bound to the store.
    #[napi(constructor, ts_args_type = "blobStore: BlobStore, options?: ExecutorOptions")]
    pub fn new(env: Env, blob_store: Unknown, options: Option<Unknown>) -> napi::Result<Self> {
        let build = || -> Result<Self, ExecError> {
            let mut opts = args::executor_options(options)?;
            opts.artifacts.remote = artifact_store(&env, options)?;
            if let Some(on_log) = args::log_callback(options)? {
                let tsfn = on_log
                    .build_threadsafe_function::<FnArgs<(String, String)>>()
                    .callee_handled::<false>()
                    .weak::<true>()
                    .build()
                    .map_err(ExecError::internal)?;
                opts.log = Some(Arc::new(js_log::JsLogSink(tsfn)));
            }
            if ObjectBlobStore::instance_of(&env, &blob_store).map_err(ExecError::internal)? {
                let native = unsafe { blob_store.cast::<napi::bindgen_prelude::ClassInstance<ObjectBlobStore>>() }
                    .map_err(ExecError::internal)?;
                let source: Arc<dyn crate::store::BlobSource> = native.source.clone();
                return Ok(WasmActivityExecutor { inner: Arc::new(Executor::new(source, opts)?) });
            }
            let store = args::object(blob_store, "blobStore")?;
            let download = args::prop(&store, "download")?
                .filter(|d| d.get_type().ok() == Some(ValueType::Function))
                .ok_or_else(|| ExecError::InvalidArgument("blobStore.download must be a function".into()))?;
            let download: Function<String, napi::bindgen_prelude::Promise<Downloaded>> =
                unsafe { download.cast() }.map_err(ExecError::internal)?;
            let tsfn = download
                .bind(store)
                .and_then(|bound| bound.build_threadsafe_function::<String>().callee_handled::<false>().weak::<true>().build())
                .map_err(ExecError::internal)?;
            let source = Arc::new(JsBlobSource::new(tsfn));
            Ok(WasmActivityExecutor { inner: Arc::new(Executor::new(source, opts)?) })
        };
        build().map_err(|e| to_napi(&env, &e))
    }

    /// Runs the activity: resolves to the guest's output, parsed from JSON. With
    /// `options.actorId`, the call runs on that actor's kept instance (guest globals persist).
    #[napi(
        ts_generic_types = "T = any",
        ts_args_type = "definition: ActivityDefinition, input: unknown, options?: ExecuteOptions",
        ts_return_type = "Promise<T>"
    )]
    pub fn execute<'env>(
        &self,
        env: &'env Env,
        definition: Unknown<'env>,
        input: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<Object<'env>> {
        self.start(env, definition, input, options, false)
    }

    /// Like `execute`, and also reports what the call cost.
    #[napi(
        ts_generic_types = "T = any",
        ts_args_type = "definition: ActivityDefinition, input: unknown, options?: ExecuteOptions",
        ts_return_type = "Promise<ExecutionDetails<T>>"
    )]
    pub fn execute_detailed<'env>(
        &self,
        env: &'env Env,
        definition: Unknown<'env>,
        input: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<Object<'env>> {
        self.start(env, definition, input, options, true)
    }

    /// Downloads and compiles (or loads from a compiled artifact) the definition's module ahead
    /// of traffic, filling every cache tier. Resolves to the module's sha256.
    #[napi(ts_args_type = "definition: ActivityDefinition", ts_return_type = "Promise<string>")]
    pub fn precompile<'env>(&self, env: &'env Env, definition: Unknown<'env>) -> napi::Result<PromiseRaw<'env, String>> {
        let def = args::definition(definition);
        let exec = self.inner.clone();
        settle(env, async move { exec.precompile(&def?).await }, |_, digest| Ok(digest))
    }

    /// Drops all compiled modules, or only those of the activity named `name`.
    #[napi]
    pub fn clear_cache(&self, name: Option<String>) {
        self.inner.clear_cache(name.as_deref());
    }

    /// Releases an actor's instance (and its state). Returns whether there was one.
    #[napi(ts_args_type = "definition: ActivityDefinition, actorId: string")]
    pub fn drop_actor(&self, env: Env, definition: Unknown, actor_id: String) -> napi::Result<bool> {
        let def = args::definition(definition).map_err(|e| to_napi(&env, &e))?;
        Ok(self.inner.drop_actor(&def, &actor_id))
    }

    #[napi]
    pub fn cache_stats(&self) -> CacheStats {
        let s = self.inner.stats();
        CacheStats {
            modules: s.cache.modules as u32,
            hits: s.cache.hits as f64,
            misses: s.cache.misses as f64,
            compiles: s.cache.compiles as f64,
            artifact_hits: s.cache.artifact_hits as f64,
            code_bytes: s.cache.code_bytes as f64,
            digests: self.inner.cached_digests(),
            actors: s.actors as u32,
        }
    }

    /// Loom's executor kept a `Map` here; its `size` is the number of cached modules.
    #[napi(getter)]
    pub fn module_cache(&self) -> ModuleCacheView {
        ModuleCacheView { size: self.inner.stats().cache.modules as u32 }
    }
}

/// A JS value produced inside a deferred's resolver (valid in that handle scope).
struct Raw(napi::sys::napi_value);

impl napi::bindgen_prelude::ToNapiValue for Raw {
    unsafe fn to_napi_value(_: napi::sys::napi_env, v: Self) -> napi::Result<napi::sys::napi_value> {
        Ok(v.0)
    }
}

/// The abort listener travels with the call's result to the JS thread, where alone it is touched.
struct SendHook(Option<abort::AbortHook>);
// SAFETY: the hook holds napi references; it is only read and dropped inside the deferred's
// resolver, which runs on the JS thread.
unsafe impl Send for SendHook {}

impl WasmActivityExecutor {
    fn start<'env>(
        &self,
        env: &'env Env,
        definition: Unknown<'env>,
        input: Unknown<'env>,
        options: Option<Unknown<'env>>,
        detailed: bool,
    ) -> napi::Result<Object<'env>> {
        let mut call = CallOptions::default();
        let mut hook = None;
        // Everything that reads JS happens here, on the JS thread; errors reject the promise.
        let mut prepare = || -> Result<_, ExecError> {
            let def = args::definition(definition)?;
            if let Some(o) = options.filter(|o| o.get_type().ok() != Some(ValueType::Undefined)) {
                let o = args::object(o, "options")?;
                if let Some(id) = args::prop(&o, "actorId")? {
                    call.actor_id = Some(args::string(id, "options.actorId")?);
                }
                if let Some(signal) = args::prop(&o, "signal")? {
                    let signal = args::object(signal, "options.signal")?;
                    hook = abort::attach(env, &signal, &call.cancel)
                        .map_err(|e| ExecError::InvalidArgument(e.reason.clone()))?;
                }
            }
            let json = stringify_input(env, input)?;
            Ok((def, json))
        };
        let prepared = prepare();
        let mut hook = Some(SendHook(hook));
        let mut promise = None;
        // A promise settled from a guest thread: JSON.parse of the output, or the coded error,
        // on the JS thread.
        let mut make_done = || -> Result<Done, ExecError> {
            let (deferred, p) = env.create_deferred::<Raw, _>().map_err(ExecError::internal)?;
            promise = Some(p);
            let hook = hook.take();
            Ok(Box::new(move |result: Result<CallOutput, ExecError>| {
                deferred.resolve(move |env: Env| {
                    if let Some(SendHook(Some(h))) = hook {
                        h.detach(&env);
                    }
                    settled_value(&env, result, detailed).map(Raw)
                })
            }))
        };
        let attempt = match prepared {
            Err(e) => Attempt::Finished(Err(e)),
            Ok((def, json)) => match self.inner.try_start(&def, json, call, &mut make_done) {
                Attempt::Wait(json, call) => match make_done() {
                    Ok(done) => {
                        // Something to wait for (a download and compile, a slot, the actor).
                        let exec = self.inner.clone();
                        napi::bindgen_prelude::spawn(async move {
                            let result = exec.execute(&def, json, call).await;
                            done(result);
                        });
                        Attempt::Started
                    }
                    Err(e) => Attempt::Finished(Err(e)),
                },
                other => other,
            },
        };
        match (attempt, promise) {
            (Attempt::Started, Some(p)) => Ok(p),
            (Attempt::Finished(result), _) => {
                // Settled now, on this thread: no hand-off at all.
                if let Some(SendHook(Some(h))) = hook.take() {
                    h.detach(env);
                }
                settled_now(env, settled_value(env, result, detailed))
            }
            _ => settled_now(env, Err(to_napi(env, &ExecError::internal("a started call has no promise")))),
        }
    }
}

/// The JS value a call settles with: the parsed output (or details), or the coded error.
fn settled_value(env: &Env, result: Result<CallOutput, ExecError>, detailed: bool) -> napi::Result<napi::sys::napi_value> {
    let out = result.map_err(|e| to_napi(env, &e))?;
    let value = parse_output(env, &out.output).map_err(|e| to_napi(env, &e))?;
    let value = if detailed { details(env, &out, value)? } else { value };
    Ok(value.raw())
}

/// A promise already resolved (or rejected) with `value`.
fn settled_now<'env>(env: &'env Env, value: napi::Result<napi::sys::napi_value>) -> napi::Result<Object<'env>> {
    use napi::sys;
    let raw = env.raw();
    let mut deferred = std::ptr::null_mut();
    let mut promise = std::ptr::null_mut();
    napi::check_status!(unsafe { sys::napi_create_promise(raw, &mut deferred, &mut promise) })?;
    match value {
        Ok(v) => napi::check_status!(unsafe { sys::napi_resolve_deferred(raw, deferred, v) })?,
        Err(e) => {
            let err = unsafe { JsError::from(e).into_value(raw) };
            napi::check_status!(unsafe { sys::napi_reject_deferred(raw, deferred, err) })?
        }
    }
    Ok(Object::from_raw(raw, promise))
}

