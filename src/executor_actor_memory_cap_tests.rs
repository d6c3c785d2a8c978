//! Review CA1: `maxActorMemoryMB` against actors kept busy by calls waiting in their lines. Such
//! actors are never evicted, so a call's growth is refused when it would take the actors past the
//! cap even with every idle actor evicted.
use super::*;
use crate::actors::ActorKey;
use crate::store::MemorySource;
use crate::test_guests as g;

/// A counter whose input `[` first grows its memory to 10 MiB.
fn big_counter() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x5b))
            (then (if (i32.lt_u (memory.size) (i32.const 160))
              (then (drop (memory.grow (i32.sub (i32.const 160) (memory.size))))))))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

fn setup(cap_mib: u64) -> (Arc<Executor>, Definition) {
    let source = Arc::new(MemorySource::new());
    source.put("big.wasm", big_counter());
    let options = ExecutorOptions { max_actor_memory_bytes: cap_mib << 20, ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let d = Definition { name: "big".into(), version: "1".into(), wasm_blob_path: "big.wasm".into(), ..Default::default() };
    (ex, d)
}

async fn grow(ex: &Arc<Executor>, d: &Definition, actor: &str) -> Result<String, &'static str> {
    let options = CallOptions { actor_id: Some(actor.into()), ..Default::default() };
    ex.execute(d, "[".into(), options).await.map(|o| o.output).map_err(|e| e.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_cannot_grow_the_actors_past_their_cap_while_busy_ones_hold_it() {
    let (ex, d) = setup(24);
    assert_eq!(grow(&ex, &d, "a").await, Ok("1".into()));
    assert_eq!(grow(&ex, &d, "b").await, Ok("1".into()));
    // a and b busy (a call of each in line, as one waiting for a concurrency slot is): 20 MiB
    // they keep, and c's 10 MiB would take the actors to 30.
    let key = |id: &str| ActorKey { def: d.key(), actor_id: id.into() };
    let (held_a, held_b) = (ex.actors.ticket(key("a")).await, ex.actors.ticket(key("b")).await);
    assert_eq!(grow(&ex, &d, "c").await, Err("BUSY"));
    assert!(ex.actors.held_memory() <= 24 << 20, "held {}", ex.actors.held_memory());
    // Idle again, a and b may be evicted for c: its call grows, and the least recently used goes
    // as it ends.
    drop((held_a, held_b));
    assert_eq!(grow(&ex, &d, "c").await, Ok("1".into()));
    assert!(ex.actors.held_memory() <= 24 << 20, "held {}", ex.actors.held_memory());
    assert_eq!(ex.stats().actors, 2);
    // b stayed, and its state with it.
    assert_eq!(grow(&ex, &d, "b").await, Ok("2".into()));
    assert_eq!(ex.actors.growing_memory(), 0, "no growth counted apart once the calls are done");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actor_alone_may_pass_the_cap() {
    // As before: an actor over the cap by itself stays, with every other idle actor evicted.
    let (ex, d) = setup(8);
    assert_eq!(grow(&ex, &d, "first").await.map(|_| ()), Ok(()));
    let options = CallOptions { actor_id: Some("idle".into()), ..Default::default() };
    assert_eq!(ex.execute(&d, "1".into(), options).await.expect("counts").output, "1");
    assert_eq!(grow(&ex, &d, "solo").await, Ok("1".into()));
    assert_eq!(grow(&ex, &d, "solo").await, Ok("2".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_cannot_take_the_actors_past_their_cap_while_busy_ones_hold_it() {
    // Review CB1: restoreActor made its instance unchecked; 40 restores of 60 MiB, each actor
    // with a call waiting behind it, held 2.5 GB under a cap of 128 MiB.
    let (ex, d) = setup(24);
    assert_eq!(grow(&ex, &d, "a").await, Ok("1".into()));
    assert_eq!(grow(&ex, &d, "b").await, Ok("1".into()));
    let snapshot = ex.snapshot_actor(&d, "a").await.expect("snapshot");
    let key = |id: &str| ActorKey { def: d.key(), actor_id: id.into() };
    let (held_a, held_b) = (ex.actors.ticket(key("a")).await, ex.actors.ticket(key("b")).await);
    assert_eq!(ex.restore_actor(&d, "c", &snapshot).await.map_err(|e| e.code()), Err("BUSY"));
    drop((held_a, held_b));
    ex.restore_actor(&d, "c", &snapshot).await.expect("restores once a and b are idle");
    let options = CallOptions { actor_id: Some("c".into()), ..Default::default() };
    let out = ex.execute(&d, "1".into(), options).await.expect("counts");
    assert_eq!((out.output.as_str(), out.actor_created), ("2", false));
    assert_eq!(ex.actors.growing_memory(), 0, "no growth counted apart once the calls are done");
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_made_at_once_hold_at_most_the_cap_in_snapshots() {
    // Review CB1: each restore copied its snapshot as it was made and held it in the actor's line;
    // 40 of a 63 MB snapshot made at once held 2.5 GB under a cap of 128 MiB.
    let (ex, d) = setup(24);
    assert_eq!(grow(&ex, &d, "a").await, Ok("1".into()));
    let snapshot = ex.snapshot_actor(&d, "a").await.expect("snapshot");
    // Each takes room for the 10 MiB its snapshot decodes to when it is made.
    let restores: Vec<_> = (0..3).map(|i| ex.restore_actor(&d, &format!("r{i}"), &snapshot)).collect();
    let mut codes = Vec::new();
    for r in restores {
        codes.push(r.await.map_err(|e| e.code()));
    }
    assert_eq!(codes, vec![Ok(()), Ok(()), Err("BUSY")]);
    // Their room is given back as they end.
    ex.restore_actor(&d, "r2", &snapshot).await.expect("restores now");
}

/// Lets a call through `crm.wait` once a permit is added, counting the calls that came.
struct Gate {
    permits: Arc<tokio::sync::Semaphore>,
    came: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { permits: Arc::new(tokio::sync::Semaphore::new(0)), came: Default::default() }
    }
}

impl crate::host_functions::HostFunctions for Gate {
    fn names(&self) -> Vec<String> {
        vec!["crm.wait".into()]
    }
    fn call(&self, _: crate::host_functions::HostRequest) -> crate::store::BoxFuture<'static, Result<String, crate::host_functions::HostFailure>> {
        self.came.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let permits = self.permits.clone();
        Box::pin(async move {
            let _ = permits.acquire().await.map(|p| p.forget());
            Ok("1".to_string())
        })
    }
}

/// An actor of the AssemblyScript ABI (written out: the prelude's import would come after its
/// definitions) importing `crm.wait` (to be called with 64, its input), of `memory` (its
/// declaration) and `execute`'s `body`, which leaves the result's one UTF-16 unit at 8192.
fn waiting_guest(memory: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "crm" "wait" (func $wait (param i32) (result i32)))
          (memory (export "memory") {memory})
          (global $count (mut i32) (i32.const 0))
          (func $new (export "__new") (param $size i32) (param $id i32) (result i32)
            (i32.store (i32.const 4092) (local.get $size))
            (i32.const 4096))
          (func (export "__pin") (param i32) (result i32) (local.get 0))
          (func (export "__unpin") (param i32))
          (func (export "__collect"))
          ;; "{{}}", the host function's input, in the AssemblyScript layout (its byte length at 60).
          (data (i32.const 60) "\04\00\00\00{{\00}}\00")
          (func (export "execute") (param $in i32) (result i32) (local $grew i32)
            {body}
            (i32.store (i32.const 8188) (i32.const 2))
            (i32.const 8192)))"#
    ))
    .expect("test guest parses")
}

/// A counter that grows its memory to 10 MiB, then calls `crm.wait`.
fn counter_that_grows_then_waits() -> Vec<u8> {
    waiting_guest(
        "1",
        r#"(if (i32.lt_u (memory.size) (i32.const 160)) (then (drop (memory.grow (i32.sub (i32.const 160) (memory.size))))))
            (drop (call $wait (i32.const 64)))
            (global.set $count (i32.add (global.get $count) (i32.const 1)))
            (i32.store16 (i32.const 8192) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))"#,
    )
}

