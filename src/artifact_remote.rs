//! `ArtifactCache`'s artifact store tier: an executor's use of its store (whether it stalls, its
//! writes under way, what its lookups may read before checking, names marked unread or forged), a
//! lookup there, and whether the store holds an artifact.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::Engine;

use crate::artifact_seal::{deserialize, Checked};
use crate::artifacts::ArtifactCache;
use crate::digest::Digest;
use crate::error::ExecError;
use crate::modules::Compiled;
use crate::store::ObjectSource;

/// How long lookups skip an artifact store after it neither answered one nor sent a byte of it
/// for `REMOTE_ANSWER_WAIT`: a store that stalls costs a cold call the compile it would cost
/// without the store, not `loadTimeoutMs` on top (review AM1: 60 s for a call whose compile took
/// milliseconds). A store that sends a large artifact slowly is not skipped (a tenant's own
/// large module would otherwise turn the store off for everyone's: review AM1F).
pub const REMOTE_STALL_SKIP: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest a store may go without answering a lookup or an ask (its response's head) or
/// sending a byte of its body, unless half of `loadTimeoutMs` is shorter: past it, it stalls.
pub const REMOTE_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes to the artifact store in flight for one executor, each holding its sealed artifact,
/// after the calls that compiled them went on; past it, a compile's artifact is not written to
/// the store (a later compile writes it). Per executor: one whose store stalls does not stop
/// another's writes (review AM1F).
pub(crate) const REMOTE_PUTS: usize = 4;

/// An executor's use of its artifact store, shared by the clones of its `ArtifactCache`.
#[derive(Clone)]
pub struct RemoteState {
    /// Until when lookups skip the store.
    pub(crate) stalled: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Modules whose lookup ran out of time while the store was sending (a large artifact on a
    /// slow store), and until when their lookups skip it: the next calls of that module compile,
    /// others' still look (review AMF2: each cold call paid two lookups' time, every time).
    pub(crate) slow: Arc<std::sync::Mutex<HashMap<Digest, std::time::Instant>>>,
    pub(crate) puts: Arc<tokio::sync::Semaphore>,
    /// What this executor's lookups have received from the store, all together: a store is
    /// judged on that, not on each lookup's share of it (review AN2: six lookups sharing a
    /// 300 KB/s link each fell under the bound, and a working store was turned off).
    pub(crate) received: Arc<std::sync::atomic::AtomicU64>,
    /// What this executor's lookups may hold before their artifacts' tags are checked: its own
    /// (review AO1: with one budget for the process, a store that held it made every other
    /// executor's `cacheDir` loads compile instead; planting junk under this executor's names,
    /// which its store's writer can do anyway, costs what holding this costs).
    pub(crate) unchecked: crate::unchecked_artifacts::UncheckedBytes,
    /// What all executors' lookups may hold together (`unchecked_artifacts::store_reads`), and
    /// this executor counted among them (by `open`, with a store).
    pub(crate) all_stores: crate::unchecked_artifacts::UncheckedBytes,
    pub(crate) sharing: Option<Arc<crate::unchecked_artifacts::Registered>>,
    /// Artifacts the store has (it answered) that a lookup did not read, for want of room: the
    /// compile that follows does not write them again (review AO1: each refused read cost the
    /// store a second upload of what it held).
    pub(crate) unread: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Artifacts whose lookup found no valid tag: the store lacks them, whatever it says it has
    /// (review AP1: after a key rotation, precompile and code taken from another executor took
    /// the old key's artifact, of the same size, for it, and wrote nothing).
    pub(crate) forged: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Default for RemoteState {
    fn default() -> Self {
        RemoteState {
            stalled: Default::default(),
            slow: Default::default(),
            puts: Arc::new(tokio::sync::Semaphore::new(REMOTE_PUTS)),
            received: Default::default(),
            unchecked: crate::unchecked_artifacts::UncheckedBytes::with_max(crate::unchecked_artifacts::MAX_UNCHECKED_BYTES),
            all_stores: crate::unchecked_artifacts::store_reads().clone(),
            sharing: None,
            unread: Default::default(),
            forged: Default::default(),
        }
    }
}

/// Modules remembered as slow to look up, at most (past it, the oldest marks go).
const MAX_SLOW: usize = 256;
/// Bytes a second below which a store counts as stalled, over each `answer_wait` of a lookup,
/// all of the executor's lookups together (review AN1: a byte every few seconds kept a store
/// "sending"): at this pace a 4 MiB artifact takes a minute.
const MIN_SENDING_RATE: u64 = 64 * 1024;

impl RemoteState {
    pub(crate) fn skipping(&self) -> bool {
        self.stalled.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| std::time::Instant::now() < until)
    }

    pub(crate) fn stalls(&self) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now() + REMOTE_STALL_SKIP);
    }

    pub(crate) fn skipping_module(&self, digest: &Digest) -> bool {
        let now = std::time::Instant::now();
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        slow.retain(|_, until| *until > now);
        slow.contains_key(digest)
    }

    pub(crate) fn slow_module(&self, digest: &Digest) {
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        if slow.len() >= MAX_SLOW {
            if let Some(oldest) = slow.iter().min_by_key(|(_, until)| **until).map(|(d, _)| *d) {
                slow.remove(&oldest);
            }
        }
        slow.insert(*digest, std::time::Instant::now() + REMOTE_STALL_SKIP);
    }

    pub(crate) fn unread(&self, name: &str) {
        mark(&self.unread, name);
    }

    /// Whether the store has this artifact unread (and so needs no write of it), forgotten now.
    pub(crate) fn take_unread(&self, name: &str) -> bool {
        take_mark(&self.unread, name)
    }

    pub(crate) fn forged(&self, name: &str) {
        mark(&self.forged, name);
    }

    /// Whether a lookup found what the store has under this name no artifact (forged, or of
    /// another key), forgotten now.
    pub(crate) fn take_forged(&self, name: &str) -> bool {
        take_mark(&self.forged, name)
    }
}

