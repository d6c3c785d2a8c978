//! Opening a path through WASI: only regular files and directories.
//!
//! wasmtime-wasi opens what a guest names with a blocking `open()` on a thread of its own. A
//! FIFO without a writer (or reader), or some devices, block that `open()` until someone comes,
//! possibly never: the call ends at its deadline, but its thread stays blocked for good, one more
//! per call. A guest cannot make a FIFO, but whoever shares the granted directory can leave one
//! there. So `path_open` (preview 1) and `open-at` (preview 2, components) look at the path first
//! (a `stat`, which does not block on them) and refuse anything that is not a regular file, a
//! directory or a link not followed (whose open then fails by itself) with `ENOTSUP`; a path
//! that does not exist yet goes on to the open (which may create a regular file). A FIFO placed
//! between the look and the open (by another process, at that instant) still blocks that thread.

use wasmtime::component::{Linker as ComponentLinker, Resource};
use wasmtime::{AsContextMut, Caller, Extern, Linker, StoreContextMut};
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, Host as _, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p1::types::{Errno, Fd, Filetype, Lookupflags};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};
use wasmtime_wasi::WasiCtxBuilder;
use wiggle::{GuestMemory, GuestPtr};

use crate::host::HostState;

/// Whether a path of this type may be opened.
fn openable(t: Filetype) -> bool {
    matches!(t, Filetype::RegularFile | Filetype::Directory | Filetype::SymbolicLink)
}

/// Shadows preview 1's `path_open` in a core module's `linker` (after `p1::add_to_linker_async`).
pub fn shadow_p1(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "path_open",
            |mut caller: Caller<'_, HostState>,
             (fd, dirflags, path, path_len, oflags, base, inheriting, fdflags, opened): (
                i32,
                i32,
                i32,
                i32,
                i32,
                i64,
                i64,
                i32,
                i32,
            )| {
                Box::new(async move {
                    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                        wasmtime::bail!("missing required memory export");
                    };
                    let fuel = caller.as_context_mut().hostcall_fuel();
                    let (data, state) = memory.data_and_store_mut(&mut caller);
                    let ctx = &mut **state.wasi.get_or_insert_with(|| Box::new(WasiCtxBuilder::new().build_p1()));
                    let mut mem = GuestMemory::Unshared(data);
                    // The look: a `stat` of what the open would reach. Any error is left to the open.
                    ctx.set_hostcall_fuel(fuel);
                    let target = GuestPtr::<str>::new((path as u32, path_len as u32));
                    let flags = Lookupflags::from_bits_truncate(dirflags as u32);
                    if let Ok(stat) = ctx.path_filestat_get(&mut mem, Fd::from(fd as u32), flags, target).await {
                        if !openable(stat.filetype) {
                            return Ok(Errno::Notsup as i32);
                        }
                    }
                    ctx.set_hostcall_fuel(fuel);
                    p1::path_open(
                        ctx, &mut mem, fd, dirflags, path, path_len, oflags, base, inheriting, fdflags, opened,
                    )
                    .await
                })
            },
        )
        .map(|_| ());
    linker.allow_shadowing(false);
    r
}

/// The interface whose `open-at` is shadowed (the version wasmtime-wasi links; a component
/// importing an older 0.2 version is served by it).
const P2_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Shadows preview 2's `[method]descriptor.open-at` in a component `linker` (after
/// `p2::add_to_linker_async`).
pub fn shadow_p2(linker: &mut ComponentLinker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = linker.instance(P2_TYPES).and_then(|mut types| {
        types.func_wrap_async(
            "[method]descriptor.open-at",
            |mut store: StoreContextMut<'_, HostState>,
             (dir, path_flags, path, oflags, flags): (
                Resource<Descriptor>,
                PathFlags,
                String,
                OpenFlags,
                DescriptorFlags,
            )| {
                Box::new(async move {
                    let mut view = store.data_mut().filesystem();
                    let look = Resource::new_borrow(dir.rep());
                    if let Ok(stat) = HostDescriptor::stat_at(&mut view, look, path_flags, path.clone()).await {
                        if !matches!(
                            stat.type_,
                            DescriptorType::RegularFile | DescriptorType::Directory | DescriptorType::SymbolicLink
                        ) {
                            return Ok((Err(ErrorCode::Unsupported),));
                        }
                    }
                    match HostDescriptor::open_at(&mut view, dir, path_flags, path, oflags, flags).await {
                        Ok(opened) => Ok((Ok(opened),)),
                        Err(e) => Ok((Err(view.convert_error_code(e)?),)),
                    }
                })
            },
        )
    });
    linker.allow_shadowing(false);
    r
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

    /// A component granted a directory with a FIFO in it: opening the FIFO is `unsupported` at
    /// once (before, the call ran to its deadline and left a thread blocked in `open()`).
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
            filesystem: Some(FilesystemConfig { host_dir: dir.clone(), guest_dir: "/data".into(), writable: false }),
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
        let started = Instant::now();
        for path in ["\"pipe\"", "\"pipe-link\""] {
            assert_eq!(run(path).await, Ok(r#"{"error":27}"#.to_string()), "{path}");
        }
        assert!(started.elapsed() < Duration::from_millis(1500), "refused at once: {:?}", started.elapsed());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
