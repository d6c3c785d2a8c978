//! The executor's tests of spent instances dropped on the reaper's thread (`reaper`): the next
//! guest in a slot finds nothing of the last one's.
use std::sync::Arc;

use super::*;
use crate::store::MemorySource;
use crate::test_guests as g;

#[tokio::test(flavor = "multi_thread")]
async fn instances_dropped_on_the_reapers_thread_leave_nothing_to_the_next_guest() {
    let source = Arc::new(MemorySource::new());
    source.put("probe.wasm", g::unique(g::leftover_probe(), b"reaper"));
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let d = Definition { name: "probe".into(), version: "1".into(), wasm_blob_path: "probe.wasm".into(), ..Default::default() };
    // The optimized code: its instances come from the pool, whose slots are reset as they go.
    ex.precompile(&d).await.expect("compiles");
    // The probe sees its own writes: an actor's second call, on the same instance, answers "1".
    let actor = CallOptions { actor_id: Some("a".into()), ..Default::default() };
    assert_eq!(ex.execute(&d, "{}".into(), actor.clone()).await.expect("runs").output, "0");
    assert_eq!(ex.execute(&d, "{}".into(), actor).await.expect("runs").output, "1");
    let handed = crate::reaper::handed_over();
    // One after another (each slot freed is the next call's, once reset), then 8 at a time.
    for i in 0..200 {
        let out = ex.execute(&d, "{}".into(), CallOptions::default()).await.expect("runs");
        assert_eq!(out.output, "0", "call {i} found a byte the last guest wrote");
        assert!(out.memory_bytes >= crate::instance::DROP_LATER_BYTES);
    }
    let calls: Vec<_> = (0..8).map(|_| {
        let (ex, d) = (ex.clone(), d.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..50 {
                seen.push(ex.execute(&d, "{}".into(), CallOptions::default()).await.expect("runs").output);
            }
            seen
        })
    }).collect();
    for call in calls {
        assert!(call.await.expect("task").iter().all(|o| o == "0"), "a concurrent call found a byte another guest wrote");
    }
    // Some of them went to the reaper, so the checks above covered its drops. How many depends on
    // the scheduler: the reaper's thread runs at low priority, and on a loaded machine most calls
    // find two waiting there and drop in place (94 of 600 on a clean-clone CI run, where this
    // asked for 100 and failed).
    let went = crate::reaper::handed_over() - handed;
    assert!(went > 0, "none of 600 instances was handed to the reaper");
}
