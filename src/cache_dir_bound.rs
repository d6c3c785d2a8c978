//! The bound on `cacheDir`'s size (`maxCacheDirBytes`): past it, the artifacts and hints used
//! least recently go, oldest first, until what is left fits. Hints take at most a sixteenth of
//! the bound, their least recently used going first past it.
//!
//! Without a bound the directory only grew: every module ever compiled left its artifacts (one per
//! tier; the 12 MB JavaScript component's is 37 MB), every definition ever loaded its hint, and a
//! write that died with its process its temporary file. Whoever can have modules compiled (new
//! versions at every deploy, or a caller naming new modules) could fill the disk.
//!
//! What is ours is told by its name alone: `<sha256>-<engine>.cwasm`, `<sha256>.hint`, and the
//! temporary files `write_atomic` makes of them. Nothing else in the directory (its key file, a
//! user's own files, a subdirectory) is counted or removed, and nothing is followed: a link planted
//! under an artifact's name is not a regular file, so it is left alone (and so is what it points
//! to). "Used" is the file's mtime: written, or refreshed (`touch`) when an artifact or a hint is
//! read, so a module loaded at every start stays however long ago it was compiled, and every ten
//! minutes of calls for the modules an executor serves from memory (and the hints of the definitions
//! that name them). A temporary
//! file is counted but never removed while fresh (a write under way, maybe another process's);
//! one over an hour old is a write that died, and goes whatever the bound.
//!
//! A scan holds the directory by a handle (`held_dir`): it lists, looks at and removes names in
//! the directory its path named when it began, so a link in that path repointed mid-scan cannot
//! take its deletes elsewhere.
//!
//! Pruning runs on the runtime's blocking pool: a second after an executor opens the directory
//! (at most once a minute per directory and bound in a process), and after writes (artifacts,
//! hints) adding up to a sixteenth of the bound since the last scan, so the directory passes its
//! bound by about that much (and the write that crossed it) per process writing to it; at most
//! one scan per directory at a time in the process (requests made meanwhile are served by one
//! more scan). An artifact larger than the bound is not written to the directory at all. An
//! mtime over a minute ahead of the clock counts as the oldest. Processes sharing a directory
//! each prune it; a file removed under another process's load is already open there (the load
//! reads what it opened), and at worst a module is compiled again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::held_dir::HeldDir;

/// `maxCacheDirBytes` unless set.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// A temporary file of ours this old is a write that died with its process.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);
/// How long after an executor opens the directory its scan waits: not on a cold start's path.
const OPEN_DELAY: Duration = Duration::from_secs(1);
/// An executor opening a directory scanned on an open this recently, to this bound or a smaller
/// one, schedules no scan: a process making an executor every few milliseconds (one per test)
/// would otherwise scan without pause.
const OPEN_RESCAN: Duration = Duration::from_secs(60);
/// How far ahead of the clock an mtime may be and still count as it is.
const FUTURE_SLACK: Duration = Duration::from_secs(60);
/// How often an executor's cache hits mark the artifacts of the modules it holds used.
pub const REFRESH_EVERY: Duration = Duration::from_secs(600);
/// How long `settle` waits for a directory's scans to end.
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// Directories whose bookkeeping is kept; past it, that of idle ones is forgotten.
const MAX_DIRS: usize = 1024;
/// Hints take at most this share of the bound (a sixteenth: 64 MiB, some 16,000 hints, of the
/// default 1 GiB); past it the least recently used go before any artifact.
const HINT_SHARE: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Artifact,
    Hint,
    Temporary,
}

fn lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What a name in `cacheDir` is, if one of ours.
fn kind_of(name: &str) -> Option<Kind> {
    if let Some(stem) = name.strip_suffix(".cwasm") {
        let (digest, engine) = stem.split_once('-')?;
        return (lower_hex(digest, 64) && lower_hex(engine, 16)).then_some(Kind::Artifact);
    }
    if let Some(digest) = name.strip_suffix(".hint") {
        return lower_hex(digest, 64).then_some(Kind::Hint);
    }
    // `.<artifact or hint name>.<pid>.<n>.tmp` (`artifacts::write_atomic`).
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = inner.rsplitn(3, '.');
    let (n, pid, target) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(n) && numeric(pid) && matches!(kind_of(target)?, Kind::Artifact | Kind::Hint)).then_some(Kind::Temporary)
}

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Pruned {
    /// Files removed (artifacts, hints, dead temporary files).
    pub files: u64,
    /// Their size on disk.
    pub bytes: u64,
    /// What the directory's files of ours take on disk after the scan.
    pub left: u64,
}

