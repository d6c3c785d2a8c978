//! Which module a definition named last time, kept beside the artifacts in `cacheDir`: a cold
//! start reads it and loads that module's artifact while the download and its sha256 run, and
//! keeps what it loaded only if the downloaded bytes turn out to be that very module.
//!
//! A hint is a guess and never trusted: the artifact it leads to is authenticated as any other,
//! and is used only when the sha256 of the bytes just downloaded equals the hinted digest. A
//! wrong, stale or planted hint (whoever can write `cacheDir` can plant one) costs the load of
//! another artifact, nothing else. A hint is read as artifacts are: a regular file, not followed
//! through a link, never a FIFO that blocks, at most a few bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{hex, sha256, Digest};

/// A hint is the module's sha256 in hex.
const HINT_BYTES: usize = 64;

/// The file that holds the hint of a definition (its identity: name, version, blob path).
pub(crate) fn hint_name(name: &str, version: &str, path: &str) -> String {
    // Lengths first: ("a", "bc") and ("ab", "c") are two definitions.
    let mut id = Vec::with_capacity(name.len() + version.len() + path.len() + 24);
    for part in [name, version, path] {
        id.extend_from_slice(&(part.len() as u64).to_le_bytes());
        id.extend_from_slice(part.as_bytes());
    }
    format!("{}.hint", hex(&sha256(&id)))
}

/// The digest the definition's bytes had last time, if `dir` holds a readable hint for it.
pub(crate) async fn read(dir: &Path, name: &str, version: &str, path: &str) -> Option<Digest> {
    let file = dir.join(hint_name(name, version, path));
    let at = file.clone();
    let hint = tokio::task::spawn_blocking(move || read_blocking(&at)).await.ok().flatten();
    if hint.is_some() {
        // Used now: the last to go when the directory is pruned.
        crate::cache_dir_bound::touch_later(file);
    }
    hint
}

fn read_blocking(file: &Path) -> Option<Digest> {
    use std::io::Read;
    let f = crate::untrusted_dir::open_regular(file, std::fs::OpenOptions::new().read(true)).ok()?;
    let mut text = Vec::with_capacity(HINT_BYTES);
    f.take(HINT_BYTES as u64 + 1).read_to_end(&mut text).ok()?;
    parse(&text)
}

/// 64 hex digits, nothing else.
fn parse(text: &[u8]) -> Option<Digest> {
    if text.len() != HINT_BYTES {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(digest)
}

/// Records that the definition's bytes are `digest` now (best effort: a hint not written costs
/// the next cold start its overlap, nothing else).
/// Counted against the directory's bound as artifacts are (`cache_dir_bound`).
pub(crate) async fn write(cache: &crate::artifacts::ArtifactCache, dir: PathBuf, name: &str, version: &str, path: &str, digest: Digest) {
    let text: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(hex(&digest).into_bytes());
    let _ = cache.write_to_dir(&dir, hint_name(name, version, path), text).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_64_hex_digits_and_nothing_else() {
        let d = sha256(b"module");
        assert_eq!(parse(hex(&d).as_bytes()), Some(d));
        assert_eq!(parse(hex(&d).to_uppercase().as_bytes()), Some(d));
        assert_eq!(parse(&hex(&d).as_bytes()[..63]), None);
        assert_eq!(parse(format!("{}\n", hex(&d)).as_bytes()), None);
        assert_eq!(parse(format!("{}zz", &hex(&d)[..62]).as_bytes()), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn each_definition_has_its_own_hint() {
        assert_ne!(hint_name("a", "bc", "p"), hint_name("ab", "c", "p"));
        assert_ne!(hint_name("a", "1", "x.wasm"), hint_name("a", "2", "x.wasm"));
        assert_eq!(hint_name("a", "1", "x.wasm"), hint_name("a", "1", "x.wasm"));
    }

    #[tokio::test]
    async fn a_hint_written_reads_back_and_anything_else_under_its_name_reads_as_none() {
        let dir = std::env::temp_dir().join(format!("loom-hints-{}-{}", std::process::id(), line!()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = sha256(b"bytes");
        assert_eq!(read(&dir, "a", "1", "a.wasm").await, None);
        write(&crate::artifacts::ArtifactCache::default(), dir.clone(), "a", "1", "a.wasm", d).await;
        assert_eq!(read(&dir, "a", "1", "a.wasm").await, Some(d));
        // A FIFO planted under another definition's hint neither blocks nor reads as a hint.
        let fifo = dir.join(hint_name("b", "1", "b.wasm"));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read(&dir, "b", "1", "b.wasm").await, None);
        // A link to a real hint is not followed.
        std::os::unix::fs::symlink(dir.join(hint_name("a", "1", "a.wasm")), dir.join(hint_name("c", "1", "c.wasm"))).unwrap();
        assert_eq!(read(&dir, "c", "1", "c.wasm").await, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
