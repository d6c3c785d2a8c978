//! The locks of granted directories (see `wasi_open`): a path's look and its open hold their
//! directory's lock for reading; a rename, link or symlink takes for writing the lock of every
//! granted directory that overlaps its own (the same directory, one inside it or one it is in).
//!
//! A directory is known by its canonical path, so a grant spelled through a symlink or with `..`
//! shares the lock of the grant spelled plainly, and a grant of a parent directory waits for the
//! opens under way in a subdirectory granted to another executor (review BB3: keyed by the
//! spelling of `hostDir`, one tenant renaming a FIFO back and forth in a parent or an alias of
//! another's granted directory slipped it under a name that one had just looked at; each such open
//! blocked a thread for good, and 64 of them stopped every file operation in the process). What
//! canonical paths cannot tell, a directory mounted twice (a bind mount), still gets two locks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{OwnedRwLockWriteGuard, RwLock, RwLockReadGuard};

struct Granted {
    /// Canonical (as given when it cannot be resolved: then its open fails anyway).
    dir: PathBuf,
    lock: Arc<RwLock<()>>,
}

/// A granted directory's lock, shared by every call granted that directory in the process.
#[derive(Clone)]
pub struct PathLock(Arc<Granted>);

/// The directories granted by the executors (and calls) that live now. An executor holds its
/// directory's lock from when it is made (`register`) to when it goes: a lock let go with the
/// last call using it was made anew by the next, and a rename whose set of locks was taken in
/// between renamed while that call looked and opened (a FIFO slipped in under load, in the test
/// of review BB3's fix).
fn registry() -> MutexGuard<'static, Vec<Weak<Granted>>> {
    static LOCKS: Mutex<Vec<Weak<Granted>>> = Mutex::new(Vec::new());
    LOCKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lock of the directory `dir` (as the executor's options name it).
pub fn path_lock(dir: &Path) -> PathLock {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut locks = registry();
    if let Some(granted) = locks.iter().filter_map(Weak::upgrade).find(|g| g.dir == dir) {
        return PathLock(granted);
    }
    locks.retain(|w| w.strong_count() > 0);
    let granted = Arc::new(Granted { dir, lock: Arc::new(RwLock::new(())) });
    locks.push(Arc::downgrade(&granted));
    PathLock(granted)
}

/// The lock an executor granting `dir` holds for its life, taken as it is made (before any of its
/// calls).
pub fn register(dir: &Path) -> PathLock {
    path_lock(dir)
}

impl PathLock {
    /// The read side, for a look and its open.
    pub async fn read(&self) -> RwLockReadGuard<'_, ()> {
        self.0.lock.read().await
    }

    /// The write side of every granted directory that overlaps this one. First tried without
    /// queueing ahead of readers, all at once every millisecond (an open that blocks anyway, on a
    /// leased file, then holds up only renames); after `QUEUE_AFTER`, queued in line, one lock after
    /// another in the order of their paths (so two writers never each hold one the other waits
    /// for): opens that come later wait for the writer. Polling alone never got all the locks of
    /// a directory whose parent another executor opened in a loop (review BC1: four readers of
    /// the parent held a subdirectory's two renames off to their 5 s deadline).
    pub async fn write(&self) -> Vec<OwnedRwLockWriteGuard<()>> {
        let started = std::time::Instant::now();
        loop {
            let overlapping = self.overlapping();
            let taken = if started.elapsed() >= QUEUE_AFTER {
                let mut guards = Vec::with_capacity(overlapping.len());
                for (_, lock) in &overlapping {
                    guards.push(lock.clone().write_owned().await);
                }
                Some(guards)
            } else {
                overlapping.iter().map(|(_, lock)| lock.clone().try_write_owned().ok()).collect()
            };
            // A directory granted meanwhile (an executor made while this waited) is waited for
            // too: all taken again with it.
            let now = self.overlapping();
            let same = now.len() == overlapping.len() && now.iter().zip(&overlapping).all(|(a, b)| Arc::ptr_eq(&a.1, &b.1));
            if let Some(guards) = taken.filter(|_| same) {
                return guards;
            }
            crate::runtime::enter(|| tokio::time::sleep(Duration::from_millis(1))).await;
        }
    }
}