struct Entry {
    name: String,
    kind: Kind,
    bytes: u64,
    used: SystemTime,
}

/// The files of ours in `dir` (regular files only: nothing is followed).
fn list(dir: &HeldDir, now: SystemTime) -> Vec<Entry> {
    // Only names of ours are kept from the listing: a directory holding many other files costs
    // no memory for them.
    let Ok(names) = dir.names_where(|name| kind_of(name).is_some()) else { return Vec::new() };
    let mut found = Vec::new();
    for name in names {
        let Some(kind) = kind_of(&name) else { continue };
        // The entry itself: a link is not followed.
        let Ok(meta) = dir.stat(&name) else { continue };
        if !meta.regular {
            continue;
        }
        // What it takes on disk (a hint of 64 bytes takes a block).
        let bytes = meta.disk_bytes;
        // An mtime over a minute ahead (a clock that jumped, a restored backup, a file planted
        // by a group writer) would keep a file forever and make everything else go first: it
        // counts as the oldest instead.
        let ahead = meta.modified.duration_since(now).is_ok_and(|ahead| ahead > FUTURE_SLACK);
        found.push(Entry { name, kind, bytes, used: if ahead { SystemTime::UNIX_EPOCH } else { meta.modified } });
    }
    found
}

/// Removes the least recently used artifacts and hints of `dir` until its files of ours take at
/// most `max_bytes` on disk, never `keep` (a name just written), and every temporary file of ours
/// that has been there over an hour. Blocking.
pub fn prune(dir: &Path, max_bytes: u64, keep: Option<&str>) -> Pruned {
    let now = SystemTime::now();
    let mut done = Pruned::default();
    // Held by a handle for the whole scan: names are listed in, and removed from, the directory
    // `dir` named when the scan began, whatever it is repointed to meanwhile (`held_dir`).
    let Ok(held) = HeldDir::open(dir) else { return done };
    let mut entries = list(&held, now);
    let remove = |e: &Entry, done: &mut Pruned| {
        // Gone already (another process's scan) counts as removed.
        match held.remove(&e.name) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => false,
            _ => {
                done.files += 1;
                done.bytes += e.bytes;
                true
            }
        }
    };
    entries.retain(|e| {
        let dead = e.kind == Kind::Temporary && now.duration_since(e.used).is_ok_and(|age| age > STALE_TEMPORARY);
        !(dead && remove(e, &mut done))
    });
    // `keep` is kept only if it fits the bound by itself (an artifact over it is never written,
    // so one found there is not kept either).
    let kept = |e: &Entry| Some(e.name.as_str()) == keep && e.bytes <= max_bytes;
    // Hints first, down to their share of the bound: one is written for every definition loaded,
    // and whoever names new definitions (600 names for one module) flushed every artifact out of
    // the directory with hints (review AM1).
    let hint_room = max_bytes / HINT_SHARE;
    let mut hints: Vec<&Entry> = entries.iter().filter(|e| e.kind == Kind::Hint).collect();
    let mut hint_total: u64 = hints.iter().fold(0, |t, e| t.saturating_add(e.bytes));
    let mut gone = std::collections::HashSet::new();
    if hint_total > hint_room {
        hints.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.name.cmp(&b.name)));
        for e in hints.into_iter().filter(|e| !kept(e)) {
            if hint_total <= hint_room {
                break;
            }
            if remove(e, &mut done) {
                hint_total -= e.bytes;
                gone.insert(e.name.clone());
            }
        }
    }
    entries.retain(|e| !gone.contains(&e.name));
    // Saturating: sizes are a writer's to choose (a sparse file's length), and a sum that wrapped
    // would stop pruning.
    let mut total: u64 = entries.iter().fold(0, |t, e| t.saturating_add(e.bytes));
    if total > max_bytes {
        let mut candidates: Vec<&Entry> = entries.iter().filter(|e| e.kind != Kind::Temporary && !kept(e)).collect();
        candidates.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.name.cmp(&b.name)));
        for e in candidates {
            if total <= max_bytes {
                break;
            }
            if remove(e, &mut done) {
                total -= e.bytes;
            }
        }
    }
    done.left = total;
    done
}

