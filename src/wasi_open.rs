//! Opening a path through WASI: only regular files and directories.
//!
//! wasmtime-wasi opens what a guest names with a blocking `open()` on a thread of its own. A
//! FIFO without a writer (or reader), or some devices, block that `open()` until someone comes,
//! possibly never: the call ends at its deadline, but its thread stays blocked for good, one more
//! per call, in the runtime's blocking pool that compiles and file I/O share. A guest cannot make
//! a FIFO, but whoever shares the granted directory can leave one there. So every WASI function
//! that opens a path (preview 1 `path_open` and `path_filestat_set_times`, which opens the file
//! to set its times when it follows links; preview 2 `open-at` and `set-times-at`, for
//! components) looks at the path first (a `stat`, which does not block on them) and refuses
//! anything but a regular file, a directory or a link not followed (whose open then fails by
//! itself) with `ENOTSUP` / `unsupported`. A look that fails lets the open go on and give its own
//! answer (a path that does not exist may be created as a regular file), except preview 1's
//! `EOVERFLOW` for a file time past 2554, which its stat cannot express: that is the answer. An
//! exclusive create (`O_CREAT|O_EXCL`) never opens what is there and is not looked at, nor are
//! times set without following links (no open then).
//!
//! The look and the open are one step for guests: per granted directory, they hold its lock
//! (`PathLock`) for reading, and the WASI functions that can put a FIFO under another name
//! (rename, link, symlink) take for writing the locks of every granted directory overlapping theirs
//! (`path_locks`), so a guest renaming a FIFO back and forth cannot slip it under a name another
//! call has just looked at. Another process doing so at that very instant still can. A writer waits without queueing ahead of readers (it tries every
//! millisecond): an open that blocks anyway (a lease another process holds, a network filesystem)
//! delays only renames in that directory, until its call ends.

use tokio::sync::{OwnedRwLockWriteGuard, RwLockReadGuard};
use wasmtime::component::{Linker as ComponentLinker, LinkerInstance, Resource};
use wasmtime::{AsContextMut, Caller, Extern, Linker, StoreContextMut};
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p1::types::{Errno, Fd, Filetype, Lookupflags, Oflags};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, Host as _, HostDescriptor, NewTimestamp, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{WasiCtxBuilder, WasiView as _};
use wiggle::{GuestMemory, GuestPtr};

use crate::host::{HostState, WASI_P1 as P1};
use crate::open_files::{self, Refusal};

pub use crate::path_locks::{path_lock, PathLock};

/// The read side, for a look and its open (nothing without a granted directory: no path opens).
async fn read(lock: &Option<PathLock>) -> Option<RwLockReadGuard<'_, ()>> {
    match lock {
        Some(lock) => Some(lock.read().await),
        None => None,
    }
}

/// The write side, of every granted directory overlapping this one (`path_locks`).
async fn write(lock: &Option<PathLock>) -> Option<Vec<OwnedRwLockWriteGuard<()>>> {
    match lock {
        Some(lock) => Some(lock.write().await),
        None => None,
    }
}

/// Whether a guest's symlink target names a parent directory (`..`). wasmtime-wasi refuses
/// absolute targets; relative ones that climbed out of the grant were made, and whatever on the
/// host read the granted directory later followed them (review BB3: `up -> ../secret` read a file
/// beside the grant). Without `..`, a link the guest makes leads down from where it is, through
/// links that do the same, so never out.
fn climbs(target: &str) -> bool {
    target.split('/').any(|part| part == "..")
}

/// Whether a path of this type may be opened.
fn openable(t: Filetype) -> bool {
    matches!(t, Filetype::RegularFile | Filetype::Directory | Filetype::SymbolicLink)
}

fn openable_p2(t: DescriptorType) -> bool {
    matches!(t, DescriptorType::RegularFile | DescriptorType::Directory | DescriptorType::SymbolicLink)
}

/// The guest's memory and WASI context, with the store's host-call fuel set (as wasmtime-wasi's
/// own wrappers do before each call).
pub(crate) fn parts<'a>(caller: &'a mut Caller<'_, HostState>) -> wasmtime::Result<(&'a mut WasiP1Ctx, GuestMemory<'a>)> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("missing required memory export");
    };
    let fuel = caller.as_context_mut().hostcall_fuel();
    let (data, state) = memory.data_and_store_mut(caller);
    let ctx = &mut **state.wasi.get_or_insert_with(|| Box::new(WasiCtxBuilder::new().build_p1()));
    ctx.set_hostcall_fuel(fuel);
    Ok((ctx, GuestMemory::Unshared(data)))
}

