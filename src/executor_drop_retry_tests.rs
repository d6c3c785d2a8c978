//! The executor's tests of dropping a durable actor whose store fails the delete: the dropped
//! state never comes back, the delete is retried (on the next call, and in the background with a
//! bounded number of loops) and a retry never removes what another worker stored after the drop.
use super::*;
use crate::actor_store::{self, ActorStore, Loading, Saved, Version};
use crate::store::{BoxFuture, MemorySource, ObjectSource};
use crate::test_guests as g;
use std::sync::atomic::AtomicBool;
use super::upkeep::RETRY_FIRST;

fn call_options(actor: &str, transactional: bool, cancel: CancelFlag) -> CallOptions {
    CallOptions { actor_id: Some(actor.into()), transactional: Some(transactional), cancel, ..Default::default() }
}

/// Starts a call here that must leave this thread (it waits, or grows its memory), cancels it
/// exactly then (`make_done` runs only when it leaves), and returns its error's code.

/// An actor store whose deletes fail while `fail` is set.
struct DeleteFails {
    inner: Arc<dyn ActorStore>,
    fail: AtomicBool,
    /// Deletes asked for, failed or not.
    deletes: std::sync::atomic::AtomicUsize,
    /// While set, `version` fails too (the store cannot say what it holds).
    versions_fail: AtomicBool,
    /// While set, a delete takes 300 ms before it answers; `ended` counts those answered.
    slow: AtomicBool,
    ended: std::sync::atomic::AtomicUsize,
    /// Keys whose deletes always fail (the store refuses them).
    refused: std::sync::Mutex<std::collections::HashSet<String>>,
    /// While set, a delete panics (a store's bug).
    panics: AtomicBool,
}

impl DeleteFails {
    fn new(inner: Arc<dyn ActorStore>) -> Arc<DeleteFails> {
        Arc::new(DeleteFails {
            inner,
            fail: AtomicBool::new(false),
            deletes: Default::default(),
            versions_fail: AtomicBool::new(false),
            slow: AtomicBool::new(false),
            ended: Default::default(),
            refused: Default::default(),
            panics: AtomicBool::new(false),
        })
    }
}

impl ActorStore for DeleteFails {
    fn load_gated<'a>(&'a self, key: &'a str, max_bytes: u64, loading: &'a Loading) -> BoxFuture<'a, Result<Option<actor_store::Loaded>, ExecError>> {
        self.inner.load_gated(key, max_bytes, loading)
    }
    fn version<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Version>, ExecError>> {
        if self.versions_fail.load(Ordering::SeqCst) {
            return Box::pin(async { Err(ExecError::BlobUnavailable { path: "actors".into(), message: "the store is down".into() }) });
        }
        self.inner.version(key)
    }
    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>> {
        self.inner.save(key, bytes, expected)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.slow.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                self.ended.fetch_add(1, Ordering::SeqCst);
            }
            assert!(!self.panics.load(Ordering::SeqCst), "a store's bug");
            if self.fail.load(Ordering::SeqCst) || self.refused.lock().expect("refused").contains(key) {
                return Err(ExecError::BlobUnavailable { path: "actors".into(), message: "the store is down".into() });
            }
            self.inner.delete(key).await
        })
    }
    fn describe(&self) -> String {
        "delete-fails".into()
    }
}

/// Executor A over a store whose deletes (and version reads) can be made to fail, and B over
/// the same store as it is; the counter guest as actor "a".
struct TwoWorkers {
    inner: Arc<dyn ActorStore>,
    failing: Arc<DeleteFails>,
    a: Arc<Executor>,
    b: Arc<Executor>,
    d: Definition,
    key: String,
}

impl TwoWorkers {
    fn new(url: &str) -> TwoWorkers {
        let inner = actor_store::open(Arc::new(ObjectSource::open(url, &[]).expect("store"))).expect("conditional");
        let failing = DeleteFails::new(inner.clone());
        let source = Arc::new(MemorySource::new());
        source.put("counter.wasm", g::counter());
        let a = Arc::new(Executor::new(source.clone(), ExecutorOptions { actor_store: Some(failing.clone()), ..Default::default() }).expect("executor"));
        let b = Arc::new(Executor::new(source, ExecutorOptions { actor_store: Some(inner.clone()), ..Default::default() }).expect("executor"));
        let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
        let key = actor_store::actor_key(&d.key(), "a");
        TwoWorkers { inner, failing, a, b, d, key }
    }

