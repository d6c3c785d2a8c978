//! Compiled artifacts that outlive the process: `<sha256>-<engine fingerprint>.cwasm` in a
//! directory (`cacheDir`) and/or a shared object store (`artifactStore`), so a restarted worker,
//! or a whole fleet, compiles each module once.
//!
//! A compiled artifact is native code: whoever can write one can run code in this process. So
//! each is authenticated: wasmtime's serialized module, a flags byte, then a MAC (keyed BLAKE3,
//! `ArtifactTag`) over the artifact's name (module digest + engine fingerprint), the flags and the
//! module, with a key
//! only the executor holds: `artifactKey` (required for a shared store, so a fleet shares it), or
//! a key created with mode 0600 in `cacheDir`. Bytes without a valid tag are discarded and
//! recompiled, never handed to wasmtime. Plain `http://` stores and world-writable directories
//! are refused. The fingerprint covers the wasmtime version and every engine setting that
//! changes code, so a stale or foreign artifact is never even looked up.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use wasmtime::{Engine, Module};

use crate::modules::{Code, Compiled};

use crate::digest::{hex, same, ArtifactTag, Digest};
use crate::error::ExecError;
use crate::sealed_copy::{in_place, InPlace, SealedCopy};
use crate::store::ObjectSource;

/// The trailer's magic; `LOOMART2` artifacts (HMAC-SHA256 tags) read as invalid and are made again.
pub(crate) const MAGIC: &[u8; 8] = b"LOOMART3";
pub(crate) const TRAILER: usize = 1 + 32 + MAGIC.len();
/// The key file `cacheDir` gets when no `artifactKey` is given.
pub const KEY_FILE: &str = ".loom-artifact-key";
/// Shortest `artifactKey` accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

/// A short, stable name for everything about an engine that changes compiled code.
pub fn fingerprint(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    // What modules are rewritten into before compiling (see `instrument`).
    h.write(b"instrumentation 1");
    // How artifacts are sealed: another format is another name, so two versions sharing a store
    // (a rolling deploy) never overwrite each other's artifacts as invalid.
    h.write(MAGIC);
    hex(&h.0.finalize())[..16].to_string()
}

fn tag(key: &[u8], name: &str, flags: u8, body: &[u8]) -> Digest {
    ArtifactTag::of(key, &[MAGIC, name.as_bytes(), &[flags], body])
}

/// Flags byte: bit 0, the module has a start function; bit 1, it is a component.
pub(crate) const HAS_START: u8 = 1;
pub(crate) const COMPONENT: u8 = 2;

/// Wraps serialized bytes with their flags and tag.
fn seal(key: &[u8], name: &str, mut bytes: Vec<u8>, flags: u8) -> Vec<u8> {
    let mac = tag(key, name, flags, &bytes);
    bytes.push(flags);
    bytes.extend_from_slice(&mac);
    bytes.extend_from_slice(MAGIC);
    bytes
}

/// The serialized bytes and their flags, if the tag holds.
fn unseal<'a>(key: &[u8], name: &str, bytes: &'a [u8]) -> Option<(&'a [u8], u8)> {
    let body_len = bytes.len().checked_sub(TRAILER)?;
    let (body, trailer) = bytes.split_at(body_len);
    let (flags, rest) = trailer.split_at(1);
    let (mac, magic) = rest.split_at(32);
    (magic == MAGIC && flags[0] <= (HAS_START | COMPONENT) && same(&tag(key, name, flags[0], body), mac)).then_some((body, flags[0]))
}

/// Where artifacts live and the key that authenticates them.
#[derive(Default, Clone)]
pub struct ArtifactCache {
    pub dir: Option<PathBuf>,
    pub remote: Option<Arc<ObjectSource>>,
    /// `artifactKey`; filled from `dir`'s key file by `open` when not given.
    pub key: Option<Arc<[u8]>>,
}

