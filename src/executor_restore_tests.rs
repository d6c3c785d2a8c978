//! The executor's tests of an actor's last good state when a call ends midway (cancelled, or
//! past its deadline): while it restores that state into a fresh instance, the state stays for
//! the next call, never lost silently; while it stores a durable actor's new state, the next call
//! takes whatever the store holds, never a spurious `ACTOR_CONFLICT`.
use super::*;
use crate::actor_store::{self, ActorStore, Loading, Saved, Version};
use crate::store::{BoxFuture, MemorySource, ObjectSource};
use crate::test_guests as g;
use std::sync::atomic::AtomicBool;

/// A counter: an input starting `[` grows its memory to 10 MiB (past the 8 MiB a call may touch
/// on the caller's thread), one starting `"` traps, any other counts.
fn big_counter() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x5b))
            (then (if (i32.lt_u (memory.size) (i32.const 160))
              (then (drop (memory.grow (i32.sub (i32.const 160) (memory.size))))))))
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x22)) (then unreachable))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

fn call_options(actor: &str, transactional: bool, cancel: CancelFlag) -> CallOptions {
    CallOptions { actor_id: Some(actor.into()), transactional: Some(transactional), cancel, ..Default::default() }
}

/// Starts a call here that must leave this thread (it waits, or grows its memory), cancels it
/// exactly then (`make_done` runs only when it leaves), and returns its error's code.
async fn cancelled_once_it_leaves(ex: &Arc<Executor>, d: &Definition, options: CallOptions) -> &'static str {
    let cancel = options.cancel.clone();
    let (sent, got) = tokio::sync::oneshot::channel();
    let attempt = ex.start(d, "{}".into(), options, move || {
        cancel.cancel();
        Ok(Box::new(move |r| {
            let _ = sent.send(r);
        }))
    });
    assert!(matches!(attempt, Attempt::Started), "the call left this thread");
    got.await.expect("a result").expect_err("cancelled").code()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_cancelled_while_it_restores_the_last_good_state_leaves_it_for_the_next() {
    let source = Arc::new(MemorySource::new());
    source.put("big.wasm", big_counter());
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let d = Definition { name: "big".into(), version: "1".into(), wasm_blob_path: "big.wasm".into(), ..Default::default() };
    let tx = |input: &str| ex.execute(&d, input.into(), call_options("a", true, CancelFlag::new()));
    assert_eq!(tx("[1]").await.expect("grows and counts").output, "1");
    assert_eq!(tx("{}").await.expect("counts").output, "2");
    // Growing past 8 MiB on this thread was an overrun: the module's next calls of a small
    // actor keep off this thread for a while. Another actor's calls wait that out.
    for _ in 0..40 {
        ex.execute(&d, "{}".into(), call_options("b", false, CancelFlag::new())).await.expect("counts");
    }
    // A trap: the instance goes, its last good state (2) stays for the next call to restore.
    assert_eq!(tx("\"trap\"").await.expect_err("traps").code(), "TRAP");
    // The next call starts here, makes a fresh instance and restores the state into it: growing
    // its memory to the state's 10 MiB moves the call off this thread, and it is cancelled
    // before it goes on there (its first step elsewhere sees the cancel).
    assert_eq!(cancelled_once_it_leaves(&ex, &d, call_options("a", true, CancelFlag::new())).await, "CANCELLED");
    // The state is where it was: the count goes on from 2.
    let next = tx("{}").await.expect("restores");
    assert_eq!((next.output.as_str(), next.actor_created), ("3", false));
}

/// An actor store whose next write, once armed, never answers: after it lands, or before. It
/// cancels the call that writes (`cut_short`) once that write hangs, so the cancel always finds
/// the call in its write (cancelled any earlier, the call would leave the write armed for the
/// next call's, which then hung until its deadline).
struct HangsOnce {
    inner: Arc<dyn ActorStore>,
    hang: AtomicBool,
    lands: bool,
    cut_short: std::sync::Mutex<Option<CancelFlag>>,
}

impl HangsOnce {
    async fn hang_cancelling(&self) {
        if let Some(cancel) = self.cut_short.lock().unwrap_or_else(|p| p.into_inner()).take() {
            cancel.cancel();
        }
        std::future::pending::<()>().await
    }
}

