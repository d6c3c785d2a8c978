//! The executor: load a definition's module, then run a call on a fresh instance (or an actor's
//! kept one) under the definition's limits and the executor's concurrency: started on the
//! caller's thread for at most a millisecond, finished on a guest thread when it needs longer.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedMutexGuard, Semaphore};

use crate::actors::{ActorKey, Actors};
pub use crate::capabilities::Capabilities;
use crate::capabilities::{authorize, FilesystemConfig, Grants};
use crate::engine::EngineKind;
use crate::error::ExecError;
use crate::host::LogSink;
use crate::instance::{is_reusable_after, CallOutput, GuestInstance};
use crate::threads::{block_on, GuestThreads};
use crate::limits::{CancelFlag, LimitOverrides, Limits};
use crate::artifacts::ArtifactCache;
use crate::modules::{hex, parse_digest, CacheStats, CompiledModule, DefKey, Digest, ModuleCache};
use crate::store::{BlobSource, RoutedSource};

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

#[derive(Clone)]
pub struct ExecutorOptions {
    pub max_cached_modules: NonZeroUsize,
    /// Compiled code the module cache may hold, in bytes.
    pub max_cache_bytes: usize,
    /// Compiled artifacts on disk and/or in a shared store.
    pub artifacts: ArtifactCache,
    pub max_actors: NonZeroUsize,
    /// Calls running guest code at once; more wait in a queue.
    pub max_concurrency: NonZeroUsize,
    /// Limits for definitions that name none.
    pub defaults: Limits,
    pub log: Option<Arc<dyn LogSink>>,
    /// The directory granted to definitions that ask for `capabilities.filesystem`.
    pub filesystem: Option<FilesystemConfig>,
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
            log: None,
            filesystem: None,
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
    threads: GuestThreads,
    inline_clock: InlineClock,
    opts: ExecutorOptions,
}

/// Receives a call's result, on a guest thread.
pub type Done = Box<dyn FnOnce(Result<CallOutput, ExecError>) + Send>;

/// What `try_start` did with a call.
pub enum Attempt {
    /// Done already (inline, or refused before starting).
    Finished(Result<CallOutput, ExecError>),
    /// Running on a guest thread; `done` will be called.
    Started,
    /// It has to wait (download and compile, a free slot, a busy actor): use `execute`.
    Wait(String, CallOptions),
}

/// How long a call may run inline on the caller's thread before it is moved to a guest thread.
pub const INLINE_BUDGET: Duration = Duration::from_millis(1);
/// The share of the caller's thread that inline attempts may take, per window.
const INLINE_WINDOW: Duration = Duration::from_millis(20);
const INLINE_SHARE: Duration = Duration::from_millis(4);

/// Bounds the time the caller's thread (Node's event loop) spends on inline attempts: at most
/// `INLINE_SHARE` in any `INLINE_WINDOW`, so a burst of calls cannot hold the loop.
struct InlineClock(Mutex<(Instant, Duration)>);

impl InlineClock {
    fn new() -> Self {
        InlineClock(Mutex::new((Instant::now(), Duration::ZERO)))
    }
    fn admit(&self) -> bool {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= INLINE_WINDOW {
            *w = (Instant::now(), Duration::ZERO);
        }
        w.1 < INLINE_SHARE
    }
    fn spend(&self, d: Duration) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).1 += d;
    }
}

/// What a call needs once its module is known.
struct Prepared {
    limits: Limits,
    grants: Grants,
    pinned: Option<Digest>,
    kind: EngineKind,
}

impl Executor {
    pub fn new(source: Arc<dyn BlobSource>, opts: ExecutorOptions) -> Result<Self, ExecError> {
        let threads = GuestThreads::new(opts.max_concurrency.get())
            .map_err(|e| ExecError::internal(format!("cannot start guest threads: {e}")))?;
        Ok(Executor {
            source: Arc::new(RoutedSource::new(source)),
            modules: ModuleCache::new(opts.max_cached_modules, opts.max_cache_bytes, opts.artifacts.clone()),
            actors: Actors::new(opts.max_actors),
            permits: Arc::new(Semaphore::new(opts.max_concurrency.get())),
            threads,
            inline_clock: InlineClock::new(),
            opts,
        })
    }

