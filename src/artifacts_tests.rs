//! Tests of `artifacts`: the artifact tiers, their keys and what they refuse.
use super::*;
use crate::sealed_copy::{in_place_blocking, MAX_ARTIFACT_BYTES, MAX_ARTIFACT_HOLES};
use crate::engine::{engine, EngineKind};
use std::os::unix::fs::PermissionsExt;

fn temp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loom-artifacts-{tag}-{}", std::process::id()))
}

#[test]
fn seal_detects_forgery_corruption_and_truncation() {
    let key = [7u8; 32];
    let sealed = seal(&key, "a", b"compiled code".to_vec(), HAS_START);
    assert_eq!(unseal(&key, "a", &sealed), Some((&b"compiled code"[..], HAS_START)));
    assert_eq!(unseal(&[8u8; 32], "a", &sealed), None, "another key");
    assert_eq!(unseal(&key, "b", &sealed), None, "another artifact's name");
    let mut flipped = sealed.clone();
    flipped[3] ^= 1;
    assert_eq!(unseal(&key, "a", &flipped), None);
    assert_eq!(unseal(&key, "a", &sealed[..sealed.len() - 1]), None);
    assert_eq!(unseal(&key, "a", &sealed[..10]), None);
    // A plain checksum (what anyone can compute) is not enough any more.
    let mut forged = b"compiled code".to_vec();
    forged.push(1);
    forged.extend_from_slice(&Sha256::digest(b"compiled code"));
    forged.extend_from_slice(MAGIC);
    assert_eq!(unseal(&key, "a", &forged), None);
}

#[test]
fn fingerprints_differ_by_engine_settings() {
    let plain = engine(EngineKind::Plain).expect("engine");
    let metered = engine(EngineKind::Metered).expect("engine");
    assert_eq!(fingerprint(plain), fingerprint(plain));
    assert_ne!(fingerprint(plain), fingerprint(metered));
    // The pool is not a setting of the code: the unpooled twin loads the pooled engine's
    // artifacts (`unpooled_first`).
    assert_eq!(fingerprint(plain), fingerprint(engine(EngineKind::PlainUnpooled).expect("engine")));
}

#[test]
fn open_refuses_unsafe_configurations() {
    let code = |c: ArtifactCache| c.open().map(|_| ()).map_err(|e| e.code());
    let dir = temp("open");
    let _ = std::fs::remove_dir_all(&dir);
    let opened = ArtifactCache { dir: Some(dir.clone()), ..Default::default() }.open().expect("creates");
    assert_eq!(std::fs::metadata(dir.join(KEY_FILE)).expect("key").permissions().mode() & 0o777, 0o600);
    let again = ArtifactCache { dir: Some(dir.clone()), ..Default::default() }.open().expect("reads");
    assert_eq!(opened.key, again.key, "the key file is reused");
    std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(code(ArtifactCache { dir: Some(dir.clone()), ..Default::default() }), Err("INVALID_ARGUMENT"));
    // A key file of another user's making (0600, so mode alone says nothing): whoever made it
    // knows the key. Only root can hand a file to another user to show it.
    std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if std::os::unix::fs::chown(dir.join(KEY_FILE), Some(4242), None).is_ok() {
        assert_eq!(code(ArtifactCache { dir: Some(dir.clone()), ..Default::default() }), Err("INVALID_ARGUMENT"));
    }
    // A FIFO or a link in its place: refused at once, not waited on nor followed.
    let key = std::fs::read(dir.join(KEY_FILE)).expect("key");
    std::fs::remove_file(dir.join(KEY_FILE)).expect("rm");
    let c = std::ffi::CString::new(dir.join(KEY_FILE).as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert_eq!(code(ArtifactCache { dir: Some(dir.clone()), ..Default::default() }), Err("INVALID_ARGUMENT"));
    std::fs::remove_file(dir.join(KEY_FILE)).expect("rm");
    let elsewhere = temp("open-elsewhere");
    std::fs::write(&elsewhere, &key).and_then(|_| std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600))).expect("key elsewhere");
    std::os::unix::fs::symlink(&elsewhere, dir.join(KEY_FILE)).expect("link");
    assert_eq!(code(ArtifactCache { dir: Some(dir.clone()), ..Default::default() }), Err("INVALID_ARGUMENT"));
    let _ = std::fs::remove_file(&elsewhere);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    assert_eq!(code(ArtifactCache { dir: Some(dir.clone()), ..Default::default() }), Err("INVALID_ARGUMENT"));
    let _ = std::fs::remove_dir_all(&dir);
    let remote = Some(Arc::new(ObjectSource::open("memory://a/b", &[]).expect("store")));
    assert_eq!(code(ArtifactCache { remote: remote.clone(), ..Default::default() }), Err("INVALID_ARGUMENT"));
    assert_eq!(code(ArtifactCache { remote: remote.clone(), key: Some(vec![1u8; 8].into()), ..Default::default() }), Err("INVALID_ARGUMENT"));
    assert!(code(ArtifactCache { remote, key: Some(vec![1u8; 32].into()), ..Default::default() }).is_ok());
    // Plain HTTP however it is spelt (the URL parser takes any case and trims blanks around it).
    for url in ["http://127.0.0.1:9/x", "HTTP://127.0.0.1:9/x", "Http://127.0.0.1:9/x", " http://127.0.0.1:9/x"] {
        let http = Some(Arc::new(ObjectSource::open(url, &[]).expect("store")));
        assert_eq!(code(ArtifactCache { remote: http, key: Some(vec![1u8; 32].into()), ..Default::default() }), Err("INVALID_ARGUMENT"), "{url}");
    }
    let https = Some(Arc::new(ObjectSource::open("HTTPS://127.0.0.1:9/x", &[]).expect("store")));
    assert!(code(ArtifactCache { remote: https, key: Some(vec![1u8; 32].into()), ..Default::default() }).is_ok());
}

