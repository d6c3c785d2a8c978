//! Seals of artifacts under way in the process. Sealing an artifact serializes the module's code
//! (a copy of it: 37 MB for the 12 MB component) and tags it (about 0.1 s of CPU for that one).
//! Executors that take the same code at once (`shared_code`) each wanted its artifact: sixteen
//! of them sealed it sixteen times together, the process peaking 1.1 GB over its size (review
//! AQ2 H3). Seals of one artifact (key, name, flags) under way are one, its bytes shared; and at
//! most `SEALS_AT_ONCE` seals run at once, whatever their artifacts (executors of other keys
//! each seal their own).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use tokio::sync::{watch, Notify, Semaphore};

use crate::digest::Digest;
use crate::error::ExecError;

/// Seals off calls' paths running at once in the process, at most: they are CPU and memory (a
/// copy of the code each), not waits, so more than the cores at once buys nothing. A seal a call
/// or `precompile` waits for does not wait for one of these (review AR1: a small module's first
/// call queued 2.4 s behind 32 executors' background seals of the 12 MB component).
pub(crate) const SEALS_AT_ONCE: usize = 2;

/// (the key's digest, the artifact's name, its flags) -> its seal under way.
type Id = (Digest, String, u8);
type Outcome = Option<Result<Bytes, String>>;

struct UnderWay {
    outcome: watch::Receiver<Outcome>,
    /// Told when a call or `precompile` waits for it: it runs then, slot or not.
    hurry: Arc<Notify>,
}

static UNDER_WAY: LazyLock<Mutex<HashMap<Id, UnderWay>>> = LazyLock::new(Default::default);
static RUNNING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(SEALS_AT_ONCE)));

/// Seals calls or `precompile`s wait for, running at once in the process, at most: slots of their
/// own, so they never queue behind seals off calls' paths, but bounded too (review AR1F: 32
/// precompiles at once sealed the 37 MB artifact 32 times together, +1.4 GB).
pub(crate) const URGENT_SEALS_AT_ONCE: usize = 2;

static URGENT: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(URGENT_SEALS_AT_ONCE)));

/// The artifact `name` of the code `serialize` serializes, sealed with `key` and `flags`: the
/// bytes of a seal of it under way if there is one, else of a seal begun now. A seal runs in a
/// task of its own, to its end whoever still waits (review AR1: a caller dropped midway let
/// its slot go while its seal ran on, and the next caller sealed again), on a blocking thread
/// that holds its slot; `urgent` (a call or `precompile` waits for it) takes an urgent slot,
/// and moves a seal under way that waits for a slot to those. The seal is noted
/// (`artifact_trailers`).
pub(crate) async fn sealed<F>(key: Arc<[u8]>, name: &str, flags: u8, urgent: bool, serialize: F) -> Result<Bytes, ExecError>
where
    F: FnOnce() -> wasmtime::Result<Vec<u8>> + Send + 'static,
{
    let id: Id = (crate::digest::sha256(&key), name.to_string(), flags);
    let mut outcome = {
        let mut under_way = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
        match under_way.get(&id) {
            Some(seal) => {
                if urgent {
                    seal.hurry.notify_one();
                }
                seal.outcome.clone()
            }
            None => {
                let (tx, rx) = watch::channel(None);
                let hurry = Arc::new(Notify::new());
                under_way.insert(id.clone(), UnderWay { outcome: rx.clone(), hurry: hurry.clone() });
                let name = name.to_string();
                drop(tokio::spawn(async move {
                    let slot = match urgent {
                        true => URGENT.clone().acquire_owned().await.ok(),
                        false => tokio::select! {
                            slot = RUNNING.clone().acquire_owned() => slot.ok(),
                            _ = hurry.notified() => URGENT.clone().acquire_owned().await.ok(),
                        },
                    };
                    let sealed = tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        let sealed = crate::artifact_seal::seal(&key, &name, serialize()?, flags);
                        crate::artifact_trailers::note_sealed(&key, &name, &sealed);
                        Ok::<_, wasmtime::Error>(Bytes::from(sealed))
                    })
                    .await;
                    let sealed = match sealed {
                        Ok(Ok(bytes)) => Ok(bytes),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    // Done: the next seal of it is a seal of its own.
                    let mut under_way = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
                    if under_way.get(&id).is_some_and(|s| s.outcome.same_channel(&tx.subscribe())) {
                        under_way.remove(&id);
                    }
                    drop(under_way);
                    let _ = tx.send(Some(sealed));
                }));
                rx
            }
        }
    };
    match outcome.wait_for(Option::is_some).await.map(|o| o.clone()) {
        Ok(Some(Ok(bytes))) => Ok(bytes),
        Ok(Some(Err(why))) => Err(ExecError::internal(why)),
        _ => Err(ExecError::internal("the seal ended without an outcome")),
    }
}

