//! A load in flight and its download, shared by the callers of one definition.
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::Loaded;
use crate::error::ExecError;
use crate::store::BlobSource;

/// A load in flight: its result, once there, and its download, which outlives a caller leading
/// the load that is dropped midway (the next caller leads on from the same download) and stops
/// when the last caller leaves. Review CB2: a leader cancelled by its signal dropped the download,
/// the next caller started another, and calls each cancelled after 500 ms on an 800 ms download
/// never loaded the module, with one download per call.
#[derive(Default)]
pub(super) struct InFlight {
    pub(super) cell: OnceCell<Loaded>,
    download: Mutex<Option<tokio::task::JoinHandle<Result<Vec<u8>, ExecError>>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(download) = self.download.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            download.abort();
        }
    }
}

/// A download's task held by the caller awaiting it, put back in its flight if that caller is
/// dropped before it ends.
struct Awaiting<'a> {
    slot: &'a Mutex<Option<tokio::task::JoinHandle<Result<Vec<u8>, ExecError>>>>,
    task: Option<tokio::task::JoinHandle<Result<Vec<u8>, ExecError>>>,
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
    }
}

impl InFlight {
    /// The module's bytes from `source`, within `timeout`: from the download this flight has under
    /// way, if a caller dropped midway left one, else from one started now.
    pub(super) async fn download(&self, source: &Arc<dyn BlobSource>, path: &str, max: u64, timeout: std::time::Duration) -> Result<Vec<u8>, ExecError> {
        let left = self.download.lock().unwrap_or_else(|p| p.into_inner()).take();
        let task = left.or_else(|| {
            let (source, path) = (source.clone(), path.to_string());
            crate::runtime::handle().map(|rt| rt.spawn(async move { fetch_within(&*source, &path, max, timeout).await }))
        });
        let Some(task) = task else { return fetch_within(&**source, path, max, timeout).await };
        let mut awaiting = Awaiting { slot: &self.download, task: Some(task) };
        let ended = match awaiting.task.as_mut() {
            Some(task) => task.await,
            None => return Err(ExecError::internal("a download without its task")),
        };
        awaiting.task = None;
        ended.unwrap_or_else(|e| Err(ExecError::internal(format!("the download's task ended: {e}"))))
    }
}

/// `source.fetch`, ended after `timeout` (`loadTimeoutMs`) as `BLOB_UNAVAILABLE`.
async fn fetch_within(source: &dyn BlobSource, path: &str, max: u64, timeout: std::time::Duration) -> Result<Vec<u8>, ExecError> {
    match tokio::time::timeout(timeout, source.fetch(path, max)).await {
        Ok(r) => r,
        Err(_) => Err(ExecError::BlobUnavailable {
            path: path.to_string(),
            message: format!("the download took longer than {} ms (loadTimeoutMs)", timeout.as_millis()),
        }),
    }
}