    fn prepare(&self, def: &Definition, input: &str, cancel: &CancelFlag) -> Result<Prepared, ExecError> {
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
        Ok(Prepared { limits, grants, pinned, kind })
    }

    /// Starts a call without waiting, when nothing needs waiting for: the module is cached, a
    /// concurrency slot is free and the actor (if any) is idle.
    ///
    /// The call (a future: the guest runs on a wasmtime fiber) is first polled right here, on
    /// the calling thread, with a budget of `INLINE_BUDGET`, and only while the caller's thread
    /// has spent less than `INLINE_SHARE` of recent time on such starts. Most activities finish
    /// in microseconds and then pay no thread hand-off at all. One still running at the budget
    /// yields at the next epoch tick, and the suspended call moves, as it is, to a guest thread
    /// that finishes it. WASI guests (whose host calls may block) and modules seen to run long
    /// go to a guest thread directly. `make_done` is called only when the call goes to a guest
    /// thread; `done` then receives the result there.
    pub fn try_start(
        &self,
        def: &Definition,
        input: String,
        call: CallOptions,
        make_done: impl FnOnce() -> Result<Done, ExecError>,
    ) -> Attempt {
        let mut p = match self.prepare(def, &input, &call.cancel) {
            Ok(p) => p,
            Err(e) => return Attempt::Finished(Err(e)),
        };
        let key = def.key();
        let Some(module) = self.modules.peek(&key, p.kind, p.pinned.as_ref()) else {
            return Attempt::Wait(input, call);
        };
        if let Err(e) = authorize(&module.wasi_imports, &def.capabilities) {
            return Attempt::Finished(Err(e));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Attempt::Wait(input, call);
        };
        let held = match &call.actor_id {
            None => None,
            Some(id) => match self.actors.slot(ActorKey { def: key.clone(), actor_id: id.clone() }).try_lock_owned() {
                Ok(held) => Some(held),
                Err(_) => return Attempt::Wait(input, call),
            },
        };
        self.modules.count_hit();
        let inline =
            module.wasi_imports.is_empty() && module.inline_ok.load(Ordering::Relaxed) && self.inline_clock.admit();
        if inline {
            p.limits.inline_budget = Some(INLINE_BUDGET);
        }
        let log = self.opts.log.clone();
        let started = Instant::now();
        let cancel = call.cancel;
        let m = module.clone();
        let mut fut: GuestCall = Box::pin(async move { run(held, &m, &p, &cancel, log, &input).await });
        if inline {
            let polled = poll_once(&mut fut);
            self.inline_clock.spend(started.elapsed());
            match polled {
                Some(result) => return Attempt::Finished(result),
                None => module.inline_ok.store(false, Ordering::Relaxed),
            }
        }
        let done = match make_done() {
            Ok(done) => done,
            Err(e) => return Attempt::Finished(Err(e)),
        };
        self.threads.submit(move || {
            let _permit = permit;
            let result = catch(|| block_on(fut));
            if started.elapsed() < INLINE_BUDGET / 2 {
                module.inline_ok.store(true, Ordering::Relaxed);
            }
            done(result)
        });
        Attempt::Started
    }

