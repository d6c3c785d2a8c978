//! Tests of `modules`' cache slots: how newer code (a tier-up, a pooled copy) takes a slot.
use super::*;

/// The echo guest compiled anew (a module of its own), counted as `bytes` of code.
fn echo(bytes: usize) -> Arc<CompiledModule> {
    let mut m = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    m.code_bytes = bytes;
    Arc::new(m)
}

fn cache(max_bytes: usize) -> ModuleCache {
    ModuleCache::new(NonZeroUsize::new(8).expect("nonzero"), max_bytes, ArtifactCache::default(), LoadLimits::default(), false, false)
}

#[test]
fn newer_code_takes_a_slot_only_from_the_code_it_replaces() {
    let cache = cache(1 << 30);
    let mut st = cache.state.lock().unwrap_or_else(|p| p.into_inner());
    let slot = ([1u8; 32], EngineKind::Plain);
    let first = echo(100);
    st.insert(None, slot, first.clone());
    // The slot still holds the code the newer code replaces: taken, and the bytes follow.
    let second = echo(250);
    assert!(st.swap(&slot, &Arc::downgrade(&first), second.clone()));
    assert!(st.holds(&slot, &Arc::downgrade(&second)));
    assert_eq!(st.stats.code_bytes, 250);
    // Newer code of `first` arriving late (it was replaced meanwhile): refused, nothing moves.
    assert!(!st.swap(&slot, &Arc::downgrade(&first), echo(400)));
    assert!(st.holds(&slot, &Arc::downgrade(&second)));
    assert_eq!(st.stats.code_bytes, 250);
    // The slot is gone (cleared, evicted): refused.
    st.remove(&slot);
    assert!(!st.swap(&slot, &Arc::downgrade(&second), echo(400)));
    assert_eq!(st.stats.code_bytes, 0);
}

#[test]
fn newer_code_that_pushes_the_cache_past_its_bytes_may_push_its_own_slot_out() {
    let cache = cache(1000);
    let mut st = cache.state.lock().unwrap_or_else(|p| p.into_inner());
    let (old_slot, new_slot) = (([1u8; 32], EngineKind::Plain), ([2u8; 32], EngineKind::Plain));
    let old = echo(300);
    st.insert(None, old_slot, old.clone());
    st.insert(None, new_slot, echo(300));
    // The swap is no use of the slot: it stays the least recently used, and goes first when
    // its larger code takes the cache past 1000 bytes.
    assert!(!st.swap(&old_slot, &Arc::downgrade(&old), echo(900)));
    assert!(st.lru.peek(&old_slot).is_none());
    assert!(st.lru.peek(&new_slot).is_some());
    assert_eq!(st.stats.code_bytes, 300);
}

/// A download that never answers.
struct Never;

impl crate::store::BlobSource for Never {
    fn fetch<'a>(&'a self, _path: &'a str, _max_bytes: u64) -> crate::store::BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        Box::pin(std::future::pending())
    }
}

fn never() -> std::sync::Arc<dyn crate::store::BlobSource> {
    std::sync::Arc::new(Never)
}

fn key(name: String) -> DefKey {
    DefKey::new(name, "1".into(), "p.wasm".into())
}

