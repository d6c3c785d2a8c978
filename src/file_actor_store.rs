//! The `file://` actor store: snapshots in a local directory, with its own conditional writes
//! (object_store's local store cannot update conditionally). A version in each file's header
//! (random, so never one a deleted actor had) is compared and replaced under an exclusive `flock`
//! of a lock file beside it (processes on one machine; not for NFS). The lock is tried, not waited
//! on in the kernel: a write gives up after `LOCK_WAIT`, or as soon as its call has gone, so a lock
//! another process keeps holds no thread here, and a write that had not got the lock when its
//! call left is not made. What is in the directory is not trusted: files are opened without
//! following links or blocking on FIFOs, and the writer's temporary file is created anew (`O_EXCL`).

use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actor_store::{conflict, fresh_version, too_large, unavailable, ActorStore, Loaded, Loading, Saved, Version};
use crate::error::ExecError;
use crate::store::BoxFuture;
use crate::untrusted_dir::{create_fresh, open_regular, refused, remove_entry};


/// An actor store in a local directory, with its own conditional writes.
#[derive(Clone)]
pub struct FileActorStore {
    dir: PathBuf,
    /// Its operations on blocking threads now, whose callers may have left (a write goes on to
    /// its end): `settled` waits for them.
    running: Arc<Running>,
}

#[derive(Default)]
struct Running {
    count: std::sync::Mutex<usize>,
    done: tokio::sync::Notify,
}

/// One operation counted in `Running` until it ends (on its blocking thread, whoever waits).
struct Counted(Arc<Running>);

impl Counted {
    fn new(running: &Arc<Running>) -> Counted {
        *running.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Counted(running.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        *self.0.count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.done.notify_waiters();
    }
}

const FILE_MAGIC: &[u8; 8] = b"LOOMACT1";

impl FileActorStore {
    pub fn open(dir: PathBuf) -> Result<FileActorStore, ExecError> {
        let bad = |e: std::io::Error| ExecError::InvalidArgument(format!("options.actorStore {}: {e}", dir.display()));
        // The directories made here are synced into their parents, as those made per key are.
        let existing = dir.ancestors().find(|a| a.is_dir()).map(Path::to_path_buf);
        std::fs::create_dir_all(&dir).map_err(bad)?;
        if let Some(existing) = existing.filter(|e| *e != dir) {
            let mut made = dir.as_path();
            while made != existing.as_path() && made.starts_with(&existing) {
                sync_dir(made).map_err(bad)?;
                made = made.parent().unwrap_or(&existing);
            }
        }
        Ok(FileActorStore { dir, running: Default::default() })
    }

    fn path(&self, key: &str) -> Result<PathBuf, ExecError> {
        if key.split('/').any(|s| s.is_empty() || s == "." || s == ".." || s.len() > crate::store::MAX_FILE_SEGMENT_BYTES) {
            return Err(ExecError::InvalidArgument(format!("actor store key {key:?}")));
        }
        Ok(self.dir.join(key))
    }

    /// The key's path, refused (`BLOB_UNAVAILABLE`) where a directory below the store's is a link:
    /// reads, writes and deletes would go to wherever it points.
    fn checked_path(&self, key: &str) -> Result<PathBuf, ExecError> {
        let path = self.path(key)?;
        // The file itself is checked where it is opened (`open_regular`).
        crate::untrusted_dir::no_links_below(&self.dir, path.parent().unwrap_or(&path)).map_err(|e| unavailable(key, e))?;
        Ok(path)
    }
}

/// Longest a write waits for another process's lock on an actor (a stuck or stopped worker on
/// this machine); a call's own deadline, or the call going away, stops the wait sooner.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Set when the future waiting on a blocking store operation is dropped (its call's deadline, a
/// cancel): the operation stops waiting for the lock rather than hold a thread, and a write that
/// had not got the lock by then is not made.
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl FileActorStore {
    /// Runs a blocking store operation off the runtime, told (`gone`) when its caller has left,
    /// and counted until it ends.
    async fn off_runtime<T: Send + 'static>(&self, f: impl FnOnce(&AtomicBool) -> Result<T, ExecError> + Send + 'static) -> Result<T, ExecError> {
        let gone = Arc::new(AtomicBool::new(false));
        let _mark = Abandoned(gone.clone());
        let counted = Counted::new(&self.running);
        tokio::task::spawn_blocking(move || {
            let _counted = counted;
            f(&gone)
        })
        .await
        .map_err(ExecError::internal)?
    }
}

