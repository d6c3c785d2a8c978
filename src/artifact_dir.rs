//! `ArtifactCache`'s `cacheDir` files: the directory made safe to trust, its key file, artifact
//! files read within a budget or compared with what they should hold, and files written whole or
//! not at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::artifacts::{KEY_FILE, MIN_KEY_BYTES};
use crate::error::ExecError;

/// Whether `path` is a regular file (not a link) of `len` bytes.
pub(crate) fn is_file_of(path: &Path, len: u64) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == len)
}

/// Whether the regular file at `path` (no link followed, no FIFO waited on) holds exactly `bytes`.
pub(crate) fn holds(path: &Path, bytes: &[u8]) -> bool {
    use std::io::Read;
    let Ok(file) = crate::untrusted_dir::open_regular(path, std::fs::OpenOptions::new().read(true)) else { return false };
    if !file.metadata().is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64 && crate::sealed_copy::one_name(&m)) {
        return false;
    }
    let mut there = Vec::with_capacity(bytes.len());
    file.take(bytes.len() as u64 + 1).read_to_end(&mut there).is_ok() && there == bytes
}

/// Whether the regular file at `path` (no link followed, no FIFO waited on) is `len` bytes long
/// and ends in `trailer`, of one name (blocking: a stat and one small read).
pub(crate) fn ends_in(path: &Path, len: u64, trailer: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(file) = crate::untrusted_dir::open_regular(path, std::fs::OpenOptions::new().read(true)) else { return false };
    // Of one name, as lookups take (`sealed_copy::one_name`: review AQ1, a hard link was held).
    if !file.metadata().is_ok_and(|m| m.is_file() && m.len() == len && crate::sealed_copy::one_name(&m)) || trailer.len() as u64 > len {
        return false;
    }
    let mut tail = vec![0u8; trailer.len()];
    file.read_exact_at(&mut tail, len - trailer.len() as u64).is_ok() && tail == trailer
}

/// `path` made absolute against the working directory now (links are not resolved: a directory
/// reached through one stays reached through it).
pub(crate) fn absolute(path: &Path, option: &str) -> Result<std::path::PathBuf, ExecError> {
    std::path::absolute(path).map_err(|e| ExecError::InvalidArgument(format!("{option} {}: {e}", path.display())))
}

/// Creates `dir` (0700) if missing; refuses one that anybody may write to.
pub(crate) fn secure_dir(dir: &Path) -> Result<(), ExecError> {
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
pub(crate) fn dir_key(dir: &Path) -> Result<Vec<u8>, ExecError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = dir.join(KEY_FILE);
    let bad = |why: String| ExecError::InvalidArgument(format!("options.cacheDir key file {}: {why}", path.display()));
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {
            use std::io::Read;
            let plain = |why: String| bad(format!("must be a plain file only its owner (this process's user) can read and write (mode 0600): {why}"));
            // Checked on the file opened (no link followed, no FIFO waited on), not on the name:
            // a swap in between cannot get through, nor a key file of another user's making.
            let file = crate::untrusted_dir::open_regular(&path, std::fs::OpenOptions::new().read(true)).map_err(|e| plain(e.to_string()))?;
            let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
            // SAFETY: geteuid has no preconditions.
            if meta.mode() & 0o077 != 0 || meta.uid() != unsafe { libc::geteuid() } {
                return Err(plain(format!("mode {:o}, owner {}", meta.mode() & 0o7777, meta.uid())));
            }
            let mut key = Vec::new();
            file.take(1 << 16).read_to_end(&mut key).map_err(|e| bad(e.to_string()))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(bad(format!("holds {} bytes, fewer than {MIN_KEY_BYTES}", key.len())));
            }
            Ok(key)
        }
        Err(_) => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).map_err(|e| bad(format!("no randomness for a key: {e}")))?;
            // A name no other writer uses: threads of one process (workers) share its pid, and a
            // process killed here leaves its file behind for the next one of that pid (a
            // container's Node is often pid 1 every time).
            let (tmp, mut f) = loop {
                let mut nonce = [0u8; 8];
                getrandom::fill(&mut nonce).map_err(|e| bad(format!("no randomness for a name: {e}")))?;
                let tmp = dir.join(format!("{KEY_FILE}.{}.{:016x}.tmp", std::process::id(), u64::from_le_bytes(nonce)));
                match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
                    Ok(f) => break (tmp, f),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(bad(e.to_string())),
                }
            };
            // Written and on disk before it is linked: a crash after the link left an empty key
            // file, which every later constructor refuses. A write that fails (a full disk) takes
            // its file with it: none was left per constructor, which pruning never removes.
            if let Err(e) = f.write_all(&key).and_then(|()| f.sync_all()) {
                drop(f);
                let _ = std::fs::remove_file(&tmp);
                return Err(bad(e.to_string()));
            }
            drop(f);
            // Two processes racing: the first link wins and both read what it wrote. Any other
            // failure (a filesystem without hard links) is reported: read again, it would fail
            // the same way, without end.
            if let Err(e) = std::fs::hard_link(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    return dir_key(dir);
                }
                return Err(bad(format!("cannot create it: {e}")));
            }
            let _ = std::fs::remove_file(&tmp);
            Ok(key)
        }
    }
}

/// An artifact file's bytes, for the plain path: a regular file (not followed through a link,
/// not a FIFO that blocks) of at most `MAX_ARTIFACT_BYTES`, read if `unchecked` has room for it
/// (held until its tag is checked).
pub(crate) async fn read_bounded(path: PathBuf, unchecked: crate::unchecked_artifacts::UncheckedBytes) -> Option<(Vec<u8>, crate::unchecked_artifacts::Admitted)> {
    use std::io::Read;
    tokio::task::spawn_blocking(move || {
        let file = crate::untrusted_dir::open_regular(&path, std::fs::OpenOptions::new().read(true)).ok()?;
        let meta = file.metadata().ok()?;
        let len = meta.len();
        if !crate::sealed_copy::one_name(&meta) || len > crate::sealed_copy::MAX_ARTIFACT_BYTES || crate::untrusted_dir::holes_over(&file, len, crate::sealed_copy::MAX_ARTIFACT_HOLES) {
            return None;
        }
        let admitted = unchecked.take(len)?;
        let mut bytes = Vec::new();
        // No more than was admitted, if it grew meanwhile (cut short, its tag fails).
        file.take(len).read_to_end(&mut bytes).ok()?;
        Some((bytes, admitted))
    })
    .await
    .ok()
    .flatten()
}

/// Writes a file whole or not at all: a temporary file in the same directory, then a rename.
pub(crate) async fn write_atomic(dir: PathBuf, name: String, bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<(), ExecError> {
    let target = dir.join(&name).display().to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // Unique per write: two saves of one artifact in a process (a tier-up's and a
        // `precompile`'s) would otherwise write the same file at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        // Writable by its owner alone whatever the umask: what `in_place` requires.
        // Created anew: a link planted under the name (the directory may be writable by its
        // group) is removed, not written through.
        let mut f = crate::untrusted_dir::create_fresh(&tmp, 0o644)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let written = f.write_all((*bytes).as_ref()).and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, dir.join(&name))
        });
        // Not left behind when the name cannot be taken (a directory planted under it, a full disk).
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    })
    .await
    .map_err(ExecError::internal)?
    // Not the executor's fault: the directory was removed, filled or made unwritable under it.
    .map_err(|e| ExecError::BlobUnavailable { path: target, message: format!("cannot write the compiled artifact to cacheDir: {e}") })
}