/// A guest whose memory may grow to 100 pages that asks for 3000 more, then calls `crm.wait`,
/// and answers `1` if the growth failed (`-1`), `0` if not.
fn grows_past_its_maximum() -> Vec<u8> {
    waiting_guest(
        "1 100",
        r#"(local.set $grew (memory.grow (i32.const 3000)))
            (drop (call $wait (i32.const 64)))
            (i32.store16 (i32.const 8192) (select (i32.const 49) (i32.const 48) (i32.eq (local.get $grew) (i32.const -1))))"#,
    )
}

/// An executor of `modules` (the growing and waiting guests) under a cap of `cap_mib`, one call
/// at a time, and the gate of their `crm.wait`.
fn waiting_executor(cap_mib: u64, modules: &[(&str, Vec<u8>)]) -> (Arc<Executor>, Arc<Gate>) {
    let source = Arc::new(MemorySource::new());
    for (name, bytes) in modules {
        source.put(&format!("{name}.wasm"), bytes.clone());
    }
    let gate = Arc::new(Gate::default());
    let options = ExecutorOptions {
        max_actor_memory_bytes: cap_mib << 20,
        max_concurrency: std::num::NonZeroUsize::MIN,
        host_functions: Some(gate.clone()),
        ..Default::default()
    };
    (Arc::new(Executor::new(source, options).expect("executor")), gate)
}

