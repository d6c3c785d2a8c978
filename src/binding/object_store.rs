//! `ObjectBlobStore`: Loom's `BlobStore` (upload/download/exists/delete) on the `object_store`
//! crate. Handed to `WasmActivityExecutor`, downloads happen in Rust with no hop through JS.

use std::sync::Arc;

use napi::bindgen_prelude::{Buffer, PromiseRaw, Uint8Array, Unknown};
use napi::{Env, ValueType};
use napi_derive::napi;

use super::{args, settle};
use crate::error::ExecError;
use crate::store::ObjectSource;

/// A blob store on a URL: `memory://`, `file:///abs/dir`, `s3://bucket/prefix`,
/// `az://container/prefix` (or `azure://`), `gs://bucket/prefix`, `http(s)://host/prefix`
/// (read-only). Paths are relative to the URL's prefix and may not leave it.
#[napi]
pub struct ObjectBlobStore {
    pub(crate) source: Arc<ObjectSource>,
}

/// Option values as object_store wants them: strings (numbers and booleans are stringified).
pub fn store_options(v: Option<Unknown>) -> Result<Vec<(String, String)>, ExecError> {
    let Some(v) = v.filter(|v| !matches!(v.get_type(), Ok(ValueType::Undefined | ValueType::Null))) else {
        return Ok(Vec::new());
    };
    let obj = args::object(v, "options")?;
    // Its keys and string values hold at most `MAX_LIST_UNITS` characters together (review BV1:
    // 1,000 keys each holding one 1 Mi-character string were all copied, 2.1 GB and 2 s of the
    // event loop, before the first key was found unknown).
    let mut room = args::Room::new("options", args::MAX_LIST_UNITS);
    let keys = args::keys_within(&obj, "options", &mut room)?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let Some(value) = args::prop(&obj, &k, "options")? else { continue };
        let text = match value.get_type().map_err(ExecError::internal)? {
            ValueType::String => room.string(value, &k)?,
            ValueType::Number | ValueType::Boolean => {
                value.coerce_to_string().and_then(|s| s.into_utf8()).and_then(|s| s.into_owned()).map_err(ExecError::internal)?
            }
            ValueType::Undefined | ValueType::Null => continue,
            _ => return Err(ExecError::InvalidArgument(format!("options.{k} must be a string, number or boolean"))),
        };
        out.push((k, text));
    }
    Ok(out)
}

use napi::JsValue;

#[napi]
impl ObjectBlobStore {
    /// `options` are object_store configuration keys (`access_key_id`, `secret_access_key`,
    /// `endpoint`, `region`, `allow_http`, `account_name`, `use_emulator`, ...) plus `timeoutMs`
    /// for each operation (`memory://` and `file://` take only `timeoutMs`; an unknown key is
    /// `INVALID_ARGUMENT`); the usual AWS_*/AZURE_*/GOOGLE_* environment variables are honoured.
    #[napi(constructor, ts_args_type = "url: string, options?: Record<string, string | number | boolean>")]
    pub fn new(env: Env, url: Unknown, options: Option<Unknown>) -> napi::Result<Self> {
        let open = || -> Result<Self, ExecError> {
            let url = args::string(url, "url")?;
            let opts = store_options(options)?;
            Ok(ObjectBlobStore { source: Arc::new(ObjectSource::open(&url, &opts)?) })
        };
        open().map_err(|e| super::js_error::to_napi(&env, &e))
    }

    /// The URL this store was opened on.
    #[napi(getter)]
    pub fn url(&self) -> String {
        self.source.url().to_string()
    }

    /// Stores `data` at `path`; resolves to `path`.
    #[napi(ts_args_type = "path: string, data: Uint8Array", ts_return_type = "Promise<string>")]
    pub fn upload<'env>(&self, env: &'env Env, path: Unknown, data: Uint8Array) -> napi::Result<PromiseRaw<'env, String>> {
        let source = self.source.clone();
        let bytes = bytes::Bytes::from(data.to_vec());
        let path = args::string(path, "path");
        settle(env, async move {
            let path = path?;
            source.put(&path, bytes).await.map(|_| path)
        }, |_, p| Ok(p))
    }

    /// The bytes at `path` (`BLOB_NOT_FOUND` if there are none).
    #[napi(ts_args_type = "path: string", ts_return_type = "Promise<Buffer>")]
    pub fn download<'env>(&self, env: &'env Env, path: Unknown) -> napi::Result<PromiseRaw<'env, Buffer>> {
        let source = self.source.clone();
        let path = args::string(path, "path");
        settle(env, async move { source.download(&path?).await }, |_, b| Ok(Buffer::from(b.to_vec())))
    }

    #[napi(ts_args_type = "path: string", ts_return_type = "Promise<boolean>")]
    pub fn exists<'env>(&self, env: &'env Env, path: Unknown) -> napi::Result<PromiseRaw<'env, bool>> {
        let source = self.source.clone();
        let path = args::string(path, "path");
        settle(env, async move { source.exists(&path?).await }, |_, b| Ok(b))
    }

    /// Removes `path` (no error if it is already gone).
    #[napi(ts_args_type = "path: string", ts_return_type = "Promise<void>")]
    pub fn delete<'env>(&self, env: &'env Env, path: Unknown) -> napi::Result<PromiseRaw<'env, ()>> {
        let source = self.source.clone();
        let path = args::string(path, "path");
        settle(env, async move { source.delete(&path?).await }, |_, ()| Ok(()))
    }
}
