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

use wasmtime::{AsContextMut, Caller, Extern, Linker};
use wasmtime_wasi::p1::types::{Errno, Fd, Filetype, Lookupflags};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as p1, WasiSnapshotPreview1};
use wasmtime_wasi::WasiCtxBuilder;
use wiggle::{GuestMemory, GuestPtr};

use crate::host::HostState;

/// Whether a path of this type may be opened.
fn openable(t: Filetype) -> bool {
    matches!(t, Filetype::RegularFile | Filetype::Directory | Filetype::SymbolicLink)
}

/// Shadows preview 1's `path_open` in `linker` (after `p1::add_to_linker_async`).
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