fn wait_def(name: &str) -> Definition {
    let mut d = Definition { name: name.into(), version: "1".into(), wasm_blob_path: format!("{name}.wasm"), ..Default::default() };
    d.capabilities.host_functions = vec!["crm.wait".into()];
    d
}

fn start(ex: &Arc<Executor>, d: &Definition, actor: &str, transactional: bool) -> tokio::task::JoinHandle<Result<String, &'static str>> {
    let (ex, d) = (ex.clone(), d.clone());
    let options = CallOptions { actor_id: Some(actor.into()), transactional: Some(transactional), ..Default::default() };
    tokio::spawn(async move { ex.execute(&d, "{}".into(), options).await.map(|o| o.output).map_err(|e| e.code()) })
}

/// Whether `n` calls came to the gate within 5 s.
async fn came(gate: &Gate, n: usize) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while gate.came.load(std::sync::atomic::Ordering::SeqCst) < n {
        if std::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_waiting_in_a_host_function_hold_their_growth_in_the_cap() {
    // Review CC1: the check counted an actor's memory only as its call ended. A call waiting in a
    // host function gives its concurrency slot back, so any number of calls grew one after the
    // other and waited: 20 of 56 MiB held 1.2 GB under a cap of 64 MiB, maxConcurrency 2.
    let (ex, gate) = waiting_executor(24, &[("wait", counter_that_grows_then_waits())]);
    let d = wait_def("wait");
    // a and b grow to 10 MiB each and wait in the host function, their slot given back.
    let a = start(&ex, &d, "a", false);
    assert!(came(&gate, 1).await);
    let b = start(&ex, &d, "b", false);
    assert!(came(&gate, 2).await);
    // c's growth would take the actors to 30 MiB, past 24, while a and b hold 20 of them.
    let c = tokio::time::timeout(std::time::Duration::from_secs(5), start(&ex, &d, "c", false)).await;
    assert_eq!(c.map(|c| c.expect("joins")), Ok(Err("BUSY")), "refused, not let through to wait beside them");
    gate.permits.add_permits(2);
    assert_eq!(a.await.expect("joins"), Ok("1".into()));
    assert_eq!(b.await.expect("joins"), Ok("1".into()));
    // Idle now, a (the least recently used) is evicted for c as its call ends.
    gate.permits.add_permits(1);
    assert_eq!(start(&ex, &d, "c", false).await.expect("joins"), Ok("1".into()));
    assert!(ex.actors.held_memory() <= 24 << 20, "held {}", ex.actors.held_memory());
    assert_eq!(ex.actors.growing_memory(), 0, "no growth counted apart once the calls are done");
}

/// An actor store whose loads take a while before they ask for room: a call's load comes after
/// whatever is made right behind the call.
struct SlowLoads(Arc<dyn crate::actor_store::ActorStore>);

impl crate::actor_store::ActorStore for SlowLoads {
    fn load_gated<'a>(
        &'a self,
        key: &'a str,
        max_bytes: u64,
        loading: &'a crate::actor_store::Loading,
    ) -> crate::store::BoxFuture<'a, Result<Option<crate::actor_store::Loaded>, ExecError>> {
        Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            self.0.load_gated(key, max_bytes, loading).await
        })
    }
    fn version<'a>(&'a self, key: &'a str) -> crate::store::BoxFuture<'a, Result<Option<crate::actor_store::Version>, ExecError>> {
        self.0.version(key)
    }
    fn save<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        expected: Option<&'a crate::actor_store::Version>,
    ) -> crate::store::BoxFuture<'a, Result<crate::actor_store::Saved, ExecError>> {
        self.0.save(key, bytes, expected)
    }
    fn delete<'a>(&'a self, key: &'a str) -> crate::store::BoxFuture<'a, Result<(), ExecError>> {
        self.0.delete(key)
    }
    fn describe(&self) -> String {
        "slow-loads".into()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_made_behind_a_durable_actor_s_first_call_leaves_room_for_its_load() {
    // Review CC1: the restore took room for its 10 MiB among the executor's loads as it was made,
    // then waited in its line behind the actor's first call in this executor, whose load of the
    // stored 10 MiB waited for that room: the call failed TIMEOUT at its deadline.
    let source = Arc::new(MemorySource::new());
    source.put("big.wasm", big_counter());
    let url = "memory://cc1-restore-behind-a-load";
    let inner = crate::actor_store::open(Arc::new(crate::store::ObjectSource::open(url, &[]).expect("store"))).expect("conditional");
    let store: Arc<dyn crate::actor_store::ActorStore> = Arc::new(SlowLoads(inner));
    // The restore's room is all of the cap (its snapshot decodes to 10 MiB); the load's, the
    // snapshot's few KiB.
    let options = || ExecutorOptions { max_actor_memory_bytes: 10 << 20, actor_store: Some(store.clone()), ..Default::default() };
    let mut d = Definition { name: "big".into(), version: "1".into(), wasm_blob_path: "big.wasm".into(), ..Default::default() };
    d.limits.max_execution_ms = Some(3_000.0);
    let first = Arc::new(Executor::new(source.clone(), options()).expect("executor"));
    assert_eq!(grow(&first, &d, "a").await, Ok("1".into()));
    let snapshot = first.snapshot_actor(&d, "a").await.expect("snapshot");
    first.close();
    first.drained().await;
    // Another worker: its first call on the actor loads it; a restore is made right behind it.
    let ex = Arc::new(Executor::new(source, options()).expect("executor"));
    let (sent, got) = tokio::sync::oneshot::channel();
    let options = CallOptions { actor_id: Some("a".into()), ..Default::default() };
    let attempt = ex.start(&d, "1".into(), options, move || {
        Ok(Box::new(move |r| {
            let _ = sent.send(r);
        }))
    });
    assert!(matches!(attempt, Attempt::Started), "the call waits for its load");
    let restored = ex.restore_actor(&d, "a", &snapshot);
    let out = got.await.expect("a result").map_err(|e| e.code());
    assert_eq!(out.map(|o| (o.output, o.actor_created)), Ok(("2".to_string(), false)), "loaded, counted");
    restored.await.expect("restores after it");
    let options = CallOptions { actor_id: Some("a".into()), ..Default::default() };
    assert_eq!(ex.execute(&d, "1".into(), options).await.expect("counts").output, "2", "from the restored 1");
    assert_eq!(ex.actors.growing_memory(), 0, "no growth counted apart once the calls are done");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_growth_past_the_memory_s_own_maximum_fails_in_the_guest_and_counts_nothing() {
    // Review CD1: the cap was asked before the memory's maximum, and counted the 187 MiB that
    // never came: other actors' growth was refused BUSY while the call lasted, and with another
    // actor busy the growth itself failed BUSY instead of handing the guest -1.
    let (ex, gate) = waiting_executor(24, &[("wait", counter_that_grows_then_waits()), ("maxed", grows_past_its_maximum())]);
    let def = wait_def;
    // b grows to 10 MiB and waits; then a's growth past its maximum fails while b is busy.
    let b = start(&ex, &def("wait"), "b", false);
    assert!(came(&gate, 1).await);
    let a = start(&ex, &def("maxed"), "a", false);
    assert!(came(&gate, 2).await, "a's call went on to wait");
    // c grows to 10 MiB: 20 with b's, under 24.
    let c = start(&ex, &def("wait"), "c", false);
    assert!(came(&gate, 3).await, "c's growth was let through");
    gate.permits.add_permits(3);
    assert_eq!(a.await.expect("joins"), Ok("1".into()), "the guest got -1");
    assert_eq!(b.await.expect("joins"), Ok("1".into()));
    assert_eq!(c.await.expect("joins"), Ok("1".into()));
    assert_eq!(ex.actors.growing_memory(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transactional_actor_s_growth_counts_its_shadow_too() {
    // Review CD1: the shadow grows with the instance as the call ends; counted once, busy
    // transactional actors held twice what the cap let through.
    let (ex, gate) = waiting_executor(24, &[("wait", counter_that_grows_then_waits())]);
    let d = wait_def("wait");
    let a = start(&ex, &d, "a", true);
    assert!(came(&gate, 1).await);
    // a holds 10 MiB and will keep 10 more in its shadow: b's 20 would take the actors to 40.
    let b = tokio::time::timeout(std::time::Duration::from_secs(5), start(&ex, &d, "b", true)).await;
    assert_eq!(b.map(|b| b.expect("joins")), Ok(Err("BUSY")));
    gate.permits.add_permits(1);
    assert_eq!(a.await.expect("joins"), Ok("1".into()));
    assert_eq!(ex.actors.growing_memory(), 0);
    assert!(ex.actors.held_memory() >= 20 << 20, "a's instance and shadow count: {}", ex.actors.held_memory());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actor_moved_to_optimized_code_counts_the_instance_it_keeps_until_the_call_ends() {
    // Review CD1: the old instance stays through the call (for a call that runs out of time);
    // uncounted, 4 moved actors of 30 MiB held 240 MiB under a cap of 128. Review CE1: where it
    // would pass the cap, the call was refused BUSY, though the old instance was dropped anyway.
    let (ex, gate) = waiting_executor(24, &[("wait", g::unique(counter_that_grows_then_waits(), b"moves under the cap"))]);
    let d = wait_def("wait");
    gate.permits.add_permits(2);
    // Made on baseline code: 10 MiB each, 20 in all.
    assert_eq!(start(&ex, &d, "a", false).await.expect("joins"), Ok("1".into()));
    assert_eq!(start(&ex, &d, "b", false).await.expect("joins"), Ok("1".into()));
    super::tier_up_tests::until_tiered_up(&ex).await;
    // a moves (b idle, evictable) and waits, its old instance counted.
    let a = start(&ex, &d, "a", false);
    assert!(came(&gate, 3).await);
    assert!(ex.actors.growing_memory() >= 10 << 20, "counted: {}", ex.actors.growing_memory());
    // b's move would take the actors to 40 with a busy: its old instance goes at once, and the
    // call runs.
    let b = start(&ex, &d, "b", false);
    assert!(came(&gate, 4).await, "b's call went on");
    gate.permits.add_permits(2);
    assert_eq!(a.await.expect("joins"), Ok("2".into()));
    assert_eq!(b.await.expect("joins"), Ok("2".into()));
    assert_eq!(ex.actors.growing_memory(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_actor_s_first_transactional_call_counts_the_shadow_it_takes() {
    // Review CE1: the shadow taken of a kept instance was counted only as the call ended.
    let (ex, gate) = waiting_executor(24, &[("wait", counter_that_grows_then_waits())]);
    let d = wait_def("wait");
    gate.permits.add_permits(1);
    assert_eq!(start(&ex, &d, "a", false).await.expect("joins"), Ok("1".into()));
    // a's 10 MiB and, from its transactional call on, their copy: b's 10 would take them to 30.
    let a = start(&ex, &d, "a", true);
    assert!(came(&gate, 2).await);
    let b = tokio::time::timeout(std::time::Duration::from_secs(5), start(&ex, &d, "b", false)).await;
    assert_eq!(b.map(|b| b.expect("joins")), Ok(Err("BUSY")));
    gate.permits.add_permits(1);
    assert_eq!(a.await.expect("joins"), Ok("2".into()));
    assert_eq!(ex.actors.growing_memory(), 0);
}
