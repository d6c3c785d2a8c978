//! Writes of artifacts to stores under way in the process, by store, name and trailer. Executors
//! that take one module at once each found the store without its artifact and each wrote it: four
//! 50 MB uploads of the 12 MB component's artifact where one would do (review AQ1F), and
//! executors joining one tier-up each wrote its optimized code (review AQ2 H4). A write of the
//! same bytes (same trailer: same key, name, flags and code) to the same store (`ObjectSource::
//! identity`) under way is waited for instead; if it failed (another executor's credentials may
//! not write), the waiter writes itself.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;

use crate::artifact_trailers::Trailer;
use crate::digest::Digest;
use crate::error::ExecError;
use crate::store::ObjectSource;

/// A write's outcome, once it ended: the store's error as text.
pub(crate) type Outcome = Option<Result<(), String>>;

type Id = (Digest, String);

/// (the store's identity, the artifact's name) -> the trailer of what is being written, its
/// outcome to come, and when it started.
static UNDER_WAY: LazyLock<Mutex<HashMap<Id, (Trailer, watch::Receiver<Outcome>, Instant)>>> = LazyLock::new(Default::default);

/// Whose turn it is to write an artifact to a store.
pub(crate) enum Turn {
    /// A write of the same bytes is under way: its outcome to come.
    Wait(watch::Receiver<Outcome>),
    /// This caller writes (no write of it is under way, or one of other bytes).
    Write(Writing),
}

/// A write this caller makes: its outcome sent to those who wait when it is `done`, or an error
/// if it is dropped first.
pub(crate) struct Writing {
    id: Id,
    sender: watch::Sender<Outcome>,
}

/// Whose turn it is to write `trailer`'s artifact `name` to `store`. A write of other bytes under
/// the name under way is taken over (the last write wins in the store too).
pub(crate) fn turn(store: &ObjectSource, name: &str, trailer: &Trailer) -> Turn {
    let id = (store.identity(), name.to_string());
    let mut under_way = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((t, rx, _)) = under_way.get(&id) {
        if t == trailer && rx.borrow().is_none() {
            return Turn::Wait(rx.clone());
        }
    }
    let (sender, rx) = watch::channel(None);
    under_way.insert(id.clone(), (*trailer, rx, Instant::now()));
    Turn::Write(Writing { id, sender })
}

/// The write under way of `trailer`'s artifact `name` to `store`, if any, and when it started.
pub(crate) fn under_way(store: &ObjectSource, name: &str, trailer: &Trailer) -> Option<(watch::Receiver<Outcome>, Instant)> {
    let under_way = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
    under_way
        .get(&(store.identity(), name.to_string()))
        .filter(|(t, rx, _)| t == trailer && rx.borrow().is_none())
        .map(|(_, rx, started)| (rx.clone(), *started))
}

impl Writing {
    pub(crate) fn done(self, outcome: &Result<(), ExecError>) {
        let _ = self.sender.send(Some(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string())));
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.sender.send_if_modified(|o| {
            let unsent = o.is_none();
            if unsent {
                *o = Some(Err("the write was dropped".to_string()));
            }
            unsent
        });
        let mut under_way = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
        if under_way.get(&self.id).is_some_and(|(_, rx, _)| rx.same_channel(&self.sender.subscribe())) {
            under_way.remove(&self.id);
        }
    }
}

/// What a write waited for may take past `store`'s `timeoutMs` (a write of the same timeout
/// tells its own error first).
const OUTCOME_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The outcome of a write waited for, at most `store`'s `timeoutMs` and `OUTCOME_GRACE` (`None`:
/// it did not end by then). Another executor's write may be bounded by a longer one.
pub(crate) async fn outcome(store: &ObjectSource, mut rx: watch::Receiver<Outcome>) -> Outcome {
    tokio::time::timeout(store.timeout() + OUTCOME_GRACE, rx.wait_for(Option::is_some)).await.ok()?.map(|o| o.clone()).ok().flatten()
}

fn failed(store: &ObjectSource, name: &str, outcome: Outcome) -> ExecError {
    let message = match outcome {
        Some(Err(why)) => why,
        _ => format!("the artifact store did not take the artifact within {} ms", store.timeout().as_millis()),
    };
    ExecError::BlobUnavailable { path: name.to_string(), message }
}

