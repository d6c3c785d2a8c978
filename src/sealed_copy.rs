//! Loading an artifact file through a sealed in-memory copy (Linux): what is authenticated is
//! what wasmtime maps, whatever happens to the file meanwhile, and the copy can be mapped again
//! by another engine of the same fingerprint without being read or checked again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::{Engine, Module};

use crate::artifacts::{COMPONENT, MAGIC, TRAILER};
use crate::digest::same;
use crate::modules::Compiled;
use crate::unchecked_artifacts::UncheckedBytes;

/// What loading an artifact file through a sealed copy came to.
pub(crate) enum InPlace {
    /// The code, and the sealed copy it maps (which says whether it has a start function).
    Loaded(Compiled, SealedCopy),
    /// Its tag does not hold (forged, corrupt, truncated).
    Invalid,
    Missing,
    /// Not for this path: load it the plain way (another OS, no memfd, an I/O error).
    NotHere,
}

/// An artifact's authenticated copy, sealed: nothing can change or shrink it any more, so any
/// engine of the artifact's fingerprint may map it without reading or checking it again (the
/// pooled engine, for code first loaded on its unpooled twin: `unpooled_first`).
#[derive(Clone)]
pub struct SealedCopy {
    file: Arc<std::fs::File>,
    flags: u8,
}

impl SealedCopy {
    /// What its flags say of the module.
    pub fn facts(&self) -> crate::compiled_module::Facts {
        crate::artifacts::facts_of(self.flags)
    }

    /// The compiled code, mapped for `engine`; None if wasmtime refuses it (another
    /// fingerprint, say: wasmtime checks its own version and settings header).
    pub(crate) fn load(&self, engine: &Engine) -> Option<Compiled> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: the memfd holds the bytes whose tag `in_place_unless` checked (see
        // `artifacts::deserialize` for what the tag proves), sealed before this value was made,
        // so they cannot change while wasmtime maps them; wasmtime ignores the trailer after
        // its image.
        if self.flags & COMPONENT != 0 {
            // Components take a path: this process's own descriptor of the sealed copy.
            let fd_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
            unsafe { wasmtime::component::Component::deserialize_file(engine, fd_path) }.ok().map(Compiled::Component)
        } else {
            let file = self.file.try_clone().ok()?;
            unsafe { Module::deserialize_open_file(engine, file) }.ok().map(Compiled::Core)
        }
    }
}

/// The largest artifact file loaded: code compiled from the largest module accepted
/// (`maxModuleBytes`, 256 MiB by default) is well under it.
pub(crate) const MAX_ARTIFACT_BYTES: u64 = 2 << 30;

/// The most of an artifact file that may be holes (never written). This executor writes an
/// artifact whole; a filesystem that stores blocks of zeros as holes (ZFS with compression) may
/// show some where a module's memory image is zeros, which is at most 16 MiB plus twice the
/// module's size (`shape`), and modules whose memory images are that empty are small.
pub(crate) const MAX_ARTIFACT_HOLES: u64 = 64 << 20;

/// Whether a file has no other name (hard link). Artifacts are written under a temporary name and
/// renamed into place, so one of ours has one; a file linked under many artifacts' names would
/// take its disk once and be copied into memory for each (review W: a 1 GiB file under three
/// names, 1 GiB copied for each module).
pub(crate) fn one_name(meta: &std::fs::Metadata) -> bool {
    std::os::unix::fs::MetadataExt::nlink(meta) <= 1
}

/// Bytes of an artifact file copied at a time (and hashed as each is done).
const CHUNK: usize = 4 << 20;

/// A read-only shared mapping of a file, unmapped when dropped.
#[cfg(target_os = "linux")]
struct ReadOnlyMap {
    ptr: *mut libc::c_void,
    len: usize,
}

#[cfg(target_os = "linux")]
impl ReadOnlyMap {
    fn new(file: &std::fs::File, len: usize) -> Option<ReadOnlyMap> {
        use std::os::unix::io::AsRawFd;
        if len == 0 {
            return None;
        }
        // SAFETY: a fresh mapping of an open descriptor, checked for failure; nothing else
        // aliases it.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        (ptr != libc::MAP_FAILED).then_some(ReadOnlyMap { ptr, len })
    }

