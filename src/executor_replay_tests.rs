//! The executor's tests of deterministic replay (review BK1): one step, one outcome, on every
//! worker, whatever the worker held or made before.
use super::*;
use crate::store::MemorySource;
use crate::test_guests as g;

fn def(name: &str, path: &str) -> Definition {
    Definition { name: name.into(), version: "1".into(), wasm_blob_path: path.into(), deterministic: true, ..Default::default() }
}

fn actor(id: &str, seed: f64) -> CallOptions {
    CallOptions { actor_id: Some(id.into()), now: Some(1_700_000_000_000.0), seed: Some(seed), ..Default::default() }
}

/// A guest whose start function keeps one bit of its seed (AssemblyScript's `Math.random`
/// seed, `env.seed`) on each of 32 pages nothing else writes; `execute` returns the 32 bits as
/// a JSON string.
fn seeded_pages() -> Vec<u8> {
    g::with_imports(
        r#"(import "env" "seed" (func $seed (result f64)))"#,
        r#"(func $start (local $bits i64) (local $k i32)
          (drop (memory.grow (i32.const 32)))
          (local.set $bits (i64.trunc_f64_u (call $seed)))
          (loop $page
            (i32.store8 (i32.mul (i32.add (local.get $k) (i32.const 1)) (i32.const 65536))
              (i32.wrap_i64 (i64.and (i64.shr_u (local.get $bits) (i64.extend_i32_u (local.get $k))) (i64.const 1))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br_if $page (i32.lt_u (local.get $k) (i32.const 32)))))
        (start $start)
        (func (export "execute") (param $in i32) (result i32) (local $out i32) (local $k i32)
          (local.set $out (call $new (i32.const 68) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.const 0x22))
          (i32.store16 (i32.add (local.get $out) (i32.const 66)) (i32.const 0x22))
          (loop $page
            (i32.store16 (i32.add (local.get $out) (i32.add (i32.const 2) (i32.shl (local.get $k) (i32.const 1))))
              (i32.add (i32.const 48) (i32.load8_u (i32.mul (i32.add (local.get $k) (i32.const 1)) (i32.const 65536)))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br_if $page (i32.lt_u (local.get $k) (i32.const 32))))
          (local.get $out))"#,
    )
}

fn executor(source: &Arc<MemorySource>) -> Arc<Executor> {
    // Code not shared between executors: each makes its module's initial image itself, as
    // workers in other processes do.
    Arc::new(Executor::new(source.clone(), ExecutorOptions { share_code: false, ..Default::default() }).expect("executor"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_restores_to_the_same_memory_on_every_worker_whatever_the_start_function_read() {
    // Review BK1: the initial image snapshots are taken against was made on real randomness, so
    // pages the actor held equal to one worker's image were left out, and filled from another
    // worker's different image on restore: eight workers answered 0 five times and 1 three times.
    let source = Arc::new(MemorySource::new());
    source.put("seeded.wasm", seeded_pages());
    let d = def("seeded", "seeded.wasm");
    let a = executor(&source);
    a.execute(&d, "{}".into(), actor("r", 7.0)).await.expect("runs");
    let snapshot = a.snapshot_actor(&d, "r").await.expect("a snapshot");
    // The next step, on the worker that made the actor.
    let step = a.execute(&d, "{}".into(), actor("r", 7.0)).await.expect("runs").output;
    let next = a.snapshot_actor(&d, "r").await.expect("a snapshot");
    for i in 0..4 {
        let b = executor(&source);
        b.restore_actor(&d, "r", &snapshot).await.expect("restored");
        let again = b.execute(&d, "{}".into(), actor("r", 7.0)).await.expect("runs").output;
        assert_eq!(again, step, "worker {i} restored other pages");
        assert_eq!(b.snapshot_actor(&d, "r").await.expect("a snapshot"), next, "worker {i}'s next snapshot");
    }
}

/// A guest whose start function burns `START` loop turns; `execute` burns as many for an input
/// starting `[`, traps for one starting `"`, and returns 1.
fn costly_start() -> Vec<u8> {
    g::with_prelude(
        r#"(func $burn (local $i i32)
          (loop $l
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 200000)))))
        (func $start (call $burn))
        (start $start)
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x5b)) (then (call $burn)))
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x22)) (then unreachable))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.const 49))
          (local.get $out))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_actors_step_has_its_whole_fuel_as_the_live_actors_had() {
    // Review BK1: a transactional actor rebuilt from its last good state ran its start function
    // on the step's maxFuel, so a step that succeeded on the live actor was OUT_OF_FUEL after a
    // rollback (and on every worker that reloaded a durable actor).
    let source = Arc::new(MemorySource::new());
    source.put("costly.wasm", costly_start());
    let ex = executor(&source);
    // How much one burn costs: a fresh call pays the start function's, and the step's.
    let metered = |max: f64| Definition { limits: crate::limits::LimitOverrides { max_fuel: Some(max), ..Default::default() }, ..def("costly", "costly.wasm") };
    let tx = |input: &'static str, d: Definition| {
        let ex = ex.clone();
        async move { ex.execute(&d, input.into(), CallOptions { transactional: Some(true), ..actor("t", 1.0) }).await }
    };
    let probe = ex.execute(&metered(1e12), "[]".into(), CallOptions::default()).await.expect("runs");
    let both = probe.fuel_consumed.expect("metered");
    // Room for one burn and a little, not two.
    let d = metered((both * 3 / 4) as f64);
    tx("{}", d.clone()).await.expect("the first step: its start function and a small step");
    let live = tx("[]", d.clone()).await.expect("a large step on the live actor");
    assert_eq!(tx("\"trap\"", d.clone()).await.expect_err("traps").code(), "TRAP");
    let rebuilt = tx("[]", d.clone()).await.expect("the same large step on the actor rebuilt from its last good state");
    assert_eq!(rebuilt.fuel_consumed, live.fuel_consumed, "the step's own fuel only");
}

