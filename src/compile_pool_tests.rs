//! Which threads calls' compiles run on (`compile::large_pool`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::*;

/// A valid module of `data` bytes of data: little code, many bytes.
fn with_data(data: usize) -> Vec<u8> {
    let text: String = std::iter::repeat_n("\\00", data).collect();
    wat::parse_str(format!(r#"(module (memory 32) (data (i32.const 0) "{text}") (func (export "f")))"#)).expect("parses")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_modules_compile_does_not_wait_behind_a_large_ones() {
    // Every thread of the large modules' pool held, as a 12 MB component's hundreds of
    // functions hold them (review AD: another tenant's 2 KB module waited for the whole compile).
    let gate = Arc::new(RwLock::new(()));
    let held = gate.write().expect("gate");
    let pool = large_pool().expect("the pool starts");
    let g = gate.clone();
    pool.spawn_broadcast(move |_| drop(g.read()));
    let large = Arc::new(with_data(LARGE_MODULE_BYTES + 4096));
    let digest = sha256(&large);
    let pending = tokio::spawn(run_compile(large, digest, EngineKind::Baseline, CompileLimits::default(), None, false));
    let small = Arc::new(crate::test_guests::echo());
    let digest = sha256(&small);
    let done = tokio::time::timeout(Duration::from_secs(120), run_compile(small, digest, EngineKind::Baseline, CompileLimits::default(), None, false))
        .await
        .expect("the small module compiles while the large pool is held");
    assert!(done.is_ok(), "{:?}", done.err());
    // Small in bytes, large in work (review AD's follow-up: 100,000 tiny functions in 800 KB
    // held a small module for seconds): 12,000 empty functions, 36 KB, estimated at 18 MB.
    let busy = Arc::new(wat::parse_str(format!("(module {})", "(func)".repeat(12_000))).expect("parses"));
    assert!(busy.len() < LARGE_MODULE_BYTES);
    let digest = sha256(&busy);
    let busy = tokio::spawn(run_compile(busy, digest, EngineKind::Baseline, CompileLimits::default(), None, false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "the large module compiles on the held pool");
    assert!(!busy.is_finished(), "so does the small module of much work");
    drop(held);
    pending.await.expect("joins").expect("compiles once the pool is free");
    busy.await.expect("joins").expect("compiles once the pool is free");
}