impl ActorStore for HangsOnce {
    fn load_gated<'a>(&'a self, key: &'a str, max_bytes: u64, loading: &'a Loading) -> BoxFuture<'a, Result<Option<actor_store::Loaded>, ExecError>> {
        self.inner.load_gated(key, max_bytes, loading)
    }
    fn version<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Version>, ExecError>> {
        self.inner.version(key)
    }
    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>> {
        Box::pin(async move {
            let hang = self.hang.swap(false, Ordering::SeqCst);
            if hang && !self.lands {
                self.hang_cancelling().await;
            }
            let saved = self.inner.save(key, bytes, expected).await;
            if hang {
                self.hang_cancelling().await;
            }
            saved
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        "hangs-once".into()
    }
}

/// Two calls on a durable counter, then a third cancelled while its write hangs (landed or
/// not); returns the fourth call's count and whether it started a fresh actor.
async fn count_after_a_write_cut_short(lands: bool) -> (String, bool) {
    let url = format!("memory://hangs-once-{lands}");
    let inner = actor_store::open(Arc::new(ObjectSource::open(&url, &[]).expect("store"))).expect("conditional");
    let store = Arc::new(HangsOnce { inner, hang: AtomicBool::new(false), lands, cut_short: Default::default() });
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let ex = Arc::new(Executor::new(source, ExecutorOptions { actor_store: Some(store.clone()), ..Default::default() }).expect("executor"));
    let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
    let call = |cancel: CancelFlag| ex.execute(&d, "{}".into(), call_options("a", false, cancel));
    assert_eq!(call(CancelFlag::new()).await.expect("counts").output, "1");
    assert_eq!(call(CancelFlag::new()).await.expect("counts").output, "2");
    // The third call's write never answers, and the call is cancelled while it waits for it.
    let cancel = CancelFlag::new();
    *store.cut_short.lock().expect("lock") = Some(cancel.clone());
    store.hang.store(true, Ordering::SeqCst);
    assert_eq!(call(cancel).await.expect_err("cancelled").code(), "CANCELLED");
    assert!(!store.hang.load(Ordering::SeqCst), "the third call reached its write");
    let next = call(CancelFlag::new()).await.expect("goes on from the store's state");
    (next.output, next.actor_created)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_cancelled_while_it_stores_a_durable_actor_leaves_the_next_call_the_stores_state() {
    // Whether the cut-short write landed is unknown to the executor: the next call takes the
    // store's state and goes on from it. It does not write over it from its stale 2 (before,
    // that write failed with ACTOR_CONFLICT).
    assert_eq!(count_after_a_write_cut_short(true).await, ("4".to_string(), false));
    assert_eq!(count_after_a_write_cut_short(false).await, ("3".to_string(), false));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transactional_actor_whose_first_call_failed_starts_as_created() {
    // Its last good state is the one it was made with: the next call runs on an instance with no
    // state of its own, and says so (review E saw `actorCreated: false` there, so a caller that
    // sets an actor up on `actorCreated` never did).
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter_trapping());
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
    let call = |input: &str| ex.execute(&d, input.into(), call_options("a", true, CancelFlag::new()));
    assert_eq!(call("\"t\"").await.expect_err("traps").code(), "TRAP");
    let first = call("{}").await.expect("counts");
    assert_eq!((first.output.as_str(), first.actor_created), ("1", true));
    // A failure after a good call goes back to that call's state, which is no fresh actor.
    assert_eq!(call("\"t\"").await.expect_err("traps").code(), "TRAP");
    let next = call("{}").await.expect("counts");
    assert_eq!((next.output.as_str(), next.actor_created), ("2", false));
}

/// A module keeps the initial images (what snapshots are taken against) of its
/// `MAX_INITIAL_IMAGES` most recently used sets of grants, however many are asked for: each used
/// to stay for as long as the module was cached. A set whose image went makes it again, and its
/// snapshots still restore.
#[tokio::test(flavor = "multi_thread")]
async fn a_module_keeps_a_bounded_number_of_initial_images() {
    use crate::capabilities::EnvOffer;
    use crate::initial_images::MAX_INITIAL_IMAGES;
    use crate::engine::EngineKind;
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::unique(g::counter(), b"bounded-images"));
    let names: Vec<String> = (0..5).map(|i| format!("V{i}")).collect();
    let env = EnvOffer::Values(names.iter().map(|n| (n.clone(), format!("{n}-value"))).collect());
    let ex = Arc::new(Executor::new(source, ExecutorOptions { env, tier_up: false, ..Default::default() }).expect("executor"));
    // Each subset of the five names offered is a set of grants of its own: 32 of them.
    let asking = |mask: usize| Definition {
        name: "counter".into(),
        version: "1".into(),
        wasm_blob_path: "counter.wasm".into(),
        capabilities: Capabilities { env: names.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| n.clone()).collect(), ..Default::default() },
        ..Default::default()
    };
    let actor = |id: &str| CallOptions { actor_id: Some(id.into()), ..Default::default() };
    let mut first = None;
    for mask in 0..32 {
        let d = asking(mask);
        ex.execute(&d, "{}".into(), actor(&format!("a{mask}"))).await.expect("call");
        let snap = ex.snapshot_actor(&d, &format!("a{mask}")).await.expect("snapshot");
        first.get_or_insert(snap);
    }
    let module = ex.modules.peek(&asking(0).key(), EngineKind::Plain, None).expect("cached");
    assert_eq!(module.initial_images.len(), MAX_INITIAL_IMAGES, "one image per set of grants used lately, not 32");
    // The first set's image went long ago: made again, the snapshot taken against it restores.
    ex.restore_actor(&asking(0), "back", &first.expect("a snapshot")).await.expect("restore");
    let out = ex.execute(&asking(0), "{}".into(), actor("back")).await.expect("call");
    assert_eq!(out.output, "2", "the restored count (1) went on");
    assert_eq!(module.initial_images.len(), MAX_INITIAL_IMAGES);
}

