//! A durable actor's store writes under way after their calls returned (`persist: 'async'`
//! snapshots, dropped actors' deletes), which `close()` waits for, and the background retries of
//! deletes that failed (`Pending`).

use std::sync::Arc;

use crate::actor_store::Version;
use crate::actors::ActorKey;

/// When a durable actor's snapshot is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persist {
    /// Before the call resolves: a resolved call is stored.
    #[default]
    Sync,
    /// After the call resolves, still in the actor's line (the next call waits for it): faster,
    /// but a crash between the two loses that step, and a failed write is only logged.
    Async,
}

/// Store writes still under way after their calls returned (a `persist: 'async'` snapshot, a
/// dropped actor's delete): an executor's `close()` waits for them, so a worker that exits once
/// it resolves keeps every step its calls acknowledged.
#[derive(Default)]
pub struct Pending {
    writes: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
    /// Store keys of dropped actors whose delete failed, with the version the dropped state had
    /// (if known): their next call deletes again before anything (and fails if it still cannot),
    /// so the state `dropActor` dropped never comes back, unless another worker has stored a
    /// newer one since (that is not deleted: review O saw a retried delete wipe another
    /// executor's acknowledged steps).
    undeleted: std::sync::Mutex<Undeleted>,
    /// Set when the executor closes or goes: background retries of failed deletes stop.
    stopped: std::sync::atomic::AtomicBool,
    stopping: tokio::sync::Notify,
    /// Told as writes start and end (Node's binding holds its event loop alive meanwhile).
    watch: std::sync::OnceLock<Arc<dyn WritesWatch>>,
}

/// Told when an executor's store writes under way go from none to some and back. What runs the
/// executor (Node's event loop) stays alive meanwhile, as `close()` waits for them: a process whose
/// main thread ended on its own once its calls resolved lost `persist: 'async'` steps they had
/// acknowledged (review BV2: 2 of 8 stores under load).
pub trait WritesWatch: Send + Sync {
    /// Writes went from none to some, or back to none (told from any thread): look again.
    fn changed(&self);
    /// Called on the thread calls settle on, while writes are under way (after a call settled
    /// there, a drop returned there): hold now, before that thread's own code goes on.
    fn hold_here(&self);
}

/// Dropped actors whose delete failed, by store key, and those being retried in the background.
#[derive(Default)]
struct Undeleted {
    /// The version the dropped state had (`None`: unknown).
    versions: std::collections::HashMap<String, Option<Version>>,
    /// Keys with a background retry loop, or queued for one: one per key, however many drops
    /// failed (review N: 100,000 failed drops of one actor ran 100,000 loops, +195 MiB).
    retrying: std::collections::HashSet<String>,
    /// Loops running (at most `MAX_RETRY_LOOPS`), and the keys waiting for one: a loop done
    /// with its key takes the next (100,000 actors dropped while the store failed each had a loop
    /// of its own, ~2 KiB each, and each retried against the store as it came back).
    loops: usize,
    queued: std::collections::VecDeque<(ActorKey, String)>,
}

/// Background retry loops of failed deletes an executor runs at once; more dropped actors wait
/// in a queue (a few hundred bytes each) for one of them.
pub const MAX_RETRY_LOOPS: usize = 64;

/// Which actor a retry loop tries next (`Pending::after_attempt`).
#[derive(Debug, PartialEq)]
pub enum NextRetry {
    Same,
    /// Another actor, and its store key.
    Other(ActorKey, String),
    /// None: the loop ends.
    Done,
}

/// What `Pending::claim_retry` decided for a dropped actor whose delete failed.
#[derive(Debug, PartialEq)]
pub enum RetryClaim {
    /// Start a loop for it.
    Loop,
    /// A loop will take it (queued), or it has one, or the retries are stopped.
    No,
}

/// One write in `Pending`, until dropped.
pub struct PendingWrite(Arc<Pending>);