/// A load dropped midway (its call cancelled, or past its deadline) takes its flight out of the
/// map: each used to stay until the same definition loaded again (review K: 12,000 aborted loads
/// of distinct names, +237 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn a_load_dropped_midway_leaves_no_flight_behind() {
    let cache = cache(1 << 30);
    let source = never();
    for i in 0..50 {
        let k = key(format!("never-{i}"));
        let load = cache.get_or_load(&k, EngineKind::Plain, None, &source);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(2), load).await.is_err(), "never answers");
    }
    assert_eq!(cache.loading.lock().unwrap_or_else(|p| p.into_inner()).len(), 0);
    // Callers of one definition share a flight: the one dropped first (the leader here) leaves
    // it to the others, and a caller coming then joins it (review L: each later caller had
    // started a download and a compile of its own); the last to leave takes it out.
    let k = key("shared".into());
    let flights = || cache.loading.lock().unwrap_or_else(|p| p.into_inner()).len();
    let (mut first, mut second) = (Box::pin(cache.get_or_load(&k, EngineKind::Plain, None, &source)), Box::pin(cache.get_or_load(&k, EngineKind::Plain, None, &source)));
    assert!(futures_poll(&mut first).is_none() && futures_poll(&mut second).is_none());
    assert_eq!(flights(), 1);
    drop(first);
    assert_eq!(flights(), 1, "the other caller still waits on it");
    let mut third = Box::pin(cache.get_or_load(&k, EngineKind::Plain, None, &source));
    assert!(futures_poll(&mut third).is_none());
    assert_eq!(flights(), 1, "joined, not a second flight");
    drop(second);
    assert_eq!(flights(), 1);
    drop(third);
    assert_eq!(flights(), 0);
}

/// A download of the echo guest that takes 200 ms, counting the downloads started and those
/// dropped before they ended.
#[derive(Default)]
struct Slow {
    started: std::sync::atomic::AtomicUsize,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

struct CountDrop(std::sync::Arc<std::sync::atomic::AtomicUsize>, bool);

impl Drop for CountDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl crate::store::BlobSource for Slow {
    fn fetch<'a>(&'a self, _path: &'a str, _max_bytes: u64) -> crate::store::BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let guard = CountDrop(self.dropped.clone(), false);
        Box::pin(async move {
            let mut guard = guard;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            guard.1 = true;
            Ok(crate::test_guests::echo())
        })
    }
}