    /// Runs `execute(input_json)` of the definition's module and returns its JSON text, waiting
    /// for whatever it needs (download and compile, a concurrency slot, the actor).
    pub async fn execute(&self, def: &Definition, input_json: String, call: CallOptions) -> Result<CallOutput, ExecError> {
        let cancel = call.cancel;
        let p = self.prepare(def, &input_json, &cancel)?;
        let key = def.key();
        let module =
            cancel.guard(self.modules.get_or_load(&key, p.kind, p.pinned.as_ref(), self.source.as_ref())).await??;
        authorize(&module.wasi_imports, &def.capabilities)?;
        let log = self.opts.log.clone();
        let held = match call.actor_id {
            None => None,
            Some(actor_id) => {
                let slot = self.actors.slot(ActorKey { def: key, actor_id });
                Some(cancel.guard(slot.lock_owned()).await?)
            }
        };
        let permit = cancel.guard(self.permits.clone().acquire_owned()).await?.map_err(ExecError::internal)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.threads.submit(move || {
            let _permit = permit;
            let result = catch(|| block_on(run(held, &module, &p, &cancel, log, &input_json)));
            let _ = tx.send(result);
        });
        rx.await.map_err(|_| ExecError::internal("a guest thread dropped its call"))?
    }

    /// Downloads and compiles (or loads from an artifact) a definition's module ahead of traffic,
    /// filling every cache tier. Returns the module's sha256.
    pub async fn precompile(&self, def: &Definition) -> Result<String, ExecError> {
        let p = self.prepare(def, "", &CancelFlag::new())?;
        let module = self.modules.get_or_load(&def.key(), p.kind, p.pinned.as_ref(), self.source.as_ref()).await?;
        Ok(hex(&module.digest))
    }

    /// The sha256 of every cached module.
    pub fn cached_digests(&self) -> Vec<String> {
        self.modules.digests()
    }

    /// Forgets an actor's instance (and its state); true if there was one.
    pub fn drop_actor(&self, def: &Definition, actor_id: &str) -> bool {
        self.actors.remove(&ActorKey { def: def.key(), actor_id: actor_id.to_string() })
    }

    /// Drops every cached module, or only those of the activity `name`.
    pub fn clear_cache(&self, name: Option<&str>) {
        self.modules.clear(name);
    }

    pub fn stats(&self) -> ExecutorStats {
        ExecutorStats { cache: self.modules.stats(), actors: self.actors.len() }
    }
}

/// A guest call in flight: `Send`, so a call suspended on one thread can finish on another.
type GuestCall = std::pin::Pin<Box<dyn std::future::Future<Output = Result<CallOutput, ExecError>> + Send>>;

/// Polls a call once with a waker that does nothing (a suspended call is moved, not woken);
/// `None` when it yielded. A panic becomes an error.
fn poll_once(fut: &mut GuestCall) -> Option<Result<CallOutput, ExecError>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(std::task::Poll::Ready(result)) => Some(result),
        Ok(std::task::Poll::Pending) => None,
        Err(_) => Some(Err(ExecError::internal("the call panicked (a bug in the executor)"))),
    }
}

/// Runs one call: on the actor's kept instance when `held` is given (creating it on the
/// actor's first call, or when its module changed), else on a fresh instance.
async fn run(
    held: Option<OwnedMutexGuard<Option<GuestInstance>>>,
    module: &CompiledModule,
    p: &Prepared,
    cancel: &CancelFlag,
    log: Option<Arc<dyn LogSink>>,
    input: &str,
) -> Result<CallOutput, ExecError> {
    let Some(mut held) = held else {
        let mut instance = GuestInstance::new(module, &p.limits, cancel, log, &p.grants).await?;
        return instance.call(input, &p.limits, cancel).await;
    };
    let mut instance = match held.take() {
        // Same bytes, same engine: the actor's state lives on.
        Some(i) if i.digest == module.digest && i.kind == module.kind => i,
        _ => GuestInstance::new(module, &p.limits, cancel, log, &p.grants).await?,
    };
    let result = instance.call(input, &p.limits, cancel).await;
    if result.as_ref().err().is_none_or(is_reusable_after) {
        *held = Some(instance);
    }
    result
}

