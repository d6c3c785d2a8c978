//! The executor's tests of actors across a tier-up: an actor made while its module ran on
//! baseline code moves to the optimized code with its state, unless part of that state lives
//! where a move cannot carry it.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::actors::ActorKey;
use crate::artifacts::ArtifactCache;
use crate::engine::EngineKind;
use crate::store::MemorySource;
use crate::test_guests as g;

pub(super) fn def(name: &str) -> Definition {
    Definition { name: name.into(), version: "1.0.0".into(), wasm_blob_path: format!("{name}.wasm"), ..Default::default() }
}

pub(super) fn executor(name: &str, bytes: Vec<u8>) -> Arc<Executor> {
    let source = Arc::new(MemorySource::new());
    source.put(&format!("{name}.wasm"), bytes);
    Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"))
}

pub(super) async fn call(ex: &Arc<Executor>, d: &Definition, id: &str, transactional: bool) -> CallOutput {
    let opts = CallOptions { actor_id: Some(id.into()), transactional: Some(transactional), ..Default::default() };
    ex.execute(d, "{}".into(), opts).await.expect("actor call")
}

pub(super) async fn until_tiered_up(ex: &Arc<Executor>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ex.stats().cache.tier_ups == 0 {
        assert!(Instant::now() < deadline, "no tier-up in 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actor_made_on_baseline_code_moves_to_the_optimized_code_with_its_state() {
    let ex = executor("counter", g::unique(g::counter(), b"moves"));
    let d = def("counter");
    let key = |id: &str| ActorKey { def: d.key(), actor_id: id.into() };
    // The first calls get the baseline code: both actors are made on it.
    assert_eq!(call(&ex, &d, "plain", false).await.output, "1");
    assert_eq!(call(&ex, &d, "tx", true).await.output, "1");
    assert_eq!(call(&ex, &d, "plain", false).await.output, "2");
    for id in ["plain", "tx"] {
        let kind = ex.actors.instance_kind(&key(id));
        assert!(matches!(kind, Some(EngineKind::Baseline) | Some(EngineKind::Plain)), "{id}: {kind:?}");
    }
    until_tiered_up(&ex).await;
    let moved = call(&ex, &d, "plain", false).await;
    assert_eq!((moved.output.as_str(), moved.actor_created), ("3", false));
    assert_eq!(ex.actors.instance_kind(&key("plain")), Some(EngineKind::Plain));
    assert_eq!(call(&ex, &d, "tx", true).await.output, "2");
    assert_eq!(ex.actors.instance_kind(&key("tx")), Some(EngineKind::Plain));
    for want in ["4", "5"] {
        assert_eq!(call(&ex, &d, "plain", false).await.output, want);
    }
    assert_eq!(call(&ex, &d, "tx", true).await.output, "3");
    // A snapshot of the moved actor is the state it kept counting on.
    let snap = ex.snapshot_actor(&d, "plain").await.expect("snapshot");
    ex.restore_actor(&d, "copy", &snap).await.expect("restore");
    assert_eq!(call(&ex, &d, "copy", false).await.output, "6");
}

/// Hostile: a guest whose state is which function sits in its table (`table.set` on every
/// call). Moving it would bring back the table's first element: its answers would repeat.
fn table_flipper() -> Vec<u8> {
    g::with_prelude(
        r#"(type $answer (func (result i32)))
        (table $flip 1 funcref)
        (elem (table $flip) (i32.const 0) func $zero)
        (elem declare func $zero $one)
        (func $zero (result i32) (i32.const 0))
        (func $one (result i32) (i32.const 1))
        (func (export "execute") (param $in i32) (result i32) (local $v i32) (local $out i32)
          (local.set $v (call_indirect $flip (type $answer) (i32.const 0)))
          (if (local.get $v)
            (then (table.set $flip (i32.const 0) (ref.func $zero)))
            (else (table.set $flip (i32.const 0) (ref.func $one))))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (local.get $v)))
          (local.get $out))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actor_whose_state_lives_in_a_table_keeps_its_instance_across_a_tier_up() {
    let ex = executor("flip", g::unique(table_flipper(), b"flip"));
    let d = def("flip");
    let key = ActorKey { def: d.key(), actor_id: "f".into() };
    assert_eq!(call(&ex, &d, "f", false).await.output, "0");
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Baseline));
    until_tiered_up(&ex).await;
    for want in ["1", "0", "1"] {
        let out = call(&ex, &d, "f", false).await;
        assert_eq!((out.output.as_str(), out.actor_created), (want, false));
    }
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Baseline));
    // A new actor gets the optimized code.
    assert_eq!(call(&ex, &d, "new", false).await.output, "0");
    assert_eq!(ex.actors.instance_kind(&ActorKey { def: d.key(), actor_id: "new".into() }), Some(EngineKind::Plain));
}