/// Marks `path` used now (its mtime), best effort and without following a link. Blocking.
pub fn touch(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
    // Both times to now: what write access alone allows (no need to own the file).
    // SAFETY: `c` is a NUL-terminated path; a null `times` means now.
    unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), libc::AT_SYMLINK_NOFOLLOW) };
}

/// `touch`, off the caller's path (on the runtime's blocking pool).
pub fn touch_later(path: PathBuf) {
    if let Some(rt) = crate::runtime::handle() {
        drop(rt.spawn_blocking(move || touch(&path)));
    }
}

/// `touch` of each path `paths` makes, off the caller's path.
pub fn touch_all_later(paths: impl FnOnce() -> Vec<PathBuf> + Send + 'static) {
    if let Some(rt) = crate::runtime::handle() {
        drop(rt.spawn_blocking(move || paths().iter().for_each(|p| touch(p))));
    }
}

/// Per directory: a scan under way, the bound and name of the request waiting for the next one,
/// and what has been written since the last one began.
#[derive(Default)]
struct Scans {
    running: bool,
    /// Wakes a scan waiting out its delay (`settle` wants it now).
    hurry: std::sync::Arc<tokio::sync::Notify>,
    /// Whether a scan is waiting out its delay: only then is it woken (a wake-up stored for no
    /// one would cut a later open's delay short, putting its scan on a cold start's path).
    delaying: bool,
    next: Option<(u64, Option<String>)>,
    written: u64,
    /// When an open last scheduled a scan, and to what bound.
    opened: Option<(std::time::Instant, u64)>,
}

impl Scans {
    fn idle(&self) -> bool {
        !self.running && self.next.is_none() && self.opened.is_none_or(|(at, _)| at.elapsed() >= OPEN_RESCAN)
    }
}

/// The bookkeeping of `dir`, made if missing; past `MAX_DIRS` directories, that of idle ones is
/// forgotten first (what they had written since their last scan counts from zero again).
fn entry<'a>(all: &'a mut HashMap<PathBuf, Scans>, dir: &Path) -> &'a mut Scans {
    if all.len() >= MAX_DIRS && !all.contains_key(dir) {
        all.retain(|_, scan| !scan.idle());
    }
    all.entry(dir.to_path_buf()).or_default()
}

fn scans() -> &'static Mutex<HashMap<PathBuf, Scans>> {
    static SCANS: std::sync::OnceLock<Mutex<HashMap<PathBuf, Scans>>> = std::sync::OnceLock::new();
    SCANS.get_or_init(Default::default)
}

/// Prunes `dir` to `max_bytes` on the runtime's blocking pool, keeping `keep`, after `delay`.
/// Requests made while a scan of `dir` runs are served by one more scan, to the smallest bound
/// asked (executors sharing a directory may bound it differently).
pub fn request(dir: PathBuf, max_bytes: u64, keep: Option<String>, delay: Duration) {
    let Some(rt) = crate::runtime::handle() else { return };
    let hurry = {
        let Ok(mut all) = scans().lock() else { return };
        let scan = entry(&mut all, &dir);
        scan.next = Some(match scan.next.take() {
            Some((m, k)) => (m.min(max_bytes), keep.or(k)),
            None => (max_bytes, keep),
        });
        if scan.running {
            // A request that cannot wait (writes reached a sixteenth, `settle`) starts a scan
            // waiting out its open delay now: it was left to wait, and the writes of that second
            // went on past the bound unscanned (review AA: 1,450 hints, 5.9 MB, over 256 KiB).
            if delay.is_zero() && scan.delaying {
                scan.hurry.notify_one();
            }
            return;
        }
        scan.running = true;
        scan.delaying = !delay.is_zero();
        scan.hurry.clone()
    };
    let d = dir.clone();
    rt.spawn(async move {
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = hurry.notified() => {}
            }
            if let Ok(mut all) = scans().lock() {
                if let Some(scan) = all.get_mut(&d) {
                    scan.delaying = false;
                }
            }
        }
        loop {
            let next = {
                let Ok(mut all) = scans().lock() else { return };
                let Some(scan) = all.get_mut(&dir) else { return };
                match scan.next.take() {
                    Some(next) => {
                        scan.written = 0;
                        next
                    }
                    None => {
                        scan.running = false;
                        drop(all);
                        settled().notify_waiters();
                        return;
                    }
                }
            };
            let d = dir.clone();
            let (max, keep) = next;
            if tokio::task::spawn_blocking(move || prune(&d, max, keep.as_deref())).await.is_err() {
                if let Ok(mut all) = scans().lock() {
                    if let Some(scan) = all.get_mut(&dir) {
                        scan.running = false;
                    }
                }
                settled().notify_waiters();
                return;
            }
        }
    });
}

