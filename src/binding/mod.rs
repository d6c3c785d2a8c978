//! The napi binding: the only code that knows Node. It reads JS arguments into core types
//! (strictly: every read that runs user code is guarded, see `js`), starts calls on the core
//! executor (which polls them once right here and finishes most of them on the spot), and turns
//! results into JS (`JSON.parse` of the guest's output) or a JS error with a stable `code`.

mod abort;
mod actor;
mod args;
mod call;
mod class_guards;
mod executor_options;
mod fast_paths;
mod inspect;
mod js;
mod js_error;
mod js_log;
mod turns;
mod js_store;
mod js_host;
mod keep_alive;
mod loop_watch;
mod object_store;

pub use actor::WasmActor;
pub use object_store::ObjectBlobStore;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use napi::bindgen_prelude::{JsObjectValue, Object, PromiseRaw, Unknown};
use napi::JsValue;
use napi::{Env, ValueType};
use napi_derive::napi;

use crate::error::ExecError;
use crate::executor::Executor;
use crate::instance::CallOutput;
use js_error::to_napi;
use js_store::JsBlobSource;

/// The core's runtime is its own, for the life of the process (`runtime::handle`). napi-rs gets a
/// small one of its own (one worker: it only awaits the core's work for `settle`), because napi-rs
/// shuts down the runtime it holds when the last Node environment using the addon goes: with the
/// core's handed over, a worker pool's next worker found the core's runtime shut (every call
/// `INTERNAL`) when the main thread had never loaded the addon.
#[napi_derive::module_init]
fn init() {
    let _ = crate::runtime::handle();
    let napi_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("loom-wasm-napi").enable_all().build();
    if let Ok(rt) = napi_rt {
        napi::bindgen_prelude::create_custom_tokio_runtime(rt);
    }
}

/// What the addon holds of each Node environment (the main thread, each worker): its executors,
/// closed when it goes away (a worker terminated with calls in flight cancels them), and its
/// `EnvGone`, set then. One record and one cleanup hook per environment.
#[derive(Default)]
struct EnvRecord {
    executors: Vec<Weak<Executor>>,
    gone: Arc<EnvGone>,
}

fn envs() -> &'static Mutex<HashMap<usize, EnvRecord>> {
    static ENVS: OnceLock<Mutex<HashMap<usize, EnvRecord>>> = OnceLock::new();
    ENVS.get_or_init(Default::default)
}

/// `f` on `env`'s record, made (and its cleanup hook added) if it has none.
fn with_record<T>(env: &Env, f: impl FnOnce(&mut EnvRecord) -> T) -> T {
    let key = env.raw() as usize;
    let mut map = envs().lock().unwrap_or_else(|p| p.into_inner());
    let first = !map.contains_key(&key);
    let out = f(map.entry(key).or_default());
    drop(map);
    if first {
        let hooked = env.add_env_cleanup_hook(key, |key| {
            let Some(record) = envs().lock().unwrap_or_else(|p| p.into_inner()).remove(&key) else { return };
            record.gone.gone.store(true, std::sync::atomic::Ordering::Release);
            record.gone.notify.notify_waiters();
            for ex in record.executors.iter().filter_map(Weak::upgrade) {
                ex.close();
            }
        });
        if hooked.is_err() {
            envs().lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }
    }
    out
}

/// Closes `executor` when `env` goes away.
fn register(env: &Env, executor: &Arc<Executor>) {
    with_record(env, |record| {
        record.executors.retain(|w| w.strong_count() > 0);
        record.executors.push(Arc::downgrade(executor));
    });
}

/// Set when a Node environment goes away (a worker ends), for work of that environment that no
/// executor owns: its queued `inspectModule` calls (review BG2: a terminated worker's 100 queued
/// inspects of a 2.5 MB module ran on for 38 s of CPU, and every later inspect in the process
/// waited behind them).
#[derive(Default)]
pub(crate) struct EnvGone {
    gone: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl EnvGone {
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once the environment has gone.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_gone() {
                return;
            }
            notified.await;
        }
    }
}

