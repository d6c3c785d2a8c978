//! The executor: load a definition's module, then run a call on a fresh instance (or an actor's
//! kept one) under the definition's limits and the executor's concurrency.
//!
//! A call is one future: take the actor's place in line, find (or load) the module, take a
//! concurrency slot, run the guest. It is first polled right on the caller's thread: most calls
//! of a cached module finish there in microseconds (see `inline`); whatever has to wait or runs
//! long continues on the guest threads (see `threads`), where a waiting call holds no thread.
//! The call's deadline and cancellation are watched around the whole guest run, host calls
//! included.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::actors::{self, ActorKey, Actors, Held, Ticket};
use crate::artifacts::ArtifactCache;
pub use crate::capabilities::Capabilities;
use crate::capabilities::{authorize, FilesystemConfig, Grants};
use crate::digest::{hex, parse_digest, Digest};
use crate::engine::{self, EngineKind};
use crate::error::ExecError;
use crate::host::LogSink;
use crate::inline;
use crate::instance::{is_reusable_after, CallOutput, GuestInstance};
use crate::limits::{self, Budget, CancelFlag, LimitOverrides, Limits, INLINE_MEMORY_BYTES};
use crate::modules::{CacheStats, CompiledModule, DefKey, LoadLimits, ModuleCache};
use crate::store::{allowed_prefixes, BlobSource, RoutedSource};
use crate::threads;

/// Loom's `ActivityDefinition`, as far as execution goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Definition {
    pub name: String,
    pub version: String,
    pub wasm_blob_path: String,
    /// Hex sha256 the module's bytes must hash to (`INTEGRITY_MISMATCH` otherwise).
    pub sha256: Option<String>,
    pub limits: LimitOverrides,
    pub capabilities: Capabilities,
}

impl Definition {
    fn key(&self) -> DefKey {
        DefKey { name: self.name.clone(), version: self.version.clone(), path: self.wasm_blob_path.clone() }
    }

    fn validate(&self) -> Result<(), ExecError> {
        for (field, v) in [("name", &self.name), ("version", &self.version), ("wasmBlobPath", &self.wasm_blob_path)] {
            if v.is_empty() {
                return Err(ExecError::InvalidArgument(format!("definition.{field} must be a non-empty string")));
            }
        }
        Ok(())
    }
}

/// Ranges of the executor's numeric options (outside them: `INVALID_ARGUMENT`).
pub mod ranges {
    pub const MAX_CACHED_MODULES: (f64, f64) = (1.0, 100_000.0);
    pub const MAX_CACHE_BYTES: (f64, f64) = (1.0, 1e12);
    pub const MAX_ACTORS: (f64, f64) = (1.0, 1_000_000.0);
    pub const MAX_CONCURRENCY: (f64, f64) = (1.0, crate::threads::MAX_THREADS as f64);
    pub const PAYLOAD_BYTES: (f64, f64) = (1.0, crate::limits::MAX_PAYLOAD_BYTES as f64);
    pub const OUTPUT_DEPTH: (f64, f64) = (1.0, 100_000.0);
    pub const TIMEOUT_MS: (f64, f64) = (1.0, crate::limits::MAX_TIMEOUT_MS);
    pub const MODULE_BYTES: (f64, f64) = (8.0, 1024.0 * 1024.0 * 1024.0);
    pub const FUNCTIONS: (f64, f64) = (1.0, 1_000_000.0);
    pub const FUNCTION_BYTES: (f64, f64) = (1.0, 7_654_321.0);
    pub const LOCALS: (f64, f64) = (1.0, 50_000.0);
}

#[derive(Clone)]
pub struct ExecutorOptions {
    pub max_cached_modules: NonZeroUsize,
    /// Compiled code the module cache may hold, in bytes.
    pub max_cache_bytes: usize,
    /// Compiled artifacts on disk and/or in a shared store, and their key.
    pub artifacts: ArtifactCache,
    pub max_actors: NonZeroUsize,
    /// Calls running guest code at once; more wait in a queue.
    pub max_concurrency: NonZeroUsize,
    /// Limits for definitions that name none.
    pub defaults: Limits,
    /// Download and compile bounds.
    pub load: LoadLimits,
    pub log: Option<Arc<dyn LogSink>>,
    /// The directory granted to definitions that ask for `capabilities.filesystem`.
    pub filesystem: Option<FilesystemConfig>,
    /// URL prefixes a `wasmBlobPath` may name directly (bypassing the store); none by default.
    pub allowed_blob_urls: Vec<String>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        ExecutorOptions {
            max_cached_modules: NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
            max_cache_bytes: 512 * 1024 * 1024,
            artifacts: ArtifactCache::default(),
            max_actors: NonZeroUsize::new(1000).unwrap_or(NonZeroUsize::MIN),
            max_concurrency: cpus,
            defaults: Limits::default(),
            load: LoadLimits::default(),
            log: None,
            filesystem: None,
            allowed_blob_urls: Vec::new(),
        }
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Run on this actor's kept instance instead of a fresh one.
    pub actor_id: Option<String>,
    pub cancel: CancelFlag,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    pub cache: CacheStats,
    pub actors: usize,
}

