//! A JS `BlobStore` (any object with `download(path): Promise<Buffer | Uint8Array>`) seen as a
//! core `BlobSource`, through a weak ThreadsafeFunction whose Promise is awaited in Rust.

use napi::bindgen_prelude::{FromNapiValue, Promise, TypeName, Uint8Array, ValidateNapiValue};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{sys, Status, ValueType};

use crate::error::ExecError;
use crate::store::{BlobSource, BoxFuture};

/// What `download` resolved to, copied out of JS on the JS thread (the caller may reuse its
/// buffer, so the cache never keeps a view into JS memory).
pub enum Downloaded {
    Bytes(Vec<u8>),
    NotBytes(ValueType),
}

impl TypeName for Downloaded {
    fn type_name() -> &'static str {
        "Uint8Array"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ValidateNapiValue for Downloaded {}

impl FromNapiValue for Downloaded {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        match unsafe { Uint8Array::from_napi_value(env, value) } {
            Ok(view) => Ok(Downloaded::Bytes(view.to_vec())),
            Err(_) => {
                let mut t = 0;
                unsafe { sys::napi_typeof(env, value, &mut t) };
                Ok(Downloaded::NotBytes(ValueType::from(t)))
            }
        }
    }
}

/// `(path) => store.download(path)`, callable from any thread; weak, so it never keeps Node alive.
pub type DownloadFn = ThreadsafeFunction<String, Promise<Downloaded>, String, Status, false, true>;

pub struct JsBlobSource {
    download: DownloadFn,
}

impl JsBlobSource {
    pub fn new(download: DownloadFn) -> Self {
        JsBlobSource { download }
    }
}

impl BlobSource for JsBlobSource {
    fn fetch<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        Box::pin(async move {
            let not_found = |e: napi::Error| ExecError::BlobNotFound { path: path.to_string(), message: e.reason.clone() };
            let promise = self.download.call_async_catch(path.to_string()).await.map_err(not_found)?;
            match promise.await.map_err(not_found)? {
                Downloaded::Bytes(b) => Ok(b),
                Downloaded::NotBytes(t) => Err(ExecError::InvalidModule(format!(
                    "blobStore.download({path:?}) resolved to {t}, expected a Buffer or Uint8Array"
                ))),
            }
        })
    }
}