/// The `EnvGone` of `env` (one per environment, set by its cleanup hook).
pub(crate) fn env_gone(env: &Env) -> Arc<EnvGone> {
    with_record(env, |record| record.gone.clone())
}

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
    /// Loads started: a download (none for a pinned module whose artifact is at hand), then a compile
    /// unless the bytes were known or their artifact loads.
    pub misses: f64,
    /// Modules compiled.
    pub compiles: f64,
    /// Modules loaded from a compiled artifact (`cacheDir` or `artifactStore`) instead of compiling.
    pub artifact_hits: f64,
    /// Modules whose optimized code (Cranelift) replaced the baseline code (Winch) their first
    /// calls ran on (`tierUp`).
    pub tier_ups: f64,
    /// Modules a fresh process loaded from an artifact before its instance pool was built (they
    /// ran outside the pool meanwhile) whose pooled copy then took their place.
    pub pooled_later: f64,
    /// Modules taken from another executor of this process that held the same code compiled for
    /// the same engine (`shareCode`): neither compiled nor loaded from an artifact.
    pub shared_hits: f64,
    /// Of `artifactHits`, the artifacts loaded while their download ran, from the definition's
    /// hint in `cacheDir` (the module its bytes were last time), and kept: the bytes were that module.
    pub hinted_hits: f64,
    /// Compiled code held in memory, in bytes.
    pub code_bytes: f64,
    /// sha256 (hex) of each cached module.
    pub digests: Vec<String>,
    /// Live actor instances.
    pub actors: u32,
    /// Process-wide: linear memory that freed instance slots keep resident (zeroed) so the next
    /// instance skips page faults, at most 2 MiB a slot, until the slot is used again. A slot
    /// counts once reset: the last calls' may still be resetting, off their path.
    pub pool_idle_resident_bytes: f64,
}

/// Runs Loom activities (WebAssembly modules) on wasmtime, off the Node event loop.
#[napi]
pub struct WasmActivityExecutor {
    inner: Arc<Executor>,
}

/// The store behind `v` when it is an `ObjectBlobStore` made by any load of this addon into this
/// environment: recognised by the object's type tag and its wrapped native value, not by
/// `instanceof` (which checks the latest load's constructor, and which an object made with the
/// class's prototype but no native value passes).
fn native_store(env: &Env, v: &Unknown) -> Option<Arc<crate::store::ObjectSource>> {
    if v.get_type().ok()? != ValueType::Object {
        return None;
    }
    // SAFETY: `from_napi_value` unwraps the object and checks its type tag before any cast; an
    // object without both is an `Err` (no exception is left pending).
    let native = unsafe {
        <napi::bindgen_prelude::ClassInstance<ObjectBlobStore> as napi::bindgen_prelude::FromNapiValue>::from_napi_value(
            env.raw(),
            v.raw(),
        )
    };
    native.ok().map(|n| n.source.clone())
}

/// `options.artifactStore`: an `ObjectBlobStore`, or a URL to open one on.
fn artifact_store(env: &Env, options: Option<&Object>) -> Result<Option<Arc<crate::store::ObjectSource>>, ExecError> {
    let Some(o) = options else { return Ok(None) };
    let Some(v) = args::prop(o, "artifactStore", "options")? else { return Ok(None) };
    if let Some(source) = native_store(env, &v) {
        return Ok(Some(source));
    }
    let url = args::string(v, "options.artifactStore")?;
    Ok(Some(Arc::new(crate::store::ObjectSource::open(&url, &[])?)))
}