/// An empty disk tier in a fresh directory, the plain engine and the echo guest compiled for it.
fn echo_and_a_fresh_disk_tier(tag: &str) -> (PathBuf, ArtifactCache, &'static Engine, crate::modules::CompiledModule) {
    let dir = temp(tag);
    let _ = std::fs::remove_dir_all(&dir);
    let cache = ArtifactCache { dir: Some(dir.clone()), ..Default::default() }.open().expect("opens");
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    (dir, cache, e, module)
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_tier_round_trips_and_discards_forged_files() {
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("disk");
    let digest = [7u8; 32];
    assert!(cache.load(&digest, e).await.is_none());
    cache.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(matches!(cache.load(&digest, e).await, Some((Compiled::Core(_), Facts { has_start: false, state_in_memory: true, instance_bytes: 0 }))));
    // What the bytes said of state outside memory comes back with the code.
    let outside = [8u8; 32];
    cache.save(&outside, e, &module.code, Facts { has_start: true, state_in_memory: false, instance_bytes: 1 << 20 }).await.expect("saved");
    assert!(matches!(cache.load(&outside, e).await, Some((_, Facts { has_start: true, state_in_memory: false, instance_bytes: 1048576 }))));
    let path = dir.join(ArtifactCache::name_for(&digest, e, &Default::default()));
    let mut bytes = std::fs::read(&path).expect("written");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupted");
    assert!(cache.load(&digest, e).await.is_none());
    assert!(!path.exists(), "a forged or corrupt artifact is removed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An echo compiled and saved under `digest` to `store` (sealed with `key`): the cache that
/// saved it, the module, the artifact's name and its bytes as stored.
async fn saved_remotely(
    store: &Arc<ObjectSource>,
    key: Arc<[u8]>,
    digest: &Digest,
    has_start: bool,
) -> (ArtifactCache, crate::modules::CompiledModule, String, Vec<u8>) {
    let cache = ArtifactCache { remote: Some(store.clone()), key: Some(key), ..Default::default() }.open().expect("opens");
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let name = ArtifactCache::name_for(digest, e, &Default::default());
    let facts = crate::compiled_module::Facts { has_start, ..module.facts() };
    cache.save_now(digest, e, &module.code, facts).await.expect("saved");
    let stored = store.get(&name).await.expect("stored").to_vec();
    (cache, module, name, stored)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloaded_artifact_loads_into_the_twin_from_its_checked_bytes_not_a_second_download() {
    let store = Arc::new(ObjectSource::open("memory://artifacts-checked", &[]).expect("store"));
    let digest = [11u8; 32];
    let (cache, module, name, good) = saved_remotely(&store, vec![5u8; 32].into(), &digest, true).await;
    let e = engine(EngineKind::Plain).expect("engine");
    let Some((Compiled::Core(_), checked @ Checked::Bytes(_))) = cache.load_sealed(&digest, e).await else {
        panic!("downloaded and checked")
    };
    // The store loses it (or is changed): the twin loads the bytes that were checked.
    store.put(&name, Bytes::from_static(b"not an artifact")).await.expect("overwritten");
    let Some(Compiled::Core(again)) = checked.load(engine(EngineKind::PlainUnpooled).expect("twin")) else {
        panic!("the checked bytes load again")
    };
    assert!(again.serialize().expect("serializes").starts_with(&good[..good.len() - TRAILER]));
    assert!(checked.facts().has_start);
    assert!(checked.load(engine(EngineKind::Metered).expect("metered")).is_none(), "another fingerprint is refused");
    // What the store holds now is not an artifact: refused, nothing checked to keep.
    assert!(cache.load_sealed(&digest, e).await.is_none());
    // Nor is one sealed under another key.
    let other = ArtifactCache { remote: Some(store.clone()), key: Some(vec![6u8; 32].into()), ..Default::default() }.open().expect("opens");
    other.save_now(&digest, e, &module.code, Facts { has_start: true, state_in_memory: true, instance_bytes: 0 }).await.expect("saved");
    assert!(cache.load_sealed(&digest, e).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloaded_artifact_is_written_to_the_directory_as_it_was_checked() {
    let dir = temp("from-remote");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(ObjectSource::open("memory://artifacts-to-dir", &[]).expect("store"));
    let key: Arc<[u8]> = vec![9u8; 32].into();
    let digest = [13u8; 32];
    let (_, _, name, stored) = saved_remotely(&store, key.clone(), &digest, false).await;
    let e = engine(EngineKind::Plain).expect("engine");
    let worker =
        ArtifactCache { dir: Some(dir.clone()), remote: Some(store.clone()), key: Some(key), ..Default::default() }.open().expect("opens");
    assert!(matches!(worker.load_sealed(&digest, e).await, Some((Compiled::Core(_), Checked::Bytes(_)))));
    assert_eq!(std::fs::read(dir.join(&name)).expect("written"), stored, "the file is the artifact, byte for byte");
    // The store loses it: the directory's copy loads (in place).
    store.put(&name, Bytes::from_static(b"gone")).await.expect("overwritten");
    assert!(matches!(worker.load_sealed(&digest, e).await, Some((Compiled::Core(_), _))));
    // A forged download is neither loaded nor written.
    let _ = std::fs::remove_file(dir.join(&name));
    assert!(worker.load_sealed(&digest, e).await.is_none());
    assert!(!dir.join(&name).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn artifacts_load_through_a_sealed_copy_the_file_cannot_change() {
    let dir = temp("inplace");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = ArtifactCache { dir: Some(dir.clone()), ..Default::default() }.open().expect("opens");
    let key = cache.key.clone().expect("key");
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let digest = [9u8; 32];
    let name = ArtifactCache::name_for(&digest, e, &Default::default());
    let path = dir.join(&name);
    assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Missing));
    cache.save(&digest, e, &module.code, Facts { has_start: true, state_in_memory: true, instance_bytes: 0 }).await.expect("saved");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "written for its owner alone to change, whatever the umask");
    let good = std::fs::read(&path).expect("read");
    let InPlace::Loaded(Compiled::Core(m), sealed) = in_place_blocking(e, &key, &name, &path) else {
        panic!("an authentic artifact loads")
    };
    assert!(sealed.facts().has_start, "saved with a start function");
    // The file cut short and rewritten while the module lives: the module maps the sealed
    // copy, so reading every page of it (serialize) neither faults nor sees the change.
    std::fs::write(&path, b"short").expect("rewrite");
    let image = m.serialize().expect("serializes");
    assert!(image.starts_with(&good[..good.len() - TRAILER]), "the module reads the sealed copy, not the file");
    std::fs::write(&path, &good).expect("restore");
    // The sealed copy maps into another engine of the fingerprint (the unpooled twin) as the
    // bytes that were checked, whatever the file holds by then; never into another fingerprint.
    let Some((Compiled::Core(_), sealed @ Checked::Sealed(_))) = cache.load_sealed(&digest, e).await else {
        panic!("loaded through a sealed copy")
    };
    assert!(sealed.facts().has_start);
    std::fs::write(&path, b"rewritten").expect("rewrite");
    let Some(Compiled::Core(again)) = sealed.load(engine(EngineKind::PlainUnpooled).expect("twin")) else {
        panic!("the sealed copy maps again")
    };
    assert!(again.serialize().expect("serializes").starts_with(&good[..good.len() - TRAILER]));
    assert!(sealed.load(engine(EngineKind::Metered).expect("metered")).is_none(), "another fingerprint is refused");
    std::fs::write(&path, &good).expect("restore");
    // The wrong key or the wrong name: its tag does not hold.
    assert!(matches!(in_place_blocking(e, &[1u8; 32], &name, &path), InPlace::Invalid));
    assert!(matches!(in_place_blocking(e, &key, "other.cwasm", &path), InPlace::Invalid));
    // One flipped bit anywhere (first byte, body, flags, tag, magic), or a cut: invalid.
    for at in [0, good.len() / 3, good.len() - TRAILER - 1, good.len() - TRAILER, good.len() - 9, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Invalid), "bit flipped at {at}");
    }
    for cut in [good.len() - 7, 10, 0] {
        std::fs::write(&path, &good[..cut]).expect("write");
        assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Invalid), "cut at {cut}");
    }
    // Planted under the artifact's name: a FIFO (whose open would block) and a symlink to an
    // endless device. Both are invalid at once, and `load` removes them.
    for plant in ["fifo", "symlink"] {
        let _ = std::fs::remove_file(&path);
        if plant == "fifo" {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        } else {
            std::os::unix::fs::symlink("/dev/zero", &path).expect("symlink");
        }
        assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Invalid), "{plant}");
        assert!(cache.load(&digest, e).await.is_none());
        assert!(std::fs::symlink_metadata(&path).is_err(), "the planted {plant} is removed");
    }
    // A sparse giant is not copied into memory.
    let giant = std::fs::File::create(&path).expect("create");
    giant.set_len(MAX_ARTIFACT_BYTES + 1).expect("sparse");
    assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Invalid));
    // Under the limit but sparse, with the key's own tag over its zeros (the most a planter
    // could forge): refused for its holes before anything is copied (review V: 2 GiB less 41
    // bytes, 4 KiB of disk, took 2 GiB of memory and 9 s to copy before its tag failed). The
    // same bytes written whole pass the look and the tag, and only wasmtime refuses them.
    let zeros = seal(&key, &name, vec![0u8; (MAX_ARTIFACT_HOLES + (1 << 20)) as usize], 0);
    let body_len = zeros.len() - TRAILER;
    let _ = std::fs::remove_file(&path);
    let sparse = std::fs::File::create(&path).expect("create");
    sparse.set_len(body_len as u64).expect("sparse");
    std::os::unix::fs::FileExt::write_all_at(&sparse, &zeros[body_len..], body_len as u64).expect("trailer");
    assert!(crate::untrusted_dir::holes_over(&sparse, zeros.len() as u64, MAX_ARTIFACT_HOLES));
    assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Invalid));
    std::fs::write(&path, &zeros).expect("write");
    assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::NotHere));
    // A file with another name (a hard link: its disk paid once for any number of artifacts'
    // names) is refused unread, even a valid artifact.
    std::fs::write(&path, &good).expect("write");
    let other = path.with_extension("also");
    std::fs::hard_link(&path, &other).expect("link");
    assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Invalid));
    std::fs::remove_file(&other).expect("unlink");
    assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Loaded(..)));
    std::fs::write(&path, &good[..10]).expect("write");
    // `load` removes an invalid artifact so it is rewritten.
    assert!(cache.load(&digest, e).await.is_none());
    assert!(!path.exists(), "an invalid artifact is removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_planted_as_the_temporary_file_is_not_written_through() {
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("planted");
    let digest = [9u8; 32];
    let name = ArtifactCache::name_for(&digest, e, &Default::default());
    let victim = temp("planted-victim");
    std::fs::write(&victim, b"precious").expect("victim");
    // Every temporary name this process's next writes could take (a counter per process).
    for n in 0..4096 {
        std::os::unix::fs::symlink(&victim, dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()))).expect("link");
    }
    cache.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    assert!(matches!(cache.load(&digest, e).await, Some((Compiled::Core(_), Facts { has_start: false, state_in_memory: true, instance_bytes: 0 }))));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&victim);
}