pub struct Executor {
    source: Arc<dyn BlobSource>,
    modules: ModuleCache,
    actors: Actors,
    permits: Arc<Semaphore>,
    opts: ExecutorOptions,
    closed: AtomicBool,
    /// The cancel flags of calls in flight (what `close` cancels).
    inflight: Mutex<HashMap<u64, CancelFlag>>,
    next_call: AtomicU64,
    /// Told when a call leaves `inflight`.
    drained: tokio::sync::Notify,
}

/// Receives a call's result, on a guest thread.
pub type Done = Box<dyn FnOnce(Result<CallOutput, ExecError>) + Send>;

/// What `start` did with a call.
pub enum Attempt {
    /// Done already (inline, or refused before starting).
    Finished(Result<CallOutput, ExecError>),
    /// Going on elsewhere; its `done` will be called.
    Started,
}

/// Calls `done` exactly once: with the result, or, if the call is dropped unfinished (a panic,
/// the process going down), with an error, so no caller waits forever.
struct DoneGuard(Option<Done>);

impl DoneGuard {
    fn finish(mut self, result: Result<CallOutput, ExecError>) {
        if let Some(done) = self.0.take() {
            done(result);
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Err(ExecError::internal("the call was dropped before it finished (a panic in the executor)")));
        }
    }
}

/// A guest call in flight: `Send`, so a call suspended on one thread can finish on another.
type GuestCall = Pin<Box<dyn Future<Output = Result<CallOutput, ExecError>> + Send>>;

/// What a call needs once its definition is read.
struct Prepared {
    key: DefKey,
    limits: Limits,
    grants: Grants,
    capabilities: Capabilities,
    pinned: Option<Digest>,
    kind: EngineKind,
}

/// Removes a call from the in-flight registry when it ends, however it ends.
struct Inflight<'a>(&'a Executor, u64);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
        self.0.drained.notify_waiters();
    }
}

/// Resolves after returning `Pending` once: the call leaves the caller's thread.
async fn leave_caller_thread() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Runs `guest` until it finishes, its deadline passes or the call is cancelled, whichever
/// comes first, also while the guest waits in a host call (epoch ticks cover running code).
/// A guest still running when it leaves the caller's thread counts against its module's inline
/// gate.
async fn watched<F: Future<Output = Result<CallOutput, ExecError>>>(
    guest: F,
    budget: Budget,
    cancel: &CancelFlag,
    module: &CompiledModule,
) -> Result<CallOutput, ExecError> {
    let mut guest = std::pin::pin!(guest);
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut cancelled: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    poll_fn(|cx| {
        if cancel.is_cancelled() {
            return Poll::Ready(Err(ExecError::Cancelled));
        }
        if let Poll::Ready(r) = guest.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if limits::in_inline_window() {
            module.inline.overran();
            return Poll::Pending;
        }
        if Instant::now() >= budget.deadline {
            return Poll::Ready(Err(budget.timeout()));
        }
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(budget.deadline.into())));
        if t.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(budget.timeout()));
        }
        let c = cancelled.get_or_insert_with(|| {
            let flag = cancel.clone();
            Box::pin(async move { flag.cancelled().await })
        });
        if c.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(ExecError::Cancelled));
        }
        Poll::Pending
    })
    .await
}

impl Executor {
    pub fn new(source: Arc<dyn BlobSource>, mut opts: ExecutorOptions) -> Result<Self, ExecError> {
        opts.artifacts = opts.artifacts.clone().open()?;
        let allowed = allowed_prefixes(&opts.allowed_blob_urls)?;
        // Size the process's instance pool for this executor's actors and calls (the first
        // executor of a process decides; the rest share it).
        engine::reserve_pool(opts.max_actors.get() as u64 + 4 * opts.max_concurrency.get() as u64 + 256);
        Ok(Executor {
            source: Arc::new(RoutedSource::new(source, allowed)),
            modules: ModuleCache::new(opts.max_cached_modules, opts.max_cache_bytes, opts.artifacts.clone(), opts.load),
            actors: Actors::new(opts.max_actors.get()),
            permits: Arc::new(Semaphore::new(opts.max_concurrency.get())),
            opts,
            closed: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(0),
            drained: tokio::sync::Notify::new(),
        })
    }