    /// Bytes `start..end` of the mapping (clamped to it). Only for a range nothing writes to
    /// any more: the caller reads what the copy has finished.
    fn bytes(&self, start: usize, end: usize) -> &[u8] {
        let end = end.min(self.len);
        let start = start.min(end);
        // SAFETY: the range lies within the mapping, which is readable and lives as long as
        // `self`; the memfd behind it is `len` bytes and cannot shrink (only we hold it), and
        // the caller passes a range whose copy is complete, so nothing changes under the slice.
        unsafe { std::slice::from_raw_parts((self.ptr as *const u8).add(start), end - start) }
    }
}

#[cfg(target_os = "linux")]
impl Drop for ReadOnlyMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Loads an artifact file through a sealed in-memory copy that wasmtime maps as it is: the kernel
/// copies the file into a memfd a chunk at a time while each finished chunk is hashed from the
/// memfd, the tag is checked, the memfd sealed (nobody can change or shrink it now), and wasmtime
/// maps that memfd. Code pages
/// and the module's memory image then come straight from it, without the copy into a buffer,
/// the second copy inside `deserialize` and their page faults: for a 37 MB component artifact
/// that is two 37 MB copies fewer. The original file may change at any moment without effect:
/// what is checked is what runs.
/// The copy is made only if `unchecked` has room for the file (`NotHere` if not), and holds that
/// room until its tag is checked.
pub(crate) async fn in_place(engine: &Engine, key: Arc<[u8]>, name: String, path: PathBuf, unchecked: UncheckedBytes) -> InPlace {
    let engine = engine.clone();
    let never = std::sync::atomic::AtomicBool::new(false);
    tokio::task::spawn_blocking(move || in_place_unless(&engine, &key, &name, &path, &never, &unchecked))
        .await
        .unwrap_or(InPlace::NotHere)
}

/// `in_place`, blocking, on the process's budget of unchecked bytes (tests).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn in_place_blocking(engine: &Engine, key: &[u8], name: &str, path: &Path) -> InPlace {
    in_place_unless(engine, key, name, path, &std::sync::atomic::AtomicBool::new(false), &UncheckedBytes::default())
}

