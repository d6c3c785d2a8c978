//! The executor's tests of modules loaded from an artifact before the instance pool is built
//! (`unpooled_first`): they run on the pool-less twin engine, with every limit, until their
//! pooled copy takes their cache slot; actors made meanwhile keep their instance and state.
//! The test process's pool exists already, so each executor here is told it does not.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::actors::ActorKey;
use crate::artifacts::ArtifactCache;
use crate::digest::hex;
use crate::engine::EngineKind;
use crate::store::MemorySource;
use crate::test_guests as g;
use sha2::{Digest as _, Sha256};

fn def(name: &str) -> Definition {
    Definition { name: name.into(), version: "1.0.0".into(), wasm_blob_path: format!("{name}.wasm"), ..Default::default() }
}


fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loom-unpooled-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn executor(source: Arc<MemorySource>, dir: &Path, pool_ready: bool) -> Arc<Executor> {
    let opts = ExecutorOptions { artifacts: ArtifactCache { dir: Some(dir.to_path_buf()), ..Default::default() }, ..Default::default() };
    let mut ex = Executor::new(source, opts).expect("executor");
    if !pool_ready {
        ex.modules.pool_ready = || false;
    }
    Arc::new(ex)
}

/// An executor whose artifact cache holds the optimized code of each `(name, bytes)`, and a
/// second one on the same cache that takes the pool for unbuilt.
async fn warm(tag: &str, blobs: &[(&str, Vec<u8>)]) -> (Arc<Executor>, Arc<MemorySource>, PathBuf) {
    let dir = dir(tag);
    let source = Arc::new(MemorySource::new());
    for (name, bytes) in blobs {
        source.put(&format!("{name}.wasm"), bytes.clone());
    }
    let first = executor(source.clone(), &dir, true);
    for (name, _) in blobs {
        first.precompile(&def(name)).await.expect("precompiles");
    }
    (executor(source.clone(), &dir, false), source, dir)
}

