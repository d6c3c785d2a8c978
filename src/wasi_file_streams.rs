//! A component's file input streams, counted against the budget of what it holds in the host.
//!
//! wasmtime-wasi's stream of a file (`read-via-stream`) reads ahead, on the guest's first read or
//! poll, into a buffer of 64 KiB (`MAX_READ_SIZE_ALLOC`, whatever the file's size) and keeps it
//! until the guest reads it all or drops the stream. Uncounted, a component actor making 1,000
//! streams of a 64 KiB file and reading each once held 63 MB in the host under a `maxMemoryMB`
//! of 1, and 40 such actors 2.5 GB under a `maxActorMemoryMB` of 64, none evicted (review CA2).
//! So each stream is charged `STREAM_BYTES` to the instance's host budget (`wasi_http::HeldBytes`:
//! its `maxMemoryMB`, and counted in `maxActorMemoryMB`) from when it is made until the guest
//! drops it (or its instance goes), and a stream past the budget is answered
//! `insufficient-memory`.

use bytes::Bytes;
use wasmtime::component::{LinkerInstance, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::bindings::filesystem::types::{Descriptor, ErrorCode, HostDescriptor};
use wasmtime_wasi::p2::{DynInputStream, InputStream, Pollable, StreamResult};

use crate::host::HostState;
use crate::wasi_http::{component_wasi, Charge};
use crate::wasi_open::answer;

/// What one file input stream is charged: its read-ahead buffer (`MAX_READ_SIZE_ALLOC`) and the
/// stream itself.
pub const STREAM_BYTES: u64 = (64 << 10) + 256;

/// A file input stream and its charge, given back when the guest drops it.
struct Charged {
    inner: DynInputStream,
    _charge: Charge,
}

#[async_trait::async_trait]
impl Pollable for Charged {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl InputStream for Charged {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.read(size)
    }
    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.inner.blocking_read(size).await
    }
    fn skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.skip(nelem)
    }
    async fn blocking_skip(&mut self, nelem: usize) -> StreamResult<usize> {
        self.inner.blocking_skip(nelem).await
    }
    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Puts a charged `read-via-stream` in place of wasmtime-wasi's in `types` (wasi:filesystem/types).
pub fn shadow(types: &mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()> {
    types.func_wrap(
        "[method]descriptor.read-via-stream",
        |mut store: StoreContextMut<'_, HostState>, (fd, offset): (Resource<Descriptor>, u64)| {
            let charge = {
                let HostState { component, limiter, .. } = store.data_mut();
                Charge::of(&component_wasi(component).held, limiter, STREAM_BYTES)
            };
            let Ok(charge) = charge else { return Ok((Err(ErrorCode::InsufficientMemory),)) };
            let mut view = store.data_mut().filesystem();
            match HostDescriptor::read_via_stream(&mut view, fd, offset) {
                Ok(stream) => {
                    let inner = view.table.delete(stream)?;
                    let charged: DynInputStream = Box::new(Charged { inner, _charge: charge });
                    Ok((Ok(view.table.push(charged)?),))
                }
                Err(e) => answer(&mut view, Err(e)),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::STREAM_BYTES;
    use crate::executor::CallOptions;
    use crate::test_guests as g;
    use crate::wasi_open::tests::{fs_executor, scratch_dir};

    #[tokio::test(flavor = "multi_thread")]
    async fn a_component_s_file_streams_count_against_its_memory_cap_until_dropped() {
        // Review CA2: each stream's read-ahead buffer (64 KiB) was held in the host outside
        // maxMemoryMB and maxActorMemoryMB: 40 actors of 1,000 streams held 2.5 GB under a
        // maxActorMemoryMB of 64.
        let dir = scratch_dir("file-streams", "f", "x");
        let (ex, mut def) = fs_executor(&dir, g::fs_stream_component(), false);
        def.limits.max_memory_mb = Some(4.0);
        let run = |actor: Option<&str>| {
            let (ex, def) = (ex.clone(), def.clone());
            let options = CallOptions { actor_id: actor.map(Into::into), ..Default::default() };
            async move { ex.execute(&def, "1000".into(), options).await.expect("runs").output.parse::<u64>().expect("a number") }
        };
        // The host budget (4 MiB) holds 63 streams; the next `read-via-stream` fails (99).
        let fits = (4 << 20) / STREAM_BYTES;
        assert_eq!(run(None).await, fits * 100 + 99);
        // Given back with the instance: the next call has the same room.
        assert_eq!(run(None).await, fits * 100 + 99);
        // An actor keeps its streams, and its memory counts them.
        assert_eq!(run(Some("a")).await, fits * 100 + 99);
        assert!(ex.actors_held_memory() >= fits * STREAM_BYTES, "held {}", ex.actors_held_memory());
        // Its next call has no room left for another.
        assert_eq!(run(Some("a")).await, 99);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