#[test]
fn threads_racing_for_a_new_directory_key_all_get_the_winners() {
    for round in 0..20 {
        let dir = temp(&format!("key-race-{round}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // What a process of this pid killed while making the key left behind (the old name).
        std::fs::write(dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id())), b"stale").expect("stale");
        let start = std::sync::Arc::new(std::sync::Barrier::new(6));
        let racers: Vec<_> = (0..6)
            .map(|_| {
                let (dir, start) = (dir.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    dir_key(&dir).map_err(|e| e.to_string())
                })
            })
            .collect();
        let keys: Vec<_> = racers.into_iter().map(|r| r.join().expect("no panic").expect("every racer gets a key")).collect();
        assert!(keys.iter().all(|k| k == &keys[0]), "one key for all");
        assert_eq!(std::fs::read(dir.join(KEY_FILE)).expect("key file"), keys[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A guess's stop flag.
struct Flag(std::sync::atomic::AtomicBool);

impl AsRef<std::sync::atomic::AtomicBool> for Flag {
    fn as_ref(&self) -> &std::sync::atomic::AtomicBool {
        &self.0
    }
}

/// Review H: a guess (`artifact_hints`) never removes what it finds; a stopped one loads nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_guess_leaves_an_artifact_it_cannot_check_and_a_stopped_one_loads_nothing() {
    use std::sync::atomic::AtomicBool;
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("guess");
    let digest = [9u8; 32];
    cache.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    let path = dir.join(ArtifactCache::name_for(&digest, e, &Default::default()));
    let go = || Arc::new(Flag(AtomicBool::new(false)));
    assert!(cache.load_guess(&digest, e, go()).await.is_some());
    // Another executor's key on the same directory: not its artifact, and not its to remove.
    let other = ArtifactCache { dir: Some(dir.clone()), key: Some(vec![5u8; 32].into()), ..Default::default() };
    assert!(other.load_guess(&digest, e, go()).await.is_none());
    assert!(path.exists(), "a guess removed an artifact it could not check");
    // Corrupt: still left for a load that downloaded the bytes to judge.
    let mut bytes = std::fs::read(&path).expect("written");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupted");
    assert!(cache.load_guess(&digest, e, go()).await.is_none());
    assert!(path.exists());
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).expect("restored");
    // Stopped before it starts: nothing loaded, nothing removed.
    assert!(cache.load_guess(&digest, e, Arc::new(Flag(AtomicBool::new(true)))).await.is_none());
    assert!(path.exists());
    assert!(cache.load_guess(&digest, e, go()).await.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a test server does with each connection.
#[derive(Clone, Copy)]
enum Serve {
    /// Never answers.
    Silent,
    /// Answers the request's head with `HEAD_100K`, then sends nothing.
    HeadOnly,
    /// Answers with `HEAD_100K`, then a byte every 20 ms.
    Trickle,
    /// Answers with a 100 MB head, then sends 64 KiB every 2 ms (32 MB/s: a large artifact).
    Large,
    /// Answers with a 1.2 MB head, sends 1 MiB at once, then a byte every 20 ms.
    FastThenTrickle,
    /// Answers with a 100 MB head, then sends this many bytes every 50 ms.
    Paced(usize),
    /// Answers 500.
    Fails,
    /// Answers 404 to all but PUTs, which it never answers.
    StallsPuts,
}

const HEAD_1200K: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 1200000\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n";

const HEAD_100M: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n";

const HEAD_100K: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n";

/// A server on loopback serving each connection as `serve` says; counts them.
fn server(serve: Serve) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                if !matches!(serve, Serve::Silent) {
                    // After the request's head.
                    let mut seen = Vec::new();
                    let mut byte = [0u8; 1];
                    while !seen.ends_with(b"\r\n\r\n") && std::io::Read::read(&mut conn, &mut byte).is_ok_and(|n| n == 1) {
                        seen.push(byte[0]);
                    }
                    let stalls = matches!(serve, Serve::StallsPuts) && seen.starts_with(b"PUT");
                    let head = match serve {
                        Serve::Fails => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        Serve::StallsPuts => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        Serve::Large | Serve::Paced(_) => HEAD_100M,
                        Serve::FastThenTrickle => HEAD_1200K,
                        _ => HEAD_100K,
                    };
                    if !stalls {
                        let _ = std::io::Write::write_all(&mut conn, head.as_bytes());
                        if matches!(serve, Serve::Fails | Serve::StallsPuts) {
                            return;
                        }
                    }
                }
                if matches!(serve, Serve::Large) {
                    let part = vec![b'x'; 64 * 1024];
                    while std::io::Write::write_all(&mut conn, &part).is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
                if let Serve::Paced(n) = serve {
                    let part = vec![b'x'; n];
                    while std::io::Write::write_all(&mut conn, &part).is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
                if matches!(serve, Serve::FastThenTrickle) && std::io::Write::write_all(&mut conn, &vec![b'x'; 1 << 20]).is_err() {
                    return;
                }
                if matches!(serve, Serve::Trickle | Serve::FastThenTrickle) {
                    while std::io::Write::write_all(&mut conn, b"x").is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                // Held open until the client lets go.
                let mut sink = [0u8; 64];
                while std::io::Read::read(&mut conn, &mut sink).is_ok_and(|n| n > 0) {}
            });
        }
    });
    (port, accepted)
}

