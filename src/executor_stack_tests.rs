//! The executor's tests of idle actors' fiber stacks (see `fiber_stacks`): released while idle,
//! with every actor's state intact, also against a sweeper racing the calls.
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::MemorySource;
use crate::test_guests as g;

fn def(name: &str) -> Definition {
    Definition { name: name.into(), version: "1.0.0".into(), wasm_blob_path: format!("{name}.wasm"), ..Default::default() }
}

/// A counter that recurses 5,000 calls deep on every call (touching a few hundred KiB of its
/// fiber stack), so a released stack's pages are faulted back in by the next call.
fn deep_counter() -> Vec<u8> {
    deep_counter_of(5000)
}

/// `deep_counter`, recursing `depth` calls deep.
fn deep_counter_of(depth: u32) -> Vec<u8> {
    g::with_prelude(
        &r#"(global $count (mut i32) (i32.const 0))
        (func $down (param $n i32) (result i32)
          (if (result i32) (i32.eqz (local.get $n))
            (then (i32.const 0))
            (else (i32.add (i32.const 1) (call $down (i32.sub (local.get $n) (i32.const 1)))))))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (if (i32.ne (call $down (i32.const DEPTH)) (i32.const DEPTH)) (then unreachable))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#
            .replace("DEPTH", &depth.to_string()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_actors_give_back_their_stack_pages_and_keep_their_state_while_calls_race_the_sweep() {
    let source = Arc::new(MemorySource::new());
    source.put("deep.wasm", deep_counter());
    // Optimized code from the first call: only the pooled engine's stacks are released.
    let ex = Arc::new(Executor::new(source, ExecutorOptions { tier_up: false, ..Default::default() }).expect("executor"));
    let d = def("deep");
    let actor = |id: String| CallOptions { actor_id: Some(id), ..Default::default() };
    for i in 0..20 {
        assert_eq!(ex.execute(&d, "{}".into(), actor(format!("a{i}"))).await.expect("first call").output, "1");
    }
    // None is idle for a minute yet: all 20 hold their stacks, and the first is due within it.
    let early = crate::actors::release_idle_stacks(Duration::from_secs(60));
    assert!(early.holding >= 20, "{} holding", early.holding);
    assert!(early.next_due_ms.is_some_and(|ms| (1..=60_000).contains(&ms)), "{:?}", early.next_due_ms);
    // Every idle actor (idle for at least 0 ms) gives its stack back. (The sweep is process-wide:
    // what it leaves holding are other tests' busy actors, so this test counts its own releases.)
    let before = crate::fiber_stacks::released();
    crate::actors::release_idle_stacks(Duration::ZERO);
    assert!(crate::fiber_stacks::released() >= before + 20, "20 actors' stacks released");
    for i in 0..20 {
        assert_eq!(ex.execute(&d, "{}".into(), actor(format!("a{i}"))).await.expect("after release").output, "2");
    }

    // An actor restored from a snapshot (a fresh instance of its own) is watched too.
    let snap = ex.snapshot_actor(&d, "a0").await.expect("snapshot");
    ex.restore_actor(&d, "restored", &snap).await.expect("restore");
    assert_eq!(ex.execute(&d, "{}".into(), actor("restored".into())).await.expect("restored call").output, "3");
    let key = |id: &str| crate::actors::ActorKey { def: d.key(), actor_id: id.into() };
    assert_eq!(ex.actors.stack_watched(&key("restored")), Some(true));
    assert_eq!(ex.actors.stack_watched(&key("a0")), Some(true));
    // The 20 actors (called again since) and the restored one.
    let before = crate::fiber_stacks::released();
    crate::actors::release_idle_stacks(Duration::ZERO);
    assert!(crate::fiber_stacks::released() >= before + 21, "21 actors' stacks released");
    assert_eq!(ex.execute(&d, "{}".into(), actor("restored".into())).await.expect("after release").output, "4");
    assert!(ex.drop_actor(&d, "restored"));

    // Hostile: a sweeper that never sleeps, against 8 callers on the same 20 actors. Each
    // actor's count must go up by exactly one per call, and every call must succeed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swept = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sweeper = {
        let (stop, swept) = (stop.clone(), swept.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                crate::actors::release_idle_stacks(Duration::ZERO);
                swept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Often, but leaving the other tests of this process a core.
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // Under load the 240 calls could all end before the sweeper's thread first ran (a full
    // `cargo test` here: 0 sweeps): the calls start once it has swept.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while swept.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "the sweeper never ran");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let released_before = crate::fiber_stacks::released();
    let swept_before = swept.load(std::sync::atomic::Ordering::Relaxed);
    let mut callers = Vec::new();
    for c in 0..8usize {
        let ex = ex.clone();
        let d = d.clone();
        callers.push(tokio::spawn(async move {
            let mut outputs = Vec::new();
            for n in 0..30usize {
                let id = format!("a{}", (c * 7 + n * 3) % 20);
                let out = ex.execute(&d, "{}".into(), CallOptions { actor_id: Some(id.clone()), ..Default::default() }).await;
                outputs.push((id, out.expect("a call racing the sweeper").output));
            }
            outputs
        }));
    }
    let mut calls = std::collections::HashMap::<String, u32>::new();
    let mut seen = std::collections::HashMap::<String, Vec<u32>>::new();
    for c in callers {
        for (id, out) in c.await.expect("caller") {
            *calls.entry(id.clone()).or_default() += 1;
            seen.entry(id).or_default().push(out.parse().expect("a digit"));
        }
    }
    // A sweep begun after the calls began (under load, maybe only once they ended).
    while swept.load(std::sync::atomic::Ordering::Relaxed) < swept_before + 2 {
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(30), "the sweeper stopped");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sweeper.join().expect("sweeper");
    assert!(crate::fiber_stacks::released() > released_before, "the sweeper released stacks");
    // Each actor saw counts 3..=2+calls (mod 10), each exactly once.
    for (id, n) in &calls {
        let mut got = seen[id].clone();
        got.sort_unstable();
        let mut want: Vec<u32> = (3..3 + n).map(|k| k % 10).collect();
        want.sort_unstable();
        assert_eq!(got, want, "actor {id}");
        let last = ex.execute(&d, "{}".into(), actor(id.clone())).await.expect("final call").output;
        assert_eq!(last, ((3 + n) % 10).to_string(), "actor {id} kept its count");
    }
}

/// Hostile (review BR2): actors recursing deep on every call, called round-robin so that none is
/// idle long enough for the sweep, held 796 KiB of stack each, 700 MB under a cap of 64 MB. Near
/// the cap, their stacks are measured and counted: the stacks idle actors keep resident stay
/// within twice the cap (an unmeasured stack counts as a whole one, within the room left), and
/// the count holds the deep actor's stack.
#[tokio::test(flavor = "multi_thread")]
async fn deep_recursing_actors_count_their_stacks_in_the_actor_memory_cap() {
    let source = Arc::new(MemorySource::new());
    source.put("deep.wasm", deep_counter_of(15_000));
    let cap: u64 = 8 << 20;
    let opts = || ExecutorOptions { tier_up: false, max_actor_memory_bytes: cap, ..Default::default() };
    let ex = Arc::new(Executor::new(source.clone(), opts()).expect("executor"));
    let d = def("deep");
    let actor = |id: String| CallOptions { actor_id: Some(id), ..Default::default() };
    let round = |n: usize| {
        let (ex, d) = (ex.clone(), d.clone());
        async move {
            for i in 0..60 {
                let out = ex.execute(&d, "{}".into(), actor(format!("a{i}"))).await.expect("a deep call");
                assert_eq!(out.output, (n % 10).to_string(), "round {n}, actor {i} kept its count");
            }
        }
    };
    round(1).await;
    round(2).await;
    // The pool's stacks are not checked against the process's maps yet: past the cap, the sweep
    // gives them back (soon, off the calls' path), and no actor is evicted for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (resident, idle) = ex.actors.stacks_resident();
        assert_eq!(idle, 60, "no actor evicted");
        if resident <= 2 * cap {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "idle actors' stacks hold {resident} bytes under a cap of {cap}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Now known, they are given back as the cap is passed: at once.
    round(3).await;
    let (resident, idle) = ex.actors.stacks_resident();
    assert_eq!(idle, 60, "no actor evicted");
    assert!(resident <= 2 * cap, "idle actors' stacks hold {resident} bytes under a cap of {cap}");
    assert!(ex.actors.held_memory() <= cap + (1 << 20), "counted {}", ex.actors.held_memory());

    // One actor under a cap it reaches with its stack: the stack is in its count.
    let small = Arc::new(Executor::new(source, ExecutorOptions { max_actor_memory_bytes: 1 << 20, ..opts() }).expect("executor"));
    small.execute(&d, "{}".into(), actor("one".into())).await.expect("a deep call");
    let (stack, _) = small.actors.stacks_resident();
    assert!(stack > 200 << 10, "15,000 calls deep touch hundreds of KiB of stack: {stack}");
    let memory = 65536;
    assert!(small.actors.held_memory() >= memory + stack / 2, "counted {} with a stack of {stack}", small.actors.held_memory());
}

/// Hostile (review BS1): actors recursing deep with a second call waiting in each one's line. A
/// waiting call takes the actor's lock as the first ends, so no sweep could give its counted
/// stack back, and idle actors were evicted for it (60 such actors had 21 of 500 idle ones lose
/// their state; 2,000 held 1.5 GB under a cap of 64 MB). Past the cap, a call's own deep stack
/// goes as it ends, and busy actors' counted stacks evict no one.
#[tokio::test(flavor = "multi_thread")]
async fn deep_actors_with_calls_waiting_evict_no_idle_actor_for_their_stacks() {
    let source = Arc::new(MemorySource::new());
    source.put("deep.wasm", deep_counter_of(15_000));
    source.put("shallow.wasm", deep_counter_of(0));
    let cap: u64 = 16 << 20;
    let opts = ExecutorOptions { tier_up: false, max_actor_memory_bytes: cap, ..Default::default() };
    let ex = Arc::new(Executor::new(source, opts).expect("executor"));
    let (deep, shallow) = (def("deep"), def("shallow"));
    let actor = |id: String| CallOptions { actor_id: Some(id), ..Default::default() };
    for i in 0..100 {
        assert_eq!(ex.execute(&shallow, "{}".into(), actor(format!("v{i}"))).await.expect("a victim's call").output, "1");
    }
    for burst in 0..3 {
        let mut calls = Vec::new();
        for i in 0..40 {
            for _ in 0..2 {
                let (ex, deep) = (ex.clone(), deep.clone());
                calls.push(tokio::spawn(async move { ex.execute(&deep, "{}".into(), actor(format!("d{i}"))).await }));
            }
        }
        for c in calls {
            c.await.expect("joined").unwrap_or_else(|e| panic!("burst {burst}: {e}"));
        }
        let (resident, _) = ex.actors.stacks_resident();
        assert!(resident <= 2 * cap, "burst {burst}: idle actors' stacks hold {resident} bytes under a cap of {cap}");
    }
    for i in 0..100 {
        let out = ex.execute(&shallow, "{}".into(), actor(format!("v{i}"))).await.expect("a victim's call");
        assert_eq!(out.output, "2", "victim {i} kept its count (actorCreated: {})", out.actor_created);
    }
    for i in 0..40 {
        assert_eq!(ex.execute(&deep, "{}".into(), actor(format!("d{i}"))).await.expect("a deep call").output, "7", "d{i} kept its count");
    }
}