/// `options.actorStore`: an `ObjectBlobStore` or a URL (JS stores cannot write conditionally).
fn actor_store(env: &Env, options: Option<&Object>) -> Result<Option<Arc<dyn crate::actor_store::ActorStore>>, ExecError> {
    let Some(o) = options else { return Ok(None) };
    let Some(v) = args::prop(o, "actorStore", "options")? else { return Ok(None) };
    let source = if let Some(source) = native_store(env, &v) {
        source
    } else if v.get_type().map_err(ExecError::internal)? == ValueType::String {
        Arc::new(crate::store::ObjectSource::open(&args::string(v, "options.actorStore")?, &[])?)
    } else {
        return Err(ExecError::InvalidArgument(
            "options.actorStore must be an ObjectBlobStore or a URL: a JS store cannot do the conditional writes actor ownership needs".into(),
        ));
    };
    crate::actor_store::open(source).map(Some)
}

/// `JSON.stringify(input)`; a throw (BigInt, a cycle, a throwing `toJSON` or getter) is
/// `INVALID_INPUT`, with the exception cleared.
/// `JSON.stringify(input)`'s text, or its size when over `max` (see `js::input_text`).
pub(crate) fn stringify_input(env: &Env, input: Unknown, max: u64) -> Result<Result<String, u64>, ExecError> {
    let raw = env.raw();
    let f = js::json_fns(raw)?;
    let text = js::call(raw, f.json, f.stringify, &[input.raw()])
        .map_err(|msg| ExecError::InvalidInput(format!("input is not JSON-serializable: {msg}")))?;
    let mut t = 0;
    unsafe { napi::sys::napi_typeof(raw, text, &mut t) };
    if t != napi::sys::ValueType::napi_string {
        // `undefined`, a function or a symbol: JSON has no such value; send null as Loom would.
        return Ok(Ok("null".to_string()));
    }
    // JSON.stringify escapes lone surrogates, so its text is always well-formed.
    js::input_text(raw, text, max).map_err(|()| ExecError::InvalidInput("input stringified to malformed text".into()))
}

/// `JSON.parse(text)` for a detail: `None` if it does not parse (the exception cleared).
pub(crate) fn parse_json<'e>(env: &'e Env, text: &str) -> Option<Unknown<'e>> {
    parse_output(env, text).ok()
}

/// `JSON.parse(text)` (the text's nesting depth was checked off this thread already).
pub(crate) fn parse_output<'e>(env: &'e Env, text: &str) -> Result<Unknown<'e>, ExecError> {
    let raw = env.raw();
    let f = js::json_fns(raw)?;
    let s = js::new_string(raw, text)?;
    let value = js::call(raw, f.json, f.parse, &[s]).map_err(|msg| ExecError::InvalidOutput {
        message: format!("the guest returned text that is not JSON: {msg}"),
        preview: text.chars().take(200).collect(),
    })?;
    unsafe { <Unknown as napi::bindgen_prelude::FromNapiValue>::from_napi_value(raw, value) }.map_err(ExecError::internal)
}

pub(crate) fn details<'e>(env: &'e Env, out: &CallOutput, output: Unknown<'e>, actor: bool) -> napi::Result<Unknown<'e>> {
    let mut obj = Object::new(env)?;
    obj.set_named_property("output", output)?;
    obj.set_named_property("durationMs", out.duration.as_secs_f64() * 1000.0)?;
    if let Some(fuel) = out.fuel_consumed {
        obj.set_named_property("fuelConsumed", fuel as f64)?;
    }
    obj.set_named_property("peakMemoryBytes", out.peak_memory_bytes as f64)?;
    if actor {
        obj.set_named_property("actorCreated", out.actor_created)?;
    }
    Ok(obj.to_unknown())
}

/// An empty async call: one hop to the Rust runtime and back. For `npm run bench` only (the floor
/// that `execute` is measured against).
#[napi]
pub fn bench_floor(env: &Env) -> napi::Result<PromiseRaw<'_, ()>> {
    env.spawn_future_with_callback(async { Ok(()) }, |_, ()| Ok(()))
}

