//! The executor's tests of WASI waits and the call's concurrency slot: a guest sleeping in
//! `poll_oneoff`, `poll` or `pollable.block` keeps its slot, as a guest spinning does. Review BK2
//! saw sleeping command modules hold an executor's other calls; giving the slot back, as a host
//! function's wait does, let a definition granted only an environment variable park instances
//! and their memory past `maxConcurrency` (review BO1: 16 sleepers of 200 MiB under
//! `maxConcurrency: 2` held 3.1 GB; 3,000 took the instance pool, another executor's calls were
//! `BUSY` and its idle actors evicted. Review BO2: components parked in `block` held 600 MB of
//! `fields` each). A host function or the network is the host's to grant; a clock is not.
use super::*;
use crate::store::MemorySource;
use crate::test_guests as g;
use std::time::Duration;

/// A guest that sleeps 2 s in one WASI preview 1 `poll_oneoff` of a relative monotonic clock,
/// then answers "1".
fn p1_sleeper() -> Vec<u8> {
    g::with_imports(
        r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "execute") (param $in i32) (result i32) (local $out i32)
          (i64.store (i32.const 8192) (i64.const 7))
          (i32.store8 (i32.const 8200) (i32.const 0))
          (i32.store (i32.const 8208) (i32.const 1))
          (i64.store (i32.const 8216) (i64.const 2000000000))
          (drop (call $poll (i32.const 8192) (i32.const 8288) (i32.const 1) (i32.const 8400)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.load (i32.const 8400))))
          (local.get $out))"#,
    )
}

/// A component that sleeps 2 s on a clock's pollable, by `[method]pollable.block` when its input
/// starts with `b`, else by `poll` of a list of it; answers "1".
fn p2_sleeper() -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type $p (sub resource)))
    (export "[method]pollable.block" (func (param "self" (borrow $p))))
    (export "poll" (func (param "in" (list (borrow $p))) (result (list u32))))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer $C $pollable (type $p))
    (export "pollable" (type $pe (eq $p)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))))
  (core module $libc
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096)))
  (core instance $libc (instantiate $libc))
  (core func $sub (canon lower (func $clock "subscribe-duration")))
  (core func $block (canon lower (func $poll "[method]pollable.block")))
  (core func $polls (canon lower (func $poll "poll") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "sub" (func $sub (param i64) (result i32)))
    (import "host" "block" (func $block (param i32)))
    (import "host" "poll" (func $poll (param i32 i32 i32)))
    (func (export "execute") (param $p i32) (param $len i32) (result i32) (local $h i32)
      (local.set $h (call $sub (i64.const 2000000000)))
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 98))
        (then (call $block (local.get $h)))
        (else
          (i32.store (i32.const 512) (local.get $h))
          (call $poll (i32.const 512) (i32.const 1) (i32.const 520))))
      ANSWER_ONE)
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc))
    (with "host" (instance (export "sub" (func $sub)) (export "block" (func $block)) (export "poll" (func $polls))))))
LIFT_EXECUTE"#
            .replace("ANSWER_ONE", crate::test_http_components::ANSWER_ONE)
            .replace("LIFT_EXECUTE", crate::test_http_components::LIFT_EXECUTE),
    )
    .expect("test component parses")
}

fn def(name: &str, path: &str) -> Definition {
    Definition { name: name.into(), version: "1".into(), wasm_blob_path: path.into(), ..Default::default() }
}

/// Runs `sleeper` with `input` on an executor of one concurrency slot, then, once it holds the
/// slot, a quick call: the quick call must wait for the sleeper's slot.
async fn a_quick_call_waits(sleeper: Definition, input: &str) {
    let source = Arc::new(MemorySource::new());
    source.put("p1.wasm", p1_sleeper());
    source.put("p2.wasm", p2_sleeper());
    source.put("echo.wasm", g::echo());
    // WASI preview 1 is linked for a guest granted an environment variable.
    let env = crate::capabilities::EnvOffer::Values(vec![("LOOM_SLEEP".into(), "1".into())]);
    let options = ExecutorOptions { env, max_concurrency: std::num::NonZeroUsize::new(1).expect("1"), ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let quick = def("echo", "echo.wasm");
    // Compiled before, so the quick call's time is its slot's.
    ex.execute(&quick, "{}".into(), CallOptions::default()).await.expect("echo runs");
    let sleeping = {
        let ex = ex.clone();
        let input = input.to_string();
        tokio::spawn(async move { ex.execute(&sleeper, input, CallOptions::default()).await })
    };
    // The sleeper holds the one slot (its compile and first instance may take a while on a busy
    // machine), then sleeps 2 s.
    while ex.permits.available_permits() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let quick_started = Instant::now();
    let quick_out = ex.execute(&quick, "{\"a\":1}".into(), CallOptions::default()).await.expect("echo runs");
    let quick_took = quick_started.elapsed();
    assert_eq!(quick_out.output, "{\"a\":1}");
    let slept = sleeping.await.expect("joins");
    assert_eq!(slept.expect("the sleeper runs").output, "1");
    // The sleeper had at least 1.9 s of its 2 s left when the quick call started: the quick
    // call waited for its slot (given back, it ran at once). Not its end time against the
    // sleeper's: the slot is free as the sleeper's guest returns, before its call resolves, and a
    // busy machine ran the quick call in between.
    assert!(quick_took > Duration::from_secs(1), "the quick call waited for the sleeper's slot ({quick_took:?})");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preview_1_sleep_keeps_the_calls_slot() {
    let d = Definition { capabilities: crate::capabilities::Capabilities { env: vec!["LOOM_SLEEP".into()], ..Default::default() }, ..def("p1", "p1.wasm") };
    a_quick_call_waits(d, "{}").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_components_block_keeps_the_calls_slot() {
    a_quick_call_waits(def("p2", "p2.wasm"), "b").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_components_poll_keeps_the_calls_slot() {
    a_quick_call_waits(def("p2", "p2.wasm"), "p").await;
}