/// At most this many threads of the process wait for actor locks that other processes hold,
/// sleeping between tries; more waits queue without a thread, within the same `LOCK_WAIT` (review
/// BW1: 1,200 actors whose locks a stopped worker held took all 512 blocking threads that
/// compiles and other executors' stores share: another executor's first call waited 58 s, a
/// durable call on a healthy store timed out, and the process exited 90 s after its last call).
const MAX_LOCK_WAITERS: usize = 16;
static LOCK_WAITERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LOCK_WAITERS);

impl FileActorStore {
    /// Runs `op` holding an exclusive lock on the key's lock file, off the runtime. The lock is
    /// tried at once; held by another process, it is waited for on one of `MAX_LOCK_WAITERS`
    /// threads (asynchronously for one of them first), `LOCK_WAIT` at most in all, and not at all
    /// once the call has gone (`op` is told, `gone`, as it runs).
    async fn under_lock<T: Send + 'static>(
        &self,
        key: &str,
        op: impl FnOnce(&Path, &AtomicBool) -> Result<T, ExecError> + Send + 'static,
    ) -> Result<T, ExecError> {
        let started = Instant::now();
        let (this, k) = (self.clone(), key.to_string());
        let tried = self
            .off_runtime(move |gone| match this.lock_within(&k, gone, Duration::ZERO)? {
                Some((lock, path)) => {
                    let out = op(&path, gone);
                    drop(lock);
                    Ok(Ok(out))
                }
                None => Ok(Err(op)),
            })
            .await?;
        let op = match tried {
            Ok(out) => return out,
            Err(op) => op,
        };
        let waiter = tokio::time::timeout(LOCK_WAIT.saturating_sub(started.elapsed()), LOCK_WAITERS.acquire()).await;
        let Ok(Ok(waiter)) = waiter else { return Err(held_too_long(key)) };
        let (this, k) = (self.clone(), key.to_string());
        let left = LOCK_WAIT.saturating_sub(started.elapsed());
        self.off_runtime(move |gone| {
            let _waiter = waiter;
            match this.lock_within(&k, gone, left)? {
                Some((lock, path)) => {
                    let out = op(&path, gone);
                    drop(lock);
                    out
                }
                None => Err(held_too_long(&k)),
            }
        })
        .await
    }

    /// `op` under the key's lock, waiting at most `limit` for it on this thread (blocking).
    #[cfg(test)]
    fn locked_within<T>(&self, key: &str, gone: &AtomicBool, limit: Duration, op: impl FnOnce(&Path) -> Result<T, ExecError>) -> Result<T, ExecError> {
        match self.lock_within(key, gone, limit)? {
            Some((lock, path)) => {
                let out = op(&path);
                drop(lock);
                out
            }
            None => Err(unavailable(key, format!("another process held the actor's lock for {} ms; nothing was written", limit.as_millis()))),
        }
    }

    /// The key's lock, taken (and its checked path), or `None` if another process still held it
    /// after `limit` (blocking: call off the runtime); not waited for once `gone` is set. The lock
    /// is tried without blocking, between sleeps of up to 20 ms.
    fn lock_within(&self, key: &str, gone: &AtomicBool, limit: Duration) -> Result<Option<(std::fs::File, PathBuf)>, ExecError> {
        let path = self.checked_path(key)?;
        if let Some(parent) = path.parent().filter(|p| !p.is_dir()) {
            std::fs::create_dir_all(parent).map_err(|e| unavailable(key, e))?;
            // The new directories' entries made durable too, up to the store's own: a snapshot
            // synced into a directory whose entry was not could vanish with a power cut (review AD).
            let mut made = parent;
            while made != self.dir.as_path() && made.starts_with(&self.dir) {
                sync_dir(made).map_err(|e| unavailable(key, e))?;
                made = made.parent().unwrap_or(&self.dir);
            }
        }
        let lock_path = path.with_extension("lock");
        let lock = open_regular(&lock_path, std::fs::OpenOptions::new().create(true).truncate(false).write(true))
            .map_err(|e| unavailable(key, format!("its lock file: {e}")))?;
        let left = || unavailable(key, "the call ended while another process held the actor's lock; nothing was written");
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            // SAFETY: flock on a descriptor we own; released when `lock` is closed.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // Got it only after the call left: not written after all.
                if gone.load(Ordering::Relaxed) {
                    return Err(left());
                }
                // Checked again now: whoever held the lock may have put a link in a directory's
                // place meanwhile.
                self.checked_path(key)?;
                return Ok(Some((lock, path)));
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => return Err(unavailable(key, err)),
            }
            if gone.load(Ordering::Relaxed) {
                return Err(left());
            }
            if started.elapsed() >= limit {
                return Ok(None);
            }
            #[cfg(test)]
            let _waiting = tests::Waiting::new();
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// A write that did not get its actor's lock within `LOCK_WAIT`.
fn held_too_long(key: &str) -> ExecError {
    unavailable(key, format!("another process held the actor's lock for {} ms; nothing was written", LOCK_WAIT.as_millis()))
}