    fn prepare(&self, def: &Definition, input: &str, cancel: &CancelFlag) -> Result<Prepared, ExecError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ExecError::Closed);
        }
        def.validate()?;
        let limits = self.opts.defaults.with_overrides(&def.limits)?;
        if input.len() as u64 > limits.max_input_bytes {
            return Err(ExecError::InputTooLarge { size: input.len() as u64, limit: limits.max_input_bytes });
        }
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let kind = if limits.max_fuel.is_some() { EngineKind::Metered } else { EngineKind::Plain };
        let grants = Grants::resolve(&def.capabilities, self.opts.filesystem.as_ref())?;
        let pinned = def.sha256.as_deref().map(parse_digest).transpose()?;
        Ok(Prepared { key: def.key(), limits, grants, capabilities: def.capabilities.clone(), pinned, kind })
    }

    /// Starts a call. It is polled once right here, on the caller's thread: that takes the
    /// actor's place in line, finds the module and, when nothing has to wait and the inline
    /// clock and the module's gate allow, runs the guest here for at most `inline::BUDGET`. Most
    /// calls finish in that poll (`Finished`). Otherwise the call goes on on the guest threads
    /// and `make_done()` (called only then) receives its result there.
    pub fn start(
        self: &Arc<Self>,
        def: &Definition,
        input: String,
        call: CallOptions,
        make_done: impl FnOnce() -> Result<Done, ExecError>,
    ) -> Attempt {
        let p = match self.prepare(def, &input, &call.cancel) {
            Ok(p) => p,
            Err(e) => return Attempt::Finished(Err(e)),
        };
        let ticket = call.actor_id.map(|actor_id| self.actors.ticket(ActorKey { def: p.key.clone(), actor_id }));
        let mut fut: GuestCall = Box::pin(self.clone().call(p, input, call.cancel, ticket));
        let polled = limits::inline_window(Instant::now() + inline::BUDGET, || threads::poll_once(&mut fut));
        match polled {
            Ok(Poll::Ready(result)) => Attempt::Finished(result),
            Err(()) => Attempt::Finished(Err(ExecError::internal("the call panicked (a bug in the executor)"))),
            Ok(Poll::Pending) => {
                let done = match make_done() {
                    Ok(done) => DoneGuard(Some(done)),
                    Err(e) => return Attempt::Finished(Err(e)),
                };
                // Should no thread take it, the job is dropped and its guard reports the call.
                let _ = threads::spawn(async move { done.finish(fut.await) });
                Attempt::Started
            }
        }
    }

    /// Runs `execute(input_json)` of the definition's module and returns its JSON text, waiting
    /// for whatever it needs (download and compile, a concurrency slot, the actor).
    pub async fn execute(self: &Arc<Self>, def: &Definition, input_json: String, call: CallOptions) -> Result<CallOutput, ExecError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let make_done = move || -> Result<Done, ExecError> {
            Ok(Box::new(move |r| {
                let _ = tx.send(r);
            }))
        };
        match self.start(def, input_json, call, make_done) {
            Attempt::Finished(r) => r,
            Attempt::Started => rx.await.map_err(|_| ExecError::internal("a call ended without a result"))?,
        }
    }

    /// The whole life of one call, as one future.
    async fn call(self: Arc<Self>, p: Prepared, input: String, cancel: CancelFlag, ticket: Option<Ticket>) -> Result<CallOutput, ExecError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
        let _inflight = Inflight(&self, id);
        if self.closed.load(Ordering::Acquire) {
            return Err(ExecError::Closed);
        }
        let held = match ticket {
            Some(t) => Some(cancel.guard(t).await?),
            None => None,
        };
        let module =
            cancel.guard(self.modules.get_or_load(&p.key, p.kind, p.pinned.as_ref(), self.source.as_ref())).await??;
        authorize(&module.wasi_imports, &p.capabilities)?;
        let _permit = cancel.guard(self.permits.clone().acquire_owned()).await?.map_err(ExecError::internal)?;
        if limits::in_inline_window() && !self.inline_ok(&module, &input, held.as_ref()) {
            leave_caller_thread().await;
        }
        let budget = Budget::starting_now(&p.limits);
        let had_state = held.as_ref().is_some_and(|h| h.guard.instance.is_some());
        let log = self.opts.log.clone();
        let guest = run(held, &module, &p, budget, &cancel, log, &input);
        let out = match watched(guest, budget, &cancel, &module).await {
            // Ended from outside mid-call (deadline or cancel while in a host call): an actor's
            // instance went with the call.
            Err(e) if had_state && matches!(e, ExecError::Timeout { .. } | ExecError::Cancelled) => {
                return Err(ExecError::ActorReset(Box::new(e)))
            }
            other => other?,
        };
        crate::output::check_depth(&out.output, p.limits.max_output_depth)?;
        Ok(out)
    }

    /// Whether a call may run its guest on the caller's thread: nothing that could block (WASI),
    /// nothing large to convert or touch, and both inline bounds agree.
    fn inline_ok(&self, module: &CompiledModule, input: &str, held: Option<&Held>) -> bool {
        let memory = match held.and_then(|h| h.guard.instance.as_ref()) {
            Some(i) => i.memory_bytes(),
            None => module.initial_memory_bytes,
        };
        module.wasi_imports.is_empty()
            && input.len() <= inline::MAX_INPUT_BYTES
            && memory <= INLINE_MEMORY_BYTES
            && module.inline.admit()
            && inline::admit()
    }

    /// Downloads and compiles (or loads from an artifact) a definition's module ahead of traffic,
    /// filling every cache tier. Returns the module's sha256.
    pub async fn precompile(&self, def: &Definition) -> Result<String, ExecError> {
        let p = self.prepare(def, "", &CancelFlag::new())?;
        let module = self.modules.get_or_load(&p.key, p.kind, p.pinned.as_ref(), self.source.as_ref()).await?;
        Ok(hex(&module.digest))
    }

    /// The sha256 of every cached module.
    pub fn cached_digests(&self) -> Vec<String> {
        self.modules.digests()
    }

    /// Forgets an actor's instance (and its state); true if there was one. A call running on it
    /// finishes first; calls queued behind it start fresh.
    pub fn drop_actor(&self, def: &Definition, actor_id: &str) -> bool {
        self.actors.remove(&ActorKey { def: def.key(), actor_id: actor_id.to_string() })
    }

    /// Drops every cached module, or only those of the activity `name`.
    pub fn clear_cache(&self, name: Option<&str>) {
        self.modules.clear(name);
    }

    /// Closes the executor: calls in flight are cancelled, actors and cached modules released,
    /// and later calls fail with `CLOSED`. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let flags: Vec<CancelFlag> = self.inflight.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for f in flags {
            f.cancel();
        }
        self.actors.clear();
        self.modules.clear(None);
    }

    /// Resolves once no call is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.inflight.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                return;
            }
            notified.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> ExecutorStats {
        ExecutorStats { cache: self.modules.stats(), actors: self.actors.len() }
    }
}

