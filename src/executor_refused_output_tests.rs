//! The executor's tests of output the caller refuses (not JSON, nested too deep): a transactional
//! or durable actor's call that returns it fails before its state counts (review AJ: it kept its
//! writes, and a durable actor's were stored, while its caller saw the call fail).
use super::*;
use crate::actor_store;
use crate::store::{MemorySource, ObjectSource};
use crate::test_guests as g;

/// A counter that returns its count (mod 10) as JSON, or, for an input starting with `"`, as
/// `[` and the digit: not JSON. An input starting with `[` grows its memory by a page first.
fn lying_counter() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (func (export "execute") (param $in i32) (result i32) (local $out i32) (local $lie i32)
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x5b)) (then (drop (memory.grow (i32.const 1)))))
          (local.set $lie (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x22)))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.add (i32.const 2) (i32.shl (local.get $lie) (i32.const 1))) (i32.const 2)))
          (if (local.get $lie) (then (i32.store16 (local.get $out) (i32.const 0x5b))))
          (i32.store16 (i32.add (local.get $out) (i32.shl (local.get $lie) (i32.const 1)))
            (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

fn executor(actor_store: Option<Arc<dyn crate::actor_store::ActorStore>>) -> (Arc<Executor>, Definition) {
    executor_logging(actor_store, None, None)
}

fn executor_logging(
    actor_store: Option<Arc<dyn crate::actor_store::ActorStore>>,
    log: Option<Arc<dyn crate::host::LogSink>>,
    max_output_depth: Option<u32>,
) -> (Arc<Executor>, Definition) {
    let source = Arc::new(MemorySource::new());
    source.put("lying.wasm", lying_counter());
    let mut options = ExecutorOptions { actor_store, log, ..Default::default() };
    if let Some(depth) = max_output_depth {
        options.defaults.max_output_depth = depth;
    }
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let d = Definition { name: "lying".into(), version: "1".into(), wasm_blob_path: "lying.wasm".into(), ..Default::default() };
    (ex, d)
}

async fn call(ex: &Arc<Executor>, d: &Definition, input: &str, transactional: bool) -> Result<CallOutput, ExecError> {
    let options = CallOptions { actor_id: Some("a".into()), transactional: Some(transactional), ..Default::default() };
    ex.execute(d, input.into(), options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transactional_actors_call_that_returns_no_json_leaves_no_state() {
    let (ex, d) = executor(None);
    assert_eq!(call(&ex, &d, "{}", true).await.expect("counts").output, "1");
    let e = call(&ex, &d, "\"lie\"", true).await.expect_err("not JSON");
    assert_eq!(e.code(), "INVALID_OUTPUT", "{e}");
    assert!(e.to_string().contains("not JSON"), "{e}");
    let next = call(&ex, &d, "{}", true).await.expect("counts");
    assert_eq!((next.output.as_str(), next.actor_created), ("2", false), "back at the last good state");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_durable_actors_call_that_returns_no_json_stores_nothing() {
    let store = || actor_store::open(Arc::new(ObjectSource::open("memory://refused-output", &[]).expect("store"))).expect("conditional");
    let shared = store();
    let (ex, d) = executor(Some(shared.clone()));
    assert_eq!(call(&ex, &d, "{}", false).await.expect("counts").output, "1");
    assert_eq!(call(&ex, &d, "\"lie\"", false).await.expect_err("not JSON").code(), "INVALID_OUTPUT");
    assert_eq!(call(&ex, &d, "\"lie\"", false).await.expect_err("not JSON").code(), "INVALID_OUTPUT");
    // Another worker takes the actor from the store: the state of the good call only.
    let (other, d2) = executor(Some(shared));
    let moved = call(&other, &d2, "{}", false).await.expect("counts");
    assert_eq!((moved.output.as_str(), moved.actor_created), ("2", false));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_growth_found_at_a_call_that_fails_is_still_told() {
    // Review AJ: the 200th call of a growing plain actor judged the growth, then its output was
    // refused (nested past maxOutputDepth); the warning went with its result, and the actor ran
    // out of memory unannounced.
    let lines = Arc::new(super::collect_tests::Lines::default());
    // The lie (`[` and a digit) nests one level: past a depth of 0 for a plain actor too.
    let (ex, d) = executor_logging(None, Some(lines.clone()), Some(0));
    for _ in 1..crate::actor_growth::Growth::CALLS {
        call(&ex, &d, "[]", false).await.expect("grows and counts");
    }
    assert!(lines.0.lock().expect("lines").is_empty());
    let e = call(&ex, &d, "\"lie\"", false).await.expect_err("too deep");
    assert!(e.to_string().contains("maxOutputDepth"), "{e}");
    let told = lines.0.lock().expect("lines").clone();
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(told[0].1.contains("grows its memory"), "{}", told[0].1);
}