/// The look (preview 1): `None` to go on to the open, `Some(errno)` to answer with; a trap (a
/// path outside the guest's memory) is the call's end, as the open would make it.
async fn look_p1(ctx: &mut WasiP1Ctx, mem: &mut GuestMemory<'_>, fd: i32, flags: i32, path: i32, len: i32) -> wasmtime::Result<Option<i32>> {
    let target = GuestPtr::<str>::new((path as u32, len as u32));
    let flags = Lookupflags::from_bits_truncate(flags as u32);
    match ctx.path_filestat_get(mem, Fd::from(fd as u32), flags, target).await {
        Ok(stat) if openable(stat.filetype) => Ok(None),
        Ok(_) => Ok(Some(Errno::Notsup as i32)),
        Err(e) => match e.downcast() {
            // Something is there, but its times do not fit preview 1's stat: its type is unknown.
            Ok(Errno::Overflow) => Ok(Some(Errno::Overflow as i32)),
            // The open meets the same failure (a path that does not exist may be created).
            Ok(_) => Ok(None),
            Err(trap) => Err(trap),
        },
    }
}

/// Refuses an open past the descriptors its instance or the process may hold (`open_files`) with
/// what the OS would answer, preview 1 (its table holds only WASI's files, directories and stdio).
fn admit_p1(ctx: &mut WasiP1Ctx) -> Option<i32> {
    match open_files::admit(ctx.ctx().table.iter_mut().count()) {
        Ok(()) => None,
        Err(Refusal::Instance) => Some(Errno::Mfile as i32),
        Err(Refusal::Process) => Some(Errno::Nfile as i32),
    }
}

/// The same, preview 2: descriptors, directory streams and every stream count (a file's stream
/// keeps the file open after its descriptor is dropped: counting descriptors alone, one actor held
/// 9,990 files); HTTP resources do not. The answer is what an OS `EMFILE` becomes (`io`).
pub(crate) fn admit_p2(view: &mut View<'_>) -> Result<(), ErrorCode> {
    let held = view
        .table
        .iter_mut()
        .filter(|e| e.is::<Descriptor>() || e.is::<crate::wasi_listing::Listing>() || e.is::<DynInputStream>() || e.is::<DynOutputStream>())
        .count();
    open_files::admit(held).map_err(|_| ErrorCode::Io)
}

/// Shadows preview 1's functions that open or rename paths in a core module's `linker` (after
/// `p1::add_to_linker_async`).
pub fn shadow_p1(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = shadow_p1_functions(linker);
    linker.allow_shadowing(false);
    r
}

type OpenArgs = (i32, i32, i32, i32, i32, i64, i64, i32, i32);

