//! Tests of `artifacts`: the artifact tiers, their keys and what they refuse.
use super::*;
use crate::artifact_seal::{unseal, HAS_START};
use sha2::{Digest as _, Sha256};
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

#[path = "artifact_store_tests.rs"]
mod store;

#[path = "artifact_test_stores.rs"]
mod test_stores;

#[path = "artifact_precompile_tests.rs"]
mod precompile;
