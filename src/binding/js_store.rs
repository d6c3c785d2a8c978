//! A JS `BlobStore` (any object with `download(path): Promise<Buffer | Uint8Array>`) seen as a
//! core `BlobSource`, through a weak ThreadsafeFunction whose Promise is awaited in Rust.
//!
//! Whatever `download` returns is taken as `await` would take it: `Promise.resolve(value)`
//! adopts a thenable and wraps a Buffer returned directly. A `download` that throws, a thenable
//! whose `then` throws, a rejection: each is `BLOB_NOT_FOUND` with the message, and no
//! exception is ever left pending. A promise garbage-collected unsettled (nothing could ever settle
//! it) is `BLOB_UNAVAILABLE` as soon as it is collected.

use std::ptr;
use std::sync::Arc;

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
    /// Larger than any `maxModuleBytes` allows: refused by its length, never copied (a store
    /// handing over gigabytes would otherwise have them copied on the JS thread, doubling them).
    TooLarge(usize),
}

/// The largest download ever copied out of JS: the top of `maxModuleBytes`' range.
const MAX_DOWNLOAD_BYTES: usize = crate::options::ranges::MODULE_BYTES.1 as usize;

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
    /// `SIZED`'s answer, `[length, value]`: the view's length as measured (at most the limit) and
    /// the view, whose first `length` bytes are copied (its buffer may have grown since); a
    /// length over the limit and no value; or -1 and what the store gave that is no view.
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut n = -1f64;
        let mut v = std::ptr::null_mut();
        let mut length = std::ptr::null_mut();
        let read = unsafe {
            sys::napi_get_element(env, value, 0, &mut length) == sys::Status::napi_ok
                && sys::napi_get_value_double(env, length, &mut n) == sys::Status::napi_ok
                && sys::napi_get_element(env, value, 1, &mut v) == sys::Status::napi_ok
        };
        super::js::take_exception(env);
        if !read {
            return Ok(Downloaded::NotBytes(ValueType::Unknown));
        }
        let mut t = 0;
        unsafe { sys::napi_typeof(env, v, &mut t) };
        let t = ValueType::from(t);
        if n < 0.0 {
            return Ok(Downloaded::NotBytes(t));
        }
        if t == ValueType::Null || n > MAX_DOWNLOAD_BYTES as f64 {
            return Ok(Downloaded::TooLarge(n as usize));
        }
        match unsafe { Uint8Array::from_napi_value(env, v) } {
            Ok(view) => Ok(Downloaded::Bytes(view[..(n as usize).min(view.len())].to_vec())),
            // A view of another kind (a DataView, a Uint16Array).
            Err(_) => {
                super::js::take_exception(env);
                Ok(Downloaded::NotBytes(t))
            }
        }
    }
}

/// What `download` returned, made a real Promise (on the JS thread).
pub struct Resolved(Promise<Downloaded>);

impl TypeName for Resolved {
    fn type_name() -> &'static str {
        "Promise"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ValidateNapiValue for Resolved {}

impl FromNapiValue for Resolved {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let fail = |msg: String| napi::Error::new(Status::GenericFailure, msg);
        let mut global = ptr::null_mut();
        let mut promise_ctor = ptr::null_mut();
        let mut resolve = ptr::null_mut();
        unsafe {
            if sys::napi_get_global(env, &mut global) != sys::Status::napi_ok
                || sys::napi_get_named_property(env, global, c"Promise".as_ptr(), &mut promise_ctor) != sys::Status::napi_ok
                || sys::napi_get_named_property(env, promise_ctor, c"resolve".as_ptr(), &mut resolve) != sys::Status::napi_ok
            {
                super::js::take_exception(env);
                return Err(fail("Promise.resolve is not available".into()));
            }
        }
        let promise = super::js::call(env, promise_ctor, resolve, &[value]).map_err(fail)?;
        let result = unsafe { Promise::<Downloaded>::from_napi_value(env, promise) };
        if let Some(msg) = super::js::take_exception(env) {
            return Err(fail(msg));
        }
        result.map(Resolved)
    }
}

