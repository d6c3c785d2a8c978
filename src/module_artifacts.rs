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
    guess: Option<&Arc<Place>>,
    left: &mut std::time::Duration,
) -> Option<(Result<CompiledModule, ExecError>, Checked)> {
    let engine = engine(kind).ok()?;
    let (compiled, checked) = match guess {
        Some(stop) => artifacts.load_guess(&digest, engine, stop.clone()).await?,
        None => artifacts.load_sealed_within(&digest, engine, left).await?,
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
    guess: Option<&Arc<Place>>,
    left: &mut std::time::Duration,
) -> Option<(Arc<CompiledModule>, Checked)> {
    let kinds = [kind, kind.with_baseline(true)];
    let end = if kinds[1] == kind { 1 } else { 2 };
    load_artifact(artifacts, pool_ready, digest, kinds.get(usize::from(tried)..end).unwrap_or(&[]), guess, left).await
}

/// The first of these engines' artifacts of a module that loads (and the artifact as it was
/// checked). A `Plain` one loads on the unpooled twin while the pool is not built yet
/// (`pool_ready`; the caller then calls `pool_later`). Their store lookups take at most `left`
/// together (`ArtifactCache::lookup_time`), less what they took.
pub(crate) async fn load_artifact(
    artifacts: &ArtifactCache,
    pool_ready: fn() -> bool,
    digest: Digest,
    kinds: &[EngineKind],
    guess: Option<&Arc<Place>>,
    left: &mut std::time::Duration,
) -> Option<(Arc<CompiledModule>, Checked)> {
    if !artifacts.is_enabled() {
        return None;
    }
    for &k in kinds {
        let k = if k == EngineKind::Plain && !pool_ready() { EngineKind::PlainUnpooled } else { k };
        if guess.is_some_and(|place| place.stop.load(Ordering::Relaxed)) {
            return None;
        }
        if let Some((m, checked)) = artifact_module(artifacts, digest, k, guess, left).await {
            return m.ok().map(|m| (Arc::new(m), checked));
        }
    }
    None
}

/// Guesses (`artifact_hints`) the process holds at most, under way or done and waiting for their
/// download (see `Place`): a guess is only
/// worth the cores that are idle while downloads run, and wrong guesses (bytes that changed under
/// many definitions at once) must not pile up (review H: 40 of them took 900 MB and 1.4 s of CPU).
const MAX_GUESSES: usize = 2;
static GUESSES: AtomicUsize = AtomicUsize::new(0);

/// A guessed artifact load (`ModuleCache::speculate`), under way or done and waiting for the
/// download to say whether it is the module: dropped unused (the bytes are another module, the
/// download failed), it stops within one chunk of its copy. It reads `cacheDir` only and never
/// removes what it finds there.
pub(crate) struct Guess {
    loading: tokio::task::JoinHandle<Option<(Arc<CompiledModule>, Checked)>>,
    /// What it loaded, once `loading` finished (a finished handle is not polled again).
    done: Option<Option<(Arc<CompiledModule>, Checked)>>,
    place: Arc<Place>,
}

/// How long a finished guess waits for its download before it is dropped (and its place and
/// loaded copy with it): review J had two downloads that never settled hold both places, and so
/// stop every guess in the process, for as long as their `loadTimeoutMs` (up to a day).
pub(crate) const GUESS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A guess's place among the `MAX_GUESSES` and its stop flag: held by the guess, its task and
/// its blocking copy, and given back when the last of them lets go. So a finished guess holding
/// its loaded artifact while a slow download runs keeps its place (review I: guesses that had
/// finished were not counted, and 40 calls on a slow store held 1.4 GB of sealed copies), and a
/// stopped one keeps it until its copy has really stopped.
pub(crate) struct Place {
    stop: AtomicBool,
}

impl AsRef<AtomicBool> for Place {
    fn as_ref(&self) -> &AtomicBool {
        &self.stop
    }
}

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
        let place = Arc::new(Place { stop: AtomicBool::new(false) });
        let (artifacts, held) = (artifacts.clone(), place.clone());
        let loading = tokio::spawn(async move {
            // A guess reads `cacheDir` only: no store lookup to time.
            let mut left = std::time::Duration::ZERO;
            from_artifact(&artifacts, pool_ready, digest, kind, false, Some(&held), &mut left).await
        });
        Some(Guess { loading, done: None, place })
    }

    /// Returns `GUESS_WAIT` after the load finished (cancel-safe: what it loaded is kept).
    pub(crate) async fn waited_out(&mut self) {
        if self.done.is_none() {
            self.done = Some((&mut self.loading).await.ok().flatten());
        }
        tokio::time::sleep(GUESS_WAIT).await;
    }

    /// What it loaded, once done.
    pub(crate) async fn finish(mut self) -> Option<(Arc<CompiledModule>, Checked)> {
        match self.done.take() {
            Some(done) => done,
            None => (&mut self.loading).await.ok().flatten(),
        }
    }
}