fn shadow_p1_functions(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(P1, "path_open", |mut caller: Caller<'_, HostState>, args: OpenArgs| {
        Box::new(async move {
            let (fd, dirflags, path, len, oflags, base, inheriting, fdflags, opened) = args;
            let exclusive = Oflags::from_bits_truncate(oflags as u16).contains(Oflags::CREAT | Oflags::EXCL);
            let lock = caller.data().paths.clone().filter(|_| !exclusive);
            let _paths = read(&lock).await;
            if let Some(errno) = admit_p1(parts(&mut caller)?.0) {
                return Ok(errno);
            }
            if !exclusive {
                let (ctx, mut mem) = parts(&mut caller)?;
                if let Some(errno) = look_p1(ctx, &mut mem, fd, dirflags, path, len).await? {
                    return Ok(errno);
                }
            }
            let (ctx, mut mem) = parts(&mut caller)?;
            p1::path_open(ctx, &mut mem, fd, dirflags, path, len, oflags, base, inheriting, fdflags, opened).await
        })
    })?;
    linker.func_wrap_async(
        P1,
        "path_filestat_set_times",
        |mut caller: Caller<'_, HostState>, (fd, flags, path, len, atim, mtim, which): (i32, i32, i32, i32, i64, i64, i32)| {
            Box::new(async move {
                // Only a followed link's target is opened to set its times.
                let follow = Lookupflags::from_bits_truncate(flags as u32).contains(Lookupflags::SYMLINK_FOLLOW);
                let lock = caller.data().paths.clone().filter(|_| follow);
                let _paths = read(&lock).await;
                if follow {
                    let (ctx, mut mem) = parts(&mut caller)?;
                    if let Some(errno) = look_p1(ctx, &mut mem, fd, flags, path, len).await? {
                        return Ok(errno);
                    }
                }
                let (ctx, mut mem) = parts(&mut caller)?;
                p1::path_filestat_set_times(ctx, &mut mem, fd, flags, path, len, atim, mtim, which).await
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "path_rename",
        |mut caller: Caller<'_, HostState>, (fd, old, old_len, new_fd, new, new_len): (i32, i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let lock = caller.data().paths.clone();
                let _paths = write(&lock).await;
                let (ctx, mut mem) = parts(&mut caller)?;
                p1::path_rename(ctx, &mut mem, fd, old, old_len, new_fd, new, new_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "path_link",
        |mut caller: Caller<'_, HostState>,
         (fd, flags, old, old_len, new_fd, new, new_len): (i32, i32, i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let lock = caller.data().paths.clone();
                let _paths = write(&lock).await;
                let (ctx, mut mem) = parts(&mut caller)?;
                p1::path_link(ctx, &mut mem, fd, flags, old, old_len, new_fd, new, new_len).await
            })
        },
    )?;
    linker.func_wrap_async(
        P1,
        "path_symlink",
        |mut caller: Caller<'_, HostState>, (old, old_len, fd, new, new_len): (i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let lock = caller.data().paths.clone();
                let _paths = write(&lock).await;
                let (ctx, mut mem) = parts(&mut caller)?;
                let target = mem.as_cow_str(GuestPtr::<str>::new((old as u32, old_len as u32)));
                if target.is_ok_and(|t| climbs(&t)) {
                    return Ok(Errno::Perm as i32);
                }
                p1::path_symlink(ctx, &mut mem, old, old_len, fd, new, new_len).await
            })
        },
    )?;
    Ok(())
}

/// The interface whose functions are shadowed (the version wasmtime-wasi links; a component
/// importing an older 0.2 version is served by it).
const P2_TYPES: &str = "wasi:filesystem/types@0.2.12";

type View<'a> = wasmtime_wasi::filesystem::WasiFilesystemCtxView<'a>;
type P2Result<T> = wasmtime::Result<(Result<T, ErrorCode>,)>;

/// The look (preview 2): `Err(code)` to answer with, `Ok(())` to go on.
/// (A failed look lets the open give its own answer; this stat has no trouble with file times.)
async fn look_p2(view: &mut View<'_>, dir: &Resource<Descriptor>, flags: PathFlags, path: &str) -> Result<(), ErrorCode> {
    match HostDescriptor::stat_at(view, Resource::new_borrow(dir.rep()), flags, path.to_string()).await {
        Ok(stat) if !openable_p2(stat.type_) => Err(ErrorCode::Unsupported),
        _ => Ok(()),
    }
}

/// A preview 2 result, its error converted as wasmtime-wasi's own bindings do.
pub(crate) fn answer<T>(view: &mut View<'_>, r: wasmtime_wasi::p2::FsResult<T>) -> P2Result<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(view.convert_error_code(e)?),)),
    }
}

/// Shadows preview 2's functions that open or rename paths in a component `linker` (after
/// `p2::add_to_linker_async`).
pub fn shadow_p2(linker: &mut ComponentLinker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = linker.instance(P2_TYPES).and_then(|mut types| {
        shadow_p2_functions(&mut types)?;
        crate::wasi_listing::shadow(&mut types)?;
        crate::wasi_file_streams::shadow(&mut types)
    });
    linker.allow_shadowing(false);
    r
}

