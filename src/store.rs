//! Where module bytes come from: the `BlobSource` trait, and an in-memory source.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use crate::error::ExecError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store of module bytes addressed by path (Loom's `BlobStore.download`).
pub trait BlobSource: Send + Sync {
    fn fetch<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ExecError>>;
}

/// Blobs held in memory; what tests and embedders without a store use.
#[derive(Default)]
pub struct MemorySource {
    blobs: RwLock<HashMap<String, Vec<u8>>>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        if let Ok(mut b) = self.blobs.write() {
            b.insert(path.to_string(), bytes);
        }
    }
}

impl BlobSource for MemorySource {
    fn fetch<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        Box::pin(async move {
            let blobs = self.blobs.read().map_err(|_| ExecError::internal("memory source poisoned"))?;
            blobs.get(path).cloned().ok_or_else(|| ExecError::BlobNotFound {
                path: path.to_string(),
                message: "no blob at this path".into(),
            })
        })
    }
}
