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
//! itself) with `ENOTSUP` / `unsupported`. A path that does not exist goes on (an open may create
//! a regular file); any other failure of the look is the call's answer (preview 1 answers
//! `EOVERFLOW` for a file time past 2554, which its stat cannot express).
//!
//! The look and the open are one step for guests: they hold `PATHS` for reading, and the WASI
//! functions that can put a FIFO under another name (rename, link, symlink) hold it for writing,
//! so a guest renaming a FIFO back and forth cannot slip it under a name another call has just
//! looked at. Another process doing so at that very instant still can.

use tokio::sync::RwLock;
use wasmtime::component::{Linker as ComponentLinker, LinkerInstance, Resource};
use wasmtime::{AsContextMut, Caller, Extern, Linker, StoreContextMut};
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p1::types::{Errno, Fd, Filetype, Lookupflags, Oflags};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, Host as _, HostDescriptor, NewTimestamp, OpenFlags, PathFlags,
};
use wasmtime_wasi::WasiCtxBuilder;
use wiggle::{GuestMemory, GuestPtr};

use crate::host::HostState;

/// Held for reading from a path's look to its open, for writing by renames, links and symlinks.
static PATHS: RwLock<()> = RwLock::const_new(());

/// Whether a path of this type may be opened.
fn openable(t: Filetype) -> bool {
    matches!(t, Filetype::RegularFile | Filetype::Directory | Filetype::SymbolicLink)
}

fn openable_p2(t: DescriptorType) -> bool {
    matches!(t, DescriptorType::RegularFile | DescriptorType::Directory | DescriptorType::SymbolicLink)
}

/// The guest's memory and WASI context, with the store's host-call fuel set (as wasmtime-wasi's
/// own wrappers do before each call).
fn parts<'a>(caller: &'a mut Caller<'_, HostState>) -> wasmtime::Result<(&'a mut WasiP1Ctx, GuestMemory<'a>)> {
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
async fn look_p1(
    ctx: &mut WasiP1Ctx,
    mem: &mut GuestMemory<'_>,
    fd: i32,
    flags: i32,
    path: i32,
    len: i32,
    exclusive: bool,
) -> wasmtime::Result<Option<i32>> {
    let target = GuestPtr::<str>::new((path as u32, len as u32));
    let flags = Lookupflags::from_bits_truncate(flags as u32);
    match ctx.path_filestat_get(mem, Fd::from(fd as u32), flags, target).await {
        // Created exclusively: what is there answers EEXIST, as the open would.
        Ok(_) if exclusive => Ok(Some(Errno::Exist as i32)),
        Ok(stat) if openable(stat.filetype) => Ok(None),
        Ok(_) => Ok(Some(Errno::Notsup as i32)),
        Err(e) => match e.downcast() {
            Ok(Errno::Noent) => Ok(None),
            Ok(errno) => Ok(Some(errno as i32)),
            Err(trap) => Err(trap),
        },
    }
}

/// Shadows preview 1's functions that open or rename paths in a core module's `linker` (after
/// `p1::add_to_linker_async`).
pub fn shadow_p1(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = shadow_p1_functions(linker);
    linker.allow_shadowing(false);
    r
}

const P1: &str = "wasi_snapshot_preview1";

type OpenArgs = (i32, i32, i32, i32, i32, i64, i64, i32, i32);

