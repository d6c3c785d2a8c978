//! One call's guest, once its module, its concurrency slot and (for an actor) its place in the
//! actor's line are held: on a fresh instance or the actor's kept one (created, or restored from
//! its last good state after a failed transactional call), watched by the call's deadline and
//! cancellation also while the guest waits in a host call.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use crate::actors::{self, Held};
use crate::capabilities::{Capabilities, Grants};
use crate::digest::Digest;
use crate::engine::{self, EngineKind};
use crate::error::ExecError;
use crate::host::LogSink;
use crate::instance::{CallContext, CallOutput, GuestInstance};
use crate::limits::{self, Budget, CancelFlag, Limits};
use crate::durable;
use crate::modules::{CompiledModule, DefKey};

/// What a call needs once its definition is read.
pub(crate) struct Prepared {
    pub key: DefKey,
    pub limits: Limits,
    pub grants: Grants,
    pub capabilities: Capabilities,
    pub pinned: Option<Digest>,
    pub kind: EngineKind,
    pub transactional: bool,
    pub actor_id: Option<String>,
    /// For an actor call with an actor store: where its snapshots go.
    pub durable: Option<durable::Durable>,
    /// Its determinism, heartbeats, and ABI settings.
    pub ctx: CallContext,
}

/// Runs `guest` until it finishes, its deadline passes or the call is cancelled, whichever
/// comes first, also while the guest waits in a host call (epoch ticks cover running code).
/// A guest still running when it leaves the caller's thread counts against its module's inline
/// gate. A guest granted a directory runs with the file runtime current (`runtime::files`), so
/// its file operations use that runtime's threads.
/// `Ok` holds what the guest's future returned (it settled the actor's instance itself); `Err`
/// is a guest cut off from outside, whose future the caller then drops, instance and all.
pub(crate) async fn watched<F: Future<Output = Result<CallOutput, ExecError>>>(
    mut guest: Pin<&mut F>,
    budget: Budget,
    cancel: &CancelFlag,
    module: &CompiledModule,
    files: bool,
) -> Result<Result<CallOutput, ExecError>, ExecError> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut cancelled: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    poll_fn(|cx| {
        if cancel.is_cancelled() {
            return Poll::Ready(Err(ExecError::Cancelled));
        }
        if let Poll::Ready(r) = crate::runtime::with_files(files, || guest.as_mut().poll(cx)) {
            if limits::in_inline_window() {
                module.inline.finished_inline();
            }
            return Poll::Ready(Ok(r));
        }
        if limits::in_inline_window() {
            // Waiting for a host call the caller's thread runs next is no overrun.
            if !crate::inline::deferred() {
                module.inline.overran();
            }
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

/// A fresh instance for a call; when the process's instance pool (or its room for instances
/// outside the pool) is full, idle actors of that kind anywhere in the process make room (least
/// recently used first), else `BUSY`.
pub(crate) async fn instantiate(
    module: &CompiledModule,
    p: &Prepared,
    budget: Budget,
    cancel: &CancelFlag,
    log: Option<Arc<dyn LogSink>>,
    for_actor: bool,
) -> Result<GuestInstance, ExecError> {
    if for_actor && module.kind == EngineKind::Plain && room_for_actors() == 0 {
        actors::evict_idle_anywhere(16, true);
    }
    let pooled = module.kind == EngineKind::Plain;
    // A deterministic actor's start function runs as the initial image's does, whatever the call
    // (`Determinism::START`), so that an actor made, rebuilt from its state or restored on any
    // worker is the same instance: run under each call's clock, a start function that grew its
    // memory by `Date.now() & 1` pages made every rebuild at an odd `now` refuse the state
    // (`SNAPSHOT_INVALID`) that the live actor went on from (review BL1). The call's own
    // determinism takes its place once the instance is made.
    let start = (for_actor && p.ctx.det.is_some()).then(|| CallContext { det: Some(crate::replay::Determinism::START), ..p.ctx.clone() });
    let ctx = start.as_ref().unwrap_or(&p.ctx);
    let new = || GuestInstance::new(module, &p.limits, budget, cancel, log.clone(), &p.grants, ctx);
    let mut made = new().await;
    // The pool, or the process's room for instances outside it (`unpooled_slots`), is full:
    // spent instances the reaper's thread has yet to drop give back their slots first (tried
    // again whatever `settle` found: the reaper may have freed one in between), then idle actors
    // make room.
    if matches!(made, Err(ExecError::Busy(_))) && pooled {
        crate::reaper::settle();
        made = new().await;
    }
    if matches!(made, Err(ExecError::Busy(_))) && actors::evict_idle_anywhere(16, pooled) > 0 {
        made = new().await;
    }
    let mut instance = made?;
    if start.is_some() {
        instance.take_call_det(&p.grants, &p.ctx)?;
    }
    if for_actor {
        // An actor's instance lives between calls: its fiber stack's pages go back while it idles.
        instance.watch_stack();
    }
    Ok(instance)
}

/// What the log says of an actor whose memory grows with every call.
pub(crate) fn growth_warning(p: &Prepared, per_call: u64, now: u64) -> String {
    let left = p.limits.max_memory_bytes.saturating_sub(now) / per_call.max(1);
    format!(
        "actor {:?} of activity {:?} grows its memory by about {per_call} bytes per call ({now} bytes now): its guest \
         runtime seems never to free (AssemblyScript's --runtime stub keeps every string it allocates). At this rate it \
         reaches maxMemoryMB in about {left} calls, fails with OUT_OF_MEMORY and loses its state. Build actors with a \
         collecting runtime (--runtime incremental or minimal).",
        p.actor_id.as_deref().unwrap_or(""),
        p.key.name
    )
}

/// What the log says of a plain actor whose state went with a failed collection.
fn collect_failed_warning(p: &Prepared, e: &ExecError) -> String {
    format!(
        "actor {:?} of activity {:?} lost its state after a successful call: its runtime's collection (__collect, run \
         once its memory passes half of maxMemoryMB) failed ({} {e}), and the heap it may have left torn is not kept. \
         Its next call starts fresh (actorCreated: true); a transactional actor would go back to its last good state.",
        p.actor_id.as_deref().unwrap_or(""),
        p.key.name,
        e.code()
    )
}

/// When an actor's memory passes this share of its cap after a call, its runtime's `__collect`
/// (if it exports one) is called before the next: a full collection, so the memory it has stops
/// growing. Memory cannot shrink, so waiting longer only leaves less room.
const COLLECT_AT: f64 = 0.5;

/// Runs one call's guest: on the actor's kept instance when `held` is given (created on the
/// actor's first call, restored from its last good state after a failed transactional call, or
/// new when its module changed), else on a fresh instance.
pub(crate) async fn run(
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
        let out = instance.call(input, &p.limits, started, &p.ctx).await;
        // After a failure the instance goes here, at once: a guest stopped in a host call is
        // let go of now (its pending host function aborted), not later.
        if out.is_ok() {
            instance.discard();
        }
        return out;
    };
    held.apply_reset();
    let keep_shadow = p.transactional || p.durable.is_some();
    if keep_shadow {
        module.check_state_capturable()?;
    }
    if !keep_shadow {
        held.guard.shadow = held.guard.shadow.take().filter(|_| held.guard.instance.is_none());
    }
    // The actor's state belongs to its module: with other bytes under the definition now (a new
    // pin, new bytes at its path after `clearCache`), its state is kept and the call refused, as
    // a snapshot of another module is; never a silent fresh start (which a durable actor would
    // then store over its state).
    held.guard.check_module(&module.digest)?;
    // And to the ABI it was made under (`definition.abi` may force another on bytes that fit
    // both): a call asking for another is refused, its state kept.
    let abi = module.abi_for(p.ctx.abi)?;
    held.guard.check_abi(abi, &p.key.name)?;
    // Moved to optimized code before this call: the instance it left, as it was, goes back if
    // the call runs out of its time or fuel, or is cancelled (the move took part of them: a
    // start function costing most of the budget turned a call that fit into a reset, review
    // AL3).
    let mut moved_from = held.guard.instance.as_mut().and_then(|i| i.moved_from.take());
    // What a kept instance holds now: the call's growth is what it holds past this, checked
    // against the executor's actors' cap (`actors::MemoryCap`); an instance made now grew from 0.
    let mut kept_bytes = None;
    let mut fresh_cap = None;
    // A transactional or durable actor's shadow grows with its instance as the call ends.
    let copies = if keep_shadow { 2 } else { 1 };
    let (mut instance, created) = match held.guard.instance.take() {
        // Same bytes, same metering: the actor's state lives on, under the call's current
        // limits and grants.
        Some(mut i) if i.digest == module.digest && i.kind.metered() == module.kind.metered() => {
            let kept = i.memory_bytes();
            kept_bytes = Some(kept);
            // A call that takes the actor's first shadow (its first transactional call) holds a
            // copy of its memory from now on (review CE1: uncounted, 4 actors of 30 MiB held 240
            // under a cap of 128 while their calls ran).
            let shadow = if keep_shadow && held.guard.shadow.is_none() { kept } else { 0 };
            if moved_from.is_some() || shadow > 0 {
                // Moved to optimized code for this call, the old instance stays until the call has
                // counted, and the new one counts beside it (review CD1); where that would pass
                // the cap, the old one goes now (it is only there to move back to after a budget
                // error: review CE1 had such calls refused BUSY, the old instance dropped anyway).
                // Refused before the instance is armed (armed, it holds the call's slot).
                let moved = if moved_from.is_some() { kept } else { 0 };
                let mut cap = held.memory_cap(kept, copies, shadow + moved);
                let mut admitted = crate::limits::SharedCap::admit(&*cap, kept);
                if admitted.is_err() && moved > 0 {
                    moved_from = None;
                    cap = held.memory_cap(kept, copies, shadow);
                    admitted = crate::limits::SharedCap::admit(&*cap, kept);
                }
                if let Err(e) = admitted {
                    held.guard.instance = Some(i);
                    return Err(e);
                }
                fresh_cap = Some(cap);
            }
            // `check_abi` held the actor to its ABI; its instance runs under it too.
            let same = match i.abi() == abi {
                true => Ok(()),
                false => Err(ExecError::internal("an actor's instance runs under another ABI than the actor's")),
            };
            if let Err(e) = same.and_then(|()| i.rearm(&p.limits, budget, cancel, &p.grants, &p.ctx)) {
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
        _ => {
            // No live instance: its last good state is the shadow, or its snapshot in the store.
            let mut loaded = false;
            if let (None, Some(d)) = (&held.guard.shadow, &p.durable) {
                Box::pin(durable::load(&mut held, module, p, d, budget, cancel)).await?;
                loaded = held.guard.shadow.is_some();
            }
            let mut fresh = instantiate(module, p, budget, cancel, log.clone(), true).await?;
            // Restored from where it lies: a call ended midway (its deadline, a cancel) leaves
            // the last good state in place for the next one.
            let restored = match &held.guard.shadow {
                Some((digest, state)) if *digest == module.digest => {
                    match Box::pin(fresh.restore(state)).await {
                        // A stored state that does not fit the module is not kept: the next call
                        // reads the store again (review AA: once the store was repaired, the
                        // executor that had read the bad state still failed every call).
                        Err(e @ ExecError::SnapshotInvalid(_)) if loaded => {
                            held.guard.shadow = None;
                            held.guard.persisted = None;
                            return Err(e);
                        }
                        r => r?,
                    }
                    fresh.refuel(&p.limits)?;
                    true
                }
                _ => false,
            };
            // Made or restored for this call, it counts in full, with the shadow taken of it
            // unless that is the shadow the actor kept (and counted): refused, with the state it
            // was restored from kept for the next call, if the actors would pass their cap.
            let bytes = fresh.memory_bytes();
            let fixed = if keep_shadow && !(restored && !loaded) { bytes.saturating_mul(2) } else { bytes };
            let cap = held.memory_cap(bytes, copies, fixed);
            crate::limits::SharedCap::admit(&*cap, bytes)?;
            fresh_cap = Some(cap);
            if !restored || !keep_shadow {
                held.guard.shadow = None;
            }
            if restored {
                (fresh, held.guard.pristine)
            } else {
                held.guard.growth = held.guard.growth.next_instance();
                (fresh, true)
            }
        }
    };
    let cap = match fresh_cap {
        Some(cap) => cap,
        None => held.memory_cap(kept_bytes.unwrap_or(0), copies, 0),
    };
    instance.set_shared_cap(Some(cap));
    held.guard.abi = Some(instance.abi());
    if keep_shadow && held.guard.shadow.is_none() {
        held.guard.shadow = Some((module.digest, instance.capture()?));
        held.guard.pristine = created;
    }
    let mut result = instance.call(input, &p.limits, started, &p.ctx).await;
    instance.set_shared_cap(None);
    // A plugin that ended with WASI's `proc_exit(0)` returned as a success, but its code stopped
    // midway (its stack pointer, its runtime's state): an actor's state may be torn, so the
    // call fails as one that exited with another code does (review AU1: the torn state was kept,
    // a durable actor's stored).
    if result.is_ok() && instance.stopped_midway() {
        result = Err(ExecError::GuestError {
            message: "the plugin ended with proc_exit(0) midway through an actor's call: its state may be torn".into(),
            exit_code: Some(0),
        });
    }
    let budget_error = |e: &ExecError| matches!(e, ExecError::Timeout { .. } | ExecError::OutOfFuel { .. } | ExecError::Cancelled);
    let mut move_back = |held: &mut Held, e: ExecError| match moved_from.take() {
        Some(mut old) if budget_error(&e) => {
            old.stays_put = true;
            held.guard.instance = Some(*old);
            Err(e)
        }
        _ => Err(ExecError::ActorReset(Box::new(e))),
    };
    if let (Ok(out), true) = (&result, keep_shadow) {
        // Output the caller would refuse (`JSON.parse`, the depth) fails the call here, before its
        // state counts.
        if let Err(e) = crate::output::check_json(&out.output, p.limits.max_output_depth) {
            result = Err(e);
        }
    }
    match result {
        Ok(mut out) => {
            out.actor_created = created;
            out.memory_bytes = instance.memory_bytes();
            // Told now, whatever becomes of the call (a warning for a call that then failed was
            // never told: review AJ).
            if let (Some(per_call), Some(sink)) = (held.guard.growth.record(out.memory_bytes), log.as_ref()) {
                sink.warn(&growth_warning(p, per_call, out.memory_bytes));
            }
            if out.memory_bytes as f64 > p.limits.max_memory_bytes as f64 * COLLECT_AT {
                let collected = Box::pin(instance.collect(&p.limits)).await;
                // The collection is the call's work: its time and fuel count.
                out.duration = started.elapsed();
                out.fuel_consumed = instance.fuel_consumed(&p.limits).or(out.fuel_consumed);
                if let Err(e) = collected {
                    // A collection that fails may leave the heap torn: the instance goes. A
                    // transactional or durable actor goes back to its last good state, so the
                    // call fails (it did not count). One that ran out of the call's time or fuel,
                    // or was cancelled, fails the call (the state went with it). Else a plain
                    // actor's result stands, and its next call starts fresh: said in the log,
                    // never silently.
                    if held.guard.shadow.is_some() {
                        return Err(e);
                    }
                    if budget_error(&e) {
                        return if created { Err(e) } else { move_back(&mut held, e) };
                    }
                    if let Some(sink) = log.as_ref() {
                        sink.warn(&collect_failed_warning(p, &e));
                    }
                    return Ok(out);
                }
            }
            // The call counts: the last good state is no longer the one the actor was made with.
            held.guard.pristine = false;
            if let Some(d) = &p.durable {
                // The call counts once its state is stored (or, with persist: 'async', once it
                // is handed to the store in the actor's line).
                return Box::pin(durable::persist(held, instance, module, p, d, budget, cancel, log)).await.map(|()| out);
            }
            if let Some((_, shadow)) = held.guard.shadow.as_mut() {
                instance.update_shadow(shadow)?;
            }
            held.guard.instance = Some(instance);
            Ok(out)
        }
        Err(e) if instance.is_reusable_after(&e) && held.guard.shadow.is_none() => {
            held.guard.instance = Some(instance);
            Err(e)
        }
        // Transactional or durable: the instance goes, the last good state stays (the next call
        // restores it).
        Err(e) if held.guard.shadow.is_some() => Err(e),
        Err(e) if created => Err(e),
        Err(e) => move_back(&mut held, e),
    }
}

/// Whether an actor's instance moves to `module` before its call: it runs baseline code (it was
/// made while its module tiered up) and `module` is the optimized code of the same bytes. Only
/// where its whole state moves with it: not when an instruction changes a table or drops a
/// segment, nor with a WASI context (open files), nor for a component (its state is out of reach).
fn moves_to(instance: &GuestInstance, module: &CompiledModule) -> bool {
    instance.digest == module.digest
        && instance.kind.baseline()
        && !module.kind.baseline()
        && instance.kind.metered() == module.kind.metered()
        && !instance.stays_put
        && module.state_in_memory
        && module.wasi_imports.is_empty()
}

/// Moves an actor made on baseline code to a fresh instance of `module`, its optimized code,
/// before its call and apart from it: its memory, globals and the ABI's host-side state are
/// copied across (as a transactional call's last good state is restored). The new instance is
/// made within the call's deadline (its start function's fuel is its own),
/// with no host access, no log and no eviction (only into room the pool has to spare), and takes
/// the old one's place only once complete: a move that fails, or is dropped midway, leaves the
/// actor as it was (and one that failed is not tried again). The call's `cancel` ends it as it
/// ends the call (its signal, `close()`). On a deadline of its own, a start function spinning
/// there made a 2 s call succeed after 3.4 s (review AL2F); its fuel is its own (see below).
pub(crate) async fn move_actor(held: &mut Held, module: &CompiledModule, p: &Prepared, budget: Budget, cancel: &CancelFlag) -> Result<(), ExecError> {
    match held.guard.instance.as_ref() {
        Some(old) if moves_to(old, module) && pool_has_room(module) => {}
        _ => return Ok(()),
    }
    if cancel.is_cancelled() {
        return Ok(());
    }
    // Under the ABI the actor was made with, not the one detected (review AV1: an actor made with
    // `abi: 'assemblyscript'` on bytes that are a plugin too moved to a plugin's instance).
    let abi = held.guard.instance.as_ref().map(|i| i.abi());
    // A deterministic actor's start function as `instantiate` runs it; the call's `rearm` puts the
    // call's determinism in place.
    let det = p.ctx.det.map(|_| crate::replay::Determinism::START);
    let ctx = CallContext { det, config: p.ctx.config.clone(), abi, ..Default::default() };
    // The old instance stays in the actor's place until the new one is complete. (Boxed: the
    // move is rare, and its state would otherwise enlarge every call's future.)
    let moved = Box::pin(async {
        // Its start function runs on fuel of its own, as a rebuilt actor's does (`refuel`): the
        // step then has its whole `maxFuel` whether or not a tier-up moved the actor first
        // (review BL1: one step was `OUT_OF_FUEL` or not by when the tier-up landed). The
        // call's deadline bounds it.
        let mut fresh = GuestInstance::new(module, &p.limits, budget, cancel, None, &p.grants, &ctx).await?;
        // Its steps are checked against the call's deadline: a GiB's copy took a 100 ms call to
        // 0.7 s and succeeded (review AM2F).
        let in_time = || match Instant::now() >= budget.deadline {
            true => Err(budget.timeout_in(MOVING)),
            false => Ok(()),
        };
        in_time()?;
        let old = held.guard.instance.as_mut().ok_or_else(|| ExecError::internal("the actor's instance went"))?;
        fresh.take_state_of(old).await?;
        in_time()?;
        fresh.watch_stack();
        Ok::<_, ExecError>(fresh)
    })
    .await;
    match moved {
        Ok(mut fresh) => {
            // The old instance is kept until the call has counted (`run`).
            fresh.moved_from = held.guard.instance.take().map(Box::new);
            held.guard.instance = Some(fresh);
        }
        // A move cancelled with its call may be tried again by the next call.
        Err(_) if cancel.is_cancelled() => {}
        Err(e) => {
            if let Some(old) = held.guard.instance.as_mut() {
                old.stays_put = true;
            }
            // One that ran out of the call's time or fuel ends the call, the actor as it was (run
            // on after it, the call timed out in the guest and reset the actor: review AL3). It
            // is not tried again: a start function that never fits would fail every call.
            if matches!(e, ExecError::Timeout { .. } | ExecError::OutOfFuel { .. }) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// What a call was doing when its deadline passed in a move.
const MOVING: &str = " while moving the actor to optimized code (its state copied into a new instance in one step; \
     it stays on its baseline code, and is not moved again)";

/// Whether the pooled engine has room for one more actor beside the one moving, without
/// evicting (see `instantiate`).
fn pool_has_room(module: &CompiledModule) -> bool {
    module.kind != EngineKind::Plain || room_for_actors() > 1
}

/// Instances the pooled engine can still give actors: an eighth of the pool is kept for fresh
/// calls, so actors alone never fill it.
fn room_for_actors() -> u64 {
    let pool = engine::pool_size() as u64;
    let live = engine::engine(EngineKind::Plain).ok().and_then(|e| e.pooling_allocator_metrics()).map_or(0, |m| m.core_instances());
    // Spent instances waiting for the reaper's thread hold slots only for a moment.
    let spent = crate::reaper::holding() as u64;
    (pool - pool / 8).saturating_sub(live.saturating_sub(spent))
}