    async fn call(&self, ex: &Arc<Executor>) -> Result<CallOutput, ExecError> {
        ex.execute(&self.d, "{}".into(), call_options("a", false, CancelFlag::new())).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_actor_whose_delete_failed_never_comes_back_from_the_store() {
    // Review K: dropActor said true, its delete failed (only logged), and the next call loaded the
    // stored state again: the dropped count went on.
    let inner = actor_store::open(Arc::new(ObjectSource::open("memory://delete-fails", &[]).expect("store"))).expect("conditional");
    let store = DeleteFails::new(inner);
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let ex = Arc::new(Executor::new(source, ExecutorOptions { actor_store: Some(store.clone()), ..Default::default() }).expect("executor"));
    let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
    let call = || ex.execute(&d, "{}".into(), call_options("a", false, CancelFlag::new()));
    for n in ["1", "2", "3"] {
        assert_eq!(call().await.expect("counts").output, n);
    }
    store.fail.store(true, Ordering::SeqCst);
    assert!(ex.drop_actor(&d, "a"));
    ex.drained().await;
    // The store still holds 3; the next call deletes again first and fails while it cannot.
    assert_eq!(call().await.expect_err("the delete still fails").code(), "BLOB_UNAVAILABLE");
    assert!(ex.snapshot_actor(&d, "a").await.is_err(), "no state to snapshot");
    store.fail.store(false, Ordering::SeqCst);
    let fresh = call().await.expect("starts fresh");
    assert_eq!((fresh.output.as_str(), fresh.actor_created), ("1", true));
    assert_eq!(call().await.expect("counts").output, "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_delete_leaves_what_another_worker_stored_after_the_drop() {
    // Review O: executor A's drop failed; B went on from the stored state (3, 4) and A's next
    // call's retried delete removed B's acknowledged steps.
    let w = TwoWorkers::new("memory://retried-delete");
    let (failing, a, b, d) = (&w.failing, &w.a, &w.b, &w.d);
    assert_eq!(w.call(a).await.expect("counts").output, "1");
    assert_eq!(w.call(a).await.expect("counts").output, "2");
    failing.fail.store(true, Ordering::SeqCst);
    assert!(a.drop_actor(d, "a"));
    a.drained().await;
    failing.fail.store(false, Ordering::SeqCst);
    // B stores newer steps.
    assert_eq!(w.call(b).await.expect("counts").output, "3");
    assert_eq!(w.call(b).await.expect("counts").output, "4");
    // A's next call finds a newer state than it dropped: that is the actor's state now.
    assert_eq!(w.call(a).await.expect("goes on from B's").output, "5");
}

/// Waits (up to 10 s) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "{what}: not within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_delete_is_retried_in_the_background_until_the_store_takes_it() {
    // Review K6: a dropped actor never called again kept its state in the store, and its entry
    // in the executor's memory, for good, once its delete had failed.
    let inner = actor_store::open(Arc::new(ObjectSource::open("memory://retry-delete", &[]).expect("store"))).expect("conditional");
    let store = DeleteFails::new(inner.clone());
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let ex = Arc::new(Executor::new(source, ExecutorOptions { actor_store: Some(store.clone()), ..Default::default() }).expect("executor"));
    let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
    let key = actor_store::actor_key(&d.key(), "a");
    for n in ["1", "2"] {
        assert_eq!(ex.execute(&d, "{}".into(), call_options("a", false, CancelFlag::new())).await.expect("counts").output, n);
    }
    store.fail.store(true, Ordering::SeqCst);
    assert!(ex.drop_actor(&d, "a"));
    ex.drained().await;
    assert!(ex.pending.is_undeleted(&key));
    // Retried while the store still fails (the first retry a second after the drop).
    let tried = store.deletes.load(Ordering::SeqCst);
    eventually("a retry", || store.deletes.load(Ordering::SeqCst) > tried).await;
    assert!(inner.version(&key).await.expect("version").is_some(), "still stored: the store fails");
    assert!(ex.pending.is_undeleted(&key));
    // The store recovers: with no call at all, the state goes, and so does the entry.
    store.fail.store(false, Ordering::SeqCst);
    eventually("the retried delete", || !ex.pending.is_undeleted(&key)).await;
    assert_eq!(inner.version(&key).await.expect("version"), None, "deleted from the store");
    let fresh = ex.execute(&d, "{}".into(), call_options("a", false, CancelFlag::new())).await.expect("starts fresh");
    assert_eq!((fresh.output.as_str(), fresh.actor_created), ("1", true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_retry_leaves_what_another_worker_stored_after_the_drop() {
    // As review O's case, with the retry instead of A's next call: B's steps stay.
    let w = TwoWorkers::new("memory://retry-newer");
    let (inner, failing, a, b, d, key) = (&w.inner, &w.failing, &w.a, &w.b, &w.d, &w.key);
    assert_eq!(w.call(a).await.expect("counts").output, "1");
    failing.fail.store(true, Ordering::SeqCst);
    assert!(a.drop_actor(d, "a"));
    a.drained().await;
    assert_eq!(w.call(b).await.expect("counts").output, "2");
    failing.fail.store(false, Ordering::SeqCst);
    eventually("the retry", || !a.pending.is_undeleted(&key)).await;
    assert!(inner.version(&key).await.expect("version").is_some(), "B's state stays");
    assert_eq!(w.call(a).await.expect("goes on from B's").output, "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_store_cannot_say_what_was_dropped_the_retry_deletes_only_what_this_executor_knew() {
    // Review M: the drop's version read failed too, so the retry deleted whatever was stored:
    // another executor's acknowledged state, restored after the drop. It now deletes only the
    // version this executor last stored, and leaves B's.
    let w = TwoWorkers::new("memory://retry-unknown");
    let (inner, failing, a, b, d, key) = (&w.inner, &w.failing, &w.a, &w.b, &w.d, &w.key);
    assert_eq!(w.call(a).await.expect("counts").output, "1");
    failing.fail.store(true, Ordering::SeqCst);
    failing.versions_fail.store(true, Ordering::SeqCst);
    assert!(a.drop_actor(d, "a"));
    a.drained().await;
    // B stores a state of its own (a restore of A's snapshot, then a step: "2").
    assert_eq!(w.call(b).await.expect("counts").output, "2");
    failing.fail.store(false, Ordering::SeqCst);
    failing.versions_fail.store(false, Ordering::SeqCst);
    eventually("the retry", || !a.pending.is_undeleted(&key)).await;
    assert!(inner.version(&key).await.expect("version").is_some(), "B's state stays");
    assert_eq!(w.call(b).await.expect("counts").output, "3");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drop_whose_version_nobody_knows_is_not_retried_in_the_background() {
    // A fresh executor drops an actor it never loaded while the store can say nothing: what it
    // dropped is unknown, so only its next call deletes (it asked for the actor after dropping it).
    let inner = actor_store::open(Arc::new(ObjectSource::open("memory://retry-nobody-knows", &[]).expect("store"))).expect("conditional");
    let failing = DeleteFails::new(inner.clone());
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let b = Arc::new(Executor::new(source.clone(), ExecutorOptions { actor_store: Some(inner.clone()), ..Default::default() }).expect("executor"));
    let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
    let key = actor_store::actor_key(&d.key(), "a");
    assert_eq!(b.execute(&d, "{}".into(), call_options("a", false, CancelFlag::new())).await.expect("counts").output, "1");
    let a = Arc::new(Executor::new(source, ExecutorOptions { actor_store: Some(failing.clone()), ..Default::default() }).expect("executor"));
    failing.fail.store(true, Ordering::SeqCst);
    failing.versions_fail.store(true, Ordering::SeqCst);
    assert!(a.drop_actor(&d, "a"), "its stored state is deleted");
    a.drained().await;
    assert!(a.pending.is_undeleted(&key));
    failing.fail.store(false, Ordering::SeqCst);
    failing.versions_fail.store(false, Ordering::SeqCst);
    let tried = failing.deletes.load(Ordering::SeqCst);
    tokio::time::sleep(RETRY_FIRST * 2).await;
    assert_eq!(failing.deletes.load(Ordering::SeqCst), tried, "no background retry");
    assert!(inner.version(&key).await.expect("version").is_some());
    let fresh = a.execute(&d, "{}".into(), call_options("a", false, CancelFlag::new())).await.expect("starts fresh");
    assert_eq!((fresh.output.as_str(), fresh.actor_created), ("1", true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drop_of_nothing_stored_leaves_what_another_worker_stores_later() {
    // Review N: the store held nothing at the drop and the (needless) delete failed; taken as
    // "what was dropped is unknown", A's next call deleted B's acknowledged state stored since.
    let w = TwoWorkers::new("memory://drop-nothing");
    w.failing.fail.store(true, Ordering::SeqCst);
    assert!(w.a.drop_actor(&w.d, "a"));
    w.a.drained().await;
    assert!(!w.a.pending.is_undeleted(&w.key), "nothing was stored: nothing to delete");
    w.failing.fail.store(false, Ordering::SeqCst);
    assert_eq!(w.call(&w.b).await.expect("counts").output, "1");
    assert_eq!(w.call(&w.a).await.expect("goes on from B's").output, "2");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_failed_drops_of_one_actor_retry_in_one_loop() {
    // Review N: 100,000 failed drops of one actor ran 100,000 retry loops (+195 MiB).
    let w = TwoWorkers::new("memory://drops-one-loop");
    assert_eq!(w.call(&w.a).await.expect("counts").output, "1");
    w.failing.fail.store(true, Ordering::SeqCst);
    for _ in 0..50 {
        assert!(w.a.drop_actor(&w.d, "a"));
    }
    w.a.drained().await;
    let tried = w.failing.deletes.load(Ordering::SeqCst);
    // The loop's first retry comes a second after its drop, its next two seconds after that.
    tokio::time::sleep(RETRY_FIRST * 3 / 2).await;
    assert_eq!(w.failing.deletes.load(Ordering::SeqCst) - tried, 1, "one loop retried, once");
    w.failing.fail.store(false, Ordering::SeqCst);
    eventually("the retried delete", || !w.a.pending.is_undeleted(&w.key)).await;
    assert_eq!(w.inner.version(&w.key).await.expect("version"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_dropped_actors_retry_in_a_bounded_number_of_loops() {
    // 100,000 actors dropped while the store failed each had a retry loop of its own (~2 KiB
    // each), and each retried against the store as it came back. Past `MAX_RETRY_LOOPS`, they
    // wait in a queue the loops take from.
    use crate::durable::MAX_RETRY_LOOPS;
    let n = MAX_RETRY_LOOPS * 3 + 8;
    let inner = actor_store::open(Arc::new(ObjectSource::open("memory://many-actors-retry", &[]).expect("store"))).expect("conditional");
    let store = DeleteFails::new(inner.clone());
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let ex = Arc::new(Executor::new(source, ExecutorOptions { actor_store: Some(store.clone()), ..Default::default() }).expect("executor"));
    let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
    let key = |i: usize| actor_store::actor_key(&d.key(), &format!("a{i}"));
    for i in 0..n {
        let out = ex.execute(&d, "{}".into(), call_options(&format!("a{i}"), false, CancelFlag::new())).await.expect("counts");
        assert_eq!(out.output, "1");
    }
    store.fail.store(true, Ordering::SeqCst);
    for i in 0..n {
        assert!(ex.drop_actor(&d, &format!("a{i}")));
    }
    ex.drained().await;
    // Claimed just after each drop's first attempt, which `drained` waits for.
    eventually("the claims", || ex.pending.retries() == (MAX_RETRY_LOOPS, n - MAX_RETRY_LOOPS)).await;
    // While the store fails, 64 deletes at a time (the loops' first retries a second after the
    // drops, their next two seconds after that, each with the next actor in turn).
    let tried = store.deletes.load(Ordering::SeqCst);
    tokio::time::sleep(RETRY_FIRST * 2).await;
    assert_eq!(store.deletes.load(Ordering::SeqCst) - tried, MAX_RETRY_LOOPS);
    // The store recovers: every dropped actor's state goes, with no call, and the loops end.
    store.fail.store(false, Ordering::SeqCst);
    eventually("every retried delete", || (0..n).all(|i| !ex.pending.is_undeleted(&key(i)))).await;
    for i in 0..n {
        assert_eq!(inner.version(&key(i)).await.expect("version"), None, "a{i} deleted from the store");
    }
    eventually("the loops end", || ex.pending.retries() == (0, 0)).await;
    // A call of a dropped actor starts fresh.
    let fresh = ex.execute(&d, "{}".into(), call_options("a0", false, CancelFlag::new())).await.expect("starts fresh");
    assert_eq!((fresh.output.as_str(), fresh.actor_created), ("1", true));

    // Actors whose deletes the store keeps refusing do not hold the loops from the others: the
    // first actors to fail hold every loop, and once the store is back for all but them, the
    // queued ones are deleted all the same (taken in turn).
    let again = |i: usize| format!("b{i}");
    let key = |i: usize| actor_store::actor_key(&d.key(), &again(i));
    for i in 0..n {
        ex.execute(&d, "{}".into(), call_options(&again(i), false, CancelFlag::new())).await.expect("counts");
    }
    store.refused.lock().expect("refused").extend((0..MAX_RETRY_LOOPS).map(key));
    store.fail.store(true, Ordering::SeqCst);
    for i in 0..n {
        assert!(ex.drop_actor(&d, &again(i)));
    }
    ex.drained().await;
    // Claimed just after each drop's first attempt, which `drained` waits for.
    eventually("the claims", || ex.pending.retries() == (MAX_RETRY_LOOPS, n - MAX_RETRY_LOOPS)).await;
    store.fail.store(false, Ordering::SeqCst);
    eventually("the deletes the store takes", || (MAX_RETRY_LOOPS..n).all(|i| !ex.pending.is_undeleted(&key(i)))).await;
    assert!((0..MAX_RETRY_LOOPS).all(|i| ex.pending.is_undeleted(&key(i))), "the refused ones stay undeleted");
    // They are still retried, a loop each now that nothing else waits; closing ends the loops.
    eventually("a loop for each refused one", || ex.pending.retries() == (MAX_RETRY_LOOPS, 0)).await;
    ex.close();
    eventually("the loops end", || ex.pending.retries() == (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_loop_lost_to_a_panic_in_the_store_gives_its_place_back() {
    // Its place among the 64 and its actor's claim were kept for good: 64 such panics and no
    // failed drop of the executor was retried again, nor ever one of that actor.
    let w = TwoWorkers::new("memory://retry-panic");
    assert_eq!(w.call(&w.a).await.expect("counts").output, "1");
    w.failing.fail.store(true, Ordering::SeqCst);
    assert!(w.a.drop_actor(&w.d, "a"));
    // The loop is claimed just after the drop's first attempt, which `drained` waits for.
    eventually("a loop", || w.a.pending.retries() == (1, 0)).await;
    w.failing.panics.store(true, Ordering::SeqCst);
    eventually("the loop lost", || w.a.pending.retries() == (0, 0)).await;
    // The next failed drop of the actor gets a loop again, which deletes once the store can.
    w.failing.panics.store(false, Ordering::SeqCst);
    assert!(w.a.drop_actor(&w.d, "a"));
    // The loop is claimed just after the drop's first attempt, which `drained` waits for.
    eventually("a loop", || w.a.pending.retries() == (1, 0)).await;
    w.failing.fail.store(false, Ordering::SeqCst);
    eventually("the retried delete", || !w.a.pending.is_undeleted(&w.key)).await;
    assert_eq!(w.inner.version(&w.key).await.expect("version"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn close_waits_for_a_retry_under_way() {
    // Review M: a retry's delete landed after `close()` had resolved.
    let w = TwoWorkers::new("memory://retry-under-way");
    let (ex, store) = (&w.a, &w.failing);
    w.call(ex).await.expect("counts");
    store.fail.store(true, Ordering::SeqCst);
    assert!(ex.drop_actor(&w.d, "a"));
    ex.drained().await;
    store.slow.store(true, Ordering::SeqCst);
    let tried = store.deletes.load(Ordering::SeqCst);
    eventually("a retry under way", || store.deletes.load(Ordering::SeqCst) > tried).await;
    ex.close();
    ex.drained().await;
    assert_eq!(store.ended.load(Ordering::SeqCst), 1, "the attempt under way had answered");
}

#[tokio::test(flavor = "multi_thread")]
async fn close_stops_the_retries() {
    let w = TwoWorkers::new("memory://retry-close");
    let (ex, store) = (&w.a, &w.failing);
    w.call(ex).await.expect("counts");
    store.fail.store(true, Ordering::SeqCst);
    assert!(ex.drop_actor(&w.d, "a"));
    ex.drained().await;
    // Closed before the first retry (a second after the drop): none runs, now or later.
    ex.close();
    let tried = store.deletes.load(Ordering::SeqCst);
    tokio::time::sleep(RETRY_FIRST * 3 + std::time::Duration::from_millis(200)).await;
    assert_eq!(store.deletes.load(Ordering::SeqCst), tried, "no retry after close");
}

#[tokio::test(flavor = "multi_thread")]
async fn drops_queued_back_to_back_behind_a_stuck_store_try_once() {
    // N drops of one actor queued behind a store that takes its timeout to fail (a `file://`
    // lock held by another process: 30 s) each tried in turn: `close()` waited N times 30 s.
    let w = TwoWorkers::new("memory://drops-back-to-back");
    let (ex, store) = (&w.a, &w.failing);
    w.call(ex).await.expect("counts");
    store.fail.store(true, Ordering::SeqCst);
    store.slow.store(true, Ordering::SeqCst);
    assert!(ex.drop_actor(&w.d, "a"));
    eventually("the first drop's delete under way", || store.deletes.load(Ordering::SeqCst) == 1).await;
    // Five more behind it, nothing in between: only the last one tries.
    for _ in 0..5 {
        ex.drop_actor(&w.d, "a");
    }
    ex.close();
    ex.drained().await;
    assert_eq!((store.deletes.load(Ordering::SeqCst), store.ended.load(Ordering::SeqCst)), (2, 2), "the first and the last drop tried");
    // The state is still stored (every delete failed): another worker still sees it, as it did
    // after one failed drop.
    assert!(w.inner.version(&w.key).await.expect("version").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_between_two_drops_sees_no_state_and_both_drops_try() {
    // The first drop is superseded only by a drop right behind it: with a call between, it
    // deletes first, and the call starts fresh (it would have loaded the dropped state).
    let w = TwoWorkers::new("memory://drop-call-drop");
    let (ex, store) = (&w.a, &w.failing);
    for n in ["1", "2"] {
        assert_eq!(w.call(ex).await.expect("counts").output, n);
    }
    store.slow.store(true, Ordering::SeqCst);
    assert!(ex.drop_actor(&w.d, "a"));
    // Polled once: the call takes its place in line now, behind the first drop.
    let mut between = Box::pin(w.call(ex));
    assert!(matches!(crate::threads::poll_once(&mut between), Ok(std::task::Poll::Pending)), "waits behind the first drop");
    assert!(ex.drop_actor(&w.d, "a"));
    let out = between.await.expect("counts");
    assert_eq!((out.output.as_str(), out.actor_created), ("1", true), "the call came after the first drop");
    ex.drained().await;
    assert_eq!(w.inner.version(&w.key).await.expect("version"), None, "the second drop deleted the call's state");
    assert_eq!(store.ended.load(Ordering::SeqCst), 2, "each drop deleted what it found");
}
