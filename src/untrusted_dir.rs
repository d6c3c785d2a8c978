//! Files in a directory that others may write to (an actor store's, a `cacheDir`): what is there
//! is opened without following a link or blocking on a FIFO, and what is written goes into a file
//! created anew, never through a link planted under its name.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` with `options` if it is a regular file: a symlink is not followed (`O_NOFOLLOW`:
/// ELOOP), and a FIFO or device in its place neither blocks the open (`O_NONBLOCK`) nor is used
/// (`InvalidData`).
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    blocking_regular(file)
}

/// `file` if it is a regular file, switched back to blocking I/O (some FUSE and network
/// filesystems honour `O_NONBLOCK` on regular files and would answer `EAGAIN`).
fn blocking_regular(file: File) -> io::Result<File> {
    use std::os::unix::io::AsRawFd;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    // SAFETY: fcntl on a descriptor `file` owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// How many pieces (holes and the data between) `holes_over` walks before it gives up on a file
/// and refuses it: each costs two `lseek`s, and a planted file walked to the end cost a cold call
/// about 50 ms more (review AP1F, ext4, 2 cores: 60-72 ms against 11-18 ms; more pieces cost no
/// more). An honest artifact copied sparse (`cp --sparse=always`) had 1,353
/// holes (review AO1F: the walk stopped at 1,024 and refused it); one of 37 MB can have at most
/// about 4,500 of 4 KiB.
pub const MAX_PIECES: usize = 16_384;

/// Whether `file` (of `len` bytes) is mostly never written: its holes (`SEEK_HOLE`) add up to more
/// than `max_hole_bytes`, or it is in more than `MAX_PIECES` pieces. A sparse file takes no disk
/// but reads as zeros: planted under a name whose file is read whole (an artifact), a few KiB of
/// disk would cost as many bytes of memory as its length, and the time to copy them. Extents
/// allocated and never written (`fallocate`) are holes to `SEEK_HOLE`, as they are here: the
/// file's blocks on disk (`st_blocks`) count them, and are no measure (review AP1: a 1,000 MiB
/// file of such extents passed a rule on them, instantly made, and was read whole). A filesystem
/// that cannot tell holes reports none. The file's offset is left at 0.
pub fn holes_over(file: &File, len: u64, max_hole_bytes: u64) -> bool {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    let len = len.min(i64::MAX as u64) as i64;
    let mut at: i64 = 0;
    let mut holes: u64 = 0;
    let mut verdict = true;
    for _ in 0..MAX_PIECES {
        // SAFETY: lseek on a descriptor `file` owns.
        let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
        if hole < 0 || hole >= len {
            // No hole before the end (or no way to tell).
            verdict = false;
            break;
        }
        // SAFETY: as above. ENXIO: no data after `hole`, the rest is one.
        let data = unsafe { libc::lseek(fd, hole, libc::SEEK_DATA) };
        let next = if data < 0 { len } else { data.min(len) };
        holes += (next - hole) as u64;
        if holes > max_hole_bytes {
            break;
        }
        if next >= len {
            verdict = false;
            break;
        }
        at = next;
    }
    // SAFETY: as above.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    verdict
}

/// Whether `open_regular` refused what it found (a link, a FIFO, a device).
pub fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP) || e.kind() == io::ErrorKind::InvalidData
}

