//! The executor's tests of moving an actor to optimized code on a call's budget: the move's
//! costs are its own, and a call it leaves short puts the actor back as it was.
use super::tier_up_tests::{call, def, executor, until_tiered_up};
use super::*;
use crate::actors::ActorKey;
use crate::engine::EngineKind;
use crate::test_guests as g;
use std::time::Instant;

/// A counter whose start function runs 300,000 rounds of a loop (fuel the call pays).
fn counter_with_a_costly_start() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (func $burn (local $i i32)
          (loop $l (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 300000)))))
        (start $burn)
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moves_start_function_spends_the_calls_time_and_fuel_of_its_own() {
    // Review AL2F: the move ran on a budget of its own, a fresh deadline before the call's (a 2 s
    // call succeeded after 3.4 s). Its fuel was then made the call's; review BL1 had that make one
    // step OUT_OF_FUEL or not by when the tier-up landed: its fuel is its own again, as a rebuilt
    // actor's start function's is, and the step has its whole maxFuel.
    let ex = executor("startburn", g::unique(counter_with_a_costly_start(), b"startburn"));
    let mut d = def("startburn");
    d.limits.max_fuel = Some(50_000_000.0);
    let key = ActorKey { def: d.key(), actor_id: "m".into() };
    let first = call(&ex, &d, "m", false).await;
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::BaselineMetered));
    let start = first.fuel_consumed.expect("metered");
    assert!(start > 300_000, "the start function's rounds count in the first call: {start}");
    until_tiered_up(&ex).await;
    let began = Instant::now();
    let moved = call(&ex, &d, "m", false).await;
    let wall = began.elapsed();
    assert_eq!((moved.output.as_str(), moved.actor_created), ("2", false));
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Metered), "it moved");
    // Its time counts too (durationMs left the move out: microseconds for a call that was
    // mostly the move).
    assert!(moved.duration * 2 >= wall, "{:?} of the call's {wall:?}", moved.duration);
    let then = call(&ex, &d, "m", false).await;
    assert_eq!(then.output, "3");
    let (moved, then) = (moved.fuel_consumed.expect("metered"), then.fuel_consumed.expect("metered"));
    assert_eq!(moved, then, "the move's start function's fuel is not the step's");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_out_of_the_calls_fuel_ends_the_call_and_leaves_the_actor_as_it_was() {
    // Review AL3: the call ran on after such a move, ran out in the guest and reset the actor.
    let ex = executor("startburn2", g::unique(counter_with_a_costly_start(), b"startburn2"));
    let mut d = def("startburn2");
    d.limits.max_fuel = Some(50_000_000.0);
    let key = ActorKey { def: d.key(), actor_id: "m".into() };
    let start = call(&ex, &d, "m", false).await.fuel_consumed.expect("metered");
    until_tiered_up(&ex).await;
    let mut short = d.clone();
    short.limits.max_fuel = Some((start / 2) as f64);
    let opts = CallOptions { actor_id: Some("m".into()), ..Default::default() };
    let e = ex.execute(&short, "{}".into(), opts).await.expect_err("the move runs out of fuel");
    assert_eq!(e.code(), "OUT_OF_FUEL");
    assert!(!matches!(e, ExecError::ActorReset(_)), "the actor was not touched: {e:?}");
    // It stays on its instance, with its state, and is not moved again.
    let next = call(&ex, &d, "m", false).await;
    assert_eq!((next.output.as_str(), next.actor_created), ("2", false));
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::BaselineMetered));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_leaves_the_step_its_whole_fuel() {
    // Review AL3: a move that fit, leaving the call too little fuel, reset the actor when the
    // call then ran out in the guest. Review BL1: the move's start function runs on fuel of its
    // own, so a step that fits its maxFuel on the live actor fits it after a move too.
    let ex = executor("startburn3", g::unique(counter_with_a_costly_start(), b"startburn3"));
    let mut d = def("startburn3");
    d.limits.max_fuel = Some(50_000_000.0);
    let key = ActorKey { def: d.key(), actor_id: "m".into() };
    let first = call(&ex, &d, "m", false).await.fuel_consumed.expect("metered");
    until_tiered_up(&ex).await;
    // Fuel for the start function and a little of `execute` (which takes about 74): the move's
    // start function fits, and so does the step, on fuel of its own.
    let mut short = d.clone();
    short.limits.max_fuel = Some((first - 74 + 30) as f64);
    let opts = CallOptions { actor_id: Some("m".into()), ..Default::default() };
    let moved = ex.execute(&short, "{}".into(), opts).await.expect("the step has its whole fuel");
    assert_eq!((moved.output.as_str(), moved.actor_created), ("2", false));
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Metered), "it moved");
}

/// `counter`, but a call whose input is `"s"` counts and then spins until its deadline.
fn counter_spinning() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (if (i32.eq (i32.load (i32.sub (local.get $in) (i32.const 4))) (i32.const 6)) (then (loop $l (br $l))))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_out_of_time_after_a_move_keeps_the_actor_and_says_so() {
    // Review BX1: the actor was put back as it was before the call (the move's rule), but the
    // error said `actorReset` and "state lost": a caller rebuilding its actor on that flag would
    // have applied its steps twice.
    let ex = executor("spinmove", g::unique(counter_spinning(), b"spinmove"));
    let mut d = def("spinmove");
    d.limits.max_execution_ms = Some(300.0);
    let key = ActorKey { def: d.key(), actor_id: "m".into() };
    assert_eq!(call(&ex, &d, "m", false).await.output, "1");
    assert_eq!(call(&ex, &d, "m", false).await.output, "2");
    until_tiered_up(&ex).await;
    let spin = || CallOptions { actor_id: Some("m".into()), ..Default::default() };
    let e = ex.execute(&d, "\"s\"".into(), spin()).await.expect_err("the spin runs out of time");
    assert_eq!(e.code(), "TIMEOUT");
    assert!(!matches!(e, ExecError::ActorReset(_)), "the actor was put back: {e:?}");
    let next = call(&ex, &d, "m", false).await;
    assert_eq!((next.output.as_str(), next.actor_created), ("3", false));
    // Put back, it stays on its baseline code (not moved again).
    assert_eq!(ex.actors.instance_kind(&key), Some(EngineKind::Baseline));
    // No move this time: the spin's instance goes, and the error says so.
    let e = ex.execute(&d, "\"s\"".into(), spin()).await.expect_err("the spin runs out of time");
    assert!(matches!(&e, ExecError::ActorReset(cause) if cause.code() == "TIMEOUT"), "{e:?}");
    let fresh = call(&ex, &d, "m", false).await;
    assert_eq!((fresh.output.as_str(), fresh.actor_created), ("1", true));
}
