//! An executor's work besides calls: filling the caches ahead of traffic (`precompile`),
//! forgetting actors and modules, closing (and waiting for what is in flight), and its stats.
//! A child of `executor`, so the executor's fields stay private to the two.

use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use super::{Executor, ExecutorStats};

/// How long `close()` waits for `cacheDir` writes off calls' paths: an artifact's write takes
/// milliseconds; one on a filesystem that stopped answering goes on in the background.
const DIR_WRITES_WAIT: Duration = Duration::from_secs(30);
use crate::actors::{ActorKey, WeakActors};
use crate::digest::hex;
use crate::durable::Durable;
use crate::engine;
use crate::error::ExecError;
use crate::limits::CancelFlag;
use crate::options::{CallOptions, Definition};
use crate::threads;

/// The first wait before a failed delete of a dropped actor's state is tried again; each
/// failure doubles it, up to `RETRY_MAX`.
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Tries a dropped actor's failed delete again, in the actor's line, until it is done (or a call
/// or a restore has settled it) or the executor closes or goes: a dropped actor that is never
/// called again would otherwise keep its state in the store, and its entry in `Pending`, for good.
/// Only for a drop whose version is known: it deletes that version alone, never another
/// worker's state stored since. One claim per actor (`Pending::claim_retry`), which goes on with
/// the version of a drop that failed while it ran; at most `MAX_RETRY_LOOPS` loops, the actors
/// past them queued, and taken in turn (`Pending::after_attempt`). `close` waits for an attempt
/// under way; none starts after it.
async fn retry_delete(actors: WeakActors, key: ActorKey, d: Durable) {
    use crate::durable::NextRetry;
    /// The loop's place and its actor's claim, given back if the loop ends any other way than
    /// `Done` (a panic in the store drops the task).
    struct Claim {
        d: Durable,
        key: ActorKey,
        done: bool,
    }
    impl Drop for Claim {
        fn drop(&mut self) {
            if !self.done {
                self.d.pending.loop_lost(&self.d.key);
            }
        }
    }
    let mut c = Claim { d, key, done: false };
    let mut wait = RETRY_FIRST;
    loop {
        let mut going = c.d.pending.retry_after(wait).await;
        let (mut tried, mut deleted) = (false, false);
        if going {
            match actors.upgrade().map(|a| a.ticket(c.key.clone())) {
                Some(ticket) => {
                    let _held = ticket.await;
                    if let Some(_attempt) = c.d.pending.start_retry(&c.d.key) {
                        tried = true;
                        deleted = crate::durable::delete_dropped(&c.d).await.is_ok();
                    }
                }
                // The executor is gone.
                None => going = false,
            }
        }
        // At most `MAX_RETRY_LOOPS` loops: each goes on with its actor, or takes the next queued
        // one (at once after a delete the store took: the actor has waited in the queue).
        let moved = match c.d.pending.after_attempt(&c.key, &c.d.key, going) {
            NextRetry::Same => false,
            NextRetry::Other(next, store_key) => {
                c.d.key = store_key;
                c.key = next;
                true
            }
            NextRetry::Done => {
                c.done = true;
                return;
            }
        };
        wait = match (tried, deleted, moved) {
            (true, true, true) => Duration::ZERO,
            (true, true, false) => RETRY_FIRST,
            (true, false, _) => (wait * 2).clamp(RETRY_FIRST, RETRY_MAX),
            // No attempt (a call settled the actor meanwhile): the store was not asked, and the
            // wait stays as it was.
            (false, _, _) => wait.max(RETRY_FIRST),
        };
    }
}

impl Executor {
    /// Downloads and compiles (or loads from an artifact) a definition's module ahead of traffic,
    /// filling every cache tier. Returns the module's sha256.
    pub async fn precompile(&self, def: &Definition) -> Result<String, ExecError> {
        let p = self.prepare(def, "", &CallOptions::default())?;
        // A call in flight like any other: `close` cancels it and waits for it (review Z: it went
        // on waiting for a 12 MB component's optimized code for 19 s after `close`, holding up
        // the process's exit). A compile nobody waits for any more is dropped if it has not
        // started.
        let cancel = CancelFlag::new();
        let _inflight = self.enter_flight(&cancel)?;
        // Ahead of traffic: the optimized code, stored in the artifact tiers (a module whose
        // baseline code runs already waits for its optimized code).
        let load = self.modules.get_or_load_tiered(&p.key, p.kind, p.pinned.as_ref(), &self.source, false);
        let module = cancel.guard(load).await??;
        let module = cancel.guard(self.modules.optimized(module, p.kind)).await?;
        // With a `cacheDir`, it is left within its bound, this module's artifact kept: a process
        // that precompiles and exits (the CLI) would not see a background scan.
        let engine = crate::engine::engine(module.kind)?;
        // And in the artifact store, its write waited for (a compile's goes on in the background):
        // one that fails fails the precompile (it resolved, and a fresh process compiled again:
        // review AM1F). So does a `cacheDir` that did not take it, with or without a store.
        if self.modules.artifacts.is_enabled() {
            let save = self.modules.artifacts.save_missing_now(&module.digest, engine, &module.code, module.facts());
            cancel.guard(save).await??;
        }
        cancel.guard(self.modules.artifacts.settle_dir(&module.digest, engine)).await?;
        Ok(hex(&module.digest))
    }

    /// The sha256 of every cached module.
    pub fn cached_digests(&self) -> Vec<String> {
        self.modules.digests()
    }

    /// Forgets an actor's instance (and its state); true if there was one. A call running on it
    /// finishes first; calls queued behind it start fresh.
    /// With an actor store, its stored snapshot is deleted too, in the actor's line: calls made
    /// after this see no state.
    pub fn drop_actor(&self, def: &Definition, actor_id: &str) -> bool {
        // No actor is ever made under an id or a definition past the length limits: nothing to
        // drop, and nothing to remember should the store's delete fail.
        if def.validate().is_err() || crate::options::check_length("actorId", actor_id).is_err() {
            return false;
        }
        let key = ActorKey { def: def.key(), actor_id: actor_id.to_string() };
        let (had, persisted) = self.actors.remove(&key);
        // Closed, the executor has handed its actors over: the store's version may be another
        // worker's by now (review AA: a drop after close() deleted an acknowledged step of the
        // worker that took the actor over).
        if self.is_closed() {
            return had;
        }
        let Some(store) = &self.opts.actor_store else { return had };
        let d = Durable::new(store.clone(), &key, self.opts.persist, self.pending.clone(), self.loading.clone());
        let write = self.pending.start();
        let (mut ticket, superseded) = self.actors.drop_ticket(key.clone());
        // Polled here, so the deletion takes its place in line before any later call.
        let held = match threads::poll_once(&mut ticket) {
            Ok(Poll::Ready(held)) => Some(held),
            _ => None,
        };
        let log = self.opts.log.clone();
        let actors = self.actors.downgrade();
        let _ = threads::spawn(async move {
            let deleted = {
                let _write = write;
                let mut held = match held {
                    Some(h) => h,
                    None => ticket.await,
                };
                held.guard.instance = None;
                held.guard.shadow = None;
                // Another drop came right behind this one: it deletes what this one would (and
                // knows the version this one knew), so this one does not try. N drops queued
                // behind a stuck store held up `close()` N times the store's timeout.
                if superseded.load(std::sync::atomic::Ordering::Acquire) {
                    if held.guard.persisted.is_none() {
                        held.guard.persisted = persisted;
                    }
                    return;
                }
                // The version of what is dropped: the store's now, or, if it cannot say, the last
                // this executor loaded or stored. Only that version is deleted, now and when
                // retried: not what another worker stored since.
                let known = held.guard.persisted.take().or(persisted);
                let dropped = match d.store.version(&d.key).await {
                    // Nothing stored: nothing to delete, and nothing left of an earlier drop
                    // (review N: taken as "unknown", the next call deleted what another worker
                    // stored after the drop).
                    Ok(None) => {
                        d.pending.set_undeleted(&d.key, None);
                        return;
                    }
                    Ok(now) => now,
                    Err(_) => known,
                };
                let deleted = match &dropped {
                    Some(version) => d.store.delete_if(&d.key, version).await.map(|_| ()),
                    None => d.store.delete(&d.key).await,
                };
                // Not deleted: its next call deletes again first, and fails while it cannot.
                d.pending.set_undeleted(&d.key, deleted.is_err().then_some(dropped.clone()));
                deleted.err().map(|e| (e, dropped.is_some()))
            };
            let Some((e, known)) = deleted else { return };
            if let Some(sink) = log {
                let retried = if known { "retried in the background, and by its next call first" } else { "its next call deletes it first" };
                sink.warn(&format!("the stored state of a dropped actor was not deleted ({retried}): {e}"));
            }
            if known && d.pending.claim_retry(&key, &d.key) == crate::durable::RetryClaim::Loop {
                retry_delete(actors, key, d).await;
            }
        });
        true
    }

    /// Drops every cached module, or only those of the activity `name`, and forgets the
    /// process's refused compiles (`refused_compiles`).
    pub fn clear_cache(&self, name: Option<&str>) {
        crate::refused_compiles::refused().clear();
        self.modules.clear(name);
    }

    /// After `close()` and once drained: lets go of the embedder's callbacks (its blob store's
    /// `download`, `onLog`, host functions), which may hold the executor's own handle (review AE:
    /// such an executor was never collected, closed or not).
    pub fn release_embedder(&self) {
        if !self.is_closed() {
            return;
        }
        self.source.release();
        if let Some(log) = &self.opts.log {
            log.release();
        }
        if let Some(fns) = &self.opts.host_functions {
            fns.release();
        }
    }

    /// Closes the executor: calls in flight are cancelled, actors and cached modules released,
    /// and later calls fail with `CLOSED`. Idempotent.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.pending.stop_retries();
        let flags: Vec<CancelFlag> = self.inflight.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for f in flags {
            f.cancel();
        }
        self.actors.clear();
        self.modules.artifacts.dir_writes.close();
        self.modules.clear(None);
        if let Some(network) = &self.opts.network {
            network.close();
        }
    }

    /// Resolves once no call is in flight and no actor-store write is under way (nor one a call
    /// that ended left running), nor a `cacheDir` write off calls' paths (`DirWrites`, waited for
    /// at most `DIR_WRITES_WAIT`).
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.inflight.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                break;
            }
            notified.await;
        }
        self.pending.idle().await;
        self.modules.artifacts.dir_writes.idle_within(DIR_WRITES_WAIT).await;
        if let Some(store) = &self.opts.actor_store {
            store.settled().await;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> ExecutorStats {
        ExecutorStats {
            cache: self.modules.stats(),
            actors: self.actors.len(),
            pool_idle_resident_bytes: engine::pool_idle_resident_bytes(),
        }
    }
}

impl Drop for Executor {
    /// An executor that goes without `close()` stops its background retries too.
    fn drop(&mut self) {
        self.pending.stop_retries();
    }
}