impl PathLock {
    /// The locks of the granted directories overlapping this one (itself among them), in the
    /// order of their paths.
    fn overlapping(&self) -> Vec<(PathBuf, Arc<RwLock<()>>)> {
        let mut overlapping: Vec<(PathBuf, Arc<RwLock<()>>)> = registry()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|g| g.dir.starts_with(&self.0.dir) || self.0.dir.starts_with(&g.dir))
            .map(|g| (g.dir.clone(), g.lock.clone()))
            .collect();
        overlapping.sort_by(|a, b| a.0.cmp(&b.0));
        overlapping
    }
}

/// How long a writer polls before it queues (see `PathLock::write`).
const QUEUE_AFTER: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::path_lock;

    /// Whether `writer`'s write side is taken within 50 ms.
    async fn writes(writer: &super::PathLock) -> bool {
        tokio::time::timeout(Duration::from_millis(50), writer.write()).await.is_ok()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_directory_has_one_lock_however_it_is_spelled_and_renames_wait_for_opens_in_overlapping_grants() {
        let root = std::env::temp_dir().join(format!("loom-path-locks-{}", std::process::id()));
        let (shared, sub, sibling) = (root.join("shared"), root.join("shared/tenant"), root.join("other"));
        for d in [&sub, &sibling] {
            std::fs::create_dir_all(d).expect("dir");
        }
        let alias = root.join("alias");
        let _ = std::fs::remove_file(&alias);
        std::os::unix::fs::symlink(&shared, &alias).expect("symlink");

        let opener = path_lock(&shared);
        for spelling in [alias.clone(), root.join("other/../shared"), root.join("./shared/")] {
            let other = path_lock(&spelling);
            let reading = opener.read().await;
            assert!(!writes(&other).await, "{spelling:?} waits for an open in the same directory");
            drop(reading);
            assert!(writes(&other).await, "{spelling:?} writes once the open is done");
        }
        // A grant of the parent waits for opens in the subdirectory, and the subdirectory's renames
        // for opens in the parent; a sibling waits for neither.
        let (parent, child, apart) = (path_lock(&shared), path_lock(&sub), path_lock(&sibling));
        let reading = child.read().await;
        assert!(!writes(&parent).await, "the parent's rename waits for the subdirectory's open");
        assert!(writes(&apart).await, "a sibling does not wait");
        drop(reading);
        let reading = parent.read().await;
        assert!(!writes(&child).await, "the subdirectory's rename waits for the parent's open");
        drop(reading);
        assert!(writes(&parent).await && writes(&child).await);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn an_executors_directory_keeps_one_lock_between_its_calls() {
        // A lock let go with the last call using it was made anew by the next: a rename whose set
        // was taken in between did not wait for that call's opens.
        let dir = std::env::temp_dir().join(format!("loom-path-locks-kept-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let executor = super::register(&dir);
        let call = path_lock(&dir);
        let first = std::sync::Arc::as_ptr(&call.0);
        drop(call);
        assert_eq!(std::sync::Arc::as_ptr(&path_lock(&dir).0), first, "the same lock for the next call");
        drop(executor);
        let canonical = std::fs::canonicalize(&dir).expect("canonical");
        assert!(super::registry().iter().filter_map(std::sync::Weak::upgrade).all(|g| g.dir != canonical), "gone with its executor");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_rename_gets_through_readers_of_an_overlapping_grant_that_never_stop() {
        // Review BC1: readers of the parent, one always holding the lock, kept a subdirectory's
        // renames polling until their deadline.
        let root = std::env::temp_dir().join(format!("loom-path-locks-busy-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sub")).expect("dirs");
        let (parent, child) = (path_lock(&root), path_lock(&root.join("sub")));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|i| {
                let (parent, stop) = (parent.clone(), stop.clone());
                tokio::spawn(async move {
                    // Overlapping holds of 300 us, the second reader 150 us behind the first: one
                    // of the two always has the lock.
                    let hold = |us: u64| async move {
                        let until = std::time::Instant::now() + Duration::from_micros(us);
                        while std::time::Instant::now() < until {
                            tokio::task::yield_now().await;
                        }
                    };
                    hold(150 * i).await;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let held = parent.read().await;
                        hold(300).await;
                        drop(held);
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let taken = tokio::time::timeout(Duration::from_secs(2), child.write()).await.is_ok();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.await.expect("reader");
        }
        assert!(taken, "the rename got its locks");
        let _ = std::fs::remove_dir_all(&root);
    }
}