impl ArtifactCache {
    /// Checks the configuration and settles the key: refuses `http://` stores, a shared store
    /// without `artifactKey`, a short key, a world-writable directory or a key file others can
    /// read; creates the directory (0700) and its key file (0600) when needed.
    pub fn open(mut self) -> Result<ArtifactCache, ExecError> {
        if let Some(key) = &self.key {
            if key.len() < MIN_KEY_BYTES {
                return Err(ExecError::InvalidArgument(format!(
                    "options.artifactKey must hold at least {MIN_KEY_BYTES} bytes, got {}",
                    key.len()
                )));
            }
        }
        if let Some(remote) = &self.remote {
            if remote.url().starts_with("http://") {
                return Err(ExecError::InvalidArgument(
                    "options.artifactStore: plain http:// cannot be trusted with compiled code (use https:// or a cloud store)".into(),
                ));
            }
            if self.key.is_none() {
                return Err(ExecError::InvalidArgument(
                    "options.artifactStore needs options.artifactKey (a secret shared by the fleet) to authenticate compiled code".into(),
                ));
            }
        }
        if let Some(dir) = &self.dir {
            secure_dir(dir)?;
            if self.key.is_none() {
                self.key = Some(dir_key(dir)?.into());
            }
        }
        Ok(self)
    }

    pub fn is_enabled(&self) -> bool {
        self.key.is_some() && (self.dir.is_some() || self.remote.is_some())
    }

    pub fn name(digest: &Digest, engine: &Engine) -> String {
        format!("{}-{}.cwasm", hex(digest), fingerprint(engine))
    }

    /// Compiled code (and whether it has a start function) from the nearest tier that has an
    /// authentic artifact.
    pub async fn load(&self, digest: &Digest, engine: &Engine) -> Option<(Compiled, bool)> {
        self.load_sealed(digest, engine).await.map(|(c, checked)| (c, checked.has_start()))
    }

    /// The same, with the artifact as checked (its sealed copy, or its authenticated bytes), which
    /// another engine of its fingerprint may load without reading, downloading or checking it again.
    pub(crate) async fn load_sealed(&self, digest: &Digest, engine: &Engine) -> Option<(Compiled, Checked)> {
        let key = self.key.clone()?;
        let name = Self::name(digest, engine);
        if let Some(dir) = &self.dir {
            let path = dir.join(&name);
            match in_place(engine, key.clone(), name.clone(), path.clone()).await {
                InPlace::Loaded(c, sealed) => return Some((c, Checked::Sealed(sealed))),
                InPlace::Invalid => {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                InPlace::Missing => {}
                InPlace::NotHere => {
                    if let Ok(bytes) = tokio::fs::read(&path).await {
                        match deserialize(engine, key.clone(), name.clone(), bytes).await {
                            Some((c, checked)) => return Some((c, Checked::Bytes(checked))),
                            // Forged, corrupt or truncated: never used, removed so it is rewritten.
                            None => {
                                let _ = tokio::fs::remove_file(&path).await;
                            }
                        }
                    }
                }
            }
        }
        let remote = self.remote.as_ref()?;
        let bytes = remote.get(&name).await.ok()?;
        // Taken over without a copy where the download is the bytes' only owner.
        let (c, checked) = deserialize(engine, key, name.clone(), Vec::from(bytes)).await?;
        if let Some(dir) = &self.dir {
            // The bytes just checked: no second copy of the download.
            let _ = write_atomic(dir.clone(), name, checked.clone()).await;
        }
        Some((c, Checked::Bytes(checked)))
    }

    /// Saves a freshly compiled module to every tier (best effort: a cache that cannot be
    /// written only costs a compile later).
    pub async fn save(&self, digest: &Digest, engine: &Engine, code: &Code, has_start: bool) -> Result<(), ExecError> {
        let Some(key) = self.key.clone().filter(|_| self.is_enabled()) else { return Ok(()) };
        let name = Self::name(digest, engine);
        let flags = if has_start { HAS_START } else { 0 } | if code.is_component() { COMPONENT } else { 0 };
        let body = code.serialize().map_err(ExecError::internal)?;
        let n = name.clone();
        let sealed = tokio::task::spawn_blocking(move || seal(&key, &n, body, flags)).await.map_err(ExecError::internal)?;
        if let Some(dir) = &self.dir {
            write_atomic(dir.clone(), name.clone(), Arc::new(sealed.clone())).await?;
        }
        if let Some(remote) = &self.remote {
            remote.put(&name, Bytes::from(sealed)).await?;
        }
        Ok(())
    }
}

/// Creates `dir` (0700) if missing; refuses one that anybody may write to.
fn secure_dir(dir: &Path) -> Result<(), ExecError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let bad = |why: String| ExecError::InvalidArgument(format!("options.cacheDir {}: {why}", dir.display()));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| bad(e.to_string()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(bad("is world-writable: anyone could plant compiled code there (use a private directory)".into()));
    }
    Ok(())
}