/// Refuses (`InvalidData`) a symlink among the components of `path` below `root` (`O_NOFOLLOW`
/// only covers the last one): a directory of a store replaced by a link to another directory
/// would take its reads, writes and deletes there. What is missing is fine (it is created later).
/// A swap between this check and the use of the path can still get through.
pub fn no_links_below(root: &Path, path: &Path) -> io::Result<()> {
    let Ok(rest) = path.strip_prefix(root) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "outside the store's directory"));
    };
    let mut at = root.to_path_buf();
    for part in rest.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("{} is a link", at.display())))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `path` anew for writing, with `mode`: whatever is there (a leftover of a crash, a
/// planted link) is removed first, and the file is created exclusively (`O_EXCL`, which never
/// follows a link), so bytes written to it cannot land in a file elsewhere.
pub fn create_fresh(path: &Path, mode: u32) -> io::Result<File> {
    let _ = remove_entry(path)?;
    OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Removes whatever is at `path`, if anything: a file, a link (not what it points to), a FIFO, or
/// a directory planted there, with all it holds (links in it removed, never followed:
/// `remove_dir_all`). A name of ours that only a file of ours should have (review BU1: a
/// directory planted as an actor's temporary file or snapshot failed every call on the actor with
/// a retryable `EISDIR`, and `dropActor` could not clear it).
/// Whether there was anything.
pub fn remove_entry(path: &Path) -> io::Result<bool> {
    let gone = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match gone {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Why a local read gave nothing.
pub enum LocalRead {
    /// Nothing there, or a directory (as object_store reports one).
    NotFound(String),
    TooLarge(u64),
    Unavailable(String),
    /// Its size was not admitted (`read_regular_admitted`): nothing read.
    NotAdmitted,
    /// More of its size is holes than allowed (`read_regular_admitted`): nothing read.
    Sparse(u64),
}

/// Whether a regular file is at `path` (links followed), from its metadata: a FIFO is never
/// opened to find out.
pub fn is_regular_file(path: &Path) -> io::Result<bool> {
    regular_file_len(path).map(|len| len.is_some())
}

/// The length of the regular file at `path` (links followed); none if there is none there, or
/// what is there is not a regular file.
pub fn regular_file_len(path: &Path) -> io::Result<Option<u64>> {
    match std::fs::metadata(path) {
        // As its reads see it: a pseudo filesystem's file is none (review AQ2: `exists` said yes
        // to a link to /proc/kmsg that every read refused).
        Ok(meta) if meta.is_file() => match path_on_pseudo_filesystem(path) {
            Ok(pseudo) => Ok((!pseudo).then_some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens for reading the regular file `path` names, links followed, and nothing else, however the
/// name is swapped meanwhile (review AQ1: a name switched between a file and a link to a FIFO
/// had the FIFO opened hundreds of times): the name is resolved once to an `O_PATH` handle,
/// which opens nothing (no device's open acts, no FIFO is waited on), the handle's file is
/// checked, and that very file is opened through it (`/proc/self/fd`; without `/proc`, by name
/// again, refused unless it is the same file). `InvalidData`: not a regular file.
pub fn open_followed_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let not_regular = || io::Error::new(io::ErrorKind::InvalidData, "not a regular file");
    let handle = OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path)?;
    let checked = handle.metadata()?;
    if !checked.is_file() || on_pseudo_filesystem(&handle)? {
        return Err(not_regular());
    }
    let flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(format!("/proc/self/fd/{}", handle.as_raw_fd())) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new().read(true).custom_flags(flags).open(path)?,
        Err(e) => return Err(e),
    };
    let opened = file.metadata()?;
    if !opened.is_file() || (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
        return Err(not_regular());
    }
    blocking_regular(file)
}

/// Filesystems whose "regular files" are the kernel's handlers, not stored bytes (`statfs`
/// magic numbers): proc, sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2, configfs, bpf,
/// efivarfs, pstore, fusectl, binfmt_misc, selinuxfs, smackfs. A read of one may block for good
/// (review AQ1F: a link to `/proc/kmsg` in a `file://` store held a thread per call) or act.
const PSEUDO_FILESYSTEMS: [u32; 15] = [
    0x9fa0, 0x6265_6572, 0x6462_6720, 0x7472_6163, 0x7363_6673, 0x0027_e0eb, 0x6367_7270, 0x6265_6570, 0xcafe_4a11, 0xde5e_81e4,
    0x6165_676c, 0x6573_5543, 0x4249_4e4d, 0xf97c_ff8c, 0x4341_5d53,
];

/// Whether what `path` names (links followed) is on one of `PSEUDO_FILESYSTEMS`.
fn path_on_pseudo_filesystem(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a zeroed statfs is a valid out-parameter, and statfs writes only into it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PSEUDO_FILESYSTEMS.contains(&(fs.f_type as u32)))
}

/// Whether `file` (an `O_PATH` handle will do) is on one of `PSEUDO_FILESYSTEMS`.
fn on_pseudo_filesystem(file: &File) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a zeroed statfs is a valid out-parameter, and fstatfs writes only into it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a descriptor `file` owns, into a struct of the right type.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PSEUDO_FILESYSTEMS.contains(&(fs.f_type as u32)))
}

/// The last `n` bytes of the regular file at `path` (links followed, as `regular_file_len`;
/// opened as `open_followed_regular` opens) if it is `len` bytes long; none if there is no
/// regular file of that length there.
pub fn regular_file_tail(path: &Path, len: u64, n: usize) -> io::Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek};
    let mut file = match open_followed_regular(path) {
        Ok(file) => file,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidData) => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() != len || (n as u64) > len {
        return Ok(None);
    }
    file.seek(io::SeekFrom::Start(len - n as u64))?;
    let mut tail = Vec::with_capacity(n);
    file.take(n as u64).read_to_end(&mut tail)?;
    Ok(Some(tail))
}