impl Pending {
    pub fn start(self: &Arc<Self>) -> PendingWrite {
        if self.writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel) == 0 {
            if let Some(w) = self.watch.get() {
                w.changed();
            }
        }
        PendingWrite(self.clone())
    }

    /// Who is told as writes start and end (once; later ones are ignored).
    pub fn watch(&self, watch: Arc<dyn WritesWatch>) {
        let _ = self.watch.set(watch);
    }

    /// Whether any write is under way.
    pub fn writing(&self) -> bool {
        self.writes.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// On the thread calls settle on: the watch holds now if writes are under way.
    pub fn hold_here(&self) {
        if self.writing() {
            if let Some(w) = self.watch.get() {
                w.hold_here();
            }
        }
    }

    /// Records a dropped actor's stored state as not deleted (`Some(version it had)`), or as
    /// settled (`None`).
    pub fn set_undeleted(&self, key: &str, undeleted: Option<Option<Version>>) {
        let map = &mut self.lock_undeleted().versions;
        match undeleted {
            Some(version) => map.insert(key.to_string(), version),
            None => map.remove(key),
        };
    }

    /// The version a dropped actor's undeleted state had (`Some(None)`: unknown), if it was
    /// dropped and its stored state not yet deleted.
    pub fn undeleted(&self, key: &str) -> Option<Option<Version>> {
        self.lock_undeleted().versions.get(key).cloned()
    }

    fn lock_undeleted(&self) -> std::sync::MutexGuard<'_, Undeleted> {
        self.undeleted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims a background retry for `actor` (store key `key`): a loop of its own while fewer
    /// than `MAX_RETRY_LOOPS` run, else a place in the queue the loops take keys from. Nothing if
    /// it has one already (which goes on with the newer drop's version) or the retries are stopped.
    pub fn claim_retry(&self, actor: &ActorKey, key: &str) -> RetryClaim {
        let mut u = self.lock_undeleted();
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) || !u.retrying.insert(key.to_string()) {
            return RetryClaim::No;
        }
        if u.loops < MAX_RETRY_LOOPS {
            u.loops += 1;
            return RetryClaim::Loop;
        }
        u.queued.push_back((actor.clone(), key.to_string()));
        RetryClaim::No
    }

    /// After a retry loop's attempt on `actor` (store key `key`; `going`: the retries were not
    /// stopped before it): which actor the loop tries next. While the actor's state is still
    /// undeleted with a known version, itself, unless others wait in the queue: it then goes to
    /// the queue's back and the loop takes the next, so actors whose deletes keep failing (a key
    /// the store refuses) cannot hold every loop while the rest could be deleted. Otherwise the
    /// next queued actor still undeleted with a known version (others leave the queue). `Done`,
    /// and the loop ends, when there is none or the retries are stopped (the queue is emptied).
    pub fn after_attempt(&self, actor: &ActorKey, key: &str, going: bool) -> NextRetry {
        let mut u = self.lock_undeleted();
        let stopped = !going || self.stopped.load(std::sync::atomic::Ordering::Acquire);
        if !stopped && matches!(u.versions.get(key), Some(Some(_))) {
            if u.queued.is_empty() {
                return NextRetry::Same;
            }
            u.queued.push_back((actor.clone(), key.to_string()));
        } else {
            u.retrying.remove(key);
        }
        while let Some((next, next_key)) = u.queued.pop_front() {
            if !stopped && matches!(u.versions.get(&next_key), Some(Some(_))) {
                return if next_key == key { NextRetry::Same } else { NextRetry::Other(next, next_key) };
            }
            u.retrying.remove(&next_key);
        }
        u.loops = u.loops.saturating_sub(1);
        NextRetry::Done
    }

    /// Loops running and actors queued for one (for tests and stats).
    pub fn retries(&self) -> (usize, usize) {
        let u = self.lock_undeleted();
        (u.loops, u.queued.len())
    }

    pub fn is_undeleted(&self, key: &str) -> bool {
        self.undeleted(key).is_some()
    }

    /// Stops the background retries of failed deletes (the executor closed or went); the actors
    /// queued for a loop leave the queue at once.
    pub fn stop_retries(&self) {
        // Under the lock `start_retry` holds: an attempt is either counted before this (and
        // `close` waits for it) or never starts.
        let mut u = self.lock_undeleted();
        self.stopped.store(true, std::sync::atomic::Ordering::Release);
        let queued = std::mem::take(&mut u.queued);
        for (_, key) in queued {
            u.retrying.remove(&key);
        }
        self.stopping.notify_waiters();
    }

    /// A retry loop that ended without `after_attempt` saying so (its task panicked: a store's
    /// bug): its actor's claim and its place among the loops are given back, so later failed
    /// drops still get loops (the actors queued meanwhile wait for the next loop to start).
    pub fn loop_lost(&self, key: &str) {
        let mut u = self.lock_undeleted();
        u.retrying.remove(key);
        u.loops = u.loops.saturating_sub(1);
    }

    /// A retry's attempt on `key`, counted as a write under way (`close` waits for it); none
    /// once the retries are stopped, the key is settled, or its dropped version is unknown (only
    /// a call's load deletes that).
    pub fn start_retry(self: &Arc<Self>, key: &str) -> Option<PendingWrite> {
        let undeleted = self.lock_undeleted();
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) || !matches!(undeleted.versions.get(key), Some(Some(_))) {
            return None;
        }
        Some(self.start())
    }

    /// Waits `wait`; false (at once) if the retries are stopped before or meanwhile.
    pub async fn retry_after(&self, wait: std::time::Duration) -> bool {
        let stopping = self.stopping.notified();
        if self.stopped.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => !self.stopped.load(std::sync::atomic::Ordering::Acquire),
            _ = stopping => false,
        }
    }

    /// Resolves once no write is under way.
    pub async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.writes.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if self.0.writes.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            if let Some(w) = self.0.watch.get() {
                w.changed();
            }
        }
        self.0.done.notify_waiters();
    }
}