impl ArtifactCache {
    /// The artifact `name` from the store, its lookup given up at `until` at the latest.
    pub(crate) async fn from_store(&self, digest: &Digest, engine: &Engine, key: Arc<[u8]>, name: String, until: tokio::time::Instant) -> Option<(Compiled, Checked)> {
        let remote = self.remote.as_ref()?;
        // Bounded: a planted giant (a sparse file in a file:// store) is no artifact; and its
        // body is read only if this executor's unchecked bytes have room for it, and the
        // process's for all stores.
        let progress = crate::store::Progress::default();
        let (unchecked, all_stores) = (self.remote_state.unchecked.clone(), self.remote_state.all_stores.clone());
        // The size asked for (a `file://` store's is not in `progress`: review AO2).
        let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let asking = asked.clone();
        let admit = move |n| {
            asking.store(n, std::sync::atomic::Ordering::Release);
            let mine = unchecked.take(n)?;
            // Within this executor's share of what all hold (taken first: it counts this read).
            if unchecked.held() > all_stores.share() {
                return None;
            }
            Some((mine, all_stores.take(n)?))
        };
        let bounds = crate::store::Bounds { max_bytes: crate::sealed_copy::MAX_ARTIFACT_BYTES, max_holes: Some(crate::sealed_copy::MAX_ARTIFACT_HOLES) };
        let get = remote.get_admitted(&name, bounds, &progress, admit);
        let store_received = self.remote_state.received.clone();
        let started = tokio::time::Instant::now();
        let wait = self.answer_wait();
        let answer = async {
            // A store that neither answers nor sends `MIN_SENDING_RATE` for `wait` has all but
            // stopped; one that is sending takes until `until` (review AM1F: a store whose bodies
            // stalled held every cold call twice loadTimeoutMs, 120 s by default; review AN1F: one
            // that sent fast, then a byte every few seconds, passed for sending).
            use std::sync::atomic::Ordering;
            tokio::pin!(get);
            // This lookup's bytes told to the executor's count so far; that count at the window's start.
            let (mut told, mut since) = (0, started);
            let mut seen = store_received.load(Ordering::Acquire);
            loop {
                let tick = (tokio::time::Instant::now() + wait / 4).min(until);
                tokio::select! {
                    got = &mut get => {
                        store_received.fetch_add(progress.received.load(Ordering::Acquire) - told, Ordering::AcqRel);
                        return Ok(got);
                    }
                    () = tokio::time::sleep_until(tick) => {}
                }
                let mine = progress.received.load(Ordering::Acquire);
                store_received.fetch_add(mine - told, Ordering::AcqRel);
                told = mine;
                let now = tokio::time::Instant::now();
                let out_of_time = now >= until;
                // Each `wait`, and the last part of one when the time is up (a part too short to
                // judge a store sending in large parts is not judged).
                if now >= since + wait || (out_of_time && now >= since + wait / 4) {
                    let total = store_received.load(Ordering::Acquire);
                    let sent = total.saturating_sub(seen);
                    if (sent as f64) < MIN_SENDING_RATE as f64 * (now - since).as_secs_f64() {
                        return Err(true);
                    }
                    (seen, since) = (total, now);
                    // At the pace this lookup has had, its artifact cannot all come in time: given
                    // up on now, as a large artifact, not at the deadline (review AN2: a store
                    // sending just over the bound held every new module's cold call loadTimeoutMs).
                    let size = progress.size.load(Ordering::Acquire);
                    let pace = mine as f64 / (now - started).as_secs_f64().max(f64::EPSILON);
                    if size > mine && pace > 0.0 && (size - mine) as f64 / pace > (until - now).as_secs_f64() {
                        return Err(false);
                    }
                }
                if out_of_time {
                    return Err(false);
                }
            }
        };
        let (bytes, admitted) = match answer.await {
            Ok(Ok(Some(read))) => read,
            // No room to read it now: compiled, the store not judged for it, nor written again
            // if room would come (review AO1F: marked whatever its size, an object larger than
            // the whole budget, planted once, kept the compiles from ever writing the artifact).
            Ok(Ok(None)) => {
                if asked.load(std::sync::atomic::Ordering::Acquire) <= self.remote_state.unchecked.max() {
                    self.remote_state.unread(&name);
                }
                return None;
            }
            // Not there (or too large to be an artifact): compiled.
            Ok(Err(ExecError::BlobNotFound { .. } | ExecError::CompileLimit(_))) => return None,
            // A store that fails (500s, each retried by the client: a second of every cold call,
            // review AMF2) is skipped as one that stalls.
            Ok(Err(_)) | Err(true) => {
                self.remote_state.stalls();
                return None;
            }
            // Out of time while the store kept sending: a large artifact (that module's lookups
            // skip the store for a while).
            Err(false) => {
                self.remote_state.slow_module(digest);
                return None;
            }
        };
        // Taken over without a copy where the download is the bytes' only owner.
        let Some((c, checked)) = deserialize(engine, key, name.clone(), Vec::from(bytes)).await else {
            self.remote_state.forged(&name);
            return None;
        };
        drop(admitted);
        if let Some(dir) = &self.dir {
            // The bytes just checked: no second copy of the download.
            let _ = self.write_to_dir(dir, name, checked.clone()).await;
        }
        Some((c, Checked::Bytes(checked)))
    }