fn shadow_p1_functions(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(P1, "path_open", |mut caller: Caller<'_, HostState>, args: OpenArgs| {
        Box::new(async move {
            let (fd, dirflags, path, len, oflags, base, inheriting, fdflags, opened) = args;
            let (ctx, mut mem) = parts(&mut caller)?;
            let _paths = PATHS.read().await;
            let exclusive = Oflags::from_bits_truncate(oflags as u16).contains(Oflags::CREAT | Oflags::EXCL);
            if let Some(errno) = look_p1(ctx, &mut mem, fd, dirflags, path, len, exclusive).await? {
                return Ok(errno);
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
                let (ctx, mut mem) = parts(&mut caller)?;
                let _paths = PATHS.read().await;
                if let Some(errno) = look_p1(ctx, &mut mem, fd, flags, path, len, false).await? {
                    return Ok(errno);
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
                let _paths = PATHS.write().await;
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
                let _paths = PATHS.write().await;
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
                let _paths = PATHS.write().await;
                let (ctx, mut mem) = parts(&mut caller)?;
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
async fn look_p2(
    view: &mut View<'_>,
    dir: &Resource<Descriptor>,
    flags: PathFlags,
    path: &str,
    exclusive: bool,
) -> wasmtime::Result<Result<(), ErrorCode>> {
    match HostDescriptor::stat_at(view, Resource::new_borrow(dir.rep()), flags, path.to_string()).await {
        Ok(_) if exclusive => Ok(Err(ErrorCode::Exist)),
        Ok(stat) if openable_p2(stat.type_) => Ok(Ok(())),
        Ok(_) => Ok(Err(ErrorCode::Unsupported)),
        Err(e) => match view.convert_error_code(e)? {
            ErrorCode::NoEntry => Ok(Ok(())),
            code => Ok(Err(code)),
        },
    }
}

/// A preview 2 result, its error converted as wasmtime-wasi's own bindings do.
fn answer<T>(view: &mut View<'_>, r: wasmtime_wasi::p2::FsResult<T>) -> P2Result<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(view.convert_error_code(e)?),)),
    }
}

/// Shadows preview 2's functions that open or rename paths in a component `linker` (after
/// `p2::add_to_linker_async`).
pub fn shadow_p2(linker: &mut ComponentLinker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = linker.instance(P2_TYPES).and_then(|mut types| shadow_p2_functions(&mut types));
    linker.allow_shadowing(false);
    r
}

fn shadow_p2_functions(types: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, HostState>,
         (dir, path_flags, path, oflags, flags): (Resource<Descriptor>, PathFlags, String, OpenFlags, DescriptorFlags)| {
            Box::new(async move {
                let mut view = store.data_mut().filesystem();
                let _paths = PATHS.read().await;
                let exclusive = oflags.contains(OpenFlags::CREATE | OpenFlags::EXCLUSIVE);
                if let Err(code) = look_p2(&mut view, &dir, path_flags, &path, exclusive).await? {
                    return Ok((Err(code),));
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
                let mut view = store.data_mut().filesystem();
                let _paths = PATHS.read().await;
                if let Err(code) = look_p2(&mut view, &dir, path_flags, &path, false).await? {
                    return Ok((Err(code),));
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
                let mut view = store.data_mut().filesystem();
                let _paths = PATHS.write().await;
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
                let mut view = store.data_mut().filesystem();
                let _paths = PATHS.write().await;
                let r = HostDescriptor::link_at(&mut view, dir, flags, old, new_dir, new).await;
                answer(&mut view, r)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, HostState>, (dir, old, new): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                let mut view = store.data_mut().filesystem();
                let _paths = PATHS.write().await;
                let r = HostDescriptor::symlink_at(&mut view, dir, old, new).await;
                answer(&mut view, r)
            })
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::capabilities::{Capabilities, FilesystemConfig};
    use crate::executor::{CallOptions, Executor, ExecutorOptions};
    use crate::limits::LimitOverrides;
    use crate::options::Definition;
    use crate::store::MemorySource;
    use crate::test_guests as g;

    /// A component granted a directory with a FIFO in it: opening the FIFO, or setting its times
    /// through a followed link, is `unsupported` at once (before, the call ran to its deadline and
    /// left a thread blocked in `open()`).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_component_cannot_open_a_fifo() {
        let dir = std::env::temp_dir().join(format!("loom-wasi-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("hello.txt"), "hello").expect("file");
        let fifo = std::ffi::CString::new(dir.join("pipe").into_os_string().into_encoded_bytes()).expect("path");
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        std::os::unix::fs::symlink("pipe", dir.join("pipe-link")).expect("link");

        let source = Arc::new(MemorySource::new());
        source.put("fs.wasm", g::fs_open_component());
        let options = ExecutorOptions {
            filesystem: Some(FilesystemConfig { host_dir: dir.clone(), guest_dir: "/data".into(), writable: true }),
            ..Default::default()
        };
        let ex = Arc::new(Executor::new(source, options).expect("executor"));
        let def = Definition {
            name: "fs".into(),
            version: "1".into(),
            wasm_blob_path: "fs.wasm".into(),
            capabilities: Capabilities { filesystem: true, ..Default::default() },
            limits: LimitOverrides { max_execution_ms: Some(2000.0), ..Default::default() },
            ..Default::default()
        };
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
