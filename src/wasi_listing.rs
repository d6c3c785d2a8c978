//! A component's directory listings, counted against its memory cap.
//!
//! wasmtime-wasi reads a `read-directory` listing whole when the stream is made and keeps it in
//! the host until the guest drops the stream: several MB for a directory of many long names, up
//! to the 1024 files an instance may hold open (review O), none of it seen by `maxMemoryMB`. So
//! the stream is ours: the listing wasmtime-wasi reads is taken over entry by entry, its size
//! (64 bytes per entry and its name) counted by the instance's `MemoryLimiter` until the guest
//! drops the stream, and a listing that does not fit is answered `insufficient-memory`. (The
//! listing is still read whole for a moment before it is counted: a directory's size is not the
//! guest's to choose alone, and nothing of it is kept.)

use std::collections::VecDeque;

use wasmtime::component::{LinkerInstance, Resource, ResourceType};
use wasmtime::StoreContextMut;
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::bindings::filesystem::types::{Descriptor, DirectoryEntry, ErrorCode, HostDescriptor};
use wasmtime_wasi::p2::FsResult;

use crate::host::HostState;
use crate::wasi_open::answer;

/// What one entry costs the host besides its name.
const ENTRY_BYTES: u64 = 64;

/// A directory listing a guest holds (the resource behind `directory-entry-stream`).
pub struct Listing {
    entries: VecDeque<FsResult<DirectoryEntry>>,
    /// What the limiter counts for it, given back when the guest drops it.
    bytes: u64,
}

/// Puts listings of our own in place of wasmtime-wasi's in `types` (wasi:filesystem/types).
pub fn shadow(types: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    types.resource("directory-entry-stream", ResourceType::host::<Listing>(), |mut store: StoreContextMut<'_, HostState>, rep| {
        let listing = store.data_mut().filesystem().table.delete(Resource::<Listing>::new_own(rep))?;
        store.data_mut().limiter.release_host(listing.bytes);
        Ok(())
    })?;
    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store: StoreContextMut<'_, HostState>, (dir,): (Resource<Descriptor>,)| {
            Box::new(async move {
                // Held until the guest drops it, as an open file is.
                let mut view = store.data_mut().filesystem();
                if let Err(code) = crate::wasi_open::admit_p2(&mut view) {
                    return Ok((Err(code),));
                }
                let read = match HostDescriptor::read_directory(&mut view, dir).await {
                    Ok(stream) => view.table.delete(stream)?,
                    Err(e) => return answer(&mut view, Err(e)),
                };
                let mut bytes = 0u64;
                let entries: VecDeque<_> = read
                    .into_iter()
                    .inspect(|e| bytes += ENTRY_BYTES + e.as_ref().map_or(0, |e| e.name.len() as u64))
                    .collect();
                if store.data_mut().limiter.reserve_host(bytes).is_err() {
                    return Ok((Err(ErrorCode::InsufficientMemory),));
                }
                let stream = store.data_mut().filesystem().table.push(Listing { entries, bytes })?;
                Ok((Ok(stream),))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]directory-entry-stream.read-directory-entry",
        |mut store: StoreContextMut<'_, HostState>, (stream,): (Resource<Listing>,)| {
            Box::new(async move {
                let mut view = store.data_mut().filesystem();
                let next = view.table.get_mut(&stream)?.entries.pop_front().transpose();
                answer(&mut view, next)
            })
        },
    )?;
    Ok(())
}