/// Woken each time a directory's scans end (`settle`).
fn settled() -> &'static tokio::sync::Notify {
    static SETTLED: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    SETTLED.get_or_init(Default::default)
}

/// Leaves `dir` within `max_bytes` before it resolves (`precompile`: a CLI process exits right
/// after, before a scan its write started in the background would run): when something was
/// written since the last scan began, or a scan is under way or waiting out its delay, a scan
/// runs now (keeping `keep`, the artifact just made or loaded, marked used first) and is waited
/// for, at most `SETTLE_WAIT` (scans kept going by other writers' requests). Otherwise, or without
/// the runtime, it resolves at once: nothing was added since the directory was last brought
/// within its bound.
pub async fn settle(dir: PathBuf, max_bytes: u64, keep: Option<String>) {
    if let Some(name) = &keep {
        // Used now, before any scan looks: loaded from memory or disk, it may be the oldest.
        let path = dir.join(name);
        let _ = tokio::task::spawn_blocking(move || touch(&path)).await;
    }
    {
        let Ok(all) = scans().lock() else { return };
        if !all.get(&dir).is_some_and(|scan| scan.running || scan.written > 0) {
            return;
        }
    }
    request(dir.clone(), max_bytes, keep, Duration::ZERO);
    {
        let Ok(all) = scans().lock() else { return };
        // A scan waiting out its open delay starts now (a wake-up is kept if it has not begun
        // to wait yet; none is given when no scan waits).
        if let Some(scan) = all.get(&dir).filter(|scan| scan.delaying) {
            scan.hurry.notify_one();
        }
    }
    let ended = async {
        loop {
            // Registered before the check: an end notified in between is not missed.
            let ended = settled().notified();
            let running = scans().lock().map_or(false, |all| all.get(&dir).is_some_and(|scan| scan.running));
            if !running {
                return;
            }
            ended.await;
        }
    };
    let _ = tokio::time::timeout(SETTLE_WAIT, ended).await;
}

/// Notes that `name` (`bytes` long) was just written to `dir`. Once what was written since the
/// last scan reaches a sixteenth of the bound, `dir` is pruned, keeping `name`: the directory may
/// pass its bound by that much between scans, and a flood of small writes (a hint per new
/// definition) costs one scan per sixteenth, not one per file.
pub fn wrote(dir: &Path, max_bytes: u64, name: &str, bytes: u64) {
    let due = {
        let Ok(mut all) = scans().lock() else { return };
        let scan = entry(&mut all, dir);
        // A file takes a block at least.
        scan.written = scan.written.saturating_add(bytes.max(4096));
        scan.written >= (max_bytes / 16).max(1)
    };
    if due {
        request(dir.to_path_buf(), max_bytes, Some(name.to_owned()), Duration::ZERO);
    }
}

/// Prunes `dir` once an executor has opened it (a bound lowered since the last run takes hold),
/// unless an open scheduled a scan to this bound or a smaller one within `OPEN_RESCAN`.
pub fn on_open(dir: PathBuf, max_bytes: u64) {
    {
        let Ok(mut all) = scans().lock() else { return };
        let scan = entry(&mut all, &dir);
        if scan.opened.is_some_and(|(at, bound)| at.elapsed() < OPEN_RESCAN && bound <= max_bytes) {
            return;
        }
        scan.opened = Some((std::time::Instant::now(), max_bytes));
    }
    request(dir, max_bytes, None, OPEN_DELAY);
}

#[cfg(test)]
#[path = "cache_dir_bound_tests.rs"]
mod tests;
