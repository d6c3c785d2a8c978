//! A directory held open by a handle: its entries are listed, looked at and removed by name
//! relative to that handle (`fstatat`, `unlinkat`), never through its path again. Whoever can
//! repoint the path (a link among its components swapped mid-way) cannot turn a walk that began
//! in one directory into deletes in another: every name acted on is one listed in the directory
//! that was opened, and removed from that same directory.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

pub struct HeldDir {
    fd: OwnedFd,
}

/// What `HeldDir::stat` tells of an entry (the entry itself: a link is not followed).
#[derive(Debug, Clone, Copy)]
pub struct EntryMeta {
    pub regular: bool,
    /// What it takes on disk (a filesystem that reports no blocks: its length).
    pub disk_bytes: u64,
    pub modified: SystemTime,
}

fn c_name(name: &str) -> io::Result<CString> {
    // A name, not a path: a `/` would reach out of the held directory.
    if name.is_empty() || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a name in the directory"));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the name"))
}

impl HeldDir {
    /// Opens the directory `path` names now (links in the path are followed this once: a
    /// `cacheDir` may be reached through one).
    pub fn open(path: &Path) -> io::Result<HeldDir> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
        // SAFETY: `c` is NUL-terminated; the descriptor returned is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor just opened and owned by nobody else.
        Ok(HeldDir { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// The names in the directory (not `.` and `..`; those that are not UTF-8 are skipped).
    pub fn names(&self) -> io::Result<Vec<String>> {
        self.names_where(|_| true)
    }

    /// The names in the directory that `wanted` keeps. A listing cut short by an error is an
    /// error, not a shorter list.
    pub fn names_where(&self, wanted: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
        // A descriptor of its own for the stream (`closedir` closes it), from the held one: the
        // same directory, whatever its path names now.
        // SAFETY: `openat` relative to a descriptor we own, with a NUL-terminated name.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c".".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is ours; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: the stream did not take `fd`.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut names = Vec::new();
        let failed = loop {
            // `readdir` tells the end from an error only by errno.
            // SAFETY: writing the calling thread's errno.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is open; the entry it returns is valid until the next call.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                // SAFETY: reading the calling thread's errno.
                let errno = unsafe { *libc::__errno_location() };
                break (errno != 0).then(|| io::Error::from_raw_os_error(errno));
            }
            // The record may be shorter than `dirent`'s 256-byte `d_name`: no reference to the
            // whole array is made, only a pointer to its start (NUL-terminated within the record).
            // SAFETY: `entry` is a valid record until the next `readdir`.
            let name = unsafe { CStr::from_ptr(std::ptr::addr_of!((*entry).d_name).cast()) };
            if let Ok(name) = name.to_str() {
                if name != "." && name != ".." && wanted(name) {
                    names.push(name.to_owned());
                }
            }
        };
        // SAFETY: closes the stream and its descriptor, once.
        unsafe { libc::closedir(stream) };
        match failed {
            Some(e) => Err(e),
            None => Ok(names),
        }
    }

    /// The entry `name` itself (a link is described, not followed).
    pub fn stat(&self, name: &str) -> io::Result<EntryMeta> {
        let c = c_name(name)?;
        // SAFETY: a zeroed `stat` is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: relative to a descriptor we own, a NUL-terminated name, a valid out-pointer.
        if unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let len = u64::try_from(st.st_size).unwrap_or(0);
        let blocks = u64::try_from(st.st_blocks).unwrap_or(0);
        let modified = if st.st_mtime >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(st.st_mtime as u64, st.st_mtime_nsec.clamp(0, 999_999_999) as u32)
        } else {
            SystemTime::UNIX_EPOCH
        };
        Ok(EntryMeta {
            regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
            disk_bytes: if blocks > 0 { blocks.saturating_mul(512) } else { len },
            modified,
        })
    }

    /// Removes the entry `name` from this directory (a link itself, never what it points to).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: relative to a descriptor we own, with a NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_repointed_after_the_open_changes_nothing() {
        let base = std::env::temp_dir().join(format!("loom-held-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (first, second, link) = (base.join("first"), base.join("second"), base.join("link"));
        std::fs::create_dir_all(&first).expect("first");
        std::fs::create_dir_all(&second).expect("second");
        std::fs::write(first.join("a"), b"first").expect("a");
        std::fs::write(second.join("a"), b"second").expect("a");
        std::fs::write(second.join("b"), b"second").expect("b");
        std::os::unix::fs::symlink(&first, &link).expect("link");

        let held = HeldDir::open(&link).expect("open");
        // The link now names the other directory: the held one is still the first.
        std::fs::remove_file(&link).expect("unlink");
        std::os::unix::fs::symlink(&second, &link).expect("relink");
        assert_eq!(held.names().expect("names"), vec!["a".to_string()]);
        let meta = held.stat("a").expect("stat");
        assert!(meta.regular && meta.disk_bytes > 0);
        assert!(held.stat("b").is_err());
        held.remove("a").expect("remove");
        assert!(!first.join("a").exists());
        assert!(second.join("a").exists() && second.join("b").exists());
        // A name reaching out of the directory is refused.
        assert_eq!(held.remove("../second/b").map_err(|e| e.kind()), Err(io::ErrorKind::InvalidInput));
        assert!(second.join("b").exists());
        // A link in it is removed itself, its target kept; `stat` describes the link.
        std::os::unix::fs::symlink(second.join("b"), first.join("l")).expect("link in");
        assert!(!held.stat("l").expect("stat").regular);
        held.remove("l").expect("remove link");
        assert!(second.join("b").exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