impl FileActorStore {
    /// The key's file, if there is one: a regular file (anything else is `SNAPSHOT_INVALID`).
    fn open_stored(path: &Path, key: &str) -> Result<Option<std::fs::File>, ExecError> {
        match open_regular(path, std::fs::OpenOptions::new().read(true)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if refused(&e) => {
                Err(ExecError::SnapshotInvalid(format!("{key}: not an actor store file ({e})")))
            }
            Err(e) => Err(unavailable(key, e)),
        }
    }

    /// The stored file's version (its header only), if there is one.
    fn stored_version(path: &Path, key: &str) -> Result<Option<u64>, ExecError> {
        let Some(file) = FileActorStore::open_stored(path, key)? else { return Ok(None) };
        let mut header = Vec::with_capacity(16);
        file.take(16).read_to_end(&mut header).map_err(|e| unavailable(key, e))?;
        FileActorStore::header(&header, key).map(Some)
    }

    /// The version in a file's first 16 bytes (its magic first).
    fn header(all: &[u8], key: &str) -> Result<u64, ExecError> {
        match all.get(..16) {
            Some(h) if &h[..8] == FILE_MAGIC => Ok(u64::from_le_bytes(h[8..16].try_into().map_err(ExecError::internal)?)),
            _ => Err(ExecError::SnapshotInvalid(format!("{key}: not an actor store file"))),
        }
    }

    /// The stored file, opened, and its size (refused past `max_bytes` and the header).
    fn open_sized(path: &Path, key: &str, max_bytes: u64) -> Result<Option<(std::fs::File, u64)>, ExecError> {
        let Some(file) = FileActorStore::open_stored(path, key)? else { return Ok(None) };
        let size = file.metadata().map_err(|e| unavailable(key, e))?.len();
        if size > max_bytes.saturating_add(16) {
            return Err(too_large(key, size, max_bytes));
        }
        Ok(Some((file, size)))
    }

    /// Reads an opened file of `size` bytes (a file that grew since is refused: it is read to
    /// what was stated, and `Loading` admitted).
    fn read(file: std::fs::File, size: u64, key: &str, max_bytes: u64) -> Result<(Vec<u8>, u64), ExecError> {
        let mut all = Vec::new();
        // Bounded whatever the file does meanwhile (it may grow).
        file.take(size.saturating_add(1)).read_to_end(&mut all).map_err(|e| unavailable(key, e))?;
        if all.len() as u64 > size {
            return Err(too_large(key, all.len() as u64, max_bytes));
        }
        let version = FileActorStore::header(&all, key)?;
        all.drain(..16);
        Ok((all, version))
    }
}

/// Syncs the directory holding `path`, making a rename or removal in it durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