/// A regular file's bytes, if it has at most `max_bytes` (blocking). Links are followed (a blob
/// store's layout may use them), but what is not a regular file is refused from its metadata
/// before it is opened (a device's open may act) and again once open (a swap meanwhile), without
/// blocking on a FIFO; a file that changes size while it is read is refused, not cut short.
/// It gives up (`Unavailable`) between chunks once `gone` is set: a caller that stopped waiting
/// (a timeout) does not leave a thread reading a giant on its behalf.
pub fn read_regular(file: &Path, max_bytes: u64, gone: &std::sync::atomic::AtomicBool) -> Result<Vec<u8>, LocalRead> {
    read_regular_admitted(file, max_bytes, None, gone, |_| Some(())).map(|(bytes, ())| bytes)
}

/// `read_regular`, once `admit` took the file's size (`NotAdmitted` if it did not), with what it
/// gave for that size; a file with more than `max_holes` bytes of holes is `Sparse`, not read.
pub fn read_regular_admitted<T>(
    file: &Path,
    max_bytes: u64,
    max_holes: Option<u64>,
    gone: &std::sync::atomic::AtomicBool,
    admit: impl FnOnce(u64) -> Option<T>,
) -> Result<(Vec<u8>, T), LocalRead> {
    use std::io::Read;
    let not_regular = |meta: &std::fs::Metadata| {
        if meta.is_dir() {
            LocalRead::NotFound("is a directory".into())
        } else {
            LocalRead::Unavailable("not a regular file".into())
        }
    };
    match std::fs::metadata(file) {
        Ok(meta) if !meta.is_file() => return Err(not_regular(&meta)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LocalRead::NotFound(e.to_string())),
        Err(e) => return Err(LocalRead::Unavailable(e.to_string())),
    }
    let f = match open_followed_regular(file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LocalRead::NotFound(e.to_string())),
        Err(e) => return Err(LocalRead::Unavailable(e.to_string())),
    };
    let meta = f.metadata().map_err(|e| LocalRead::Unavailable(e.to_string()))?;
    if meta.len() > max_bytes {
        return Err(LocalRead::TooLarge(meta.len()));
    }
    if max_holes.is_some_and(|max| holes_over(&f, meta.len(), max)) {
        return Err(LocalRead::Sparse(meta.len()));
    }
    let admitted = admit(meta.len()).ok_or(LocalRead::NotAdmitted)?;
    let mut bytes = Vec::new();
    // A sparse giant must not abort the process on an allocation it cannot have.
    let len = usize::try_from(meta.len()).map_err(|_| LocalRead::Unavailable("too large to hold".into()))?;
    bytes.try_reserve_exact(len).map_err(|e| LocalRead::Unavailable(format!("{} bytes: {e}", meta.len())))?;
    let mut f = f.take(meta.len().saturating_add(1));
    const CHUNK: u64 = 1 << 20;
    loop {
        if gone.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(LocalRead::Unavailable("abandoned by its caller".into()));
        }
        let read = (&mut f).take(CHUNK).read_to_end(&mut bytes).map_err(|e| LocalRead::Unavailable(e.to_string()))?;
        if read == 0 {
            break;
        }
    }
    if bytes.len() as u64 != meta.len() {
        return Err(LocalRead::Unavailable(format!("changed while being read ({} bytes, then {})", meta.len(), bytes.len())));
    }
    Ok((bytes, admitted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_counted_and_written_files_have_none() {
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!("loom-untrusted-holes-{}", std::process::id()));
        let mib = 1u64 << 20;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("create");
        file.write_all_at(&vec![1u8; mib as usize], 0).expect("write");
        assert!(!holes_over(&file, mib, 0), "written whole");
        // 8 MiB of hole after the first MiB, then one more written MiB; then a hole to the end.
        file.write_all_at(&vec![1u8; mib as usize], 9 * mib).expect("write");
        assert!(holes_over(&file, 10 * mib, 4 * mib));
        assert!(!holes_over(&file, 10 * mib, 8 * mib));
        file.set_len(20 * mib).expect("grow");
        assert!(holes_over(&file, 20 * mib, 12 * mib), "the hole at the end counts");
        assert!(!holes_over(&file, 20 * mib, 18 * mib));
        // Many pieces: 1,100 holes of 4 KiB, one after each 4 KiB written (an honest copy made
        // sparse where its image had pages of zeros), 4.3 MiB of holes after a written MiB.
        file.set_len(0).expect("emptied");
        file.write_all_at(&vec![1u8; mib as usize], 0).expect("write");
        for i in 0..1100u64 {
            file.write_all_at(&[1; 4096], mib + i * 8192).expect("write");
        }
        let len = mib + 1100 * 8192;
        assert!(!holes_over(&file, len, 5 * mib), "4.3 MiB of holes, under 5");
        assert!(holes_over(&file, len, 4 * mib), "4.3 MiB of holes, over 4");
        // Extents allocated and never written: holes, though on disk.
        let allocated = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path.with_extension("falloc")).expect("create");
        // SAFETY: fallocate on a descriptor this test owns.
        let reserved = unsafe { libc::fallocate(std::os::unix::io::AsRawFd::as_raw_fd(&allocated), 0, 0, (20 * mib) as libc::off_t) } == 0;
        // (A filesystem without fallocate has nothing to check here.)
        assert!(!reserved || holes_over(&allocated, 20 * mib, 12 * mib), "20 MiB allocated and never written");
        let _ = std::fs::remove_file(path.with_extension("falloc"));
        // More than `MAX_PIECES` pieces: too many to walk.
        file.set_len(0).expect("emptied");
        for i in 0..=MAX_PIECES as u64 {
            file.write_all_at(&[1; 4], i * 8192).expect("write");
        }
        assert!(holes_over(&file, MAX_PIECES as u64 * 8192 + 1, u64::MAX));
        // The offset is back at the start for a reader.
        let mut first = [0u8; 4];
        std::io::Read::read_exact(&mut &file, &mut first).expect("read");
        assert_eq!(first, [1; 4]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn links_and_fifos_are_neither_followed_nor_waited_on_and_writes_stay_here() {
        let dir = fresh_dir("dir");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let planted = dir.join("planted");
        std::os::unix::fs::symlink(&victim, &planted).expect("link");
        let e = open_regular(&planted, OpenOptions::new().read(true)).expect_err("a link");
        assert!(refused(&e), "{e}");
        // Written under the link's name: the link goes, the victim stays.
        use std::io::Write;
        create_fresh(&planted, 0o600).and_then(|mut f| f.write_all(b"ours")).expect("created");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert_eq!(std::fs::read(&planted).expect("ours"), b"ours");
        let fifo = fifo_in(&dir);
        let e = open_regular(&fifo, OpenOptions::new().read(true)).expect_err("a FIFO");
        assert!(refused(&e), "{e}");
        // No reader: a write open fails at once rather than wait for one.
        assert!(open_regular(&fifo, OpenOptions::new().write(true)).is_err());
        // A file's tail: read through a link (a store's layout may use them), of a regular file
        // of the length asked only; a FIFO, a device or a directory is not opened or waited on.
        assert_eq!(regular_file_tail(&victim, 8, 3).expect("read"), Some(b"ous".to_vec()));
        std::os::unix::fs::symlink(&victim, dir.join("to-victim")).expect("link");
        assert_eq!(regular_file_tail(&dir.join("to-victim"), 8, 8).expect("read"), Some(b"precious".to_vec()));
        assert_eq!(regular_file_tail(&victim, 9, 3).expect("asked"), None, "another length");
        assert_eq!(regular_file_tail(&victim, 8, 9).expect("asked"), None, "more than the file");
        assert_eq!(regular_file_tail(&dir.join("none"), 8, 3).expect("asked"), None);
        std::os::unix::fs::symlink(&fifo, dir.join("to-fifo")).expect("link");
        std::os::unix::fs::symlink("/dev/zero", dir.join("to-zero")).expect("link");
        std::os::unix::fs::symlink("/proc/self/status", dir.join("to-proc")).expect("link");
        for pseudo in [dir.join("to-proc"), "/sys/kernel/mm/transparent_hugepage/enabled".into()] {
            if std::fs::metadata(&pseudo).is_ok_and(|m| m.is_file()) {
                let e = open_followed_regular(&pseudo).expect_err("a pseudo filesystem's file");
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", pseudo.display());
                assert_eq!(regular_file_len(&pseudo).expect("asked"), None, "{}: no length", pseudo.display());
            }
        }
        for not_a_file in [fifo.clone(), dir.join("to-fifo"), dir.join("to-zero"), dir.clone(), dir.join("to-proc")] {
            assert_eq!(regular_file_tail(&not_a_file, 0, 0).ok().flatten(), None, "{}", not_a_file.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_name_swapped_between_a_file_and_a_link_to_a_fifo_never_has_the_fifo_opened() {
        // Review AQ1: the check before the open and the open were apart, and a name switched
        // between a file and a link to a FIFO had the FIFO opened hundreds of times.
        let dir = fresh_dir("swap");
        let fifo = fifo_in(&dir);
        // A writer whose open returns only once a reader opens the FIFO.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opened_early = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (fifo, done, opened_early) = (fifo.clone(), done.clone(), opened_early.clone());
            std::thread::spawn(move || {
                let _w = OpenOptions::new().write(true).open(&fifo);
                opened_early.store(!done.load(std::sync::atomic::Ordering::SeqCst), std::sync::atomic::Ordering::SeqCst);
            })
        };
        let (file, link, name) = (dir.join("file"), dir.join("link"), dir.join("name"));
        std::fs::write(&file, b"0123456789").expect("file");
        std::os::unix::fs::symlink(&fifo, &link).expect("link");
        let swapper = {
            let (file, link, name, done) = (file.clone(), link.clone(), name.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = std::fs::hard_link(&file, dir_tmp(&name)).and_then(|()| std::fs::rename(dir_tmp(&name), &name));
                    let _ = std::os::unix::fs::symlink(std::fs::read_link(&link).unwrap_or_default(), dir_tmp(&name))
                        .and_then(|()| std::fs::rename(dir_tmp(&name), &name));
                }
            })
        };
        let mut read = 0;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while std::time::Instant::now() < until {
            if regular_file_tail(&name, 10, 4).ok().flatten().is_some() {
                read += 1;
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        swapper.join().expect("swapper");
        // Let the writer go, if it is still waiting.
        let _r = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
        writer.join().expect("writer");
        assert!(!opened_early.load(std::sync::atomic::Ordering::SeqCst), "the FIFO was opened ({read} tails read)");
        assert!(read > 0, "the file was read");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An empty directory of this process's for the test `tag`.
    fn fresh_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("loom-untrusted-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    /// A FIFO made in `dir`.
    fn fifo_in(dir: &Path) -> std::path::PathBuf {
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        fifo
    }

    fn dir_tmp(name: &Path) -> std::path::PathBuf {
        name.with_extension("swap")
    }
}
