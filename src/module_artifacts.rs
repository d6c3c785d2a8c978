//! How the module cache loads code from the artifact tiers (`artifacts`): for an engine or its
//! baseline twin, on the unpooled twin while the instance pool is not built.

use std::sync::Arc;

use crate::artifacts::{ArtifactCache, Checked};
use crate::compiled_module::{prepare, CompiledModule};
use crate::digest::Digest;
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;

/// The module of an artifact for this very engine: `None` if no tier holds an authentic one, an
/// error if it does not load or link; with the artifact as it was checked (for the pooled copy).
async fn artifact_module(
    artifacts: &ArtifactCache,
    digest: Digest,
    kind: EngineKind,
) -> Option<(Result<CompiledModule, ExecError>, Checked)> {
    let engine = engine(kind).ok()?;
    let (compiled, checked) = artifacts.load_sealed(&digest, engine).await?;
    let facts = checked.facts();
    let prepared = tokio::task::spawn_blocking(move || prepare(compiled, digest, kind, facts)).await.ok()?;
    let prepared = prepared.map(|m| CompiledModule { from_artifact: true, ..m });
    Some((prepared, checked))
}

/// `ModuleCache::from_artifact`.
pub(crate) async fn from_artifact(
    artifacts: &ArtifactCache,
    pool_ready: fn() -> bool,
    digest: Digest,
    kind: EngineKind,
    tried: bool,
) -> Option<(Arc<CompiledModule>, Checked)> {
    let kinds = [kind, kind.with_baseline(true)];
    let end = if kinds[1] == kind { 1 } else { 2 };
    load_artifact(artifacts, pool_ready, digest, kinds.get(usize::from(tried)..end).unwrap_or(&[])).await
}

/// The first of these engines' artifacts of a module that loads (and the artifact as it was
/// checked). A `Plain` one loads on the unpooled twin while the pool is not built yet
/// (`pool_ready`; the caller then calls `pool_later`).
pub(crate) async fn load_artifact(
    artifacts: &ArtifactCache,
    pool_ready: fn() -> bool,
    digest: Digest,
    kinds: &[EngineKind],
) -> Option<(Arc<CompiledModule>, Checked)> {
    if !artifacts.is_enabled() {
        return None;
    }
    for &k in kinds {
        let k = if k == EngineKind::Plain && !pool_ready() { EngineKind::PlainUnpooled } else { k };
        if let Some((m, checked)) = artifact_module(artifacts, digest, k).await {
            return m.ok().map(|m| (Arc::new(m), checked));
        }
    }
    None
}
