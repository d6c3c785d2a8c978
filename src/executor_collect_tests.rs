//! The executor's tests of an actor whose runtime's collection (`__collect`, run after a call
//! once memory passes half its cap) fails: the heap it may leave torn is never kept, and the
//! state that goes is never lost silently.
use std::sync::{Arc, Mutex};

use super::*;
use crate::host::LogSink;
use crate::store::MemorySource;
use crate::test_guests as g;

/// The lines logged, in order.
#[derive(Default)]
pub(super) struct Lines(pub(super) Mutex<Vec<(String, String)>>);

impl LogSink for Lines {
    fn log(&self, level: &str, message: &str) {
        self.0.lock().expect("lines").push((level.into(), message.into()));
    }
}

/// A counter that fills 10 of its 16 pages (over half of maxMemoryMB 1) on its first call, and
/// whose `__collect` traps after a call whose input is a JSON string (its text starts with `"`).
fn counter_with_a_failing_collect() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (global $trap_next (mut i32) (i32.const 0))
        (func (export "__collect") (if (global.get $trap_next) (then unreachable)))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (if (i32.lt_u (memory.size) (i32.const 10)) (then (drop (memory.grow (i32.const 9)))))
          (global.set $trap_next (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x22)))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

fn setup() -> (Arc<Executor>, Arc<Lines>, Definition) {
    let source = Arc::new(MemorySource::new());
    source.put("gc.wasm", counter_with_a_failing_collect());
    let lines = Arc::new(Lines::default());
    let opts = ExecutorOptions { log: Some(lines.clone()), ..Default::default() };
    let ex = Arc::new(Executor::new(source, opts).expect("executor"));
    let mut d = Definition { name: "gc".into(), version: "1.0.0".into(), wasm_blob_path: "gc.wasm".into(), ..Default::default() };
    d.limits.max_memory_mb = Some(1.0);
    (ex, lines, d)
}

async fn call(ex: &Arc<Executor>, d: &Definition, input: &str, transactional: bool) -> Result<CallOutput, ExecError> {
    let opts = CallOptions { actor_id: Some("a".into()), transactional: Some(transactional), ..Default::default() };
    ex.execute(d, input.into(), opts).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_actor_whose_collection_fails_keeps_the_result_and_says_its_state_went() {
    let (ex, lines, d) = setup();
    assert_eq!(call(&ex, &d, "{}", false).await.expect("collects").output, "1");
    assert!(lines.0.lock().expect("lines").is_empty());
    assert_eq!(call(&ex, &d, "\"trap\"", false).await.expect("the call itself finished").output, "2");
    let warned = lines.0.lock().expect("lines").clone();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0].0, "warn");
    assert!(warned[0].1.contains("lost its state") && warned[0].1.contains("__collect"), "{}", warned[0].1);
    let fresh = call(&ex, &d, "{}", false).await.expect("starts fresh");
    assert_eq!((fresh.output.as_str(), fresh.actor_created), ("1", true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transactional_actor_whose_collection_fails_fails_the_call_and_goes_back() {
    let (ex, lines, d) = setup();
    assert_eq!(call(&ex, &d, "{}", true).await.expect("collects").output, "1");
    // The call's count went with the torn heap: it fails, and did not count.
    let e = call(&ex, &d, "\"trap\"", true).await.expect_err("the collection failed");
    assert!(e.to_string().contains("unreachable"), "{e}");
    let back = call(&ex, &d, "{}", true).await.expect("from the last good state");
    assert_eq!((back.output.as_str(), back.actor_created), ("2", false));
    assert!(lines.0.lock().expect("lines").is_empty());
}
