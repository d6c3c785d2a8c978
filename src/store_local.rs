//! A `file://` store's objects, read here rather than by object_store (see `read_local`).

use std::sync::Arc;

use bytes::Bytes;

use object_store::path::Path as ObjPath;

use super::{Bounds, ObjectSource};
use crate::error::ExecError;
use crate::untrusted_dir::{read_regular_admitted, LocalRead};

/// Sets its flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl ObjectSource {
    /// A `file://` object's bytes, read here rather than by object_store, whose read of a FIFO
    /// planted under the name blocks a thread for good (one per call, each past its
    /// `loadTimeoutMs`): the file is opened without blocking (links are followed, as
    /// object_store does) and must be a regular file.
    pub(super) async fn read_local<T: Send + 'static>(
        &self,
        path: &str,
        key: &ObjPath,
        bounds: Bounds,
        admit: impl FnOnce(u64) -> Option<T> + Send + 'static,
    ) -> Result<Option<(Bytes, T)>, ExecError> {
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reading = gone.clone();
        // Set however this future ends (done, timed out, dropped): the read stops at its next chunk.
        let _stop = StopOnDrop(gone);
        let max_bytes = bounds.max_bytes;
        match self.on_local_file(path, key, move |file| read_regular_admitted(&file, bounds.max_bytes, bounds.max_holes, &reading, admit)).await? {
            Ok((bytes, admitted)) => Ok(Some((Bytes::from(bytes), admitted))),
            Err(LocalRead::NotAdmitted) => Ok(None),
            Err(LocalRead::NotFound(message)) => Err(ExecError::BlobNotFound { path: path.to_string(), message }),
            Err(LocalRead::TooLarge(size)) => Err(ExecError::CompileLimit(format!(
                "the module's size in bytes is {size}, over the limit of {max_bytes} (maxModuleBytes)"
            ))),
            Err(LocalRead::Sparse(size)) => {
                Err(ExecError::CompileLimit(format!("the file of {size} bytes is mostly holes (a sparse file), not read")))
            }
            Err(LocalRead::Unavailable(message)) => Err(ExecError::BlobUnavailable { path: path.to_string(), message }),
        }
    }

    /// Runs `f` on a `file://` object's file off the runtime, under the store's timeout
    /// (`BLOB_UNAVAILABLE` past it, or when the file has no path).
    pub(super) async fn on_local_file<T: Send + 'static>(
        &self,
        path: &str,
        key: &ObjPath,
        f: impl FnOnce(std::path::PathBuf) -> T + Send + 'static,
    ) -> Result<T, ExecError> {
        let unavailable = |message: String| ExecError::BlobUnavailable { path: path.to_string(), message };
        let local = self.local.as_ref().ok_or_else(|| ExecError::internal("not a file:// store"))?;
        let file = local.path_to_filesystem(key).map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(self.timeout, tokio::task::spawn_blocking(move || f(file))).await {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!("timed out after {} ms", self.timeout.as_millis()))),
        }
    }
}