fn silent_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    server(Serve::Silent)
}

/// An S3 store over plain http at `port` (`open` refuses it for artifacts: caches here are made
/// without `open`).
fn s3_at(port: u16) -> Arc<ObjectSource> {
    s3_timing_out(port, None)
}

/// `s3_at`, its operations bounded by `timeout_ms` (the store's `timeoutMs`).
fn s3_timing_out(port: u16, timeout_ms: Option<&str>) -> Arc<ObjectSource> {
    let mut options: Vec<(String, String)> = [
        ("endpoint", format!("http://127.0.0.1:{port}")),
        ("allow_http", "true".into()),
        ("access_key_id", "k".into()),
        ("secret_access_key", "s".into()),
        ("region", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(ms) = timeout_ms {
        options.push(("timeoutMs".into(), ms.into()));
    }
    Arc::new(ObjectSource::open("s3://bucket/artifacts", &options).expect("store"))
}

fn cache_on(store: Arc<ObjectSource>) -> ArtifactCache {
    ArtifactCache { remote: Some(store), key: Some(vec![3u8; 32].into()), fetch_timeout: Some(std::time::Duration::from_millis(300)), ..Default::default() }
}

fn count(n: &std::sync::atomic::AtomicUsize) -> usize {
    n.load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits (at most 10 s) until a budget holds something.
async fn until_holding(budget: &crate::unchecked_artifacts::UncheckedBytes) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while budget.held() == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn until_more_than(n: &std::sync::atomic::AtomicUsize, was: usize) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count(n) == was && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    count(n) > was
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_artifact_store_holds_a_lookup_loadtimeoutms_once_and_a_save_not_at_all() {
    // Review AM1: a store whose GETs stalled held a cold call 60 s (its timeoutMs, twice) under a
    // loadTimeoutMs of 1 s, and one whose PUTs stalled held the call that compiled 5 s.
    let (port, accepted) = silent_server();
    let cache = cache_on(s3_at(port));
    let e = engine(EngineKind::Plain).expect("engine");
    let digest = [17u8; 32];
    let looked = tokio::time::timeout(std::time::Duration::from_secs(10), cache.load_sealed(&digest, e)).await;
    assert!(matches!(looked, Ok(None)), "given up after loadTimeoutMs, not the store's 30 s");
    let asked = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(asked >= 1, "the store was asked");
    // The next lookups skip the store for a while.
    for _ in 0..3 {
        assert!(cache.load_sealed(&digest, e).await.is_none());
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), asked, "not asked again");
    // A compile's save leaves the store's write in the background.
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let saved = tokio::time::timeout(std::time::Duration::from_secs(10), cache.save(&digest, e, &module.code, module.facts())).await;
    assert!(matches!(saved, Ok(Ok(()))), "not held by the stalled write");
    assert!(until_more_than(&accepted, asked).await, "the write went to the store");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_sending_a_large_artifact_is_not_skipped_and_one_whose_body_stops_or_trickles_is() {
    // Review AM1F: any lookup past loadTimeoutMs turned the store off for a minute, so a tenant's
    // large module on a slow store cost everyone's artifacts. Review AMF2: a store that answered
    // at once and then sent no body held every cold call twice loadTimeoutMs (120 s by default).
    // Review AN1: one that sent a byte every few seconds was never skipped, and every new
    // module's cold call waited loadTimeoutMs.
    let e = engine(EngineKind::Plain).expect("engine");
    let (port, accepted) = server(Serve::Large);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none(), "its body is not done by loadTimeoutMs");
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert!(count(&accepted) > asked, "the store is asked again");
    // For another module: the one that ran out of time is not looked up again for a while.
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "that module's lookups skip the store");
    let (port, accepted) = server(Serve::Trickle);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none(), "50 bytes a second: all but stopped");
    let asked = count(&accepted);
    assert!(asked >= 1);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since, for every module");
    // Judged as it goes, not on average (review AN1F: a store that sent fast, then a byte every
    // few seconds, held every new module's cold call loadTimeoutMs): here the artifact could have
    // come in time at its first pace.
    let (port, accepted) = server(Serve::FastThenTrickle);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none());
    let asked = count(&accepted);
    assert!(asked >= 1);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since, for every module");
    let (port, accepted) = server(Serve::HeadOnly);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none(), "its body never comes");
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since");
    // A store that fails (500) is skipped as one that stalls (each lookup was retried by the
    // client: a second of every cold call).
    let (port, accepted) = server(Serve::Fails);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none());
    let asked = count(&accepted);
    assert!(asked >= 1);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since");
}

