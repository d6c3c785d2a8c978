//! The executor's tests of a module whose `cacheDir` holds only its baseline code's artifact (the
//! process that compiled it ended before its tier-up landed, as short-lived workers and test
//! files do): what `precompile` and pinned calls make of it.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tier_up_tests::{artifacts_in, def, until_tiered_up};
use super::*;
use crate::artifacts::ArtifactCache;
use crate::digest::{hex, sha256};
use crate::engine::EngineKind;
use crate::store::MemorySource;
use crate::test_guests as g;

/// A `cacheDir` (made anew under `name`) holding only the baseline artifact of `bytes`, compiled
/// by an executor closed before its tier-up ran (whose compile is gone when this returns); and
/// the options of executors on that directory.
async fn baseline_only(name: &str, bytes: &[u8], path: &str) -> (std::path::PathBuf, impl Fn() -> ExecutorOptions) {
    let dir = std::env::temp_dir().join(format!("loom-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let digest = sha256(bytes);
    let source = Arc::new(MemorySource::new());
    source.put(path, bytes.to_vec());
    let at = dir.clone();
    let opts = move || ExecutorOptions { artifacts: ArtifactCache { dir: Some(at.clone()), ..Default::default() }, ..Default::default() };
    {
        let held = crate::compile::hold_background_slots().await;
        let first = Arc::new(Executor::new(source, opts()).expect("executor"));
        let d = Definition { wasm_blob_path: path.into(), ..def("first") };
        assert_eq!(first.execute(&d, "{}".into(), CallOptions::default()).await.expect("counts").output, "1");
        first.close();
        drop(held);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::compile::compiles().lock().expect("lock").contains_key(&(digest, EngineKind::Plain, crate::shape::CompileLimits::default())) {
        assert!(Instant::now() < deadline, "the background compile never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(artifacts_in(&dir), 1, "only the baseline code's artifact");
    (dir, opts)
}

#[tokio::test(flavor = "multi_thread")]
async fn precompile_from_a_baseline_artifact_compiles_the_optimized_code_and_stores_it() {
    // Review: with only a module's baseline artifact in `cacheDir` (its process ended before the
    // tier-up landed), `precompile` took the baseline code and stopped there, writing no optimized
    // artifact.
    let bytes = g::unique(g::counter(), b"baseline-only");
    let (dir, opts) = baseline_only("baseline-only", &bytes, "base.wasm").await;
    let source = Arc::new(MemorySource::new());
    source.put("base.wasm", bytes);
    let second = Arc::new(Executor::new(source, opts()).expect("executor"));
    second.precompile(&def("base")).await.expect("precompiles");
    assert_eq!(artifacts_in(&dir), 2, "no optimized artifact was stored");
    // The optimized code is compiled at once: baseline code will not do for it (review BD1).
    assert_eq!((second.stats().cache.artifact_hits, second.stats().cache.compiles), (0, 1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_module_with_only_baseline_code_in_cache_dir_needs_no_store_and_tiers_up_once_the_store_has_its_bytes() {
    // Review AY1: the pin was served from `cacheDir` only with the optimized code's artifact; with
    // the baseline one alone the call downloaded first, and failed with a store that was down
    // (BLOB_NOT_FOUND) or held other bytes under the name now (INTEGRITY_MISMATCH).
    let bytes = g::unique(g::counter(), b"pinned-baseline-only");
    let (dir, opts) = baseline_only("pinned-baseline-only", &bytes, "pinned.wasm").await;
    let pinned = Definition { sha256: Some(hex(&sha256(&bytes))), ..def("pinned") };
    let empty = Arc::new(MemorySource::new());
    let other = Arc::new(MemorySource::new());
    other.put("pinned.wasm", g::unique(g::counter(), b"other bytes"));
    for store in [empty, other] {
        let ex = Arc::new(Executor::new(store, opts()).expect("executor"));
        let out = ex.execute(&pinned, "{}".into(), CallOptions::default()).await.expect("served from the baseline artifact");
        assert_eq!(out.output, "1");
        let stats = ex.stats().cache;
        assert_eq!((stats.artifact_hits, stats.compiles), (1, 0));
        // Its bytes are not the store's to give: no tier-up, no optimized artifact.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!((ex.stats().cache.tier_ups, artifacts_in(&dir)), (0, 1));
    }
    // A store that has the bytes: the call still runs at once on the baseline code, and the
    // bytes fetched behind it tier up and store the optimized artifact.
    let source = Arc::new(MemorySource::new());
    source.put("pinned.wasm", bytes);
    let ex = Arc::new(Executor::new(source, opts()).expect("executor"));
    assert_eq!(ex.execute(&pinned, "{}".into(), CallOptions::default()).await.expect("counts").output, "1");
    until_tiered_up(&ex).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while artifacts_in(&dir) < 2 {
        assert!(Instant::now() < deadline, "the optimized artifact was not stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ex.execute(&pinned, "{}".into(), CallOptions::default()).await.expect("counts").output, "1");
    assert_eq!(ex.stats().cache.compiles, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A store that never answers, counting the fetches under way (each until its future is dropped).
struct Hangs(Arc<std::sync::atomic::AtomicUsize>);

struct Fetching(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Fetching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl crate::store::BlobSource for Hangs {
    fn fetch<'a>(&'a self, _path: &'a str, _max_bytes: u64) -> crate::store::BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let fetching = Fetching(self.0.clone());
        Box::pin(async move {
            let _fetching = fetching;
            std::future::pending().await
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_modules_background_fetches_do_not_pile_up_and_end_with_a_clear_or_close() {
    // Review AZ1: each load from the baseline artifact started a fetch of its own; clearing the
    // cache between calls of a store that never answers had 20,000 under way at once, each until
    // `loadTimeoutMs`, after `close()` too.
    let bytes = g::unique(g::counter(), b"pinned-fetches");
    let (dir, opts) = baseline_only("pinned-fetches", &bytes, "pinned.wasm").await;
    let pinned = Definition { sha256: Some(hex(&sha256(&bytes))), ..def("pinned") };
    let under_way = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ex = Arc::new(Executor::new(Arc::new(Hangs(under_way.clone())), opts()).expect("executor"));
    let count = || under_way.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..50 {
        ex.clear_cache(None);
        assert_eq!(ex.execute(&pinned, "{}".into(), CallOptions::default()).await.expect("runs").output, "1");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(count() <= 1, "{} fetches under way", count());
    }
    ex.close();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() > 0 {
        assert!(Instant::now() < deadline, "{} fetches outlived close()", count());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Answers "1" on baseline code and "2" on optimized code: the NaN `f32.min` gives for two NaNs
/// is the first's on one, the second's on the other (review BB4).
fn nan_min() -> Vec<u8> {
    g::with_prelude(
        r#"(data (i32.const 200) "\02\00\00\00\31\00")
        (data (i32.const 208) "\02\00\00\00\32\00")
        (data (i32.const 216) "\34\12\c0\7f\78\56\c0\ff")
        (func (export "execute") (param i32) (result i32)
          (select (i32.const 204) (i32.const 212)
            (i32.eq (i32.reinterpret_f32 (f32.min (f32.load (i32.const 216)) (f32.load (i32.const 220)))) (i32.const 0x7fc01234))))"#,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deterministic_call_runs_no_baseline_code_from_the_cache_or_cache_dir() {
    // Review BD1: a deterministic call took the baseline code a tier-up under way left in the
    // cache, and a baseline-only artifact from `cacheDir` (by the definition's hint, by digest,
    // and pinned).
    let bytes = nan_min();
    let digest = sha256(&bytes);
    let deterministic = |name: &str| Definition { wasm_blob_path: "nan.wasm".into(), deterministic: true, ..def(name) };
    // `first` is the name `baseline_only` ran: its hint names this module; `other` finds the
    // artifact by digest.
    for (name, pinned) in [("first", None), ("other", None), ("other", Some(hex(&digest)))] {
        let (dir, opts) = baseline_only("det-baseline", &bytes, "nan.wasm").await;
        let source = Arc::new(MemorySource::new());
        source.put("nan.wasm", bytes.clone());
        let ex = Arc::new(Executor::new(source, opts()).expect("executor"));
        let d = Definition { sha256: pinned.clone(), ..deterministic(name) };
        assert_eq!(ex.execute(&d, "{}".into(), CallOptions::default()).await.expect("runs").output, "2", "{name} {pinned:?}");
        ex.close();
        let _ = std::fs::remove_dir_all(&dir);
    }
    // In memory: a call of the module without `deterministic` runs its baseline code while its
    // tier-up cannot land.
    let source = Arc::new(MemorySource::new());
    source.put("nan.wasm", bytes);
    let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
    let held = crate::compile::hold_background_slots().await;
    let plain = Definition { wasm_blob_path: "nan.wasm".into(), ..def("plain") };
    assert_eq!(ex.execute(&plain, "{}".into(), CallOptions::default()).await.expect("runs").output, "1", "baseline code");
    assert_eq!(ex.execute(&deterministic("det"), "{}".into(), CallOptions::default()).await.expect("runs").output, "2");
    drop(held);
    ex.close();
}
