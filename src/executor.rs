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
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::actors::{ActorKey, Actors, Held, Ticket};
use crate::call::{run, watched, Prepared};
use crate::durable::Durable;
pub use crate::capabilities::Capabilities;
pub use crate::options::{ranges, CallOptions, CheckedDefinition, Definition, ExecutorOptions};
use crate::capabilities::{authorize, Grants};
use crate::digest::parse_digest;
use crate::engine::{self, EngineKind};
use crate::error::ExecError;
use crate::host_functions::{HostAccess, NetworkCall};
use crate::inline;
use crate::permit::PermitSlot;
use crate::host::Progress;
use crate::instance::{CallContext, CallOutput};
use crate::replay::Determinism;
use crate::limits::{self, Budget, CancelFlag, INLINE_MEMORY_BYTES};
use crate::modules::{CacheStats, CompiledModule, ModuleCache};
use crate::routed_source::{allowed_prefixes, RoutedSource};
use crate::store::BlobSource;
use crate::threads;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    pub cache: CacheStats,
    pub actors: usize,
    /// Process-wide: linear memory freed pool slots keep resident for their next instance.
    pub pool_idle_resident_bytes: u64,
}

pub struct Executor {
    /// Its granted directory's lock, held for its life (`path_locks`).
    _paths: Option<crate::path_locks::PathLock>,
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
    /// Actor-store writes under way after their calls (`close` waits for them too).
    pending: Arc<crate::durable::Pending>,
    /// Room for actor snapshots being loaded: `maxActorMemoryMB` (`actor_store::Loading`).
    pub(crate) loading: crate::actor_store::Loading,
    /// Room for the snapshots of `restoreActor`s made and not done, `maxActorMemoryMB` too: a
    /// gate of their own, since a restore holds its room while it waits in its actor's line, and
    /// the call ahead of it there may need a load's (review CC1: sharing one gate, a restore made
    /// right after a durable actor's first call held the room that call's load waited for, and
    /// the call failed `TIMEOUT` at its deadline).
    pub(crate) restoring: crate::actor_store::Loading,
    /// What `options.hostFunctions` offers.
    host_function_names: Vec<String>,
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

/// An operation's place in an actor's line (`Executor::line_up`), with its prepared definition.
pub(crate) type Lined = (Prepared, Ticket);

/// Removes a call (or an operation on an actor, `Executor::hold`) from the in-flight registry
/// when it ends, however it ends.
pub(crate) struct Inflight<'a>(&'a Executor, u64);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
        self.0.drained.notify_waiters();
    }
}