#[tokio::test(flavor = "multi_thread")]
async fn asking_a_stalled_store_for_shared_code_holds_nothing_and_precompiles_write_is_an_error() {
    // Review AM1F: code taken from another executor asked the store whether it had it, and a
    // store that stalled held that call 30 s; precompile resolved though nothing was stored.
    let (port, _) = silent_server();
    let cache = cache_on(s3_at(port));
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let digest = [20u8; 32];
    let asked = tokio::time::timeout(std::time::Duration::from_secs(10), cache.save_missing(&digest, e, &module.code, module.facts())).await;
    assert!(matches!(asked, Ok(Ok(()))), "given up on after the store's answer wait");
    assert!(cache.remote_state.skipping(), "and the store skipped since");
    let now = tokio::time::timeout(std::time::Duration::from_secs(10), cache.save_missing_now(&digest, e, &module.code, module.facts())).await;
    assert_eq!(now.expect("bounded").map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_is_judged_on_what_all_lookups_receive_and_a_lookup_that_cannot_finish_in_time_stops_early() {
    // Review AN2: six lookups sharing a link, each under the bound alone, turned a working store
    // off; and a store sending just over the bound held each new module's lookup to its deadline.
    let e = engine(EngineKind::Plain).expect("engine");
    // 40 KiB/s a lookup, under the bound alone; six together well over it.
    let (port, accepted) = server(Serve::Paced(2048));
    let cache = Arc::new(cache_on(s3_at(port)));
    let lookups: Vec<_> = (0..6u8)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.load_sealed(&[50 + i; 32], engine(EngineKind::Plain).expect("engine")).await.is_none() })
        })
        .collect();
    for l in lookups {
        assert!(l.await.expect("ran"), "none done by loadTimeoutMs");
    }
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[60u8; 32], e).await.is_none());
    assert!(count(&accepted) > asked, "the store is still asked");
    // 100 KiB/s, over the bound, 100 MB to send: given up on after the first answer wait (half
    // of loadTimeoutMs here), not at loadTimeoutMs.
    let (port, _) = server(Serve::Paced(5120));
    let cache = ArtifactCache { fetch_timeout: Some(std::time::Duration::from_secs(4)), ..cache_on(s3_at(port)) };
    let started = std::time::Instant::now();
    assert!(cache.load_sealed(&[61u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(3500), "{:?}", started.elapsed());
    assert!(!cache.remote_state.skipping(), "a store that sends is not skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_precompile_whose_write_is_under_way_and_fails_is_refused_without_a_second_write() {
    // Review AN1: the write of the compile (in the background) ran out of the store's timeoutMs,
    // then precompile asked the store and wrote again: twice timeoutMs, two PUTs.
    let (port, accepted) = server(Serve::StallsPuts);
    let cache = cache_on(s3_timing_out(port, Some("500")));
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let digest = [21u8; 32];
    cache.save(&digest, e, &module.code, module.facts()).await.expect("its write goes on in the background");
    let now = tokio::time::timeout(std::time::Duration::from_secs(20), cache.save_missing_now(&digest, e, &module.code, module.facts())).await;
    assert_eq!(now.expect("bounded").map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
    assert_eq!(count(&accepted), 1, "one write, nothing asked or written after it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_dir_that_cannot_be_written_fails_the_save_coded_and_the_store_still_gets_the_artifact() {
    // Review AN1F: with its cacheDir removed, precompile failed INTERNAL and nothing reached the
    // store: the worker stopped sharing with its fleet.
    let dir = temp("removed-dir");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(ObjectSource::open("memory://artifacts-removed-dir", &[]).expect("store"));
    let cache = ArtifactCache { dir: Some(dir.clone()), remote: Some(store.clone()), key: Some(vec![6u8; 32].into()), ..Default::default() }
        .open()
        .expect("opens");
    std::fs::remove_dir_all(&dir).expect("removed under it");
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let digest = [22u8; 32];
    let saved = cache.save_now(&digest, e, &module.code, module.facts()).await;
    assert_eq!(saved.map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
    assert!(store.exists(&cache.name(&digest, e)).await.expect("asks"), "the store has it");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_executors_stalled_writes_leave_anothers_alone() {
    // Review AM1F: four writes to one executor's stalled store took the process's every place,
    // and 20 of another executor's artifacts were never written.
    let (stalled, _) = silent_server();
    let (healthy, written) = silent_server();
    let (x, y) = (cache_on(s3_at(stalled)), cache_on(s3_at(healthy)));
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    for i in 0..6u8 {
        x.save(&[30 + i; 32], e, &module.code, module.facts()).await.expect("saved");
    }
    y.save(&[40u8; 32], e, &module.code, module.facts()).await.expect("saved");
    assert!(until_more_than(&written, 0).await, "the other executor's write went to its store");
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_reads_hold_at_most_the_unchecked_budget_and_one_without_room_is_not_made() {
    // Whoever writes the artifact store can plant a large object under an artifact's name: each
    // lookup read it whole before its tag refused it (up to 2 GiB for each module loading at
    // once). A 100 MB answer, 1.3 MB/s, under a budget of 150 MB.
    let e = engine(EngineKind::Plain).expect("engine");
    let (port, _) = server(Serve::Paced(64 * 1024));
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(150_000_000);
    let cache = Arc::new(ArtifactCache {
        fetch_timeout: Some(std::time::Duration::from_secs(2)),
        remote_state: RemoteState { unchecked: budget.clone(), ..Default::default() },
        ..cache_on(s3_at(port))
    });
    let first = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.load_sealed(&[70u8; 32], engine(EngineKind::Plain).expect("engine")).await.is_none() })
    };
    until_holding(&budget).await;
    assert_eq!(budget.held(), 100_000_000, "the first read holds its size from the answer's head");
    // A second module's lookup meanwhile: no room, so its body is not read (it would take the
    // lookup's 2 s), and the store is not judged for it.
    let started = std::time::Instant::now();
    assert!(cache.load_sealed(&[71u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(900), "{:?}", started.elapsed());
    assert!(!cache.remote_state.skipping() && !cache.remote_state.skipping_module(&[71u8; 32]));
    assert!(first.await.expect("ran"));
    assert_eq!((budget.held(), budget.peak()), (0, 100_000_000));
    // An object larger than the whole budget is never read.
    let (port, _) = server(Serve::Large);
    let small = crate::unchecked_artifacts::UncheckedBytes::with_max(64 << 20);
    let cache = ArtifactCache { remote_state: RemoteState { unchecked: small.clone(), ..Default::default() }, ..cache_on(s3_at(port)) };
    assert!(cache.load_sealed(&[72u8; 32], e).await.is_none());
    assert_eq!(small.peak(), 0);
    assert!(!cache.remote_state.skipping());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tier_reads_an_artifact_only_with_room_for_it_and_gives_the_room_back() {
    let e = engine(EngineKind::Plain).expect("engine");
    let key: Arc<[u8]> = vec![12u8; 32].into();
    let digest = [73u8; 32];
    let name = ArtifactCache::name_for(&digest, e, &Default::default());
    let tight = |size: u64| crate::unchecked_artifacts::UncheckedBytes::with_max(size - 1);
    // A file:// store: an honest artifact needs room for its size; a planted sparse giant (4 KiB
    // of disk) is not read, where it was read whole.
    let root = temp("unchecked-store");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("store dir");
    let store = Arc::new(ObjectSource::open(&format!("file://{}", root.display()), &[]).expect("store"));
    let (_, module, _, stored) = saved_remotely(&store, key.clone(), &digest, false).await;
    let size = stored.len() as u64;
    let on_store = |unchecked| ArtifactCache {
        remote: Some(store.clone()),
        key: Some(key.clone()),
        remote_state: RemoteState { unchecked, ..Default::default() },
        ..Default::default()
    };
    let budget = tight(size);
    assert!(on_store(budget.clone()).load_sealed(&digest, e).await.is_none(), "no room");
    assert_eq!(budget.peak(), 0);
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(size);
    assert!(on_store(budget.clone()).load_sealed(&digest, e).await.is_some());
    assert_eq!((budget.held(), budget.peak()), (0, size));
    let giant = std::fs::OpenOptions::new().write(true).open(root.join(&name)).expect("the artifact's file");
    giant.set_len(1 << 30).expect("sparse");
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(2 << 30);
    assert!(on_store(budget.clone()).load_sealed(&digest, e).await.is_none());
    assert_eq!(budget.peak(), 0, "not read: mostly holes");
    // cacheDir, through a sealed copy and the plain read alike.
    let (dir, cache, e, _) = echo_and_a_fresh_disk_tier("unchecked-dir");
    cache.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    let size = std::fs::metadata(dir.join(&name)).expect("written").len();
    let budget = tight(size);
    let on_dir = ArtifactCache { unchecked: budget.clone(), ..cache.clone() };
    assert!(on_dir.load_sealed(&digest, e).await.is_none(), "no room");
    assert!(dir.join(&name).exists(), "an artifact without room is not taken for a forged one");
    assert!(on_dir.load_guess(&digest, e, Arc::new(Flag(Default::default()))).await.is_none());
    let path = dir.join(&name);
    assert!(read_bounded(path.clone(), budget.clone()).await.is_none());
    assert_eq!(budget.peak(), 0);
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(size);
    let on_dir = ArtifactCache { unchecked: budget.clone(), ..cache.clone() };
    assert!(matches!(on_dir.load_sealed(&digest, e).await, Some((_, Checked::Sealed(_)))));
    assert!(read_bounded(path, budget.clone()).await.is_some_and(|(bytes, _)| bytes.len() as u64 == size));
    assert_eq!((budget.held(), budget.peak()), (0, size));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread")]
async fn precompiles_save_fails_when_no_tier_holds_the_artifact() {
    // Noticed in review AN2: with no artifact store, precompile resolved though its cacheDir had
    // been removed, or its artifact was over maxCacheDirBytes: nothing was written anywhere.
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("precompile-dir-alone");
    let digest = [23u8; 32];
    let name = cache.name(&digest, e);
    std::fs::remove_dir_all(&dir).expect("removed under it");
    let saved = cache.save_missing_now(&digest, e, &module.code, module.facts()).await;
    assert_eq!(saved.map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
    std::fs::create_dir_all(&dir).expect("back");
    let tight = ArtifactCache { max_dir_bytes: Some(4096), ..cache.clone() };
    let refused = tight.save_missing_now(&digest, e, &module.code, module.facts()).await.expect_err("over the bound");
    assert_eq!(refused.code(), "INVALID_ARGUMENT");
    assert!(refused.to_string().contains("was not written") && refused.to_string().contains("4096"), "{refused}");
    assert!(!dir.join(&name).exists());
    // A store that takes it is a tier that holds it.
    let store = Arc::new(ObjectSource::open("memory://artifacts-over-dir-bound", &[]).expect("store"));
    let both = ArtifactCache { remote: Some(store.clone()), ..tight.clone() };
    both.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("the store holds it");
    assert!(store.exists(&name).await.expect("asks"));
    // Within the bound, the directory does.
    cache.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written");
    assert!(dir.join(&name).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stores_lookups_take_no_room_from_cache_dir_reads_and_an_artifact_left_unread_is_not_written_again() {
    // Review AO1: with one budget for the process, a store answering a 1 GiB head made every
    // executor's cacheDir loads compile while its lookup ran; and each read refused for want of
    // room was followed by a second upload of what the store held.
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("unchecked-apart");
    let digest = [74u8; 32];
    cache.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    let size = std::fs::metadata(dir.join(cache.name(&digest, e))).expect("written").len();
    // Room for the store's 100 MB answer or the artifact, not both.
    let dir_budget = crate::unchecked_artifacts::UncheckedBytes::with_max(100_000_000 + size - 1);
    let on_dir = ArtifactCache { unchecked: dir_budget.clone(), ..cache.clone() };
    let (port, _) = server(Serve::Paced(64 * 1024));
    let on_store = Arc::new(ArtifactCache {
        fetch_timeout: Some(std::time::Duration::from_secs(2)),
        unchecked: dir_budget.clone(),
        ..cache_on(s3_at(port))
    });
    let held = {
        let on_store = on_store.clone();
        tokio::spawn(async move { on_store.load_sealed(&[75u8; 32], engine(EngineKind::Plain).expect("engine")).await })
    };
    until_holding(&on_store.remote_state.unchecked).await;
    assert_eq!(on_store.remote_state.unchecked.held(), 100_000_000);
    assert!(on_dir.load_sealed(&digest, e).await.is_some(), "the directory's read has its room");
    assert!(held.await.expect("ran").is_none());
    // Read refused for want of room (its budget has room for it, not now): the store has it, and
    // the compile after does not write it.
    let store = Arc::new(ObjectSource::open("memory://artifacts-unread", &[]).expect("store"));
    let key: Arc<[u8]> = vec![14u8; 32].into();
    let (_, _, name, stored) = saved_remotely(&store, key.clone(), &digest, false).await;
    let on = |max: u64| ArtifactCache {
        remote: Some(store.clone()),
        key: Some(key.clone()),
        remote_state: RemoteState { unchecked: crate::unchecked_artifacts::UncheckedBytes::with_max(max), ..Default::default() },
        ..Default::default()
    };
    let tight = on(stored.len() as u64);
    let taken = tight.remote_state.unchecked.take(1).expect("a byte");
    assert!(tight.load_sealed(&digest, e).await.is_none());
    drop(taken);
    let planted = || async { store.put(&name, Bytes::from_static(b"as the store had it")).await.expect("planted") };
    let kept = || async { &store.get(&name).await.expect("there")[..] == b"as the store had it" };
    planted().await;
    tight.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(kept().await, "not written again");
    // Once: a later compile's save writes it.
    tight.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(!kept().await);
    // Review AO1F: an object larger than the whole budget (planted once: it can never be read)
    // is written over by the compile after, as a forged one is.
    let smaller = on(stored.len() as u64 - 1);
    assert!(smaller.load_sealed(&digest, e).await.is_none());
    planted().await;
    smaller.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(!kept().await, "written over");
    // So with a `file://` store, whose reads tell no size on the way (review AO2).
    let root = temp("unread-file-store");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("store dir");
    let files = Arc::new(ObjectSource::open(&format!("file://{}", root.display()), &[]).expect("store"));
    let (_, _, _, stored) = saved_remotely(&files, key.clone(), &digest, false).await;
    let smaller = ArtifactCache { remote: Some(files.clone()), ..on(stored.len() as u64 - 1) };
    assert!(smaller.load_sealed(&digest, e).await.is_none());
    files.put(&name, Bytes::from_static(b"as the store had it")).await.expect("planted");
    smaller.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert_eq!(files.get(&name).await.expect("there").len(), stored.len(), "written over");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread")]
async fn all_executors_store_lookups_together_hold_at_most_the_process_budget() {
    // Review AO1F: with a budget per executor only, three executors on a store sending 1 GiB
    // bodies took the process to 3 GiB.
    let e = engine(EngineKind::Plain).expect("engine");
    let (port, _) = server(Serve::Paced(64 * 1024));
    let all = crate::unchecked_artifacts::UncheckedBytes::with_max(150_000_000);
    let executor = || {
        Arc::new(ArtifactCache {
            fetch_timeout: Some(std::time::Duration::from_secs(2)),
            remote_state: RemoteState { all_stores: all.clone(), ..Default::default() },
            ..cache_on(s3_at(port))
        })
    };
    let (first, second) = (executor(), executor());
    let held = {
        let first = first.clone();
        tokio::spawn(async move { first.load_sealed(&[76u8; 32], engine(EngineKind::Plain).expect("engine")).await.is_none() })
    };
    until_holding(&all).await;
    assert_eq!((all.held(), first.remote_state.unchecked.held()), (100_000_000, 100_000_000));
    let started = std::time::Instant::now();
    assert!(second.load_sealed(&[77u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(900), "not read: {:?}", started.elapsed());
    assert_eq!(second.remote_state.unchecked.held(), 0, "its own budget given back");
    assert!(held.await.expect("ran"));
    assert_eq!((all.held(), all.peak()), (0, 100_000_000));
    // Review AO2: two executors whose stores held 1 GiB each of the process's 2 GiB kept every
    // other executor's lookups from loading. Each holds at most its share now: with two sharing
    // 150 MB, a 100 MB answer is not read though all of it is free.
    let users = (all.register(), all.register());
    let started = std::time::Instant::now();
    assert!(first.load_sealed(&[78u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(900), "not read: {:?}", started.elapsed());
    assert_eq!((all.peak(), first.remote_state.unchecked.held()), (100_000_000, 0));
    drop(users);
}