/// A fresh instance for a call; when the process's instance pool is full, idle actors anywhere
/// in the process make room (least recently used first), else `BUSY`.
async fn instantiate(
    module: &CompiledModule,
    p: &Prepared,
    budget: Budget,
    cancel: &CancelFlag,
    log: Option<Arc<dyn LogSink>>,
    for_actor: bool,
) -> Result<GuestInstance, ExecError> {
    if for_actor && module.kind == EngineKind::Plain {
        // Keep an eighth of the pool for fresh calls: actors alone never fill it.
        let pool = engine::pool_size() as u64;
        let live = engine::engine(EngineKind::Plain)?.pooling_allocator_metrics().map_or(0, |m| m.core_instances());
        if live + pool / 8 >= pool {
            actors::evict_idle_anywhere(16);
        }
    }
    match GuestInstance::new(module, &p.limits, budget, cancel, log.clone(), &p.grants).await {
        Err(ExecError::Busy(_)) if actors::evict_idle_anywhere(16) > 0 => {
            GuestInstance::new(module, &p.limits, budget, cancel, log, &p.grants).await
        }
        other => other,
    }
}

/// Runs one call's guest: on the actor's kept instance when `held` is given (created on the
/// actor's first call, or when its module changed), else on a fresh instance.
async fn run(
    held: Option<Held>,
    module: &CompiledModule,
    p: &Prepared,
    budget: Budget,
    cancel: &CancelFlag,
    log: Option<Arc<dyn LogSink>>,
    input: &str,
) -> Result<CallOutput, ExecError> {
    let started = Instant::now();
    let Some(mut held) = held else {
        let mut instance = instantiate(module, p, budget, cancel, log, false).await?;
        return instance.call(input, &p.limits, started).await;
    };
    if held.take_reset() {
        held.guard.instance = None;
    }
    let (mut instance, created) = match held.guard.instance.take() {
        // Same bytes, same metering: the actor's state lives on, under the call's current
        // limits and grants.
        Some(mut i) if i.digest == module.digest && i.kind.metered() == module.kind.metered() => {
            if let Err(e) = i.rearm(&p.limits, budget, cancel, &p.grants) {
                held.guard.instance = Some(i);
                return Err(e);
            }
            (i, false)
        }
        Some(i) if i.digest == module.digest => {
            let e = ExecError::InvalidArgument(format!(
                "actor of {:?} runs on the {} engine since its first call; a call {} limits.maxFuel cannot run on it (dropActor to change)",
                p.key.name,
                if i.kind.metered() { "fuel-metered" } else { "unmetered" },
                if i.kind.metered() { "without" } else { "with" },
            ));
            held.guard.instance = Some(i);
            return Err(e);
        }
        _ => (instantiate(module, p, budget, cancel, log, true).await?, true),
    };
    match instance.call(input, &p.limits, started).await {
        Ok(mut out) => {
            out.actor_created = created;
            held.guard.instance = Some(instance);
            Ok(out)
        }
        Err(e) if is_reusable_after(&e) => {
            held.guard.instance = Some(instance);
            Err(e)
        }
        Err(e) if created => Err(e),
        Err(e) => Err(ExecError::ActorReset(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::digest::hex;
    use crate::store::MemorySource;
    use crate::test_guests as g;
    use sha2::{Digest as _, Sha256};

    fn setup(blobs: &[(&str, Vec<u8>)]) -> (Arc<Executor>, Arc<MemorySource>) {
        let source = Arc::new(MemorySource::new());
        for (path, bytes) in blobs {
            source.put(path, bytes.clone());
        }
        (Arc::new(Executor::new(source.clone(), ExecutorOptions::default()).expect("executor")), source)
    }

    fn def(name: &str) -> Definition {
        Definition {
            name: name.into(),
            version: "1.0.0".into(),
            wasm_blob_path: format!("{name}.wasm"),
            ..Default::default()
        }
    }

    async fn run(ex: &Arc<Executor>, d: &Definition, input: &str) -> Result<CallOutput, ExecError> {
        ex.execute(d, input.to_string(), CallOptions::default()).await
    }

    async fn code(ex: &Arc<Executor>, d: &Definition, input: &str) -> &'static str {
        run(ex, d, input).await.expect_err("the call should fail").code()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unicode_round_trips_through_the_guest() {
        let (ex, _) = setup(&[("echo.wasm", g::echo())]);
        let input = r#"{"message":"héllo 🌍 中文 \"q\" \\ \n","n":1}"#;
        let out = run(&ex, &def("echo"), input).await.expect("echo works");
        assert_eq!(out.output, input);
        assert!(out.peak_memory_bytes >= 65536);
        assert_eq!(out.fuel_consumed, None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fresh_instance_per_call_but_actors_keep_state() {
        let (ex, _) = setup(&[("counter.wasm", g::counter())]);
        let d = def("counter");
        for _ in 0..3 {
            assert_eq!(run(&ex, &d, "{}").await.expect("ok").output, "1");
        }
        let actor = |id: &str| CallOptions { actor_id: Some(id.into()), ..Default::default() };
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(ex.execute(&d, "{}".into(), actor("a")).await.expect("ok").output);
        }
        assert_eq!(seen, ["1", "2", "3"]);
        assert_eq!(ex.execute(&d, "{}".into(), actor("b")).await.expect("ok").output, "1");
        assert_eq!(ex.stats().actors, 2);
        assert!(ex.drop_actor(&d, "a"));
        assert!(!ex.drop_actor(&d, "a"));
        assert_eq!(ex.execute(&d, "{}".into(), actor("a")).await.expect("ok").output, "1");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cache_hits_misses_and_clear() {
        let (ex, _) = setup(&[("echo.wasm", g::echo()), ("copy.wasm", g::echo())]);
        run(&ex, &def("echo"), "1").await.expect("ok");
        run(&ex, &def("echo"), "2").await.expect("ok");
        let s = ex.stats().cache;
        assert_eq!((s.modules, s.hits, s.misses, s.compiles), (1, 1, 1, 1));
        // Same bytes under another name: a load, but no second compile (keyed by content).
        run(&ex, &def("copy"), "3").await.expect("ok");
        let s = ex.stats().cache;
        assert_eq!((s.modules, s.misses, s.compiles), (1, 2, 1));
        ex.clear_cache(Some("echo"));
        assert_eq!(ex.stats().cache.modules, 1, "copy still refers to the module");
        ex.clear_cache(None);
        assert_eq!(ex.stats().cache.modules, 0);
        run(&ex, &def("echo"), "4").await.expect("ok");
        assert_eq!(ex.stats().cache.compiles, 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_first_calls_load_once() {
        let (ex, _) = setup(&[("echo.wasm", g::echo())]);
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let ex = ex.clone();
                tokio::spawn(async move { ex.execute(&def("echo"), format!("{i}"), CallOptions::default()).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.expect("joined").expect("ok").output, i.to_string());
        }
        let s = ex.stats().cache;
        assert_eq!((s.misses, s.compiles, s.hits), (1, 1, 199));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failed_loads_are_not_cached() {
        let (ex, source) = setup(&[]);
        assert_eq!(code(&ex, &def("echo"), "1").await, "BLOB_NOT_FOUND");
        source.put("echo.wasm", g::echo());
        assert_eq!(run(&ex, &def("echo"), "1").await.expect("retried").output, "1");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_modules_get_their_codes() {
        let (ex, _) = setup(&[
            ("random.wasm", vec![0x13, 0x37, 0, 1, 2, 3]),
            ("truncated.wasm", g::echo()[..40].to_vec()),
            ("noexec.wasm", g::no_execute()),
            ("wrongsig.wasm", g::wrong_signature()),
            ("wasi.wasm", g::imports_wasi()),
            ("unknown.wasm", g::imports_unknown()),
            ("start.wasm", g::start_trap()),
        ]);
        assert_eq!(code(&ex, &def("random"), "1").await, "INVALID_MODULE");
        assert_eq!(code(&ex, &def("truncated"), "1").await, "INVALID_MODULE");
        assert_eq!(code(&ex, &def("noexec"), "1").await, "MISSING_EXPORT");
        let e = run(&ex, &def("wrongsig"), "1").await.expect_err("mistyped");
        assert_eq!(e.code(), "MISSING_EXPORT");
        assert!(e.to_string().contains("f64"), "{e}");
        let e = run(&ex, &def("wasi"), "1").await.expect_err("wasi");
        assert_eq!(e.code(), "CAPABILITY_DENIED");
        assert!(e.to_string().contains("wasi_snapshot_preview1.fd_write"), "{e}");
        let e = run(&ex, &def("unknown"), "1").await.expect_err("unknown import");
        assert_eq!(e.code(), "INVALID_MODULE");
        assert!(e.to_string().contains("env.fetch"), "{e}");
        let e = run(&ex, &def("start"), "1").await.expect_err("start trap");
        assert!(matches!(&e, ExecError::Trap { kind, .. } if kind == "unreachable_code_reached"), "{e:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn guest_faults_get_their_codes_and_the_executor_goes_on() {
        let (ex, _) = setup(&[
            ("abort.wasm", g::aborts()),
            ("recursion.wasm", g::recursion()),
            ("badptr.wasm", g::bad_pointer()),
            ("echo.wasm", g::echo()),
        ]);
        let e = run(&ex, &def("abort"), "1").await.expect_err("aborts");
        assert_eq!(
            e,
            ExecError::GuestAbort { message: "boom".into(), file: "guest.ts".into(), line: 12, column: 5 }
        );
        let e = run(&ex, &def("recursion"), "1").await.expect_err("overflows");
        assert!(matches!(&e, ExecError::Trap { kind, .. } if kind == "stack_overflow"), "{e:?}");
        assert_eq!(code(&ex, &def("badptr"), "1").await, "INVALID_OUTPUT");
        assert_eq!(run(&ex, &def("echo"), "\"still fine\"").await.expect("ok").output, "\"still fine\"");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn time_limit_interrupts_a_spinning_guest() {
        let (ex, _) = setup(&[("spin.wasm", g::spin())]);
        let mut d = def("spin");
        d.limits.max_execution_ms = Some(100.0);
        let started = Instant::now();
        assert_eq!(run(&ex, &d, "1").await, Err(ExecError::Timeout { limit_ms: 100 }));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cancel_stops_a_running_guest() {
        let (ex, _) = setup(&[("spin.wasm", g::spin())]);
        let cancel = CancelFlag::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c2.cancel();
        });
        let r = ex.execute(&def("spin"), "1".into(), CallOptions { cancel, ..Default::default() }).await;
        assert_eq!(r, Err(ExecError::Cancelled));
        let cancel = CancelFlag::new();
        cancel.cancel();
        let r = ex.execute(&def("spin"), "1".into(), CallOptions { cancel, ..Default::default() }).await;
        assert_eq!(r, Err(ExecError::Cancelled), "an already-cancelled call never starts");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_cap_holds() {
        let (ex, _) = setup(&[("bomb.wasm", g::memory_bomb()), ("echo.wasm", g::echo())]);
        let mut d = def("bomb");
        d.limits.max_memory_mb = Some(10.0);
        let e = run(&ex, &d, "1").await.expect_err("capped");
        assert_eq!(e.code(), "OUT_OF_MEMORY", "{e:?}");
        // A big input needs memory too: 3 MB of JSON is 6 MB of UTF-16, over a 4 MB cap.
        let mut d = def("echo");
        d.limits.max_memory_mb = Some(4.0);
        let big = format!("\"{}\"", "x".repeat(3 << 20));
        assert_eq!(code(&ex, &d, &big).await, "OUT_OF_MEMORY");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn fuel_budget_is_deterministic() {
        let (ex, _) = setup(&[("busy.wasm", g::busy(10_000))]);
        let mut d = def("busy");
        d.limits.max_fuel = Some(10_000_000.0);
        let a = run(&ex, &d, "1").await.expect("enough fuel");
        let b = run(&ex, &d, "1").await.expect("enough fuel");
        let used = a.fuel_consumed.expect("metered");
        assert!(used > 10_000, "{used}");
        assert_eq!(b.fuel_consumed, Some(used));
        d.limits.max_fuel = Some(1000.0);
        assert_eq!(run(&ex, &d, "1").await, Err(ExecError::OutOfFuel { limit: 1000 }));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn size_caps_and_bad_definitions() {
        let source = Arc::new(MemorySource::new());
        source.put("echo.wasm", g::echo());
        let mut opts = ExecutorOptions::default();
        opts.defaults.max_input_bytes = 100;
        opts.defaults.max_output_bytes = 100;
        let ex = Arc::new(Executor::new(source, opts).expect("executor"));
        assert_eq!(code(&ex, &def("echo"), &"1".repeat(101)).await, "INPUT_TOO_LARGE");
        // 60 characters of JSON are 120 bytes of UTF-16 coming back.
        assert_eq!(code(&ex, &def("echo"), &"1".repeat(60)).await, "OUTPUT_TOO_LARGE");
        let mut d = def("echo");
        d.name.clear();
        assert_eq!(code(&ex, &d, "1").await, "INVALID_ARGUMENT");
        let mut d = def("echo");
        d.capabilities.network = true;
        assert_eq!(code(&ex, &d, "1").await, "CAPABILITY_DENIED");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sha256_pins_the_module_bytes() {
        let (ex, source) = setup(&[("echo.wasm", g::echo())]);
        let mut d = def("echo");
        d.sha256 = Some(hex(&Sha256::digest(g::echo())));
        assert_eq!(run(&ex, &d, "1").await.expect("matching digest").output, "1");
        assert_eq!(ex.cached_digests(), vec![d.sha256.clone().expect("set")]);
        // Pinned content already cached is served by its digest, whatever the path (content-addressed).
        source.put("other.wasm", g::counter());
        let mut other = def("other");
        other.sha256 = d.sha256.clone();
        assert_eq!(run(&ex, &other, "7").await.expect("served by digest").output, "7");
        // A fresh executor must download: bytes that do not match are refused and never cached.
        let (fresh, fresh_source) = setup(&[]);
        fresh_source.put("other.wasm", g::counter());
        let e = run(&fresh, &other, "1").await.expect_err("mismatch");
        assert_eq!(e.code(), "INTEGRITY_MISMATCH");
        assert_eq!((fresh.stats().cache.modules, fresh.stats().cache.compiles), (0, 0));
        d.sha256 = Some("zz".into());
        assert_eq!(code(&ex, &d, "1").await, "INVALID_ARGUMENT");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_second_executor_with_the_same_cache_dir_does_not_compile() {
        let dir = std::env::temp_dir().join(format!("loom-exec-artifacts-{}", std::process::id()));
        let opts = || ExecutorOptions {
            artifacts: ArtifactCache { dir: Some(dir.clone()), ..Default::default() },
            ..Default::default()
        };
        let source = Arc::new(MemorySource::new());
        source.put("echo.wasm", g::echo());
        let first = Arc::new(Executor::new(source.clone(), opts()).expect("executor"));
        assert_eq!(run(&first, &def("echo"), "1").await.expect("ok").output, "1");
        assert_eq!((first.stats().cache.compiles, first.stats().cache.artifact_hits), (1, 0));
        let second = Arc::new(Executor::new(source, opts()).expect("executor"));
        assert_eq!(run(&second, &def("echo"), "2").await.expect("ok").output, "2");
        assert_eq!((second.stats().cache.compiles, second.stats().cache.artifact_hits), (0, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_cache_is_bounded_by_bytes() {
        let source = Arc::new(MemorySource::new());
        source.put("a.wasm", g::echo());
        source.put("b.wasm", g::counter());
        let ex = Arc::new(Executor::new(source, ExecutorOptions { max_cache_bytes: 1, ..Default::default() }).expect("executor"));
        run(&ex, &def("a"), "1").await.expect("ok");
        run(&ex, &def("b"), "1").await.expect("ok");
        let s = ex.stats().cache;
        assert_eq!(s.modules, 1, "only the newest module fits");
        assert!(s.code_bytes > 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn baseline_code_keeps_time_and_fuel_limits() {
        // A module whose shape sends it to the baseline compiler, with a spinning `execute`.
        let mut body = String::new();
        for i in 0..3000 {
            body.push_str(&format!("(if (local.get {i}) (then (local.set {i} (i32.const 1))))"));
        }
        let bytes = g::with_prelude(&format!(
            "(func $big (local {}) {body})
             (func (export \"execute\") (param i32) (result i32) (call $big) (loop $l (br $l)) (i32.const 0))",
            "i32 ".repeat(3000)
        ));
        let (ex, _) = setup(&[("big.wasm", bytes)]);
        let mut d = def("big");
        d.limits.max_execution_ms = Some(100.0);
        assert_eq!(run(&ex, &d, "1").await, Err(ExecError::Timeout { limit_ms: 100 }));
        d.limits.max_fuel = Some(1_000_000.0);
        d.limits.max_execution_ms = Some(20_000.0);
        assert_eq!(run(&ex, &d, "1").await, Err(ExecError::OutOfFuel { limit: 1_000_000 }));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_call_dropped_unfinished_still_reports() {
        // A job that panics mid-call drops its future: its guard rejects instead of leaving the
        // caller waiting forever.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let guard = DoneGuard(Some(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        threads::spawn(async move {
            let _g = guard;
            panic!("a bug");
        })
        .expect("spawned");
        assert_eq!(rx.await.expect("reported").map_err(|e| e.code()), Err("INTERNAL"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn short_calls_finish_inline_and_long_ones_move_to_a_guest_thread() {
        let (ex, _) = setup(&[("echo.wasm", g::echo()), ("spin.wasm", g::spin())]);
        let no_done = || -> Result<Done, ExecError> { Err(ExecError::internal("should not be needed")) };
        run(&ex, &def("echo"), "1").await.expect("loads");
        // Retried: the process-wide inline clock may be spent by other tests right now.
        let mut inline = false;
        for _ in 0..200 {
            if let Attempt::Finished(Ok(out)) = ex.start(&def("echo"), "\"inline\"".into(), CallOptions::default(), no_done) {
                assert_eq!(out.output, "\"inline\"");
                inline = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(inline, "a short call on a cached module finishes inline");
        // A spinning guest overruns the inline budget and goes on on a guest thread.
        let mut d = def("spin");
        d.limits.max_execution_ms = Some(300.0);
        run(&ex, &d, "1").await.expect_err("loads, then times out");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        let make_done = move || -> Result<Done, ExecError> {
            Ok(Box::new(move |r: Result<CallOutput, ExecError>| {
                let _ = tx.send(r);
            }))
        };
        assert!(matches!(ex.start(&d, "1".into(), CallOptions::default(), make_done), Attempt::Started));
        assert!(started.elapsed() < Duration::from_millis(100), "the caller's thread was held for {:?}", started.elapsed());
        assert_eq!(rx.await.expect("done called"), Err(ExecError::Timeout { limit_ms: 300 }));
    }
}

