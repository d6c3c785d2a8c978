//! How a compiled artifact is sealed, and an artifact once its seal held. A sealed artifact is
//! wasmtime's serialized module, a flags byte, then a tag (keyed BLAKE3, `ArtifactTag`) over the
//! artifact's name (module digest + engine fingerprint), the flags and the module, then a magic.
//! `Checked` is an artifact whose tag held: another engine of its fingerprint loads it from there
//! without reading or checking it again.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use wasmtime::{Engine, Module};

use crate::compiled_module::Facts;
use crate::digest::{hex, same, ArtifactTag, Digest};
use crate::modules::Compiled;
use crate::sealed_copy::SealedCopy;

/// The trailer's magic; `LOOMART2` artifacts (HMAC-SHA256 tags) read as invalid and are made again.
pub(crate) const MAGIC: &[u8; 8] = b"LOOMART4";
pub(crate) const TRAILER: usize = 1 + 32 + MAGIC.len();

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
    // Artifacts before the flag of state outside memory said nothing of it.
    h.write(b"state flag 1");
    // How artifacts are sealed: another format is another name, so two versions sharing a store
    // (a rolling deploy) never overwrite each other's artifacts as invalid.
    h.write(MAGIC);
    hex(&h.0.finalize())[..16].to_string()
}

fn tag(key: &[u8], name: &str, flags: u8, body: &[u8]) -> Digest {
    ArtifactTag::of(key, &[MAGIC, name.as_bytes(), &[flags], body])
}

/// Flags byte: bit 0, the module has a start function; bit 1, it is a component; bit 2, its
/// instructions change tables or drop segments (its state is not all in memory and globals);
/// bits 3-7, the bucket of its instances' metadata (`instance_metadata::bucket`; since
/// `LOOMART4`).
pub(crate) const HAS_START: u8 = 1;
pub(crate) const COMPONENT: u8 = 2;
pub(crate) const STATE_OUTSIDE_MEMORY: u8 = 4;
const INSTANCE_SHIFT: u8 = 3;

/// The facts an artifact's flags hold.
pub(crate) fn facts_of(flags: u8) -> Facts {
    Facts {
        has_start: flags & HAS_START != 0,
        state_in_memory: flags & STATE_OUTSIDE_MEMORY == 0,
        instance_bytes: crate::instance_metadata::charged(flags >> INSTANCE_SHIFT),
    }
}

/// The flags byte of `facts` (of a component if `component`).
pub(crate) fn flags_of(facts: Facts, component: bool) -> u8 {
    (if facts.has_start { HAS_START } else { 0 })
        | if component { COMPONENT } else { 0 }
        | if facts.state_in_memory { 0 } else { STATE_OUTSIDE_MEMORY }
        | crate::instance_metadata::bucket(facts.instance_bytes) << INSTANCE_SHIFT
}

/// Wraps serialized bytes with their flags and tag.
pub(crate) fn seal(key: &[u8], name: &str, mut bytes: Vec<u8>, flags: u8) -> Vec<u8> {
    let mac = tag(key, name, flags, &bytes);
    bytes.push(flags);
    bytes.extend_from_slice(&mac);
    bytes.extend_from_slice(MAGIC);
    bytes
}

/// A sealed artifact's trailer (its flags, tag and magic).
pub(crate) fn trailer_of(sealed: &[u8]) -> &[u8] {
    &sealed[sealed.len().saturating_sub(TRAILER)..]
}

/// The serialized bytes and their flags, if the tag holds.
pub(crate) fn unseal<'a>(key: &[u8], name: &str, bytes: &'a [u8]) -> Option<(&'a [u8], u8)> {
    let body_len = bytes.len().checked_sub(TRAILER)?;
    let (body, trailer) = bytes.split_at(body_len);
    let (flags, rest) = trailer.split_at(1);
    let (mac, magic) = rest.split_at(32);
    (magic == MAGIC && same(&tag(key, name, flags[0], body), mac)).then_some((body, flags[0]))
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
    pub(crate) fn check(key: &[u8], name: &str, sealed: Vec<u8>) -> Option<CheckedBytes> {
        let (_, flags) = unseal(key, name, &sealed)?;
        crate::artifact_trailers::note_sealed(key, name, &sealed);
        Some(CheckedBytes { sealed, flags })
    }

    fn facts(&self) -> Facts {
        facts_of(self.flags)
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
    pub(crate) fn facts(&self) -> Facts {
        match self {
            Checked::Sealed(copy) => copy.facts(),
            Checked::Bytes(bytes) => bytes.facts(),
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
pub(crate) async fn deserialize(engine: &Engine, key: Arc<[u8]>, name: String, bytes: Vec<u8>) -> Option<(Compiled, Arc<CheckedBytes>)> {
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