/// The directory's key: read from its key file (which only its owner may read), or created.
fn dir_key(dir: &Path) -> Result<Vec<u8>, ExecError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = dir.join(KEY_FILE);
    let bad = |why: String| ExecError::InvalidArgument(format!("options.cacheDir key file {}: {why}", path.display()));
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => {
            if !meta.is_file() || meta.mode() & 0o077 != 0 {
                return Err(bad("must be a plain file only its owner can read and write (mode 0600)".into()));
            }
            let key = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(bad(format!("holds {} bytes, fewer than {MIN_KEY_BYTES}", key.len())));
            }
            Ok(key)
        }
        Err(_) => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).map_err(|e| bad(format!("no randomness for a key: {e}")))?;
            let tmp = dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| bad(e.to_string()))?;
            f.write_all(&key).map_err(|e| bad(e.to_string()))?;
            drop(f);
            // Two processes racing: the first rename wins and both read what it wrote.
            if std::fs::hard_link(&tmp, &path).is_err() {
                let _ = std::fs::remove_file(&tmp);
                return dir_key(dir);
            }
            let _ = std::fs::remove_file(&tmp);
            Ok(key)
        }
    }
}

/// An artifact as it was checked when loaded: another engine of its fingerprint (the pooled
/// engine, for code first loaded on its unpooled twin: `unpooled_first`) loads it from here
/// without reading, downloading or checking it again.
#[derive(Clone)]
pub(crate) enum Checked {
    /// Its sealed in-memory copy (an artifact file).
    Sealed(SealedCopy),
    /// Its authenticated bytes (downloaded from the shared store, or read where no sealed copy
    /// can be made): only this process holds them, and nothing writes to them.
    Bytes(Arc<CheckedBytes>),
}

pub(crate) struct CheckedBytes {
    /// The whole artifact, trailer included; the tag over it held.
    sealed: Vec<u8>,
    flags: u8,
}

impl AsRef<[u8]> for CheckedBytes {
    /// The whole artifact as it was checked.
    fn as_ref(&self) -> &[u8] {
        &self.sealed
    }
}

impl CheckedBytes {
    /// Checks `sealed` (an artifact named `name`); None if its tag does not hold.
    fn check(key: &[u8], name: &str, sealed: Vec<u8>) -> Option<CheckedBytes> {
        let (_, flags) = unseal(key, name, &sealed)?;
        Some(CheckedBytes { sealed, flags })
    }

    fn has_start(&self) -> bool {
        self.flags & HAS_START != 0
    }

    /// The code, for `engine`; None if wasmtime refuses it (another fingerprint, say).
    fn load(&self, engine: &Engine) -> Option<Compiled> {
        let body = &self.sealed[..self.sealed.len() - TRAILER];
        // SAFETY: `body` is byte for byte what `Module::serialize` (or `Component::serialize`)
        // produced in a process holding this executor's artifact key, for an engine with this
        // fingerprint, for the module with this digest (the tag over all three held in `check`,
        // and nothing has written to these bytes since); wasmtime checks its own version and
        // settings header again.
        if self.flags & COMPONENT != 0 {
            unsafe { wasmtime::component::Component::deserialize(engine, body) }.ok().map(Compiled::Component)
        } else {
            unsafe { Module::deserialize(engine, body) }.ok().map(Compiled::Core)
        }
    }
}

impl Checked {
    pub(crate) fn has_start(&self) -> bool {
        match self {
            Checked::Sealed(copy) => copy.has_start(),
            Checked::Bytes(bytes) => bytes.has_start(),
        }
    }

    /// The code, for `engine` (blocking: a copy or a mapping of the whole artifact).
    pub(crate) fn load(&self, engine: &Engine) -> Option<Compiled> {
        match self {
            Checked::Sealed(copy) => copy.load(engine),
            Checked::Bytes(bytes) => bytes.load(engine),
        }
    }
}

/// Checks an artifact's bytes and loads them for `engine`, keeping them for another engine.
async fn deserialize(engine: &Engine, key: Arc<[u8]>, name: String, bytes: Vec<u8>) -> Option<(Compiled, Arc<CheckedBytes>)> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        let checked = CheckedBytes::check(&key, &name, bytes)?;
        let compiled = checked.load(&engine)?;
        Some((compiled, Arc::new(checked)))
    })
    .await
    .ok()
    .flatten()
}