/// Writes `bytes`, the artifact `name` ending in `trailer`, to `store` on this turn: waits for
/// the write under way of the same bytes instead, and writes only if that one failed.
pub(crate) async fn put(store: &ObjectSource, name: &str, trailer: &Trailer, bytes: Bytes, turn: Turn) -> Result<(), ExecError> {
    let writing = match turn {
        Turn::Write(writing) => writing,
        Turn::Wait(rx) => match outcome(store, rx).await {
            Some(Ok(())) => return Ok(()),
            _ => match self::turn(store, name, trailer) {
                Turn::Write(writing) => writing,
                // Yet another began since (or the one waited for still goes on): its outcome is
                // this one's.
                Turn::Wait(rx) => {
                    return match outcome(store, rx).await {
                        Some(Ok(())) => Ok(()),
                        other => Err(failed(store, name, other)),
                    };
                }
            },
        },
    };
    let put = store.put(name, bytes).await;
    writing.done(&put);
    put
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: &str) -> ObjectSource {
        let options: Vec<(String, String)> = [("endpoint", endpoint), ("allow_http", "true"), ("access_key_id", "k"), ("secret_access_key", "s"), ("region", "us-east-1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ObjectSource::open("s3://bucket/artifacts", &options).expect("store")
    }

    #[test]
    fn a_write_of_the_same_bytes_to_the_same_store_under_way_is_waited_for() {
        let (a, b, other) = (s3("http://127.0.0.1:1"), s3("http://127.0.0.1:1"), s3("http://127.0.0.1:2"));
        let (t1, t2) = ([1u8; 41], [2u8; 41]);
        let Turn::Write(first) = turn(&a, "puts-test", &t1) else { panic!("nothing under way") };
        assert!(matches!(turn(&b, "puts-test", &t1), Turn::Wait(_)), "the same URL and options: the same store");
        assert!(under_way(&b, "puts-test", &t1).is_some());
        assert!(matches!(turn(&other, "puts-test", &t1), Turn::Write(_)), "another endpoint");
        assert!(matches!(turn(&a, "puts-test-2", &t1), Turn::Write(_)), "another name");
        let Turn::Wait(waiting) = turn(&a, "puts-test", &t1) else { panic!("under way") };
        first.done(&Ok(()));
        assert_eq!(*waiting.borrow(), Some(Ok(())), "told the outcome");
        assert!(under_way(&a, "puts-test", &t1).is_none(), "done: nothing under way");
        // Other bytes under the name take the turn over; dropped unfinished, its waiters are told.
        let Turn::Write(second) = turn(&a, "puts-test", &t1) else { panic!("done before") };
        let Turn::Write(third) = turn(&a, "puts-test", &t2) else { panic!("other bytes") };
        assert!(matches!(turn(&a, "puts-test", &t2), Turn::Wait(_)));
        let Turn::Wait(on_third) = turn(&a, "puts-test", &t2) else { panic!("under way") };
        drop(second);
        assert!(under_way(&a, "puts-test", &t2).is_some(), "the older write's end leaves the newer one");
        drop(third);
        assert!(matches!(&*on_third.borrow(), Some(Err(_))), "a write dropped is a failure to its waiters");
        assert!(under_way(&a, "puts-test", &t2).is_none());
        // Options as given, in order: a builder takes the last of two spellings of a key.
        let opts = |a: &str, b: &str| -> Vec<(String, String)> { vec![("endpoint".into(), a.into()), ("ENDPOINT".into(), b.into())] };
        let (x, y) = (opts("http://127.0.0.1:1", "http://127.0.0.1:2"), opts("http://127.0.0.1:2", "http://127.0.0.1:1"));
        let (x, y) = (ObjectSource::open("s3://bucket/artifacts", &x).expect("store"), ObjectSource::open("s3://bucket/artifacts", &y).expect("store"));
        assert_ne!(x.identity(), y.identity());
        // Memory stores of one URL are stores of their own.
        let (m1, m2) = (ObjectSource::open("memory://puts", &[]).expect("store"), ObjectSource::open("memory://puts", &[]).expect("store"));
        let _held = turn(&m1, "puts-test", &t1);
        assert!(matches!(turn(&m2, "puts-test", &t1), Turn::Write(_)));
    }
}