/// Wraps a store's `download` so that bytes over the executor's `maxModuleBytes` are answered by
/// their length, measured on the JS thread before anything is copied: a store handing over 1000
/// MiB for a 1 KiB limit had them copied on the event loop (2.9 s) only to be refused. A throw of
/// `download` itself stays synchronous, and its value is adopted as `await` would. Nothing of the
/// store's can skip the measure or fake its answer (reviews AB):
/// - the value is awaited, and measured right then: no `then` of the store's, and no species of
///   its promise, chains it (each skipped the measure);
/// - the length is read with the typed arrays' own `byteLength` getter, taken when the script
///   runs (a subclass's getter could say 10 for 1000 MiB);
/// - the answer is an array of ours, `[length, view]` (see `Downloaded`): resolving it runs none
///   of the store's code (a `then` getter on the view grew its buffer after the measure), and
///   only the bytes measured are copied;
/// - an error's text over a million characters is not read (`js::read_text`): it is replaced
///   here, before napi reads it whole.
const SIZED: &str = "(function (apply, isView, byteLength) {
  const length = (v) => { try { return apply(byteLength, v, []) } catch { return -1 } }
  const LONG = 1048576
  const told = (n) => new Error(`(a text of ${n} characters, too long to read)`)
  const shorten = (e) => {
    try {
      if (typeof e === 'string' && e.length > LONG) return told(e.length)
      if (e === null || typeof e !== 'object') return e
      const message = e.message
      const code = e.code
      const long = (t) => typeof t === 'string' && t.length > LONG
      if (!long(message) && !long(code)) return e
      const out = long(message) ? told(message.length) : new Error(String(message))
      if (typeof code === 'string' && !long(code)) out.code = code
      return out
    } catch {
      return new Error('the blob store threw an error that cannot be read')
    }
  }
  return function sized(store, download, max) {
    const measured = async (r) => {
      let v
      try {
        v = await r
      } catch (e) {
        throw shorten(e)
      }
      if (!isView(v)) return [-1, v]
      const n = length(v)
      return n > max ? [n, null] : [n, v]
    }
    return function (path) {
      let r
      try {
        r = apply(download, store, [path])
      } catch (e) {
        throw shorten(e)
      }
      return measured(r)
    }
  }
})(Reflect.apply, ArrayBuffer.isView,
   Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Uint8Array.prototype), 'byteLength').get)";

/// `download` of `store`, wrapped by `SIZED` for a limit of `max_bytes`.
pub fn sized_download<'env>(
    env: &'env napi::Env,
    store: napi::bindgen_prelude::Object<'env>,
    download: napi::bindgen_prelude::Unknown<'env>,
    max_bytes: u64,
) -> Result<napi::bindgen_prelude::Function<'env, String, Resolved>, ExecError> {
    use napi::bindgen_prelude::{Function, FnArgs, Unknown};
    let fail = |e: napi::Error| {
        super::js::take_exception(env.raw());
        ExecError::internal(format!("blobStore.download cannot be wrapped: {}", e.reason))
    };
    let factory: Unknown = env.run_script(SIZED).map_err(fail)?;
    let factory: Function<FnArgs<(napi::bindgen_prelude::Object, Unknown, f64)>, Unknown> = unsafe { factory.cast() }.map_err(fail)?;
    let wrapped = factory.call((store, download, max_bytes as f64).into()).map_err(fail)?;
    unsafe { wrapped.cast() }.map_err(fail)
}

/// `(path) => store.download(path)`, callable from any thread; weak, so it never keeps Node alive.
pub type DownloadFn = ThreadsafeFunction<String, Resolved, String, Status, false, true>;

pub struct JsBlobSource {
    /// Until its executor is closed (`release`).
    download: std::sync::Mutex<Option<Arc<DownloadFn>>>,
}

impl JsBlobSource {
    pub fn new(download: DownloadFn) -> Self {
        JsBlobSource { download: std::sync::Mutex::new(Some(Arc::new(download))) }
    }
}

/// What napi-rs's `Promise` answers when its promise was garbage-collected unsettled: its
/// callbacks went with it, and so did the sending half of its channel (`oneshot::Canceled`, shown
/// by napi-rs as this text). A store whose download rejects with exactly this string, and no
/// cause, is taken the same way: either way the store gave no answer.
const COLLECTED_UNSETTLED: &str = "oneshot canceled";

/// Whether `promise.await` failed because the promise can never settle, not because it rejected.
/// Such a download is `BLOB_UNAVAILABLE` (the store did not answer; a retry asks it again) at
/// once, not after `loadTimeoutMs`, and not `BLOB_NOT_FOUND` as a rejection is.
fn is_collected_unsettled(e: &napi::Error) -> bool {
    e.status == Status::GenericFailure && e.cause.is_none() && e.reason == COLLECTED_UNSETTLED
}

impl BlobSource for JsBlobSource {
    fn release(&self) {
        self.download.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn fetch<'a>(&'a self, path: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        Box::pin(async move {
            let not_found = |e: napi::Error| ExecError::BlobNotFound { path: path.to_string(), message: e.reason.clone() };
            let download = self.download.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or(ExecError::Closed)?;
            let Resolved(promise) = download.call_async_catch(path.to_string()).await.map_err(not_found)?;
            let settled = match promise.await {
                Ok(settled) => settled,
                Err(e) if is_collected_unsettled(&e) => {
                    return Err(ExecError::BlobUnavailable {
                        path: path.to_string(),
                        message: "blobStore.download's promise was garbage-collected unsettled: nothing could ever settle it".into(),
                    })
                }
                Err(e) => return Err(not_found(e)),
            };
            match settled {
                Downloaded::Bytes(b) => Ok(b),
                Downloaded::TooLarge(n) => Err(ExecError::CompileLimit(format!(
                    "the module's size in bytes is {n}, over the limit of {max_bytes} (maxModuleBytes)"
                ))),
                Downloaded::NotBytes(t) => Err(ExecError::InvalidModule(format!(
                    "blobStore.download({path:?}) resolved to {t}, expected a Buffer or Uint8Array"
                ))),
            }
        })
    }
}