/// An actor store whose loads never answer once armed.
struct LoadHangs {
    inner: Arc<dyn ActorStore>,
    armed: AtomicBool,
}

impl ActorStore for LoadHangs {
    fn load_gated<'a>(&'a self, key: &'a str, max_bytes: u64, loading: &'a Loading) -> BoxFuture<'a, Result<Option<actor_store::Loaded>, ExecError>> {
        if self.armed.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        self.inner.load_gated(key, max_bytes, loading)
    }
    fn version<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Version>, ExecError>> {
        self.inner.version(key)
    }
    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>> {
        self.inner.save(key, bytes, expected)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        "load-hangs".into()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn close_ends_a_snapshot_whose_store_read_hangs() {
    // Review BH1: snapshotActor's read of the store (an actor not in memory) ignored close(),
    // which then waited for it to the store's timeoutMs.
    let inner = actor_store::open(Arc::new(ObjectSource::open("memory://load-hangs", &[]).expect("store"))).expect("conditional");
    let store = Arc::new(LoadHangs { inner, armed: AtomicBool::new(false) });
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let d = Definition { name: "counter".into(), version: "1".into(), wasm_blob_path: "counter.wasm".into(), ..Default::default() };
    // Stored by one executor, snapshotted by another that never held the actor.
    let first = Arc::new(Executor::new(source.clone(), ExecutorOptions { actor_store: Some(store.clone()), ..Default::default() }).expect("executor"));
    first.execute(&d, "{}".into(), call_options("a", false, CancelFlag::new())).await.expect("counts");
    first.close();
    let ex = Arc::new(Executor::new(source, ExecutorOptions { actor_store: Some(store.clone()), ..Default::default() }).expect("executor"));
    store.armed.store(true, Ordering::SeqCst);
    let snap = tokio::spawn({
        let (ex, d) = (ex.clone(), d.clone());
        async move { ex.snapshot_actor(&d, "a").await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!snap.is_finished(), "the read hangs");
    ex.close();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), snap).await.expect("ended by close()").expect("joined");
    assert_eq!(ended.map(|_| ()).map_err(|e| e.code()), Err("CANCELLED"));
}