/// Every slot of seals off calls' paths, held (tests: such seals wait while it is).
#[cfg(test)]
pub(crate) async fn all_slots() -> tokio::sync::OwnedSemaphorePermit {
    RUNNING.clone().acquire_many_owned(SEALS_AT_ONCE as u32).await.expect("never closed")
}

/// Whether a seal of this artifact is under way (tests).
#[cfg(test)]
pub(crate) fn under_way(key: &[u8], name: &str, flags: u8) -> bool {
    UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&(crate::digest::sha256(key), name.to_string(), flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counted(calls: &Arc<AtomicUsize>, running: &Arc<AtomicUsize>, most: &Arc<AtomicUsize>, body: Vec<u8>) -> impl FnOnce() -> wasmtime::Result<Vec<u8>> + Send + 'static {
        let (calls, running, most) = (calls.clone(), running.clone(), most.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(body)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn seals_of_one_artifact_under_way_are_one_and_at_most_seals_at_once_run() {
        let (calls, running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let key: Arc<[u8]> = Arc::from(vec![7u8; 32]);
        // Eight callers of one artifact: one seal, the same bytes for all.
        let same: Vec<_> = (0..8).map(|_| tokio::spawn(sealed(key.clone(), "sealing-test-same", 1, false, counted(&calls, &running, &most, vec![1, 2, 3])))).collect();
        let mut sealed_all = Vec::new();
        for s in same {
            sealed_all.push(s.await.expect("not cancelled"));
        }
        let same = sealed_all;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one seal for eight callers");
        let first = same[0].as_ref().expect("sealed").clone();
        assert_eq!(&first[..3], &[1, 2, 3]);
        assert_eq!(crate::artifact_seal::unseal(&key, "sealing-test-same", &first).map(|(body, flags)| (body.to_vec(), flags)), Some((vec![1, 2, 3], 1)));
        assert!(same.iter().all(|s| s.as_ref().is_ok_and(|b| b.as_ptr() == first.as_ptr())), "the same bytes, not copies");
        assert_eq!(crate::artifact_trailers::noted(&key, "sealing-test-same").map(|(len, _)| len), Some(first.len() as u64));
        // Another flag, another key, another name: seals of their own; never more than
        // SEALS_AT_ONCE at once.
        calls.store(0, Ordering::SeqCst);
        most.store(0, Ordering::SeqCst);
        let other: Arc<[u8]> = Arc::from(vec![8u8; 32]);
        let mut apart = Vec::new();
        for i in 0..6u8 {
            let (k, name, flags) = match i % 3 {
                0 => (key.clone(), format!("sealing-test-apart-{i}"), 1),
                1 => (other.clone(), "sealing-test-same".to_string(), 1),
                _ => (key.clone(), "sealing-test-same".to_string(), 2 + i),
            };
            let serialize = counted(&calls, &running, &most, vec![i]);
            apart.push(tokio::spawn(async move { sealed(k, &name, flags, false, serialize).await }));
        }
        for s in apart {
            s.await.expect("not cancelled").expect("sealed");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5, "the two callers of (other key, same name, flags 1) shared one");
        // (Other tests' seals may hold slots too: at most, not exactly.)
        assert!(most.load(Ordering::SeqCst) <= SEALS_AT_ONCE, "at most SEALS_AT_ONCE at once: {}", most.load(Ordering::SeqCst));
        assert!(!under_way(&key, "sealing-test-same", 1) && !under_way(&other, "sealing-test-same", 1), "nothing left under way");
        // Calls' seals have slots of their own, bounded too (review AR1F).
        most.store(0, Ordering::SeqCst);
        let mut urgent = Vec::new();
        for i in 0..5u8 {
            let serialize = counted(&calls, &running, &most, vec![i]);
            let (k, name) = (key.clone(), format!("sealing-test-urgent-{i}"));
            urgent.push(tokio::spawn(async move { sealed(k, &name, 1, true, serialize).await }));
        }
        for s in urgent {
            s.await.expect("not cancelled").expect("sealed");
        }
        assert!(most.load(Ordering::SeqCst) <= URGENT_SEALS_AT_ONCE, "at most URGENT_SEALS_AT_ONCE at once: {}", most.load(Ordering::SeqCst));
        // A seal done is not reused: the next is a seal of its own.
        calls.store(0, Ordering::SeqCst);
        sealed(key.clone(), "sealing-test-same", 1, false, counted(&calls, &running, &most, vec![9])).await.expect("sealed");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_seal_fails_its_callers_a_dropped_caller_leaves_its_seal_running_and_urgent_seals_take_no_slot() {
        let key: Arc<[u8]> = Arc::from(vec![9u8; 32]);
        let failed = sealed(key.clone(), "sealing-test-failed", 1, false, || Err(wasmtime::Error::msg("no code"))).await;
        assert_eq!(failed.map_err(|e| e.code()), Err("INTERNAL"));
        assert!(!under_way(&key, "sealing-test-failed", 1));
        // With every slot taken: the first caller goes while its seal waits for one; the seal
        // runs once a slot is free, and the second caller, waiting on it, gets its bytes (review
        // AR1: it sealed again, and the slot was let go while the first seal still ran).
        let held = all_slots().await;
        let first = tokio::spawn(sealed(key.clone(), "sealing-test-dropped", 1, false, || Ok(vec![1])));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let second = tokio::spawn(sealed(key.clone(), "sealing-test-dropped", 1, false, || Ok(vec![2])));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        first.abort();
        assert!(first.await.is_err_and(|e| e.is_cancelled()));
        // A call's seal takes a slot of another kind (review AR1: a small module's first call waited behind
        // every background seal); one it waits for that was waiting for a slot runs now.
        let urgent = tokio::time::timeout(std::time::Duration::from_secs(5), sealed(key.clone(), "sealing-test-urgent", 1, true, || Ok(vec![3])));
        assert_eq!(urgent.await.expect("not queued").expect("sealed")[0], 3);
        let background = tokio::spawn(sealed(key.clone(), "sealing-test-hurried", 1, false, || Ok(vec![4])));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!background.is_finished(), "waits for a slot");
        let hurried = tokio::time::timeout(std::time::Duration::from_secs(5), sealed(key.clone(), "sealing-test-hurried", 1, true, || Ok(vec![5])));
        assert_eq!(hurried.await.expect("hurried").expect("sealed")[0], 4, "the seal under way, hurried");
        assert_eq!(background.await.expect("not cancelled").expect("sealed")[0], 4);
        assert!(!second.is_finished(), "still waiting for a slot");
        drop(held);
        let bytes = second.await.expect("not cancelled").expect("sealed");
        assert_eq!(bytes[0], 1, "the first caller's seal, run to its end");
        assert!(!under_way(&key, "sealing-test-dropped", 1));
    }
}
