//! Compiled artifacts that outlive the process: `<sha256>-<engine fingerprint>.cwasm` in a
//! directory (`cacheDir`) and/or a shared object store (`artifactStore`), so a restarted worker,
//! or a whole fleet, compiles each module once.
//!
//! An artifact file is wasmtime's serialized module followed by the sha256 of those bytes and a
//! magic tag. Loading checks that checksum before handing the bytes to wasmtime, so a corrupt or
//! truncated file is discarded and recompiled, never executed. The fingerprint covers the
//! wasmtime version and every engine setting that changes code, so a stale or foreign artifact is
//! never even looked up.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use wasmtime::{Engine, Module};

use crate::error::ExecError;
use crate::modules::{hex, Digest};
use crate::store::ObjectSource;

const MAGIC: &[u8; 8] = b"LOOMART1";
const TRAILER: usize = 32 + MAGIC.len();

/// Where an artifact came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Disk,
    Remote,
}

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
    hex(&h.0.finalize().into())[..16].to_string()
}

/// Wraps serialized bytes with their checksum.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let sum: [u8; 32] = Sha256::digest(&bytes).into();
    bytes.extend_from_slice(&sum);
    bytes.extend_from_slice(MAGIC);
    bytes
}

/// The serialized bytes, if the checksum holds.
fn unseal(bytes: &[u8]) -> Option<&[u8]> {
    let body_len = bytes.len().checked_sub(TRAILER)?;
    let (body, trailer) = bytes.split_at(body_len);
    let (sum, magic) = trailer.split_at(32);
    (magic == MAGIC && Sha256::digest(body).as_slice() == sum).then_some(body)
}

#[derive(Default, Clone)]
pub struct ArtifactCache {
    pub dir: Option<PathBuf>,
    pub remote: Option<Arc<ObjectSource>>,
}

impl ArtifactCache {
    pub fn is_enabled(&self) -> bool {
        self.dir.is_some() || self.remote.is_some()
    }

    pub fn name(digest: &Digest, engine: &Engine) -> String {
        format!("{}-{}.cwasm", hex(digest), fingerprint(engine))
    }

    /// A compiled module from the nearest tier that has a sound artifact.
    pub async fn load(&self, digest: &Digest, engine: &Engine) -> Option<(Module, Tier)> {
        let name = Self::name(digest, engine);
        if let Some(dir) = &self.dir {
            let path = dir.join(&name);
            if let Ok(bytes) = tokio::fs::read(&path).await {
                match deserialize(engine, bytes).await {
                    Some(m) => return Some((m, Tier::Disk)),
                    // Corrupt or truncated: never used, removed so it is rewritten.
                    None => {
                        let _ = tokio::fs::remove_file(&path).await;
                    }
                }
            }
        }
        let remote = self.remote.as_ref()?;
        let bytes = remote.get(&name).await.ok()?;
        let module = deserialize(engine, bytes.to_vec()).await?;
        if let Some(dir) = &self.dir {
            let _ = write_atomic(dir.clone(), name, bytes.to_vec()).await;
        }
        Some((module, Tier::Remote))
    }

    /// Saves a freshly compiled module to every tier (best effort: a cache that cannot be
    /// written only costs a compile later).
    pub async fn save(&self, digest: &Digest, engine: &Engine, module: &Module) -> Result<(), ExecError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let name = Self::name(digest, engine);
        let m = module.clone();
        let sealed = tokio::task::spawn_blocking(move || m.serialize().map(seal))
            .await
            .map_err(ExecError::internal)?
            .map_err(ExecError::internal)?;
        if let Some(dir) = &self.dir {
            write_atomic(dir.clone(), name.clone(), sealed.clone()).await?;
        }
        if let Some(remote) = &self.remote {
            remote.put(&name, Bytes::from(sealed)).await?;
        }
        Ok(())
    }
}

async fn deserialize(engine: &Engine, bytes: Vec<u8>) -> Option<Module> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        let body = unseal(&bytes)?;
        // SAFETY: `body` is byte for byte what `Module::serialize` produced for an engine with this
        // fingerprint (the checksum holds and the name carries the fingerprint); wasmtime checks
        // its own version and settings header again. An artifact store must be trusted like the
        // code it holds: whoever can write to it can run native code in this process.
        unsafe { Module::deserialize(&engine, body) }.ok()
    })
    .await
    .ok()
    .flatten()
}

/// Writes a file whole or not at all: a temporary file in the same directory, then a rename.
async fn write_atomic(dir: PathBuf, name: String, bytes: Vec<u8>) -> Result<(), ExecError> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, dir.join(&name))
    })
    .await
    .map_err(ExecError::internal)?
    .map_err(|e| ExecError::internal(format!("cannot write artifact: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{engine, EngineKind};

    #[test]
    fn seal_detects_corruption_and_truncation() {
        let sealed = seal(b"compiled code".to_vec());
        assert_eq!(unseal(&sealed), Some(&b"compiled code"[..]));
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert_eq!(unseal(&flipped), None);
        assert_eq!(unseal(&sealed[..sealed.len() - 1]), None);
        assert_eq!(unseal(&sealed[..10]), None);
    }

    #[test]
    fn fingerprints_differ_by_engine_settings() {
        let plain = engine(EngineKind::Plain).expect("engine");
        let metered = engine(EngineKind::Metered).expect("engine");
        assert_eq!(fingerprint(plain), fingerprint(plain));
        assert_ne!(fingerprint(plain), fingerprint(metered));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn disk_tier_round_trips_and_discards_corrupt_files() {
        let dir = std::env::temp_dir().join(format!("loom-artifacts-{}", std::process::id()));
        let cache = ArtifactCache { dir: Some(dir.clone()), remote: None };
        let e = engine(EngineKind::Plain).expect("engine");
        let module = Module::new(e, crate::test_guests::echo()).expect("compiles");
        let digest = [7u8; 32];
        assert!(cache.load(&digest, e).await.is_none());
        cache.save(&digest, e, &module).await.expect("saved");
        assert!(matches!(cache.load(&digest, e).await, Some((_, Tier::Disk))));
        let path = dir.join(ArtifactCache::name(&digest, e));
        let mut bytes = std::fs::read(&path).expect("written");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, &bytes).expect("corrupted");
        assert!(cache.load(&digest, e).await.is_none());
        assert!(!path.exists(), "a corrupt artifact is removed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
