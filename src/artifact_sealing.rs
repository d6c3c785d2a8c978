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
use tokio::sync::{OnceCell, Semaphore};

use crate::digest::Digest;
use crate::error::ExecError;

/// Seals running at once in the process, at most: they are CPU and memory (a copy of the code
/// each), not waits, so more than the cores at once buys nothing.
pub(crate) const SEALS_AT_ONCE: usize = 2;

/// (the key's digest, the artifact's name, its flags) -> its seal under way.
type Id = (Digest, String, u8);
type Seal = Arc<OnceCell<Bytes>>;

static UNDER_WAY: LazyLock<Mutex<HashMap<Id, Seal>>> = LazyLock::new(Default::default);
static RUNNING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(SEALS_AT_ONCE)));

/// The artifact `name` of the code `serialize` serializes, sealed with `key` and `flags`: the
/// bytes of a seal of it under way if there is one, else of a seal run now (on a blocking thread,
/// when one of `SEALS_AT_ONCE` is free). The seal is noted (`artifact_trailers`).
pub(crate) async fn sealed<F>(key: Arc<[u8]>, name: &str, flags: u8, serialize: F) -> Result<Bytes, ExecError>
where
    F: FnOnce() -> wasmtime::Result<Vec<u8>> + Send + 'static,
{
    let id: Id = (crate::digest::sha256(&key), name.to_string(), flags);
    let seal = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner()).entry(id.clone()).or_default().clone();
    // Done, failed or dropped: the next seal of it is a seal of its own, unless callers wait on
    // this one still (one of them takes over a seal whose caller went).
    let leave = Leave { id, seal };
    let name = name.to_string();
    leave
        .seal
        .get_or_try_init(|| async move {
            let _running = RUNNING.clone().acquire_owned().await.map_err(ExecError::internal)?;
            tokio::task::spawn_blocking(move || {
                let sealed = crate::artifact_seal::seal(&key, &name, serialize()?, flags);
                crate::artifact_trailers::note_sealed(&key, &name, &sealed);
                Ok::<_, wasmtime::Error>(Bytes::from(sealed))
            })
            .await
            .map_err(ExecError::internal)?
            .map_err(ExecError::internal)
        })
        .await
        .cloned()
}

/// A caller's hold on a seal under way: the last to leave an unfinished one, or the first to
/// leave a finished one, takes it out of `UNDER_WAY`.
struct Leave {
    id: Id,
    seal: Seal,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut under_way = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
        // Held by the map and by this caller only, or done.
        let last = Arc::strong_count(&self.seal) <= 2 || self.seal.initialized();
        if last && under_way.get(&self.id).is_some_and(|s| Arc::ptr_eq(s, &self.seal)) {
            under_way.remove(&self.id);
        }
    }
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
        let same: Vec<_> = (0..8).map(|_| tokio::spawn(sealed(key.clone(), "sealing-test-same", 1, counted(&calls, &running, &most, vec![1, 2, 3])))).collect();
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
            apart.push(tokio::spawn(async move { sealed(k, &name, flags, serialize).await }));
        }
        for s in apart {
            s.await.expect("not cancelled").expect("sealed");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5, "the two callers of (other key, same name, flags 1) shared one");
        // (Other tests' seals may hold slots too: at most, not exactly.)
        assert!(most.load(Ordering::SeqCst) <= SEALS_AT_ONCE, "at most SEALS_AT_ONCE at once: {}", most.load(Ordering::SeqCst));
        assert!(!under_way(&key, "sealing-test-same", 1) && !under_way(&other, "sealing-test-same", 1), "nothing left under way");
        // A seal done is not reused: the next is a seal of its own.
        calls.store(0, Ordering::SeqCst);
        sealed(key.clone(), "sealing-test-same", 1, counted(&calls, &running, &most, vec![9])).await.expect("sealed");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_seal_fails_its_callers_and_a_caller_dropped_midway_leaves_the_seal_to_the_others() {
        let key: Arc<[u8]> = Arc::from(vec![9u8; 32]);
        let failed = sealed(key.clone(), "sealing-test-failed", 1, || Err(wasmtime::Error::msg("no code"))).await;
        assert_eq!(failed.map_err(|e| e.code()), Err("INTERNAL"));
        assert!(!under_way(&key, "sealing-test-failed", 1));
        // The first caller goes while its seal waits for a free slot; the second, waiting on the
        // same seal, runs it with its own code.
        let held = RUNNING.clone().acquire_many_owned(SEALS_AT_ONCE as u32).await.expect("all slots");
        let first = tokio::spawn(sealed(key.clone(), "sealing-test-dropped", 1, || Ok(vec![1])));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let second = tokio::spawn(sealed(key.clone(), "sealing-test-dropped", 1, || Ok(vec![2])));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        first.abort();
        assert!(first.await.is_err_and(|e| e.is_cancelled()));
        drop(held);
        let bytes = second.await.expect("not cancelled").expect("sealed by the second caller");
        assert_eq!(bytes[0], 2);
        assert!(!under_way(&key, "sealing-test-dropped", 1));
    }
}
