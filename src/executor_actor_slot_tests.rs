//! Review AB: what an executor keeps for actors whose operations failed before they held state.
use std::num::NonZeroUsize;

use super::*;
use crate::store::MemorySource;
use crate::test_guests as g;

fn def(name: &str) -> Definition {
    Definition { name: name.into(), version: "1".into(), wasm_blob_path: format!("{name}.wasm"), ..Default::default() }
}

fn actor(id: &str) -> CallOptions {
    CallOptions { actor_id: Some(id.into()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn operations_that_leave_an_actor_without_state_leave_no_actor_to_evict_others() {
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    source.put("aborts.wasm", g::aborts());
    let options = ExecutorOptions { max_actors: NonZeroUsize::new(10).expect("10"), ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    for i in 0..10 {
        let out = ex.execute(&def("counter"), "1".into(), actor(&format!("real-{i}"))).await.expect("counts");
        assert_eq!(out.output, "1");
    }
    // Each of these failed on an actor id never seen; before, each left an empty actor behind,
    // and past maxActors the real ones were evicted (their state lost: 0 of 10 kept).
    for i in 0..5 {
        let missing = ex.execute(&def("missing"), "1".into(), actor(&format!("ghost-{i}"))).await;
        assert_eq!(missing.map(|_| ()).map_err(|e| e.code()), Err("BLOB_NOT_FOUND"));
        let aborted = ex.execute(&def("aborts"), "1".into(), actor(&format!("aborts-{i}"))).await;
        assert!(aborted.is_err());
        let snapshot = ex.snapshot_actor(&def("counter"), &format!("unknown-{i}")).await;
        assert_eq!(snapshot.map(|_| ()).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
        let restored = ex.restore_actor(&def("counter"), &format!("junk-{i}"), b"not a snapshot").await;
        assert_eq!(restored.map_err(|e| e.code()), Err("SNAPSHOT_INVALID"));
    }
    assert_eq!(ex.stats().actors, 10);
    for i in 0..10 {
        let out = ex.execute(&def("counter"), "1".into(), actor(&format!("real-{i}"))).await.expect("counts");
        assert_eq!(out.output, "2", "real-{i} kept its state");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_and_transactional_first_calls_that_fail_evict_no_live_actor() {
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    source.put("spin.wasm", g::spin());
    source.put("aborts.wasm", g::aborts());
    let options = ExecutorOptions { max_actors: NonZeroUsize::new(10).expect("10"), ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    for i in 0..10 {
        ex.execute(&def("counter"), "1".into(), actor(&format!("real-{i}"))).await.expect("counts");
    }
    // Ten first calls at once, each timing out: the first to end had seen the others' (busy,
    // empty) actors past maxActors and evicted the live ones (follow-up review AB: 1 of 10 kept).
    let mut spin = def("spin");
    spin.limits.max_execution_ms = Some(100.0);
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let (ex, d) = (ex.clone(), spin.clone());
            tokio::spawn(async move { ex.execute(&d, "1".into(), actor(&format!("ghost-{i}"))).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("joins").map(|_| ()).map_err(|e| e.code()), Err("TIMEOUT"));
    }
    // A transactional first call that fails keeps the fresh state as its last good one: that is
    // nothing to keep either (0 of 10 kept), nor to count against maxActorMemoryMB once gone.
    let held = ex.actors.held_memory();
    for i in 0..5 {
        let tx = CallOptions { actor_id: Some(format!("tx-{i}")), transactional: Some(true), ..Default::default() };
        assert!(ex.execute(&def("aborts"), "1".into(), tx).await.is_err());
    }
    assert_eq!(ex.stats().actors, 10);
    assert_eq!(ex.actors.held_memory(), held);
    for i in 0..10 {
        let out = ex.execute(&def("counter"), "1".into(), actor(&format!("real-{i}"))).await.expect("counts");
        assert_eq!(out.output, "2", "real-{i} kept its state");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drop_made_while_a_call_holds_the_actors_place_applies_after_that_call() {
    // Review AY2: the call holding the actor's place, still waiting for a concurrency slot when
    // `dropActor` came, took the drop as its own start: it ran fresh, its state was kept, and a
    // call made after the drop saw it.
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    source.put("spin.wasm", g::spin());
    let options = ExecutorOptions { max_concurrency: NonZeroUsize::new(1).expect("1"), ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    assert_eq!(ex.execute(&def("counter"), "1".into(), actor("a")).await.expect("counts").output, "1");
    let mut spin = def("spin");
    spin.limits.max_execution_ms = Some(500.0);
    let busy = tokio::spawn({
        let ex = ex.clone();
        async move { ex.execute(&spin, "1".into(), CallOptions::default()).await.map(|_| ()).map_err(|e| e.code()) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Holds the actor's place, and waits for the one concurrency slot.
    let before = tokio::spawn({
        let ex = ex.clone();
        async move { ex.execute(&def("counter"), "1".into(), actor("a")).await.map(|o| o.output) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!before.is_finished(), "waits behind the spinning call");
    assert!(ex.drop_actor(&def("counter"), "a"));
    let after = ex.execute(&def("counter"), "1".into(), actor("a")).await.expect("counts").output;
    assert_eq!(busy.await.expect("ran"), Err("TIMEOUT"));
    assert_eq!(before.await.expect("ran").expect("counts"), "2", "the call made before the drop sees the state");
    assert_eq!(after, "1", "the call made after the drop starts fresh");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drop_landing_between_two_holders_applies_before_a_snapshot_or_restore_as_before_a_call() {
    // Review AZ1: a `dropActor` that finds the slot let go and not yet taken leaves its reset to
    // the next holder. A call started fresh; a snapshot took the dropped state, and a restore's
    // instance went when it let the slot go, lost though the restore had succeeded.
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let counter = def("counter");
    let key = crate::actors::ActorKey { def: counter.key(), actor_id: "a".into() };
    for _ in 0..3 {
        ex.execute(&counter, "1".into(), actor("a")).await.expect("counts");
    }
    let three = ex.snapshot_actor(&counter, "a").await.expect("a snapshot at 3");
    ex.actors.mark_reset(&key);
    let dropped = ex.snapshot_actor(&counter, "a").await.map(|_| ()).map_err(|e| e.code());
    assert_eq!(dropped, Err("INVALID_ARGUMENT"), "the dropped state is not snapshotted");
    assert_eq!(ex.execute(&counter, "1".into(), actor("a")).await.expect("counts").output, "1", "starts fresh");
    ex.actors.mark_reset(&key);
    ex.restore_actor(&counter, "a", &three).await.expect("restored");
    assert_eq!(ex.execute(&counter, "1".into(), actor("a")).await.expect("counts").output, "4", "the restore stands");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_actor_holds_no_heartbeat_of_its_last_call() {
    // Review BC1: an idle actor kept its last call's heartbeat (up to 384 KiB, with or without
    // onProgress), not counted in maxActorMemoryMB: 533 actors held 3x their bound.
    let source = Arc::new(MemorySource::new());
    let guest = g::with_imports(
        r#"(import "loom" "progress" (func $progress (param i32)))"#,
        r#"(data (i32.const 200) "\04\00\00\00\31\00\32\00")
        (func (export "execute") (param $in i32) (result i32)
          (call $progress (i32.const 204))
          (local.get $in))"#,
    );
    source.put("beat.wasm", guest);
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let beat = def("beat");
    assert_eq!(ex.execute(&beat, "1".into(), actor("a")).await.expect("runs").output, "1");
    let key = crate::actors::ActorKey { def: beat.key(), actor_id: "a".into() };
    assert_eq!(ex.actors.idle_heartbeat(&key), Some(None), "an instance, holding no heartbeat");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_headers_a_component_actor_keeps_count_in_max_actor_memory() {
    // Review BL2: wasi:http `fields` a component actor kept (up to 128 KiB each, 2,048 of them)
    // were counted nowhere: 12 actors held 3.1 GB under a maxActorMemoryMB of 64, none evicted.
    use crate::capabilities::Capabilities;
    use crate::http_client::Network;
    use crate::network::{HostRule, NetworkConfig};
    let source = Arc::new(MemorySource::new());
    source.put("fields.wasm", g::valued_fields_component());
    source.put("bodies.wasm", g::body_writes_component());
    let config = NetworkConfig { allowed_hosts: vec![HostRule::parse("127.0.0.1").expect("rule")], ..Default::default() };
    let options = ExecutorOptions { network: Some(Network::new(config).expect("network")), max_actor_memory_bytes: 16 << 20, ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let d = Definition { capabilities: Capabilities { network: true, ..Default::default() }, ..def("fields") };
    // 100 headers of 64 KiB: 6.4 MB in the host, beside a 128 KiB memory.
    ex.execute(&d, "100".into(), actor("a")).await.expect("keeps them");
    assert!(ex.actors.held_memory() > 100 * 65536, "held {}", ex.actors.held_memory());
    // Review BM1: requests kept after 128 KiB were written to each one's body (and the body and
    // its stream dropped) held the bytes written, uncounted.
    let bodies = Definition { name: "bodies".into(), wasm_blob_path: "bodies.wasm".into(), ..d.clone() };
    let before = ex.actors.held_memory();
    assert_eq!(ex.execute(&bodies, "40".into(), actor("w")).await.expect("keeps them").output, "1");
    assert!(ex.actors.held_memory() - before > 40 * 2 * 65536, "held {} more", ex.actors.held_memory() - before);
    assert!(ex.drop_actor(&bodies, "w"));
    // Two more such actors are past the executor's 16 MiB: the idle ones go first.
    ex.execute(&d, "100".into(), actor("b")).await.expect("keeps them");
    ex.execute(&d, "100".into(), actor("c")).await.expect("keeps them");
    assert!(ex.stats().actors < 3, "{} actors live", ex.stats().actors);
    assert!(ex.actors.held_memory() <= 16 << 20, "held {}", ex.actors.held_memory());
}

#[tokio::test(flavor = "multi_thread")]
async fn many_small_header_values_count_as_the_host_holds_them() {
    // Review BO2: each value cost the host about 101 bytes beside its own (its map entry, its heap
    // block), counted as 64: an actor's 2,000 `fields` of 3,000 one-byte values held 607 MB,
    // counted as 390 MB. And each call walked all 6 million values, 22 ms past a 2 ms deadline:
    // past `MEASURED_VALUES`, maps count as full unread.
    use crate::capabilities::Capabilities;
    use crate::http_client::Network;
    use crate::network::{HostRule, NetworkConfig};
    let source = Arc::new(MemorySource::new());
    source.put("many.wasm", g::many_values_fields_component());
    let config = NetworkConfig { allowed_hosts: vec![HostRule::parse("127.0.0.1").expect("rule")], ..Default::default() };
    let options = ExecutorOptions { network: Some(Network::new(config).expect("network")), ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let d = Definition { capabilities: Capabilities { network: true, ..Default::default() }, ..def("many") };
    // 10 maps of 3,000 values: all read (under `MEASURED_VALUES`), at least 101 bytes a value.
    ex.execute(&d, "10".into(), actor("a")).await.expect("keeps them");
    let read = ex.actors.held_memory();
    assert!(read > 10 * 3000 * 101, "held {read}");
    // 100 more, past what one measure reads: the maps not read count as full, so no fewer bytes.
    ex.execute(&d, "100".into(), actor("a")).await.expect("keeps them");
    let held = ex.actors.held_memory();
    assert!(held > 110 * 3000 * 101, "held {held}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_definition_checked_once_runs_its_calls_on_the_same_actor_and_module() {
    // An actor handle's calls pass its definition as checked when the handle was made: not
    // validated again, its key and config not copied again. They must land where a call with
    // the definition itself lands.
    let source = Arc::new(MemorySource::new());
    source.put("counter.wasm", g::counter());
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let d = def("counter");
    let checked = d.checked().expect("valid");
    for n in 1..=4 {
        let call = CallOptions { checked: (n % 2 == 0).then(|| checked.clone()), ..actor("a") };
        assert_eq!(ex.execute(&d, "1".into(), call).await.expect("counts").output, n.to_string());
    }
    assert_eq!((ex.stats().actors, ex.stats().cache.modules), (1, 1));
    // Refused as the call would refuse it.
    assert_eq!(Definition { name: String::new(), ..def("counter") }.checked().map(|_| ()).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
    let long = Definition { version: "v".repeat(crate::options::MAX_KEY_BYTES + 1), ..def("counter") };
    assert_eq!(long.checked().map(|_| ()).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
    assert_eq!(ex.execute(&long, "1".into(), actor("b")).await.map(|_| ()).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
}