/// Runs a core future on the core's runtime (napi's only awaits it); resolves with `ok(value)` on
/// the JS thread, or rejects with the coded JS error.
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
    let core = crate::runtime::handle().cloned();
    let fut = async move {
        match core {
            Some(rt) => rt.spawn(fut).await.unwrap_or_else(|e| Err(ExecError::internal(format!("the work ended without a result: {e}")))),
            None => fut.await,
        }
    };
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
            let options = args::options_object(options)?;
            let mut opts = executor_options::executor_options(options.as_ref())?;
            opts.artifacts.remote = artifact_store(&env, options.as_ref())?;
            opts.actor_store = actor_store(&env, options.as_ref())?;
            if let Some(fns) = options.as_ref().map(|o| args::prop(o, "hostFunctions", "options")).transpose()?.flatten() {
                let fns = args::object(fns, "options.hostFunctions")?;
                opts.host_functions = Some(Arc::new(js_host::JsHostFunctions::new(&env, fns)?));
            }
            if let Some(on_log) = args::log_callback(options.as_ref())? {
                opts.log = Some(Arc::new(js_log::JsLogSink::new(&env, on_log).map_err(ExecError::internal)?));
            }
            let source: Arc<dyn crate::store::BlobSource> =
                if let Some(source) = native_store(&env, &blob_store) {
                    source
                } else {
                    let store = args::object(blob_store, "blobStore")?;
                    let download = args::prop(&store, "download", "blobStore")?
                        .filter(|d| d.get_type().ok() == Some(ValueType::Function))
                        .ok_or_else(|| ExecError::InvalidArgument("blobStore.download must be a function".into()))?;
                    let sized = js_store::sized_download(&env, store, download, opts.load.compile.max_module_bytes)?;
                    let tsfn = sized
                        .build_threadsafe_function::<String>()
                        .callee_handled::<false>()
                        .weak::<true>()
                        .build()
                        .map_err(|e| {
                            js::take_exception(env.raw());
                            ExecError::InvalidArgument(format!("blobStore.download cannot be used: {}", e.reason))
                        })?;
                    Arc::new(JsBlobSource::new(tsfn))
                };
            let stored = opts.actor_store.is_some();
            let inner = Arc::new(Executor::new(source, opts)?);
            if stored {
                keep_alive::watch(&env, &inner).map_err(|e| ExecError::internal(e.reason))?;
            }
            register(&env, &inner);
            Ok(WasmActivityExecutor { inner })
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
    ) -> napi::Result<Unknown<'env>> {
        let def = args::definition(definition);
        call::start_call(&self.inner, env, def.as_ref().map_err(Clone::clone), None, call::Input::Value(input), call::Options::Value(options), call::Settle::Output)
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
    ) -> napi::Result<Unknown<'env>> {
        let def = args::definition(definition);
        call::start_call(&self.inner, env, def.as_ref().map_err(Clone::clone), None, call::Input::Value(input), call::Options::Value(options), call::Settle::Details)
    }

    /// Downloads and compiles (or loads from a compiled artifact) the definition's module ahead
    /// of traffic, filling every cache tier. Resolves to the module's sha256; with a `cacheDir`,
    /// after pruning it to `maxCacheDirBytes` (the module's artifact kept) when something was
    /// written to it since its last scan (waiting at most 10 s); with an `artifactStore`, after its
    /// write there (rejects with the store's error, `BLOB_UNAVAILABLE`, when the store does not take it).
    /// Rejects `BLOB_UNAVAILABLE` when the `cacheDir` cannot be written, and `INVALID_ARGUMENT`
    /// when no tier holds the artifact after (a `cacheDir` alone whose `maxCacheDirBytes` is under it,
    /// or an artifact over the 1 GiB a lookup reads before checking it). What a tier holds under
    /// the artifact's name counts only if it is the artifact (`cacheDir`: byte for byte; the
    /// store: of its size, ending in its trailer, which carries its tag, asked with one ranged GET);
    /// anything else is written over.
    #[napi(ts_args_type = "definition: ActivityDefinition", ts_return_type = "Promise<string>")]
    pub fn precompile<'env>(&self, env: &'env Env, definition: Unknown<'env>) -> napi::Result<PromiseRaw<'env, String>> {
        let def = args::definition(definition);
        let exec = self.inner.clone();
        settle(env, async move { exec.precompile(&def?).await }, |_, digest| Ok(digest))
    }

    /// The actor's state as a snapshot (a Buffer): its memory (what differs from the module's
    /// initial image, compressed), its globals and the ABI's host-side state, with the module's
    /// sha256. Waits for the actor's running and queued calls. `INVALID_ARGUMENT` when the
    /// definition asks for another ABI than the one the actor's state is of.
    #[napi(ts_args_type = "definition: ActivityDefinition, actorId: string", ts_return_type = "Promise<Buffer>")]
    pub fn snapshot_actor<'env>(&self, env: &'env Env, definition: Unknown<'env>, actor_id: Unknown<'env>) -> napi::Result<PromiseRaw<'env, napi::bindgen_prelude::Buffer>> {
        let read = || -> Result<_, ExecError> { Ok((args::definition(definition)?, args::string(actor_id, "actorId")?)) };
        // In the actor's line from now, as a call made now would be.
        let snapshot = read().map(|(def, id)| self.inner.snapshot_actor(&def, &id));
        settle(env, async move { snapshot?.await }, |_, bytes| Ok(napi::bindgen_prelude::Buffer::from(bytes)))
    }

    /// Makes `snapshot` the actor's state (in line after its calls), checked whole first:
    /// `SNAPSHOT_INVALID` (corrupt, truncated, another format, another ABI's state) or
    /// `SNAPSHOT_MISMATCH` (another module) leave the actor as it was. The actor is then of the
    /// definition's ABI; under `abi: 'wasi-command'` (no actors) it is `INVALID_ARGUMENT`. With an
    /// actor store, the state is stored too. `BUSY` (retryable) when restores under way hold the
    /// executor's room for restored snapshots, or busy actors its `maxActorMemoryMB`.
    #[napi(ts_args_type = "definition: ActivityDefinition, actorId: string, snapshot: Uint8Array", ts_return_type = "Promise<void>")]
    pub fn restore_actor<'env>(&self, env: &'env Env, definition: Unknown<'env>, actor_id: Unknown<'env>, snapshot: Unknown<'env>) -> napi::Result<PromiseRaw<'env, ()>> {
        let read = || -> Result<_, ExecError> {
            // A view: `restore_actor` checks its length before copying it.
            let bytes = unsafe { <napi::bindgen_prelude::Uint8Array as napi::bindgen_prelude::FromNapiValue>::from_napi_value(env.raw(), snapshot.raw()) }
                .map_err(|_| ExecError::InvalidArgument("snapshot must be a Uint8Array or Buffer".into()))?;
            Ok((args::definition(definition)?, args::string(actor_id, "actorId")?, bytes))
        };
        // In the actor's line from now, as a call made now would be.
        let restore = read().map(|(def, id, bytes)| self.inner.restore_actor(&def, &id, &bytes));
        settle(env, async move { restore?.await }, |_, ()| Ok(()))
    }

    /// `await using executor = new WasmActivityExecutor(...)`: the same as `close()`.
    #[napi(well_known_symbol = "asyncDispose", ts_return_type = "Promise<void>")]
    pub fn async_dispose<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.close(env)
    }

    /// Drops all compiled modules, or only those loaded for the activity named `name` (a module
    /// another activity was loaded for too stays, as does one loaded under more than 16 names).
    /// Loads in flight of the activities cleared are not cached when they finish; other
    /// activities' loads, tier-ups and pooled copies go on. Calls after this download and check
    /// the activity's bytes again. It also forgets the process's refused compiles (README, "Cache
    /// tiers").
    #[napi(ts_args_type = "name?: string")]
    pub fn clear_cache(&self, env: Env, name: Option<Unknown>) -> napi::Result<()> {
        let name = match name.filter(|n| !matches!(n.get_type(), Ok(ValueType::Undefined | ValueType::Null))) {
            Some(n) => Some(args::string(n, "name").map_err(|e| to_napi(&env, &e))?),
            None => None,
        };
        self.inner.clear_cache(name.as_deref());
        Ok(())
    }

    /// A handle on one actor: `handle.execute(input)` runs the activity on it with the
    /// definition read once, here (faster per call than `execute(definition, input, { actorId })`).
    #[napi(ts_args_type = "definition: ActivityDefinition, actorId: string")]
    pub fn actor(&self, env: Env, definition: Unknown, actor_id: Unknown) -> napi::Result<WasmActor> {
        let read = || -> Result<_, ExecError> {
            let def = args::definition(definition)?;
            let checked = def.checked()?;
            let actor_id = args::string(actor_id, "actorId")?;
            crate::options::check_length("actorId", &actor_id)?;
            Ok((def, checked, actor_id))
        };
        let (def, checked, actor_id) = read().map_err(|e| to_napi(&env, &e))?;
        Ok(WasmActor { inner: self.inner.clone(), def, checked, actor_id })
    }

    /// Releases an actor's instance (and its state). Returns whether there was one (always true
    /// with an actor store, which may hold one). A call running on it finishes first; calls
    /// queued behind it start fresh. With an actor store, the version of its snapshot stored at
    /// the drop is deleted in the actor's line; a failed delete is retried by its next call and
    /// in the background (1 s, doubling up to 5 min) until done or `close()`. After `close()`,
    /// throws `CLOSED` (a closed executor touches no store: another worker may own the actor now).
    #[napi(ts_args_type = "definition: ActivityDefinition, actorId: string")]
    pub fn drop_actor(&self, env: Env, definition: Unknown, actor_id: Unknown) -> napi::Result<bool> {
        let read = || -> Result<_, ExecError> { Ok((args::definition(definition)?, args::string(actor_id, "actorId")?)) };
        let (def, id) = read().map_err(|e| to_napi(&env, &e))?;
        if self.inner.is_closed() {
            return Err(to_napi(&env, &ExecError::Closed));
        }
        let had = self.inner.drop_actor(&def, &id);
        // Its store delete is under way: the process stays until it is done.
        self.inner.hold_for_writes();
        Ok(had)
    }

    /// Closes the executor: calls in flight are cancelled (`CANCELLED`), actors and cached
    /// modules released, and later calls rejected with `CLOSED`. Resolves once the calls in
    /// flight have ended, the actor store's writes under way (`persist: 'async'`,
    /// `dropActor`'s first attempt) are done, and so are the `cacheDir` writes of code taken
    /// from another executor or optimized in the background (none begins after; at most 30 s;
    /// the artifact store's writes go on in the background), and then lets go of the blob store's `download`,
    /// `onLog` (log lines queued before may still arrive) and the host functions; stops the
    /// retries of failed deletes. Also
    /// `await using executor = ...` (`Symbol.asyncDispose`).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.inner.close();
        let inner = self.inner.clone();
        settle(env, async move {
            inner.drained().await;
            inner.release_embedder();
            Ok(())
        }, |_, ()| Ok(()))
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
            tier_ups: s.cache.tier_ups as f64,
            pooled_later: s.cache.pooled_later as f64,
            shared_hits: s.cache.shared_hits as f64,
            hinted_hits: s.cache.hinted as f64,
            code_bytes: s.cache.code_bytes as f64,
            digests: self.inner.cached_digests(),
            actors: s.actors as u32,
            pool_idle_resident_bytes: s.pool_idle_resident_bytes as f64,
        }
    }

    /// Loom's executor kept a `Map` here; its `size` is the number of cached modules.
    #[napi(getter)]
    pub fn module_cache(&self) -> ModuleCacheView {
        ModuleCacheView { size: self.inner.stats().cache.modules as u32 }
    }
}

/// A JS value produced inside a deferred's resolver (valid in that handle scope).
pub(crate) struct Raw(napi::sys::napi_value);

impl napi::bindgen_prelude::ToNapiValue for Raw {
    unsafe fn to_napi_value(_: napi::sys::napi_env, v: Self) -> napi::Result<napi::sys::napi_value> {
        Ok(v.0)
    }
}