/// `in_place`, blocking, given up (`NotHere`) once `stop` is set: checked before the copy starts
/// and at each chunk, so a load nobody waits for any more stops within one chunk.
#[cfg(target_os = "linux")]
pub(crate) fn in_place_unless(
    engine: &Engine,
    key: &[u8],
    name: &str,
    path: &Path,
    stop: &std::sync::atomic::AtomicBool,
    unchecked: &UncheckedBytes,
) -> InPlace {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::os::unix::io::{AsRawFd, FromRawFd};
    if stop.load(std::sync::atomic::Ordering::Relaxed) {
        return InPlace::NotHere;
    }
    // Artifacts are regular files this executor wrote. Anything else planted under an artifact's
    // name is invalid (and removed): a symlink (to /dev/zero, say, an endless read) is refused by
    // O_NOFOLLOW, and O_NONBLOCK keeps a FIFO from blocking the open forever.
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return InPlace::Missing,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return InPlace::Invalid,
        Err(_) => return InPlace::NotHere,
    };
    let Ok(meta) = file.metadata() else { return InPlace::NotHere };
    if !meta.is_file() || !one_name(&meta) {
        return InPlace::Invalid;
    }
    let len = meta.len();
    if len > MAX_ARTIFACT_BYTES || crate::untrusted_dir::holes_over(&file, len, MAX_ARTIFACT_HOLES) {
        // A planted sparse giant would otherwise be copied into memory (2 GiB and 9 s of kernel
        // time for each module, from 4 KiB of disk: review V).
        return InPlace::Invalid;
    }
    let Some(body_len) = len.checked_sub(TRAILER as u64) else { return InPlace::Invalid };
    // Held until this returns, past the tag's check.
    let Some(_admitted) = unchecked.take(len) else { return InPlace::NotHere };
    // The trailer first (the tag covers the flags before the body); the copy gets these very
    // bytes, so what is checked and what is mapped agree even if the file changes meanwhile.
    let mut trailer = [0u8; TRAILER];
    if file.read_exact_at(&mut trailer, body_len).is_err() {
        return InPlace::Invalid;
    }
    let (flags, rest) = trailer.split_at(1);
    let (mac, magic) = rest.split_at(32);
    let flags = flags[0];
    if magic != MAGIC {
        return InPlace::Invalid;
    }
    // SAFETY: a plain system call with a NUL-terminated name; the descriptor it returns is owned
    // by the File made from it (and closed with it).
    let fd = unsafe { libc::memfd_create(c"loom-artifact".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return InPlace::NotHere;
    }
    let copy = unsafe { std::fs::File::from_raw_fd(fd) };
    if copy.set_len(len).is_err() {
        return InPlace::NotHere;
    }
    let Some(view) = ReadOnlyMap::new(&copy, len as usize) else { return InPlace::NotHere };
    // The kernel copies the file into the memfd a chunk at a time on one thread while this one
    // hashes each chunk already copied, read straight from the memfd: what is hashed is what
    // wasmtime will map, and nobody else holds the memfd. (37 MB here: the copy 25-30 ms, page by
    // page into shared memory; the tag 13-15 ms plus 9 ms of faults mapping the copied pages;
    // against 65 ms for reading, hashing and writing in turn.)
    let progress = std::sync::Mutex::new(Some(0u64));
    let moved = std::sync::Condvar::new();
    let mut h = crate::digest::ArtifactTag::new(key);
    h.update(MAGIC);
    h.update(name.as_bytes());
    h.update(&[flags]);
    // Waits until the copy is past `at` (`u64::MAX - 1`: whole); how far it got, or None if it
    // failed (the file shrank, an I/O error) or the lock was poisoned.
    let wait_past = |at: u64| -> Option<u64> {
        let mut p = progress.lock().ok()?;
        loop {
            match *p {
                None => return None,
                Some(done) if done > at => return Some(done),
                Some(_) => p = moved.wait(p).ok()?,
            }
        }
    };
    let copied = std::thread::scope(|scope| {
        let copier = std::thread::Builder::new().name("loom-artifact-copy".into()).spawn_scoped(scope, || {
            let mut offset: libc::off_t = 0;
            let result = loop {
                if offset as u64 >= len {
                    break Some(offset as u64);
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break None;
                }
                let n = CHUNK.min((len - offset as u64) as usize);
                // SAFETY: both descriptors are open for the whole call; `offset` is ours.
                let sent = unsafe { libc::sendfile(copy.as_raw_fd(), file.as_raw_fd(), &mut offset, n) };
                if sent <= 0 {
                    // An error, or the file shrank under us.
                    break None;
                }
                if let Ok(mut p) = progress.lock() {
                    *p = Some(offset as u64);
                }
                moved.notify_one();
            };
            if let Ok(mut p) = progress.lock() {
                *p = result.map(|_| u64::MAX);
            }
            moved.notify_one();
        });
        if copier.is_err() {
            // No thread to be had: the plain path decides.
            return None;
        }
        let mut hashed = 0u64;
        while hashed < body_len {
            let Some(done) = wait_past(hashed) else { return Some(false) };
            let ready = done.min(body_len);
            h.update(view.bytes(hashed as usize, ready as usize));
            hashed = ready;
        }
        // The copy must be whole (the trailer too) before it is trusted.
        Some(wait_past(u64::MAX - 1).is_some())
    });
    match copied {
        _ if stop.load(std::sync::atomic::Ordering::Relaxed) => return InPlace::NotHere,
        None => return InPlace::NotHere,
        Some(false) => return InPlace::Invalid,
        Some(true) => {}
    }
    // The trailer the flags were read from must be the one copied.
    if view.bytes(body_len as usize, len as usize) != trailer || !same(&h.finish(), mac) {
        return InPlace::Invalid;
    }
    crate::artifact_trailers::note(key, name, len, &trailer);
    drop(view);
    // The trailer off: wasmtime maps (and `serialize` hands back) the whole file, and a module
    // loaded from here, saved again, was sealed with the old trailer in its body: 41 bytes more
    // each time, so `precompile` never found its tiers holding it (review AP1).
    if copy.set_len(body_len).is_err() {
        return InPlace::NotHere;
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor this function owns.
    if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return InPlace::NotHere;
    }
    let sealed = SealedCopy { file: Arc::new(copy), flags };
    match sealed.load(engine) {
        Some(c) => InPlace::Loaded(c, sealed),
        // Authentic but refused by wasmtime (no /proc, say): the plain path decides.
        None => InPlace::NotHere,
    }
}

#[cfg(all(test, not(target_os = "linux")))]
pub(crate) fn in_place_blocking(_: &Engine, _: &[u8], _: &str, _: &Path) -> InPlace {
    InPlace::NotHere
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn in_place_unless(_: &Engine, _: &[u8], _: &str, _: &Path, _: &std::sync::atomic::AtomicBool, _: &UncheckedBytes) -> InPlace {
    InPlace::NotHere
}