/// A panic in guest-handling code becomes an error, never an abort of the process.
fn catch(f: impl FnOnce() -> Result<CallOutput, ExecError>) -> Result<CallOutput, ExecError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(ExecError::internal("the call panicked (a bug in the executor)")))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::MemorySource;
    use crate::test_guests as g;

    fn setup(blobs: &[(&str, Vec<u8>)]) -> (Executor, Arc<MemorySource>) {
        let source = Arc::new(MemorySource::new());
        for (path, bytes) in blobs {
            source.put(path, bytes.clone());
        }
        (Executor::new(source.clone(), ExecutorOptions::default()).expect("executor"), source)
    }

    fn def(name: &str) -> Definition {
        Definition {
            name: name.into(),
            version: "1.0.0".into(),
            wasm_blob_path: format!("{name}.wasm"),
            ..Default::default()
        }
    }

    async fn run(ex: &Executor, d: &Definition, input: &str) -> Result<CallOutput, ExecError> {
        ex.execute(d, input.to_string(), CallOptions::default()).await
    }

    async fn code(ex: &Executor, d: &Definition, input: &str) -> &'static str {
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
        let ex = Arc::new(ex);
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
        let ex = Executor::new(source, opts).expect("executor");
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
        use sha2::{Digest as _, Sha256};
        let (ex, source) = setup(&[("echo.wasm", g::echo())]);
        let mut d = def("echo");
        d.sha256 = Some(hex(&Sha256::digest(g::echo()).into()));
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
            artifacts: ArtifactCache { dir: Some(dir.clone()), remote: None },
            ..Default::default()
        };
        let source = Arc::new(MemorySource::new());
        source.put("echo.wasm", g::echo());
        let first = Executor::new(source.clone(), opts()).expect("executor");
        assert_eq!(run(&first, &def("echo"), "1").await.expect("ok").output, "1");
        assert_eq!((first.stats().cache.compiles, first.stats().cache.artifact_hits), (1, 0));
        let second = Executor::new(source, opts()).expect("executor");
        assert_eq!(run(&second, &def("echo"), "2").await.expect("ok").output, "2");
        assert_eq!((second.stats().cache.compiles, second.stats().cache.artifact_hits), (0, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_cache_is_bounded_by_bytes() {
        let source = Arc::new(MemorySource::new());
        source.put("a.wasm", g::echo());
        source.put("b.wasm", g::counter());
        let ex = Executor::new(source, ExecutorOptions { max_cache_bytes: 1, ..Default::default() }).expect("executor");
        run(&ex, &def("a"), "1").await.expect("ok");
        run(&ex, &def("b"), "1").await.expect("ok");
        let s = ex.stats().cache;
        assert_eq!(s.modules, 1, "only the newest module fits");
        assert!(s.code_bytes > 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn short_calls_finish_inline_and_long_ones_move_to_a_guest_thread() {
        let (ex, _) = setup(&[("echo.wasm", g::echo()), ("spin.wasm", g::spin())]);
        let no_done = || -> Result<Done, ExecError> { Err(ExecError::internal("should not be needed")) };
        // Not cached yet: it has to wait.
        assert!(matches!(ex.try_start(&def("echo"), "1".into(), CallOptions::default(), no_done), Attempt::Wait(..)));
        run(&ex, &def("echo"), "1").await.expect("loads");
        match ex.try_start(&def("echo"), "\"inline\"".into(), CallOptions::default(), no_done) {
            Attempt::Finished(Ok(out)) => assert_eq!(out.output, "\"inline\""),
            _ => panic!("a short call on a cached module finishes inline"),
        }
        // A spinning guest overruns the inline budget and goes on (from the start) on a guest thread.
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
        assert!(matches!(ex.try_start(&d, "1".into(), CallOptions::default(), make_done), Attempt::Started));
        assert!(started.elapsed() < Duration::from_millis(100), "the caller's thread was held for {:?}", started.elapsed());
        assert_eq!(rx.await.expect("done called"), Err(ExecError::Timeout { limit_ms: 300 }));
    }
}