/// Writes a file whole or not at all: a temporary file in the same directory, then a rename.
async fn write_atomic(dir: PathBuf, name: String, bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<(), ExecError> {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Unique per write: two saves of one artifact in a process (a tier-up's and a
        // `precompile`'s) would otherwise write the same file at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        // Writable by its owner alone whatever the umask: what `in_place` requires.
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.write_all((*bytes).as_ref())?;
        drop(f);
        std::fs::rename(&tmp, dir.join(&name))
    })
    .await
    .map_err(ExecError::internal)?
    .map_err(|e| ExecError::internal(format!("cannot write artifact: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealed_copy::{in_place_blocking, MAX_ARTIFACT_BYTES};
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
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert_eq!(code(ArtifactCache { dir: Some(dir.clone()), ..Default::default() }), Err("INVALID_ARGUMENT"));
        let _ = std::fs::remove_dir_all(&dir);
        let remote = Some(Arc::new(ObjectSource::open("memory://a/b", &[]).expect("store")));
        assert_eq!(code(ArtifactCache { remote: remote.clone(), ..Default::default() }), Err("INVALID_ARGUMENT"));
        assert_eq!(code(ArtifactCache { remote: remote.clone(), key: Some(vec![1u8; 8].into()), ..Default::default() }), Err("INVALID_ARGUMENT"));
        assert!(code(ArtifactCache { remote, key: Some(vec![1u8; 32].into()), ..Default::default() }).is_ok());
        let http = Some(Arc::new(ObjectSource::open("http://127.0.0.1:9/x", &[]).expect("store")));
        assert_eq!(code(ArtifactCache { remote: http, key: Some(vec![1u8; 32].into()), ..Default::default() }), Err("INVALID_ARGUMENT"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn disk_tier_round_trips_and_discards_forged_files() {
        let dir = temp("disk");
        let _ = std::fs::remove_dir_all(&dir);
        let cache = ArtifactCache { dir: Some(dir.clone()), ..Default::default() }.open().expect("opens");
        let e = engine(EngineKind::Plain).expect("engine");
        let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
        let digest = [7u8; 32];
        assert!(cache.load(&digest, e).await.is_none());
        cache.save(&digest, e, &module.code, false).await.expect("saved");
        assert!(matches!(cache.load(&digest, e).await, Some((Compiled::Core(_), false))));
        let path = dir.join(ArtifactCache::name(&digest, e));
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
        let name = ArtifactCache::name(digest, e);
        cache.save(digest, e, &module.code, has_start).await.expect("saved");
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
        assert!(checked.has_start());
        assert!(checked.load(engine(EngineKind::Metered).expect("metered")).is_none(), "another fingerprint is refused");
        // What the store holds now is not an artifact: refused, nothing checked to keep.
        assert!(cache.load_sealed(&digest, e).await.is_none());
        // Nor is one sealed under another key.
        let other = ArtifactCache { remote: Some(store.clone()), key: Some(vec![6u8; 32].into()), ..Default::default() }.open().expect("opens");
        other.save(&digest, e, &module.code, true).await.expect("saved");
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
            ArtifactCache { dir: Some(dir.clone()), remote: Some(store.clone()), key: Some(key) }.open().expect("opens");
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
        let name = ArtifactCache::name(&digest, e);
        let path = dir.join(&name);
        assert!(matches!(in_place_blocking(e, &key, &name, &path), InPlace::Missing));
        cache.save(&digest, e, &module.code, true).await.expect("saved");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "written for its owner alone to change, whatever the umask");
        let good = std::fs::read(&path).expect("read");
        let InPlace::Loaded(Compiled::Core(m), sealed) = in_place_blocking(e, &key, &name, &path) else {
            panic!("an authentic artifact loads")
        };
        assert!(sealed.has_start(), "saved with a start function");
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
        assert!(sealed.has_start());
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
        std::fs::write(&path, &good[..10]).expect("write");
        // `load` removes an invalid artifact so it is rewritten.
        assert!(cache.load(&digest, e).await.is_none());
        assert!(!path.exists(), "an invalid artifact is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