/// A guest that polls a 1 ms and a 2 ms deadline 20 times (WASI preview 1 `poll_oneoff`) and
/// returns 1 if every poll returned both events, else 0.
fn polls_clocks() -> Vec<u8> {
    g::with_imports(
        r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "execute") (param $in i32) (result i32) (local $i i32) (local $ok i32) (local $out i32)
          (i64.store (i32.const 8192) (i64.const 1))
          (i32.store8 (i32.const 8200) (i32.const 0))
          (i32.store (i32.const 8208) (i32.const 1))
          (i64.store (i32.const 8216) (i64.const 1000000))
          (i64.store (i32.const 8240) (i64.const 2))
          (i32.store8 (i32.const 8248) (i32.const 0))
          (i32.store (i32.const 8256) (i32.const 1))
          (i64.store (i32.const 8264) (i64.const 2000000))
          (local.set $ok (i32.const 1))
          (loop $l
            (if (i32.ne (call $poll (i32.const 8192) (i32.const 8288) (i32.const 2) (i32.const 8400)) (i32.const 0))
              (then (local.set $ok (i32.const 0))))
            (if (i32.ne (i32.load (i32.const 8400)) (i32.const 2)) (then (local.set $ok (i32.const 0))))
            (if (i64.ne (i64.add (i64.load (i32.const 8288)) (i64.load (i32.const 8320))) (i64.const 3)) (then (local.set $ok (i32.const 0))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 20))))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (local.get $ok)))
          (local.get $out))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deterministic_calls_clock_deadlines_pass_at_once_in_preview_1() {
    // Review BK1: on real time, how many events a poll returned hung on scheduling (40 polls of a
    // 1 ms and a 2 ms deadline returned both 1 to 5 times, run to run), and each poll slept.
    let source = Arc::new(MemorySource::new());
    source.put("polls.wasm", polls_clocks());
    // WASI is linked for a guest granted an environment variable.
    let env = crate::capabilities::EnvOffer::Values(vec![("LOOM_POLL".into(), "1".into())]);
    let ex = Arc::new(Executor::new(source.clone(), ExecutorOptions { env, ..Default::default() }).expect("executor"));
    let d = Definition { capabilities: crate::capabilities::Capabilities { env: vec!["LOOM_POLL".into()], ..Default::default() }, ..def("polls", "polls.wasm") };
    for _ in 0..3 {
        let out = ex.execute(&d, "{}".into(), CallOptions::default()).await.expect("runs");
        assert_eq!(out.output, "1", "every poll returned both deadlines' events");
    }
}

/// A counter whose start function grows its memory by `Date.now() & 1` pages; an input starting
/// `"` traps.
fn clock_sized() -> Vec<u8> {
    g::with_imports(
        r#"(import "env" "Date.now" (func $now (result f64)))"#,
        r#"(global $count (mut i32) (i32.const 0))
        (func $start (drop (memory.grow (i32.and (i32.trunc_f64_u (call $now)) (i32.const 1)))))
        (start $start)
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x22)) (then unreachable))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deterministic_actor_is_rebuilt_as_it_was_made_whatever_the_calls_clock() {
    // Review BL1: the rebuilt instance's start function ran under the call's `now`, and one that
    // sized its memory by it made every rebuild at an odd `now` refuse the state the live actor
    // went on from (SNAPSHOT_INVALID).
    let source = Arc::new(MemorySource::new());
    source.put("sized.wasm", clock_sized());
    let ex = executor(&source);
    let d = def("sized", "sized.wasm");
    let at = |now: f64| CallOptions { actor_id: Some("s".into()), transactional: Some(true), now: Some(now), ..Default::default() };
    assert_eq!(ex.execute(&d, "{}".into(), at(0.0)).await.expect("made").output, "1");
    assert_eq!(ex.execute(&d, "{}".into(), at(1.0)).await.expect("a step").output, "2");
    assert_eq!(ex.execute(&d, "\"trap\"".into(), at(1.0)).await.expect_err("traps").code(), "TRAP");
    assert_eq!(ex.execute(&d, "{}".into(), at(1.0)).await.expect("rebuilt from its last good state").output, "3");
    // Restored on another worker, at an odd `now` too.
    let snapshot = ex.snapshot_actor(&d, "s").await.expect("a snapshot");
    let other = executor(&source);
    other.restore_actor(&d, "s", &snapshot).await.expect("restored");
    assert_eq!(other.execute(&d, "{}".into(), at(3.0)).await.expect("a step").output, "4");
}