/// A counter that also keeps a funcref in a mutable global: a global no snapshot can hold, so a
/// move of this actor fails (after its new instance is made) and must leave it as it was.
fn counter_with_a_funcref_global() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (global $last (mut funcref) (ref.null func))
        (elem declare func $mark)
        (func $mark)
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (global.set $last (ref.func $mark))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_that_fails_leaves_the_actor_on_its_instance_with_its_state() {
    let ex = executor("refglobal", g::unique(counter_with_a_funcref_global(), b"refglobal"));
    let d = def("refglobal");
    let key = ActorKey { def: d.key(), actor_id: "r".into() };
    assert_eq!(call(&ex, &d, "r", false).await.output, "1");
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Baseline));
    until_tiered_up(&ex).await;
    for want in ["2", "3", "4"] {
        let out = call(&ex, &d, "r", false).await;
        assert_eq!((out.output.as_str(), out.actor_created), (want, false));
        assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Baseline));
    }
}

/// An echo with `n` more functions, each a few instructions: the optimizing compiler takes a
/// while over it, so its tier-up lands after a small module's.
fn slow_to_optimize_echo(n: usize) -> Vec<u8> {
    let filler: String = (0..n)
        .map(|i| format!("(func (param $x i32) (result i32) (i32.add (i32.mul (local.get $x) (i32.const {i})) (i32.const 7)))"))
        .collect();
    g::with_prelude(&format!(r#"(func (export "execute") (param $in i32) (result i32) (local.get $in)) {filler}"#))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tier_up_that_lands_late_leaves_the_definition_on_its_latest_code() {
    // The definition runs an echo (baseline code, its optimized code compiling); then its blob
    // becomes a counter, which a fuel-metered call loads (the definition now means the counter).
    // The echo's optimized code lands after that: it takes the echo's slot, but the definition
    // stays on the counter (before, the tier-up pointed the definition back at the echo).
    let source = Arc::new(MemorySource::new());
    source.put("late.wasm", g::unique(slow_to_optimize_echo(3000), b"late-echo"));
    let ex = Arc::new(Executor::new(source.clone(), ExecutorOptions::default()).expect("executor"));
    let plain = def("late");
    let echoed = ex.execute(&plain, "{\"x\":1}".into(), CallOptions::default()).await.expect("echoes");
    assert_eq!(echoed.output, "{\"x\":1}");
    source.put("late.wasm", g::unique(g::counter(), b"late-counter"));
    let mut metered = def("late");
    metered.limits.max_fuel = Some(10_000_000.0);
    let counted = ex.execute(&metered, "{\"x\":1}".into(), CallOptions::default()).await.expect("counts");
    assert_eq!(counted.output, "1");
    // Both tier-ups (the echo's, the counter's metered code) have landed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ex.stats().cache.tier_ups < 2 {
        assert!(Instant::now() < deadline, "tier-ups: {}", ex.stats().cache.tier_ups);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = ex.execute(&plain, "{\"x\":1}".into(), CallOptions::default()).await.expect("runs");
    assert_eq!(after.output, "1", "the definition went back to the echo");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_modules_first_call_does_not_wait_for_background_compiles() {
    // Background compiles (tier-ups) are held back here: a module's first call that needed one
    // of their slots would wait for ever (before, tier-ups took the compile slots calls wait for:
    // on 2 cores, two of them made a new module's first call wait).
    let source = Arc::new(MemorySource::new());
    source.put("held-a.wasm", g::unique(g::echo(), b"held-a"));
    source.put("held-b.wasm", g::unique(g::echo(), b"held-b"));
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let held = crate::compile::hold_background_slots().await;
    for (name, input) in [("held-a", "{\"a\":1}"), ("held-b", "{\"b\":2}")] {
        let d = def(name);
        let call = ex.execute(&d, input.into(), CallOptions::default());
        let out = tokio::time::timeout(Duration::from_secs(30), call).await.expect("not waiting for a background slot");
        assert_eq!(out.expect("echoes").output, input);
    }
    assert_eq!(ex.stats().cache.tier_ups, 0, "a tier-up ran while the background slots were held");
    // Let go, both tier-ups land.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ex.stats().cache.tier_ups < 2 {
        assert!(Instant::now() < deadline, "tier-ups: {}", ex.stats().cache.tier_ups);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tier_up_landing_is_not_a_use_of_its_module() {
    // Two cached modules at most: an echo (its tier-up held back), then a module that stays on
    // baseline code (no tier-up of its own). The echo's tier-up lands after that: the echo is
    // still the least recently used, so a third module evicts it and not the one in use (before,
    // the landing counted as a use, and which module a third evicted depended on when it landed).
    let source = Arc::new(MemorySource::new());
    source.put("old.wasm", g::unique(g::echo(), b"lru-old"));
    source.put("used.wasm", g::unique(crate::shape::tests::compile_bomb(2000, 3000), b"lru-used"));
    source.put("new.wasm", g::unique(g::counter(), b"lru-new"));
    let options = ExecutorOptions { max_cached_modules: std::num::NonZeroUsize::new(2).expect("2"), ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let run = |name: &'static str| {
        let ex = ex.clone();
        async move { ex.execute(&def(name), "{\"x\":1}".into(), CallOptions::default()).await.expect("runs") }
    };
    let held = crate::compile::hold_background_slots().await;
    run("old").await;
    run("used").await;
    drop(held);
    until_tiered_up(&ex).await;
    run("new").await;
    assert_eq!(ex.stats().cache.compiles, 3);
    run("used").await;
    assert_eq!(ex.stats().cache.compiles, 3, "the module in use was evicted");
    run("old").await;
    assert_eq!(ex.stats().cache.compiles, 4, "the least recently used module stayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_waits_for_a_queued_tier_up_hurries_it() {
    // A module's optimized code is queued in the background (its slot held here); `precompile`,
    // and an executor without tier-up loading the same module, wait for exactly that compile:
    // it takes a call's slot instead of waiting behind the background queue.
    let source = Arc::new(MemorySource::new());
    source.put("hurried.wasm", g::unique(g::counter(), b"hurried"));
    let ex = Arc::new(Executor::new(source.clone(), ExecutorOptions::default()).expect("executor"));
    let plain = Arc::new(Executor::new(source, ExecutorOptions { tier_up: false, ..Default::default() }).expect("executor"));
    let held = crate::compile::hold_background_slots().await;
    assert_eq!(ex.execute(&def("hurried"), "{}".into(), CallOptions::default()).await.expect("counts").output, "1");
    let optimized = tokio::time::timeout(Duration::from_secs(30), ex.precompile(&def("hurried"))).await;
    assert!(optimized.expect("precompile hurried the queued compile").is_ok());
    let other = tokio::time::timeout(Duration::from_secs(30), plain.execute(&def("hurried"), "{}".into(), CallOptions::default())).await;
    assert_eq!(other.expect("not behind the background queue").expect("counts").output, "1");
    assert_eq!(plain.stats().cache.compiles, 1);
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn close_cancels_a_precompile_waiting_for_optimized_code() {
    // Review Z: `precompile` was no call in flight. After `close` it went on waiting for the
    // optimized code (a 12 MB component's, 19 s), held up the process's exit, and resolved on the
    // closed executor. Here its compile is queued (every slot held) when the executor closes.
    let source = Arc::new(MemorySource::new());
    source.put("closing.wasm", g::unique(g::counter(), b"closing"));
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let background = crate::compile::hold_background_slots().await;
    assert_eq!(ex.execute(&def("closing"), "{}".into(), CallOptions::default()).await.expect("counts").output, "1");
    let calls = crate::compile::hold_call_slots().await;
    let waiting = tokio::spawn({
        let ex = ex.clone();
        async move { ex.precompile(&def("closing")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "the optimized code cannot compile yet");
    ex.close();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("ended by close").expect("joined");
    assert!(matches!(ended, Err(ExecError::Cancelled)), "{ended:?}");
    tokio::time::timeout(Duration::from_secs(5), ex.drained()).await.expect("close waits for nothing left");
    assert!(matches!(ex.precompile(&def("closing")).await, Err(ExecError::Closed)));
    drop((calls, background));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_waits_for_a_running_tier_up_gets_a_compile_at_its_own_priority() {
    // The module's optimized code compiles in the background and is stopped midway (here: held
    // once running; in life, a quarter of a core that guests keep busy, at a priority no thread
    // may raise back). `precompile` waits for that compile: a compile at a call's priority races
    // it, and the first result is everyone's (before, it waited for the background one).
    let bytes = g::unique(g::counter(), b"raced");
    let digest = crate::digest::sha256(&bytes);
    struct Release(crate::digest::Digest);
    impl Drop for Release {
        fn drop(&mut self) {
            crate::compile::running_held::release(&self.0);
        }
    }
    crate::compile::running_held::hold(digest);
    let _release = Release(digest);
    let ex = executor("raced", bytes);
    assert_eq!(call(&ex, &def("raced"), "a", false).await.output, "1");
    // Other tests' tier-ups may be ahead of it in the one background slot.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::compile::running_held::waiting(&digest) {
        assert!(Instant::now() < deadline, "the tier-up never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let optimized = tokio::time::timeout(Duration::from_secs(30), ex.precompile(&def("raced"))).await;
    assert_eq!(optimized.expect("not waiting for the held compile").expect("compiles"), crate::digest::hex(&digest));
    // The optimized code took the slot (precompile's own: it takes no baseline code, review BD1):
    // a new actor runs on it, while the held compile still waits.
    assert!(crate::compile::running_held::waiting(&digest));
    assert_eq!(call(&ex, &def("raced"), "b", false).await.output, "1");
    let key = ActorKey { def: def("raced").key(), actor_id: "b".into() };
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Plain));
}

/// The artifacts (one per compiled tier) in `dir`.
pub(super) fn artifacts_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cwasm"))).count())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_tier_up_whose_module_left_every_cache_is_dropped() {
    // Two executors run the same new module; its optimized code queues in the background (its
    // slot held here). The first executor's cache is cleared: the compile still runs for the
    // second. Then the same with both gone: it is dropped when its slot comes, not compiled (a
    // stale tier-up held the one background slot that live ones wait for).
    for keep_one in [true, false] {
        let dir = std::env::temp_dir().join(format!("loom-stale-tier-up-{keep_one}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bytes = g::unique(g::counter(), format!("stale-{keep_one}").as_bytes());
        let digest = crate::digest::sha256(&bytes);
        let source = Arc::new(MemorySource::new());
        source.put("stale.wasm", bytes);
        let opts = || ExecutorOptions { artifacts: ArtifactCache { dir: Some(dir.clone()), ..Default::default() }, ..Default::default() };
        let first = Arc::new(Executor::new(source.clone(), opts()).expect("executor"));
        let second = Arc::new(Executor::new(source.clone(), ExecutorOptions::default()).expect("executor"));
        let held = crate::compile::hold_background_slots().await;
        for ex in [&first, &second] {
            assert_eq!(ex.execute(&def("stale"), "{}".into(), CallOptions::default()).await.expect("counts").output, "1");
        }
        assert_eq!(artifacts_in(&dir), 1, "the baseline code's artifact");
        first.clear_cache(None);
        if !keep_one {
            second.clear_cache(None);
        }
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(60);
        while crate::compile::compiles().lock().expect("lock").contains_key(&(digest, EngineKind::Plain, crate::shape::CompileLimits::default())) {
            assert!(Instant::now() < deadline, "the background compile never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if keep_one {
            // The second executor's tier-up lands; the first one's stores the artifact.
            while second.stats().cache.tier_ups < 1 || artifacts_in(&dir) < 2 {
                assert!(Instant::now() < deadline, "tier-ups {}, artifacts {}", second.stats().cache.tier_ups, artifacts_in(&dir));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            // Time for a compile's result to be stored, had there been one.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!((second.stats().cache.tier_ups, artifacts_in(&dir)), (0, 1), "the dropped tier-up was compiled");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_baseline_compile_past_compile_timeout_ms_is_not_followed_by_an_optimizing_one() {
    // 9,000 start-up items (under the default limit): 100 ms or more of Winch, far past a 20 ms
    // compileTimeoutMs.
    let bytes = g::unique(g::init_bomb(9_000), b"deadline");
    let digest = crate::digest::sha256(&bytes);
    let source = Arc::new(MemorySource::new());
    source.put("slow.wasm", bytes);
    let mut options = ExecutorOptions::default();
    options.load.compile_timeout = Duration::from_millis(20);
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let err = ex.execute(&def("slow"), "{}".into(), CallOptions::default()).await.expect_err("past its compile time");
    assert_eq!(err.code(), "COMPILE_LIMIT", "{err}");
    // The baseline compile goes on in the background (it cannot be stopped); no optimizing compile
    // was started for the call on top of it (it fell back to one, with a fresh timeout, before).
    // (The map's lock is let go before asserting: a failure here must not poison it for the
    // other tests.)
    let (baseline, optimized) = {
        let jobs = crate::compile::compiles().lock().unwrap_or_else(|p| p.into_inner());
        (jobs.contains_key(&(digest, EngineKind::Baseline, crate::shape::CompileLimits::default())), jobs.contains_key(&(digest, EngineKind::Plain, crate::shape::CompileLimits::default())))
    };
    assert!(baseline, "the baseline compile is still running");
    assert!(!optimized, "an optimizing compile was started too");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_up_code_at_the_largest_max_init_instructions_runs_on_the_baseline_engine() {
    // The prelude's 2 segments, the computed one (its offset: 3 instructions) and 3,996 more, 5
    // each: 19,998, at most the option's largest value. The baseline engine's start-up code
    // keeps stack slots per segment; 60,000 outgrew the fiber stack and wasmtime aborted the
    // process.
    assert_eq!(crate::initializers::DATA_SEGMENT_ITEMS, 5);
    let bytes = g::unique(g::data_bomb(3_996), b"start-up");
    let source = Arc::new(MemorySource::new());
    source.put("data.wasm", bytes.clone());
    let mut options = ExecutorOptions::default();
    options.load.compile.max_init_instructions = crate::options::ranges::INIT_INSTRUCTIONS.1 as u64;
    let ex = Arc::new(Executor::new(source.clone(), options.clone()).expect("executor"));
    let out = ex.execute(&def("data"), "\"x\"".into(), CallOptions::default()).await.expect("runs on baseline code");
    assert_eq!(out.output, "\"x\"");
    // One more is refused before compiling.
    source.put("more.wasm", g::unique(g::data_bomb(3_997), b"start-up"));
    let err = ex.execute(&def("more"), "\"x\"".into(), CallOptions::default()).await.expect_err("past the limit");
    assert_eq!(err.code(), "COMPILE_LIMIT", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clear_of_another_activity_does_not_stop_a_tier_up() {
    // Review: every `clearCache(name)` voided the tier-ups (and pooled copies) in flight of all
    // activities: their modules stayed on baseline code until evicted.
    let ex = executor("slow", g::unique(slow_to_optimize_echo(3000), b"cleared-other"));
    let out = ex.execute(&def("slow"), "{\"x\":1}".into(), CallOptions::default()).await.expect("echoes");
    assert_eq!(out.output, "{\"x\":1}");
    assert_eq!(ex.stats().cache.tier_ups, 0, "the optimized code landed before the clear");
    ex.clear_cache(Some("another-activity"));
    until_tiered_up(&ex).await;
    assert_eq!(ex.stats().cache.modules, 1);
}