/// `download` awaited beside a guess, which is dropped (its place and loaded copy given back) once
/// it has waited `GUESS_WAIT` after finishing, not held as long as a slow download.
pub(crate) async fn beside<F: std::future::Future>(download: F, guess: &mut Option<Guess>) -> F::Output {
    tokio::pin!(download);
    loop {
        let Some(waiting) = guess.as_mut() else { return download.await };
        tokio::select! {
            r = &mut download => return r,
            () = waiting.waited_out() => *guess = None,
        }
    }
}

impl Drop for Guess {
    fn drop(&mut self) {
        self.place.stop.store(true, Ordering::Relaxed);
        self.loading.abort();
    }
}

/// Tests that take guesses' places, or count guesses kept, run one at a time.
#[cfg(test)]
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_dir(tag: &str) -> (std::path::PathBuf, ArtifactCache) {
        let dir = std::env::temp_dir().join(format!("loom-guesses-{tag}-{}", std::process::id()));
        let artifacts = ArtifactCache { dir: Some(dir.clone()), ..Default::default() }.open().expect("opens");
        (dir, artifacts)
    }

    /// A guess, once a place is free (another test's guess may hold one for a moment).
    async fn take(artifacts: &ArtifactCache, digest: Digest) -> Guess {
        for _ in 0..400 {
            if let Some(guess) = Guess::start(artifacts, || true, digest, EngineKind::Plain) {
                return guess;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("no place came free")
    }

    /// Guesses dropped unused give their places back: were one kept, the process would stop
    /// guessing after `MAX_GUESSES` of them.
    #[tokio::test(flavor = "multi_thread")]
    async fn dropped_guesses_give_their_places_back() {
        let _serial = SERIAL.lock().await;
        let (dir, artifacts) = cache_dir("dropped");
        for round in 0..(MAX_GUESSES * 5) {
            let guess = take(&artifacts, [round as u8; 32]).await;
            if round % 2 == 0 {
                drop(guess);
            } else {
                assert!(guess.finish().await.is_none(), "no artifact to find");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Review I: a guess that has finished keeps its place (and what it loaded) until it is
    /// claimed or dropped, so no more than `MAX_GUESSES` loaded artifacts wait on slow downloads.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_finished_guess_keeps_its_place_until_it_is_claimed_or_dropped() {
        let _serial = SERIAL.lock().await;
        let (dir, artifacts) = cache_dir("finished");
        let held: Vec<Guess> = all_places(&artifacts).await;
        for _ in 0..400 {
            if held.iter().all(|g| g.loading.is_finished()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(held.iter().all(|g| g.loading.is_finished()));
        assert!(Guess::start(&artifacts, || true, [200; 32], EngineKind::Plain).is_none(), "a finished guess gave its place back");
        let mut held = held.into_iter();
        drop(held.next());
        let again = take(&artifacts, [201; 32]).await;
        for g in held.chain([again]) {
            assert!(g.finish().await.is_none());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Review J: a finished guess beside a download that does not settle is let go after
    /// `GUESS_WAIT`, its place with it; beside a download that settles first, it is kept.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_finished_guess_waits_for_its_download_no_longer_than_guess_wait() {
        let _serial = SERIAL.lock().await;
        let (dir, artifacts) = cache_dir("wait");
        let mut guess = Some(take(&artifacts, [150; 32]).await);
        let quick = tokio::time::sleep(std::time::Duration::from_millis(50));
        beside(quick, &mut guess).await;
        assert!(guess.is_some(), "let go before its download settled");
        let hung = tokio::time::timeout(GUESS_WAIT + std::time::Duration::from_millis(500), std::future::pending::<()>());
        assert!(beside(hung, &mut guess).await.is_err());
        assert!(guess.is_none(), "held for the whole download");
        for g in all_places(&artifacts).await {
            assert!(g.finish().await.is_none());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `MAX_GUESSES` guesses, each of a module with no artifact.
    async fn all_places(artifacts: &ArtifactCache) -> Vec<Guess> {
        let mut held = Vec::new();
        for i in 0..MAX_GUESSES {
            held.push(take(artifacts, [100 + i as u8; 32]).await);
        }
        held
    }
}
