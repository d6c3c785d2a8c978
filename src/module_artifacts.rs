//! How the module cache loads code from the artifact tiers (`artifacts`): for an engine or its
//! baseline twin, on the unpooled twin while the instance pool is not built.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    guess: Option<&Arc<AtomicBool>>,
) -> Option<(Result<CompiledModule, ExecError>, Checked)> {
    let engine = engine(kind).ok()?;
    let (compiled, checked) = match guess {
        Some(stop) => artifacts.load_guess(&digest, engine, stop.clone()).await?,
        None => artifacts.load_sealed(&digest, engine).await?,
    };
    let facts = checked.facts();
    let prepared = tokio::task::spawn_blocking(move || prepare(compiled, digest, kind, facts)).await.ok()?;
    let prepared = prepared.map(|m| CompiledModule { from_artifact: true, ..m });
    Some((prepared, checked))
}

/// `ModuleCache::from_artifact` (a guess's when `guess` is its stop flag: see `Guess`).
pub(crate) async fn from_artifact(
    artifacts: &ArtifactCache,
    pool_ready: fn() -> bool,
    digest: Digest,
    kind: EngineKind,
    tried: bool,
    guess: Option<&Arc<AtomicBool>>,
) -> Option<(Arc<CompiledModule>, Checked)> {
    let kinds = [kind, kind.with_baseline(true)];
    let end = if kinds[1] == kind { 1 } else { 2 };
    load_artifact(artifacts, pool_ready, digest, kinds.get(usize::from(tried)..end).unwrap_or(&[]), guess).await
}

/// The first of these engines' artifacts of a module that loads (and the artifact as it was
/// checked). A `Plain` one loads on the unpooled twin while the pool is not built yet
/// (`pool_ready`; the caller then calls `pool_later`).
pub(crate) async fn load_artifact(
    artifacts: &ArtifactCache,
    pool_ready: fn() -> bool,
    digest: Digest,
    kinds: &[EngineKind],
    guess: Option<&Arc<AtomicBool>>,
) -> Option<(Arc<CompiledModule>, Checked)> {
    if !artifacts.is_enabled() {
        return None;
    }
    for &k in kinds {
        let k = if k == EngineKind::Plain && !pool_ready() { EngineKind::PlainUnpooled } else { k };
        if guess.is_some_and(|stop| stop.load(Ordering::Relaxed)) {
            return None;
        }
        if let Some((m, checked)) = artifact_module(artifacts, digest, k, guess).await {
            return m.ok().map(|m| (Arc::new(m), checked));
        }
    }
    None
}

/// Guessed artifact loads (`artifact_hints`) under way in the process at most: a guess is only
/// worth the cores that are idle while downloads run, and wrong guesses (bytes that changed under
/// many definitions at once) must not pile up (review H: 40 of them took 900 MB and 1.4 s of CPU).
const MAX_GUESSES: usize = 2;
static GUESSES: AtomicUsize = AtomicUsize::new(0);

/// A guessed artifact load under way (`ModuleCache::speculate`): dropped unused (the bytes are
/// another module, the download failed), it stops within one chunk of its copy and gives its
/// place back. It reads `cacheDir` only and never removes what it finds there.
pub(crate) struct Guess {
    loading: tokio::task::JoinHandle<Option<(Arc<CompiledModule>, Checked)>>,
    stop: Arc<AtomicBool>,
}

/// A place among the `MAX_GUESSES`, given back when its load ends or is dropped.
struct Place;

impl Drop for Place {
    fn drop(&mut self) {
        GUESSES.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Guess {
    /// Starts loading the artifact of `digest` for `kind` (or its baseline twin), unless the
    /// process has `MAX_GUESSES` under way already.
    pub(crate) fn start(artifacts: &ArtifactCache, pool_ready: fn() -> bool, digest: Digest, kind: EngineKind) -> Option<Guess> {
        GUESSES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_GUESSES).then_some(n + 1)).ok()?;
        let place = Place;
        let stop = Arc::new(AtomicBool::new(false));
        let (artifacts, flag) = (artifacts.clone(), stop.clone());
        let loading = tokio::spawn(async move {
            let _place = place;
            from_artifact(&artifacts, pool_ready, digest, kind, false, Some(&flag)).await
        });
        Some(Guess { loading, stop })
    }

    /// What it loaded, once done.
    pub(crate) async fn finish(mut self) -> Option<(Arc<CompiledModule>, Checked)> {
        (&mut self.loading).await.ok().flatten()
    }
}

impl Drop for Guess {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.loading.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guesses dropped unused give their places back: were one kept, the process would stop
    /// guessing after `MAX_GUESSES` of them.
    #[tokio::test(flavor = "multi_thread")]
    async fn dropped_guesses_give_their_places_back() {
        let dir = std::env::temp_dir().join(format!("loom-guesses-{}", std::process::id()));
        let artifacts = ArtifactCache { dir: Some(dir.clone()), ..Default::default() }.open().expect("opens");
        for round in 0..(MAX_GUESSES * 5) {
            let mut started = None;
            for _ in 0..400 {
                started = Guess::start(&artifacts, || true, [round as u8; 32], EngineKind::Plain);
                if started.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let guess = started.expect("a place came free");
            if round % 2 == 0 {
                drop(guess);
            } else {
                assert!(guess.finish().await.is_none(), "no artifact to find");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