/// Resolves after returning `Pending` once: the call leaves the caller's thread.
pub(crate) async fn leave_caller_thread() {
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

impl Executor {
    pub fn new(source: Arc<dyn BlobSource>, mut opts: ExecutorOptions) -> Result<Self, ExecError> {
        crate::compile::quiet_known_panics();
        // A relative `hostDir` means the directory it names now, not after a `process.chdir`
        // (review BX2: one relative `cacheDir` was checked here and written elsewhere later).
        if let Some(fs) = opts.filesystem.as_mut() {
            fs.host_dir = crate::artifact_dir::absolute(&fs.host_dir, "options.filesystem.hostDir")?;
        }
        let paths = opts.filesystem.as_ref().map(|fs| crate::path_locks::register(&fs.host_dir));
        opts.artifacts.limits = opts.load.compile;
        opts.artifacts = opts.artifacts.clone().open()?;
        let allowed = allowed_prefixes(&opts.allowed_blob_urls)?;
        let loading = crate::actor_store::Loading::new(opts.max_actor_memory_bytes);
        let restoring = crate::actor_store::Loading::new(opts.max_actor_memory_bytes);
        // Size the process's instance pool for this executor's actors and calls (the first
        // executor of a process decides; the rest share it).
        engine::reserve_pool(engine::pool_for(opts.max_actors.get() as u64, opts.max_concurrency.get() as u64));
        let host_function_names = opts.host_functions.as_ref().map(|f| f.names()).unwrap_or_default();
        crate::warm_up::start(crate::warm_up::first_engine(opts.artifacts.is_enabled(), opts.tier_up));
        // Nothing fails past here: a constructor that throws leaves the directory as it was.
        opts.artifacts.watch_dir();
        Ok(Executor {
            _paths: paths,
            source: Arc::new(RoutedSource::new(source, allowed)),
            modules: ModuleCache::new(
                opts.max_cached_modules,
                opts.max_cache_bytes,
                crate::artifacts::ArtifactCache { fetch_timeout: Some(opts.load.load_timeout), ..opts.artifacts.clone() },
                opts.load,
                opts.tier_up,
                opts.share_code,
            ),
            actors: Actors::new(opts.max_actors.get(), opts.max_actor_memory_bytes),
            permits: Arc::new(Semaphore::new(opts.max_concurrency.get())),
            opts,
            closed: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(0),
            drained: tokio::sync::Notify::new(),
            pending: Default::default(),
            loading,
            restoring,
            host_function_names,
        })
    }

    /// Who is told as store writes under way after their calls (`persist: 'async'`, drops) start
    /// and end (`durable::WritesWatch`).
    pub fn watch_writes(&self, watch: Arc<dyn crate::durable_pending::WritesWatch>) {
        self.pending.watch(watch);
    }

    /// Whether store writes are under way after their calls.
    pub fn writing(&self) -> bool {
        self.pending.writing()
    }

    /// On the thread calls settle on, after one settled there or a drop returned: the writes'
    /// watch holds now if writes are under way.
    pub fn hold_for_writes(&self) {
        self.pending.hold_here();
    }

    /// The largest input a call takes, in UTF-8 bytes (`maxInputBytes`): a caller holding a longer
    /// text may leave it uncopied (`CallOptions::input_bytes`).
    pub fn max_input_bytes(&self) -> u64 {
        self.opts.defaults.max_input_bytes
    }

    /// Takes the actor's place in its line now, as `execute` does when it is called, for an
    /// operation on the actor that then waits its turn (`hold`): `snapshotActor` and
    /// `restoreActor` made before or after a call are served before or after it (they used to
    /// join the line only once their task ran: a restore made before an `execute` could land
    /// after it and wipe its acknowledged step, review S).
    pub(crate) fn line_up(self: &Arc<Self>, def: &Definition, actor_id: &str) -> Result<Lined, ExecError> {
        let call = CallOptions { actor_id: Some(actor_id.to_string()), ..Default::default() };
        let p = self.prepare(def, "", &call)?;
        let mut ticket = self.actors.ticket(ActorKey { def: p.key.clone(), actor_id: actor_id.to_string() });
        // The first poll queues on the actor's (fair) lock, or takes it when the actor is idle.
        let ticket: Ticket = match threads::poll_once(&mut ticket) {
            Ok(Poll::Ready(held)) => Box::pin(std::future::ready(held)),
            Ok(Poll::Pending) => ticket,
            Err(()) => return Err(ExecError::internal("taking the actor's place panicked (a bug in the executor)")),
        };
        Ok((p, ticket))
    }

    /// Waits for the actor's turn (its place taken by `line_up`) and finds its module, as an
    /// operation in flight: `close()` ends the wait (`CANCELLED`; `CLOSED` if it came first) and
    /// waits for what follows (a restore's store write) while the returned guard lives. Review T:
    /// a restore made before `close()` still wrote its snapshot 1.5 s after `close()` resolved,
    /// over the steps another worker had acknowledged since.
    /// The returned flag is the operation's: `close()` sets it, and what the operation runs of the
    /// guest (an initial image, a fresh instance) ends on it.
    pub(crate) async fn hold(self: &Arc<Self>, (p, ticket): Lined) -> Result<(Inflight<'_>, CancelFlag, Prepared, Arc<CompiledModule>, Held), ExecError> {
        let cancel = CancelFlag::new();
        let inflight = self.enter_flight(&cancel)?;
        let mut held = cancel.guard(ticket).await?;
        held.apply_reset();
        let load = self.modules.get_or_load_for(&p.key, p.kind, p.pinned.as_ref(), &self.source, p.ctx.det.is_some());
        let module = cancel.guard(load).await??;
        Ok((inflight, cancel, p, module, held))
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
        let p = match self.prepare(def, &input, &call) {
            Ok(p) => p,
            Err(e) => return Attempt::Finished(Err(e)),
        };
        let ticket = call.actor_id.map(|actor_id| self.actors.ticket(ActorKey { def: p.key.clone(), actor_id }));
        let mut fut: GuestCall = Box::pin(self.clone().call(p, input, call.cancel, ticket));
        let until = Instant::now() + inline::BUDGET;
        // Between polls, host calls the guest deferred to this thread run (outside the window).
        let polled = loop {
            match limits::inline_window(until, || threads::poll_once(&mut fut)) {
                // Deferred host calls always run (their answers wait there for the guest); the
                // guest goes on here only within the inline budget, else on a guest thread.
                Ok(Poll::Pending) if inline::run_deferred() && Instant::now() < until => continue,
                other => break other,
            }
        };
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

    /// Registers a call (or an operation on an actor) in flight, so that `close()` cancels it
    /// with `cancel` and waits for it while the returned guard lives; `CLOSED` if it came after.
    fn enter_flight(&self, cancel: &CancelFlag) -> Result<Inflight<'_>, ExecError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(id, cancel.clone());
        let inflight = Inflight(self, id);
        if self.closed.load(Ordering::Acquire) {
            return Err(ExecError::Closed);
        }
        Ok(inflight)
    }

    /// The whole life of one call, as one future.
    async fn call(self: Arc<Self>, p: Prepared, input: String, cancel: CancelFlag, ticket: Option<Ticket>) -> Result<CallOutput, ExecError> {
        let _inflight = self.enter_flight(&cancel)?;
        let mut held = match ticket {
            Some(t) => Some(cancel.guard(t).await?),
            None => None,
        };
        let load = self.modules.get_or_load_for(&p.key, p.kind, p.pinned.as_ref(), &self.source, p.ctx.det.is_some());
        let module = cancel.guard(load).await??;
        let abi = module.abi_for(p.ctx.abi)?;
        authorize(&module.wasi_imports, &p.capabilities, abi)?;
        if abi == crate::abi::Abi::Component && (p.transactional || p.durable.is_some()) {
            return Err(ExecError::InvalidArgument(
                "a component's state cannot be snapshotted: transactional calls and an actorStore are for core modules".into(),
            ));
        }
        if abi == crate::abi::Abi::WasiCommand && p.actor_id.is_some() {
            return Err(ExecError::InvalidArgument(
                "a WASI command module is a one-shot program with no state between runs: it runs stateless only (no actorId)".into(),
            ));
        }
        crate::host_functions::authorize(&module.host_imports, &p.capabilities.host_functions, &self.host_function_names)?;
        crate::network::authorize(module.network_import.as_deref(), p.capabilities.network, self.opts.network.is_some())?;
        let permit = cancel.guard(self.permits.clone().acquire_owned()).await?.map_err(ExecError::internal)?;
        if limits::in_inline_window() && !self.inline_ok(&module, &input, held.as_ref()) {
            leave_caller_thread().await;
        }
        let budget = Budget::starting_now(&p.limits);
        // An actor made while its module tiered up moves to the optimized code (on the call's
        // budget, ended by its cancel; a move that cannot be made leaves it as it was). Its time
        // counts in the call's `durationMs`; its start function's fuel is its own.
        let moving = Instant::now();
        if let Some(h) = held.as_mut() {
            // Out of the call's budget in the move: the actor is as it was (not reset), and the
            // call ends.
            crate::call::move_actor(h, &module, &p, budget, &cancel).await?;
            // Cancelled during the move: likewise.
            if cancel.is_cancelled() {
                return Err(ExecError::Cancelled);
            }
        }
        let mut p = p;
        p.ctx.access = HostAccess {
            functions: self.opts.host_functions.clone(),
            granted: Arc::new(p.capabilities.host_functions.clone()),
            activity: Some(p.key.clone()),
            actor_id: p.actor_id.clone(),
            permit: Some(PermitSlot::new(self.permits.clone(), permit)),
            network: match (&self.opts.network, p.capabilities.network) {
                (Some(n), true) => Some(Arc::new(NetworkCall::new(n.clone()))),
                _ => None,
            },
            deadline: Some(budget.deadline),
            limit_ms: budget.limit_ms,
            cancel: Some(cancel.clone()),
            max_result_bytes: p.limits.max_input_bytes,
            failure: Default::default(),
            http_held: None,
            making_image: false,
            arg_cost: Default::default(),
            started: Some(Instant::now()),
            in_call: true,
        };
        let had_state = held.as_ref().is_some_and(|h| h.guard.instance.is_some());
        let had_shadow = held.as_ref().is_some_and(|h| h.guard.shadow.is_some()) || p.transactional || p.durable.is_some();
        let log = self.opts.log.clone();
        let last_progress = p.ctx.progress.last.clone();
        let with_progress = |e: ExecError| {
            let last = last_progress.lock().ok().and_then(|l| l.clone());
            match last {
                Some(last) if matches!(e.root(), ExecError::Timeout { .. } | ExecError::Cancelled) => {
                    ExecError::WithProgress { error: Box::new(e), last }
                }
                _ => e,
            }
        };
        let moved_for = moving.elapsed();
        // The guest's future is the bulk of a call's state: boxed once, so the call's own future
        // stays small (each move of a future copies all of it).
        let mut guest = Box::pin(run(held, &module, &p, budget, &cancel, log.clone(), &input));
        let files = p.grants.filesystem.is_some();
        let ended = watched(guest.as_mut(), budget, &cancel, &module, files).await;
        // Finished or interrupted, the guest goes now (an interrupted one still holds the actor's
        // instance and a pool slot).
        drop(guest);
        let out = match ended {
            // Ended from outside mid-call (deadline or cancel while in a host call): an actor's
            // instance went with the call (unless it keeps a last good state to restore). One
            // the guest's own run ended has said what became of the instance: a call a tier-up's
            // move left short put the actor back as it was, and said no reset (review BX1: it
            // was said reset, and kept).
            Err(e) if had_state && !had_shadow => return Err(with_progress(ExecError::ActorReset(Box::new(e)))),
            Err(e) | Ok(Err(e)) => return Err(with_progress(e)),
            Ok(Ok(mut out)) => {
                out.duration += moved_for;
                out
            }
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
            && (module.host_imports.is_empty() || inline::has_runner())
            && module.network_import.is_none()
            && input.len() <= inline::MAX_INPUT_BYTES
            && memory <= INLINE_MEMORY_BYTES
            && module.inline.admit()
            && inline::admit()
    }

    /// What its actors' memory counts now (`maxActorMemoryMB`), for tests outside this module.
    #[cfg(test)]
    pub(crate) fn actors_held_memory(&self) -> u64 {
        self.actors.held_memory()
    }
}

#[path = "executor_upkeep.rs"]
mod upkeep;

#[path = "executor_prepare.rs"]
mod prepare;

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "executor_stack_tests.rs"]
mod stack_tests;

#[cfg(test)]
#[path = "executor_tier_up_tests.rs"]
mod tier_up_tests;

#[cfg(test)]
#[path = "executor_tier_up_move_tests.rs"]
mod tier_up_move_tests;

#[cfg(test)]
#[path = "executor_baseline_artifact_tests.rs"]
mod baseline_artifact_tests;

#[cfg(test)]
#[path = "executor_collect_tests.rs"]
mod collect_tests;

#[cfg(test)]
#[path = "executor_restore_tests.rs"]
mod restore_tests;

#[cfg(test)]
#[path = "executor_drop_retry_tests.rs"]
mod drop_retry_tests;

#[cfg(test)]
#[path = "executor_actor_memory_cap_tests.rs"]
mod actor_memory_cap_tests;

#[cfg(test)]
#[path = "executor_state_deadline_tests.rs"]
mod state_deadline_tests;

#[cfg(test)]
#[path = "executor_unpooled_tests.rs"]
mod unpooled_tests;

#[cfg(test)]
#[path = "executor_reaper_tests.rs"]
mod reaper_tests;

#[cfg(test)]
#[path = "executor_actor_slot_tests.rs"]
mod actor_slot_tests;

#[cfg(test)]
#[path = "executor_refused_output_tests.rs"]
mod refused_output_tests;
#[cfg(test)]
#[path = "executor_replay_tests.rs"]
mod replay_tests;

#[cfg(test)]
#[path = "executor_slot_wait_tests.rs"]
mod slot_wait_tests;