    /// Whether the store holds the artifact of `len` bytes ending in `trailer`, as far as asking
    /// tells without reading it: no lookup of this executor found its object forged, and the
    /// object's last bytes are that trailer (flags, tag, magic: review AP1F, an artifact of the
    /// previous key, after a rotation, has the same size and another tag), read alone with one
    /// ranged request whose answer also tells the object's size (review AQ1: a `HEAD` first made
    /// two round trips within `answer_wait`). None: the store did not answer within
    /// `answer_wait`. A store that answers with an error, or ignores the range, lacks it.
    pub(crate) async fn store_holds(&self, remote: &ObjectSource, name: &str, len: u64, trailer: &[u8]) -> Option<bool> {
        if self.remote_state.take_forged(name) {
            return Some(false);
        }
        match tokio::time::timeout(self.answer_wait(), remote.tail(name, len, trailer.len())).await {
            Ok(tail) => Some(tail.ok().flatten().is_some_and(|tail| tail == trailer)),
            Err(_) => None,
        }
    }

    /// The longest the store may take to answer or go without sending: `REMOTE_ANSWER_WAIT`, or
    /// half of `loadTimeoutMs` if shorter.
    pub(crate) fn answer_wait(&self) -> std::time::Duration {
        self.fetch_timeout.map_or(REMOTE_ANSWER_WAIT, |t| (t / 2).min(REMOTE_ANSWER_WAIT))
    }
}

/// Adds `name` to a set of marked artifact names (at most `MAX_SLOW` of them: past that the set
/// starts over, and a mark forgotten costs a write or a lookup at most).
fn mark(set: &std::sync::Mutex<std::collections::HashSet<String>>, name: &str) {
    let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
    if set.len() >= MAX_SLOW {
        set.clear();
    }
    set.insert(name.to_string());
}

/// Whether `name` was marked in the set, forgotten now.
fn take_mark(set: &std::sync::Mutex<std::collections::HashSet<String>>, name: &str) -> bool {
    set.lock().unwrap_or_else(|p| p.into_inner()).remove(name)
}