fn shadow_p2_functions(types: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (dir, path_flags, path, oflags, flags): (Resource<Descriptor>, PathFlags, String, OpenFlags, DescriptorFlags)| {
            Box::new(async move {
                let exclusive = oflags.contains(OpenFlags::CREATE | OpenFlags::EXCLUSIVE);
                let lock = store.data().paths.clone().filter(|_| !exclusive);
                let _paths = read(&lock).await;
                let mut view = store.data_mut().filesystem();
                if let Err(code) = admit_p2(&mut view) {
                    return Ok((Err(code),));
                }
                if !exclusive {
                    if let Err(code) = look_p2(&mut view, &dir, path_flags, &path).await {
                        return Ok((Err(code),));
                    }
                }
                let r = HostDescriptor::open_at(&mut view, dir, path_flags, path, oflags, flags).await;
                answer(&mut view, r)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-times-at",
        |mut store: StoreContextMut<'_, HostState>,
         (dir, path_flags, path, atim, mtim): (Resource<Descriptor>, PathFlags, String, NewTimestamp, NewTimestamp)| {
            Box::new(async move {
                // Only a followed link's target is opened to set its times.
                let follow = path_flags.contains(PathFlags::SYMLINK_FOLLOW);
                let lock = store.data().paths.clone().filter(|_| follow);
                let _paths = read(&lock).await;
                let mut view = store.data_mut().filesystem();
                if follow {
                    if let Err(code) = look_p2(&mut view, &dir, path_flags, &path).await {
                        return Ok((Err(code),));
                    }
                }
                let r = HostDescriptor::set_times_at(&mut view, dir, path_flags, path, atim, mtim).await;
                answer(&mut view, r)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store: StoreContextMut<'_, HostState>,
         (dir, old, new_dir, new): (Resource<Descriptor>, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                let lock = store.data().paths.clone();
                let _paths = write(&lock).await;
                let mut view = store.data_mut().filesystem();
                let r = HostDescriptor::rename_at(&mut view, dir, old, new_dir, new).await;
                answer(&mut view, r)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, HostState>,
         (dir, flags, old, new_dir, new): (Resource<Descriptor>, PathFlags, String, Resource<Descriptor>, String)| {
            Box::new(async move {
                let lock = store.data().paths.clone();
                let _paths = write(&lock).await;
                let mut view = store.data_mut().filesystem();
                let r = HostDescriptor::link_at(&mut view, dir, flags, old, new_dir, new).await;
                answer(&mut view, r)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, HostState>, (dir, old, new): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                if climbs(&old) {
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
                let lock = store.data().paths.clone();
                let _paths = write(&lock).await;
                let mut view = store.data_mut().filesystem();
                let r = HostDescriptor::symlink_at(&mut view, dir, old, new).await;
                answer(&mut view, r)
            })
        },
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::capabilities::{Capabilities, FilesystemConfig};
    use crate::executor::{CallOptions, Executor, ExecutorOptions};
    use crate::limits::LimitOverrides;
    use crate::options::Definition;
    use crate::store::MemorySource;
    use crate::test_guests as g;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_component_holds_at_most_1024_files_through_streams_too() {
        // Review L: a component kept a stream of each file it opened and dropped the descriptor;
        // only descriptors were counted, and one actor held 9,990 host files.
        raise_open_file_limit();
        let dir = scratch_dir("streams", "f", "x");
        let (ex, def) = fs_executor(&dir, g::fs_stream_component(), false);
        let out = ex.execute(&def, "3000".into(), CallOptions::default()).await.expect("runs").output;
        let n: u64 = out.parse().expect("a number");
        // Stopped by the instance's bound with `io`, short of 1024 (its stdio and preopen count).
        assert_eq!(n % 100, 13, "{out}");
        assert!((1000..1024).contains(&(n / 100)), "{out}");
        // A call with fewer is not refused.
        assert_eq!(ex.execute(&def, "500".into(), CallOptions::default()).await.expect("runs").output, "50000");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_component_s_directory_listings_count_against_its_memory_cap_until_dropped() {
        // Review O: each listing was read whole into host memory and kept until dropped, outside
        // maxMemoryMB (~5.5 MB per listing of 20,000 long names, up to 1024 listings).
        let dir = scratch_dir("listings", "f", "x");
        for i in 0..2000 {
            std::fs::write(dir.join(format!("{i:0>200}")), "").expect("file");
        }
        let (ex, mut def) = fs_executor(&dir, g::fs_listing_component(), false);
        def.limits.max_memory_mb = Some(16.0);
        // Reading 2,000,000 entries takes ~6 s alone, mostly in the kernel, and took over the 30 s
        // default in a CI run with builds beside it: this test is about memory, not time.
        def.limits.max_execution_ms = Some(300_000.0);
        let run = |input: &str| {
            let (ex, def, input) = (ex.clone(), def.clone(), input.to_string());
            async move { ex.execute(&def, input.into(), CallOptions::default()).await.expect("runs").output.parse::<u64>().expect("a number") }
        };
        // Kept: ~530 KB each (2001 entries, 64 bytes and a 200-byte name each) fill the 16 MiB cap
        // (less the guest's 1 MiB) after 28 or so, and the next is `insufficient-memory`.
        let kept = run("1000").await;
        assert_eq!(kept % 100, 22, "{kept}");
        assert_eq!(kept / 100 % 10_000, 2001, "the listing holds the directory: {kept}");
        assert!((20..=30).contains(&(kept / 1_000_000)), "{kept}");
        // Dropped as they are read: given back each time, none refused.
        assert_eq!(run("d1000").await, 1000 * 1_000_000 + 2001 * 100);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_component_actor_keeps_the_capabilities_of_its_first_call() {
        // Review O: a component actor kept its preopen's handle after the definition dropped
        // `filesystem`, and read and wrote the directory through it.
        let dir = scratch_dir("revoke", "hello.txt", "hello");
        let (ex, granted) = fs_executor(&dir, g::fs_open_component(), false);
        let revoked = Definition { capabilities: Capabilities::default(), ..granted.clone() };
        let actor = || CallOptions { actor_id: Some("a".into()), ..Default::default() };
        let out = |r: Result<crate::instance::CallOutput, crate::error::ExecError>| r.map(|o| o.output).map_err(|e| e.code());
        assert_eq!(out(ex.execute(&granted, "\"hello.txt\"".into(), actor()).await), Ok(r#"{"opened":true}"#.to_string()));
        assert_eq!(out(ex.execute(&revoked, "\"hello.txt\"".into(), actor()).await), Err("INVALID_ARGUMENT"));
        // Under the grants it was made with, it goes on.
        assert_eq!(out(ex.execute(&granted, "\"hello.txt\"".into(), actor()).await), Ok(r#"{"opened":true}"#.to_string()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh directory for a test, holding `file` with `text`.
    pub(crate) fn scratch_dir(tag: &str, file: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("loom-wasi-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join(file), text).expect("file");
        dir
    }

    /// An executor granting `dir` to definitions that ask, and a definition of `component` that asks.
    pub(crate) fn fs_executor(dir: &std::path::Path, component: Vec<u8>, writable: bool) -> (Arc<Executor>, Definition) {
        let source = Arc::new(MemorySource::new());
        source.put("fs.wasm", component);
        let options = ExecutorOptions {
            filesystem: Some(FilesystemConfig { host_dir: dir.to_path_buf(), guest_dir: "/data".into(), writable }),
            ..Default::default()
        };
        let ex = Arc::new(Executor::new(source, options).expect("executor"));
        let def = Definition {
            name: "fs".into(),
            version: "1".into(),
            wasm_blob_path: "fs.wasm".into(),
            capabilities: Capabilities { filesystem: true, ..Default::default() },
            ..Default::default()
        };
        (ex, def)
    }

    /// The soft limit of open files up to the hard one (the test opens more than 1,024 at once).
    fn raise_open_file_limit() {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: plain system calls on a struct of ours.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max.min(65536);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }

    /// A component granted a directory with a FIFO in it: opening the FIFO, or setting its times
    /// through a followed link, is `unsupported` at once (before, the call ran to its deadline and
    /// left a thread blocked in `open()`).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_component_cannot_open_a_fifo() {
        let dir = scratch_dir("open", "hello.txt", "hello");
        let fifo = std::ffi::CString::new(dir.join("pipe").into_os_string().into_encoded_bytes()).expect("path");
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        std::os::unix::fs::symlink("pipe", dir.join("pipe-link")).expect("link");

        let (ex, def) = fs_executor(&dir, g::fs_open_component(), true);
        let def = Definition { limits: LimitOverrides { max_execution_ms: Some(2000.0), ..Default::default() }, ..def };
        let run = |input: &str| {
            let (ex, def, input) = (ex.clone(), def.clone(), input.to_string());
            async move { ex.execute(&def, input, CallOptions::default()).await.map(|o| o.output) }
        };
        assert_eq!(run("\"hello.txt\"").await, Ok(r#"{"opened":true}"#.to_string()));
        assert_eq!(run("\"missing\"").await, Ok(r#"{"error":20}"#.to_string()));
        assert_eq!(run("\"+hello.txt\"").await, Ok(r#"{"done":true}"#.to_string()));
        let started = Instant::now();
        for path in ["\"pipe\"", "\"pipe-link\"", "\"+pipe\"", "\"+pipe-link\""] {
            assert_eq!(run(path).await, Ok(r#"{"error":27}"#.to_string()), "{path}");
        }
        assert!(started.elapsed() < Duration::from_millis(1500), "refused at once: {:?}", started.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