async fn until_pooled(ex: &Arc<Executor>, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ex.stats().cache.pooled_later < n {
        assert!(Instant::now() < deadline, "no pooled copy in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn actor_call(ex: &Arc<Executor>, d: &Definition, id: &str) -> CallOutput {
    let opts = CallOptions { actor_id: Some(id.into()), ..Default::default() };
    ex.execute(d, "{}".into(), opts).await.expect("actor call")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_loaded_before_the_pool_runs_unpooled_and_then_gives_way_to_its_pooled_copy() {
    let (ex, _, dir) = warm("swap", &[("counter", g::unique(g::counter(), b"unpooled-swap"))]).await;
    let d = def("counter");
    let key = |id: &str| ActorKey { def: d.key(), actor_id: id.into() };
    assert_eq!(actor_call(&ex, &d, "early").await.output, "1");
    assert_eq!(ex.actors.instance_kind(&key("early")), Some(EngineKind::PlainUnpooled));
    until_pooled(&ex, 1).await;
    let s = ex.stats().cache;
    assert_eq!((s.compiles, s.artifact_hits, s.modules), (0, 1, 1), "{s:?}");
    let cached = ex.modules.peek(&d.key(), EngineKind::Plain, None).expect("cached");
    assert_eq!(cached.kind, EngineKind::Plain, "the pooled copy holds the slot");
    // The actor made before keeps its instance and its state; a new one is pooled.
    assert_eq!(actor_call(&ex, &d, "early").await.output, "2");
    assert_eq!(ex.actors.instance_kind(&key("early")), Some(EngineKind::PlainUnpooled));
    assert_eq!(actor_call(&ex, &d, "late").await.output, "1");
    assert_eq!(ex.actors.instance_kind(&key("late")), Some(EngineKind::Plain));
    assert_eq!(actor_call(&ex, &d, "early").await.output, "3");
    assert_eq!(ex.stats().cache.pooled_later, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hostile: guests that spin and that grow their memory without end, loaded unpooled on their
/// first call: the time and memory limits hold there as on the pooled engine.
#[tokio::test(flavor = "multi_thread")]
async fn unpooled_code_keeps_the_time_and_memory_limits() {
    let (ex, _, dir) = warm(
        "hostile",
        &[("spin", g::unique(g::spin(), b"unpooled-spin")), ("bomb", g::unique(g::memory_bomb(), b"unpooled-bomb"))],
    )
    .await;
    let mut spin = def("spin");
    spin.limits.max_execution_ms = Some(100.0);
    let e = ex.execute(&spin, "1".into(), CallOptions::default()).await.expect_err("spins");
    assert_eq!(e, ExecError::Timeout { limit_ms: 100, during: "" });
    let mut bomb = def("bomb");
    bomb.limits.max_memory_mb = Some(4.0);
    let e = ex.execute(&bomb, "1".into(), CallOptions::default()).await.expect_err("grows");
    assert_eq!(e.code(), "OUT_OF_MEMORY", "{e:?}");
    // Both ran on code loaded before the pool (only such loads are swapped later).
    until_pooled(&ex, 2).await;
    assert_eq!(ex.stats().cache.compiles, 0);
    // And the same again on the pooled copies.
    assert_eq!(ex.execute(&spin, "1".into(), CallOptions::default()).await.expect_err("spins"), ExecError::Timeout { limit_ms: 100, during: "" });
    assert_eq!(ex.execute(&bomb, "1".into(), CallOptions::default()).await.expect_err("grows").code(), "OUT_OF_MEMORY");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_module_loads_unpooled_without_a_download_and_is_swapped_by_digest() {
    let bytes = g::unique(g::echo(), b"unpooled-pin");
    let (_, _, dir) = warm("pinned", &[("echo", bytes.clone())]).await;
    // A blob store that holds nothing: the pin names the code, the artifact is that code.
    let ex = executor(Arc::new(MemorySource::new()), &dir, false);
    let mut d = def("echo");
    d.sha256 = Some(hex(&Sha256::digest(&bytes)));
    assert_eq!(ex.execute(&d, "\"a\"".into(), CallOptions::default()).await.expect("runs").output, "\"a\"");
    until_pooled(&ex, 1).await;
    let digest = crate::digest::sha256(&bytes);
    assert_eq!(ex.modules.peek(&d.key(), EngineKind::Plain, Some(&digest)).expect("cached").kind, EngineKind::Plain);
    assert_eq!(ex.execute(&d, "\"b\"".into(), CallOptions::default()).await.expect("runs").output, "\"b\"");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hostile: the cache is cleared while the pooled copy loads; the copy must not come back.
#[tokio::test(flavor = "multi_thread")]
async fn a_cache_cleared_before_the_pooled_copy_is_ready_stays_cleared() {
    let (ex, _, dir) = warm("cleared", &[("echo", g::unique(g::echo(), b"unpooled-clear"))]).await;
    let d = def("echo");
    assert_eq!(ex.execute(&d, "1".into(), CallOptions::default()).await.expect("runs").output, "1");
    ex.modules.clear(None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (Had the pooled copy been ready before the clear, it went with it.)
    let s = ex.stats().cache;
    assert_eq!(s.modules, 0, "{s:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hostile: the artifact file is overwritten right after the first call. The pooled copy maps
/// the sealed copy that was checked, not the file, so it comes all the same; the file itself is
/// never trusted (a new executor finds it invalid and compiles).
#[tokio::test(flavor = "multi_thread")]
async fn the_pooled_copy_maps_the_checked_sealed_copy_not_the_file() {
    let (ex, source, dir) = warm("rewritten", &[("counter", g::unique(g::counter(), b"unpooled-rewritten"))]).await;
    let d = def("counter");
    assert_eq!(actor_call(&ex, &d, "a").await.output, "1");
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        if entry.path().extension().is_some_and(|e| e == "cwasm") {
            std::fs::write(entry.path(), b"not an artifact").expect("rewrite");
        }
    }
    until_pooled(&ex, 1).await;
    assert_eq!(ex.modules.peek(&d.key(), EngineKind::Plain, None).expect("cached").kind, EngineKind::Plain);
    assert_eq!(actor_call(&ex, &d, "b").await.output, "1");
    let fresh = executor(source, &dir, false);
    assert_eq!(actor_call(&fresh, &d, "a").await.output, "1");
    assert_eq!((fresh.stats().cache.artifact_hits, fresh.stats().cache.compiles), (0, 1));
    let _ = std::fs::remove_dir_all(&dir);
}