/// The caller leading a load, dropped midway, leaves its download to the callers still waiting
/// (review CB2: each leader cancelled by its signal dropped the download and the next started
/// another; calls cancelled after 500 ms on an 800 ms download never loaded the module); the
/// last caller to leave stops it.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_outlives_its_leader_and_stops_with_its_last_caller() {
    let cache = cache(1 << 30);
    let slow = std::sync::Arc::new(Slow::default());
    let source: std::sync::Arc<dyn crate::store::BlobSource> = slow.clone();
    let k = key("slow".into());
    let mut first = Box::pin(cache.get_or_load(&k, EngineKind::Plain, None, &source));
    assert!(futures_poll(&mut first).is_none());
    let second = cache.get_or_load(&k, EngineKind::Plain, None, &source);
    let dropped_first = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(first);
    };
    let (loaded, ()) = tokio::join!(second, dropped_first);
    assert!(loaded.is_ok());
    assert_eq!(slow.started.load(std::sync::atomic::Ordering::SeqCst), 1, "one download");
    assert_eq!(slow.dropped.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Every caller gone midway: the download stops.
    let k = key("slow-gone".into());
    let mut only = Box::pin(cache.get_or_load(&k, EngineKind::Plain, None, &source));
    assert!(futures_poll(&mut only).is_none());
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop(only);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(slow.started.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(slow.dropped.load(std::sync::atomic::Ordering::SeqCst), 1, "stopped with its last caller");
}

/// Polls a future once; `None` while it is pending.
fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    match std::pin::Pin::new(f).poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Many definitions naming the same cached bytes: the index keeps a bounded number of them
/// (review K: 20,000 names of 16 KiB each kept an entry, +359 MiB, with one module cached).
#[test]
fn the_index_of_definitions_is_bounded() {
    let cache = cache(1 << 30);
    let mut st = cache.state.lock().unwrap_or_else(|p| p.into_inner());
    let module = echo(100);
    let slot = (module.digest, EngineKind::Plain);
    let max = st.max_index();
    let hot = key("in-use".into());
    st.insert(Some(&hot), slot, module.clone());
    for i in 0..max + 500 {
        st.insert(Some(&key(format!("alias-{i}"))), slot, module.clone());
        // A definition in use keeps its entry: the least recently used go (review L: with an
        // arbitrary one evicted, definitions in use were downloaded again thousands of times).
        assert_eq!(st.index.get(&hot), Some(&module.digest), "after {i} one-off names");
    }
    assert_eq!(st.index.len(), max);
    // The newest alias is always there: the definition just loaded finds its module next time.
    assert_eq!(st.index.get(&key(format!("alias-{}", max + 499))), Some(&module.digest));
}

/// The echo guest compiled anew, under a digest of its own (`d` repeated).
fn module_as(d: u8) -> Arc<CompiledModule> {
    let mut m = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    m.digest = [d; 32];
    Arc::new(m)
}

/// `clear(name)` found a name's modules through the index only: a module whose index entry a
/// flood of other definitions had pushed out, or a pinned one loaded from its artifact (found by
/// digest, with no entry), stayed cached.
#[test]
fn clearing_a_name_drops_its_modules_even_without_their_index_entries() {
    let cache = cache(1 << 30);
    let mut st = cache.state.lock().unwrap_or_else(|p| p.into_inner());
    let (a, b, pinned) = (module_as(1), module_as(2), module_as(3));
    let held = |st: &State, m: &Arc<CompiledModule>, kind| st.lru.peek(&(m.digest, kind)).is_some();
    st.insert(Some(&key("a".into())), (a.digest, EngineKind::Plain), a.clone());
    for i in 0..st.max_index() {
        st.insert(Some(&key(format!("one-off-{i}"))), (b.digest, EngineKind::Plain), b.clone());
    }
    assert!(st.index.iter().all(|(k, _)| k.name != "a"), "a's entry was pushed out");
    // Pinned and loaded from its artifact: cached by digest, with no index entry; "q" loaded it too.
    st.insert(None, (pinned.digest, EngineKind::Metered), pinned.clone());
    st.note_name(pinned.digest, "p");
    st.insert(Some(&key("q".into())), (pinned.digest, EngineKind::Plain), pinned.clone());

    st.clear_name("a");
    assert!(!held(&st, &a, EngineKind::Plain));
    st.clear_name("p");
    assert!(held(&st, &pinned, EngineKind::Metered) && held(&st, &pinned, EngineKind::Plain), "q was loaded for it too");
    st.clear_name("q");
    assert!(!held(&st, &pinned, EngineKind::Metered) && !held(&st, &pinned, EngineKind::Plain));
    // Loaded for more names than are kept: clearing the ones kept leaves it (others may use it).
    for i in 0..16 {
        st.clear_name(&format!("one-off-{i}"));
    }
    assert!(held(&st, &b, EngineKind::Plain));
    assert_eq!((st.lru.len(), st.names.len()), (1, 1));
    // Evicted or cleared, a module's names go with it.
    st.clear_all();
    assert!(st.names.is_empty() && st.index.is_empty());
}

/// A load in flight is voided by a clear of everything or of its own activity, not of another's;
/// past the clears remembered, it counts as voided.
#[test]
fn only_clears_of_its_own_activity_void_a_load_in_flight() {
    let cache = cache(1 << 30);
    let mut st = cache.state.lock().unwrap_or_else(|p| p.into_inner());
    let since = st.generation;
    st.note_clear(Some("other"));
    assert!(st.unchanged_for(since, Some("mine")));
    assert!(!st.unchanged_for(since, Some("other")));
    assert!(!st.unchanged_for(since, None), "a load for no name cannot tell");
    st.note_clear(Some("mine"));
    assert!(!st.unchanged_for(since, Some("mine")));
    let later = st.generation;
    assert!(st.unchanged_for(later, Some("mine")));
    st.note_clear(None);
    assert!(!st.unchanged_for(later, Some("third")));
    let after_all = st.generation;
    for i in 0..100 {
        st.note_clear(Some(&format!("n{i}")));
    }
    assert!(!st.unchanged_for(after_all, Some("mine")), "clears were forgotten since: unknown");
    let recent = st.generation;
    st.note_clear(Some("n5"));
    assert!(st.unchanged_for(recent, Some("mine")));
}

/// A definition's hint (`artifact_hints`): the artifact it names loads while the download runs,
/// and is kept only for the very bytes downloaded.
mod hints {
    use std::sync::Arc;

    use crate::artifact_hints::hint_name;
    use crate::digest::{hex, sha256};
    use crate::executor::Executor;
    use crate::options::{CallOptions, Definition, ExecutorOptions};
    use crate::store::MemorySource;
    use crate::test_guests as g;

    fn with_dir(dir: &std::path::Path, bytes: &[u8]) -> Arc<Executor> {
        let source = Arc::new(MemorySource::new());
        source.put("e.wasm", bytes.to_vec());
        let artifacts = crate::artifacts::ArtifactCache { dir: Some(dir.to_path_buf()), ..Default::default() };
        Arc::new(Executor::new(source, ExecutorOptions { share_code: false, tier_up: false, artifacts, ..Default::default() }).expect("executor"))
    }

    fn def() -> Definition {
        Definition { name: "e".into(), version: "1".into(), wasm_blob_path: "e.wasm".into(), ..Default::default() }
    }

    async fn call(ex: &Arc<Executor>) -> String {
        ex.execute(&def(), r#"{"message":"hi","times":2}"#.into(), CallOptions::default()).await.expect("runs").output
    }

    /// Whether the hint file names `bytes`' module.
    fn hint_says(dir: &std::path::Path, bytes: &[u8]) -> bool {
        std::fs::read(dir.join(hint_name("e", "1", "e.wasm"))).is_ok_and(|t| t == hex(&sha256(bytes)).as_bytes())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_hinted_artifact_is_kept_only_when_the_downloaded_bytes_are_that_module() {
        let _serial = crate::module_artifacts::SERIAL.lock().await;
        let dir = std::env::temp_dir().join(format!("loom-hints-exec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let echo = g::unique(g::echo(), b"hints-1");
        // The first load compiles, writes the artifact and the hint.
        let writer = with_dir(&dir, &echo);
        let expected = call(&writer).await;
        assert_eq!(writer.stats().cache.compiles, 1);
        assert!(hint_says(&dir, &echo), "the hint names the module");
        // A cold start: the hinted artifact, loaded beside the download, is the module.
        let reader = with_dir(&dir, &echo);
        assert_eq!(call(&reader).await, expected);
        let s = reader.stats().cache;
        assert_eq!((s.compiles, s.artifact_hits, s.hinted), (0, 1, 1));

        // The definition's bytes changed: the hint names the old module, whose artifact is there
        // and authentic; it is not what runs, and the hint follows the new bytes.
        let counter = g::unique(g::counter(), b"hints-2");
        let changed = with_dir(&dir, &counter);
        let out = call(&changed).await;
        assert_ne!(out, expected, "the old module ran for new bytes");
        let s = changed.stats().cache;
        assert_eq!((s.compiles, s.artifact_hits, s.hinted), (1, 0, 0));
        assert!(hint_says(&dir, &counter), "the hint follows the bytes");

        // Garbage, or a directory, under the hint's name: an ordinary artifact load.
        let file = dir.join(hint_name("e", "1", "e.wasm"));
        std::fs::write(&file, b"not a digest").expect("plant");
        let again = with_dir(&dir, &counter);
        assert_eq!(call(&again).await, out);
        let s = again.stats().cache;
        assert_eq!((s.compiles, s.artifact_hits, s.hinted), (0, 1, 0));
        let _ = std::fs::remove_file(&file);
        std::fs::create_dir(&file).expect("plant a directory");
        let last = with_dir(&dir, &counter);
        assert_eq!(call(&last).await, out);
        assert_eq!((last.stats().cache.artifact_hits, last.stats().cache.hinted), (1, 0));
        // Its hint could not be written over the directory, and left no temporary file behind.
        let names: Vec<String> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Review H: a definition whose download failed gets no guess until a download succeeds
    /// (callers retrying through an outage each had the hinted artifact loaded for nothing).
    #[tokio::test(flavor = "multi_thread")]
    async fn no_guess_after_a_failed_download_until_one_succeeds() {
        let _serial = crate::module_artifacts::SERIAL.lock().await;
        let dir = std::env::temp_dir().join(format!("loom-hints-outage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let echo = g::unique(g::echo(), b"hints-3");
        call(&with_dir(&dir, &echo)).await;
        assert!(hint_says(&dir, &echo));
        let source = Arc::new(MemorySource::new());
        let artifacts = crate::artifacts::ArtifactCache { dir: Some(dir.clone()), ..Default::default() };
        let ex = Arc::new(Executor::new(source.clone(), ExecutorOptions { share_code: false, tier_up: false, artifacts, ..Default::default() }).expect("executor"));
        for _ in 0..3 {
            let err = ex.execute(&def(), "{}".into(), CallOptions::default()).await.expect_err("nothing in the store");
            assert_eq!(err.code(), "BLOB_NOT_FOUND");
        }
        // Back: this load goes the plain way, and the hint holds.
        source.put("e.wasm", echo.clone());
        call(&ex).await;
        let s = ex.stats().cache;
        assert_eq!((s.compiles, s.artifact_hits, s.hinted), (0, 1, 0));
        assert!(hint_says(&dir, &echo));
        // After a download that succeeded, guesses resume.
        ex.clear_cache(None);
        call(&ex).await;
        let s = ex.stats().cache;
        assert_eq!((s.compiles, s.artifact_hits, s.hinted), (0, 2, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The artifacts of modules served from memory are marked used every `REFRESH_EVERY` of hits, so
/// pruning a shared `cacheDir` keeps them however long ago they were loaded.
#[tokio::test(flavor = "multi_thread")]
async fn hits_mark_the_artifacts_of_modules_held_used() {
    use std::time::{Duration, Instant, SystemTime};
    let dir = std::env::temp_dir().join(format!("loom-refresh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let artifacts = ArtifactCache { dir: Some(dir.clone()), ..Default::default() };
    let cache = ModuleCache::new(NonZeroUsize::new(8).expect("nonzero"), 1 << 30, artifacts, LoadLimits::default(), false, false);
    let module = echo(100);
    let path = dir.join(ArtifactCache::name_for(&module.digest, engine(module.kind).expect("engine"), &Default::default()));
    std::fs::write(&path, b"artifact").expect("write");
    let long_ago = SystemTime::now() - Duration::from_secs(86_400);
    let age = || std::fs::metadata(&path).expect("meta").modified().expect("mtime");
    let set_old = || std::fs::File::options().write(true).open(&path).expect("open").set_modified(long_ago).expect("mtime");
    set_old();
    // The hint of the definition that named it, as old.
    let k = key("refreshed".into());
    let hint = dir.join(crate::artifact_hints::hint_name(&k.name, &k.version, &k.path));
    std::fs::write(&hint, b"hint").expect("write");
    std::fs::File::options().write(true).open(&hint).expect("open").set_modified(long_ago).expect("mtime");
    let hint_age = || std::fs::metadata(&hint).expect("meta").modified().expect("mtime");
    cache.state().insert(Some(&k), (module.digest, EngineKind::Plain), module.clone());
    // A hit within ten minutes of the last refresh touches nothing.
    cache.count_hit();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((age(), hint_age()), (long_ago, long_ago));
    // Ten minutes later, the next hit marks it used.
    let Some(earlier) = Instant::now().checked_sub(crate::cache_dir_bound::REFRESH_EVERY) else { return };
    cache.state().refreshed = earlier;
    cache.count_hit();
    let deadline = Instant::now() + Duration::from_secs(10);
    while age() == long_ago && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(age() > SystemTime::now() - Duration::from_secs(60));
    while hint_age() == long_ago && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(hint_age() > SystemTime::now() - Duration::from_secs(60), "the definition's hint was not marked used");
    let _ = std::fs::remove_dir_all(&dir);
}