impl ActorStore for FileActorStore {
    fn load_gated<'a>(&'a self, key: &'a str, max_bytes: u64, loading: &'a Loading) -> BoxFuture<'a, Result<Option<Loaded>, ExecError>> {
        let this = self.clone();
        Box::pin(async move {
            let k = key.to_string();
            // Its checks stat the directories: off the runtime, as the read.
            let Some((file, size)) = self.off_runtime(move |_| FileActorStore::open_sized(&this.checked_path(&k)?, &k, max_bytes)).await? else {
                return Ok(None);
            };
            let room = loading.admit(size).await;
            let k = key.to_string();
            // The room goes with the read, which runs on should this call end first, and comes
            // back with its bytes (see `Room`).
            let (bytes, v, room) = self.off_runtime(move |_| FileActorStore::read(file, size, &k, max_bytes).map(|(b, v)| (b, v, room))).await?;
            Ok(Some((bytes, Version { version: Some(v.to_string()), ..Default::default() }, room)))
        })
    }

    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>> {
        let expected: Option<u64> = expected.and_then(|v| v.version.as_deref()).and_then(|v| v.parse().ok());
        let key = key.to_string();
        Box::pin(async move {
            let k = key.clone();
            self.under_lock(&k, move |path, gone| {
                {
                    let current = FileActorStore::stored_version(path, &key)?;
                    if current != expected {
                        return Err(conflict(&key, format!("stored version {current:?}, expected {expected:?}")));
                    }
                    // A version never stored before (random, not a count): after a delete, a count
                    // started again at 1 and a worker still holding the deleted actor's "1" wrote
                    // over the new actor's state without a conflict.
                    let next = fresh_version(current)?;
                    // One name per actor, written only under its lock: what is there now is a leftover
                    // of a writer killed mid-write (of any process), which goes first, so a crash leaves
                    // at most one such file per actor until its next write (named per process, each
                    // killed writer's stayed for good: 44-63 MB each).
                    let tmp = path.with_extension("tmp");
                    // Created anew: a leftover (a crash) or a planted link goes first.
                    let mut f = create_fresh(&tmp, 0o644).map_err(|e| unavailable(&key, format!("its temporary file {}: {e}", tmp.display())))?;
                    f.write_all(FILE_MAGIC).and_then(|_| f.write_all(&next.to_le_bytes())).and_then(|_| f.write_all(&bytes)).and_then(|_| f.sync_data())
                        .map_err(|e| unavailable(&key, e))?;
                    #[cfg(test)]
                    tests::before_commit(&key);
                    // The call gone while it wrote (its deadline, a cancel, `close()`): not stored after
                    // all, as a write that had not got the lock (review AJ: it landed after the call was
                    // reported cancelled, and after `close()` resolved).
                    if gone.load(Ordering::Relaxed) {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(unavailable(&key, "the call ended while its snapshot was written; nothing was stored"));
                    }
                    std::fs::rename(&tmp, path).map_err(|e| unavailable(&key, e))?;
                    // The rename is durable once its directory is synced: a power cut before that
                    // could bring back the previous snapshot after this call was acknowledged.
                    sync_dir(path).map_err(|e| unavailable(&key, e))?;
                    Ok(Saved::Current(Version { version: Some(next.to_string()), ..Default::default() }))
                }
            })
            .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        let key = key.to_string();
        Box::pin(async move {
            let k = key.clone();
            self.under_lock(&k, move |path, _| {
                {
                    // A killed writer's leftover goes with the actor; so does anything planted
                    // (a link, a FIFO, a directory).
                    let _ = remove_entry(&path.with_extension("tmp"));
                    match remove_entry(path) {
                        Err(e) => Err(unavailable(&key, e)),
                        // Synced as a write is: a dropped actor must not come back after a power cut.
                        Ok(true) => sync_dir(path).map_err(|e| unavailable(&key, e)),
                        Ok(false) => Ok(()),
                    }
                }
            })
            .await
        })
    }

    fn delete_if<'a>(&'a self, key: &'a str, version: &'a Version) -> BoxFuture<'a, Result<bool, ExecError>> {
        let expected: Option<u64> = version.version.as_deref().and_then(|v| v.parse().ok());
        let key = key.to_string();
        Box::pin(async move {
            let k = key.clone();
            // Compared and deleted under the actor's lock: no write lands between the two.
            self.under_lock(&k, move |path, _| {
                match FileActorStore::stored_version(path, &key)? {
                    None => Ok(true),
                    Some(now) if Some(now) == expected => {
                        let _ = std::fs::remove_file(path.with_extension("tmp"));
                        match std::fs::remove_file(path) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(unavailable(&key, e)),
                            Ok(()) => sync_dir(path).map(|()| true).map_err(|e| unavailable(&key, e)),
                            Err(_) => Ok(true),
                        }
                    }
                    Some(_) => Ok(false),
                }
            })
            .await
        })
    }

    fn version<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Version>, ExecError>> {
        let this = self.clone();
        Box::pin(async move {
            let k = key.to_string();
            let version = self.off_runtime(move |_| FileActorStore::stored_version(&this.checked_path(&k)?, &k)).await?;
            Ok(version.map(|v| Version { version: Some(v.to_string()), ..Default::default() }))
        })
    }

    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }

    fn settled(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let done = self.running.done.notified();
                if *self.running.count.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
                    return;
                }
                done.await;
            }
        })
    }
}

#[cfg(test)]
#[path = "file_actor_store_tests.rs"]
mod tests;
