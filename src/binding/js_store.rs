//! A JS `BlobStore` (any object with `download(path): Promise<Buffer | Uint8Array>`) seen as a
//! core `BlobSource`, through a weak ThreadsafeFunction whose Promise is awaited in Rust.
//!
//! Whatever `download` returns is taken as `await` would take it: `Promise.resolve(value)`
//! adopts a thenable and wraps a Buffer returned directly. A `download` that throws, a thenable
//! whose `then` throws, a rejection: each is `BLOB_NOT_FOUND` with the message, and no
//! exception is ever left pending. A promise garbage-collected unsettled (nothing could ever settle
//! it) is `BLOB_UNAVAILABLE` as soon as it is collected.

use std::ptr;

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
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        match unsafe { Uint8Array::from_napi_value(env, value) } {
            Ok(view) if view.len() > MAX_DOWNLOAD_BYTES => Ok(Downloaded::TooLarge(view.len())),
            Ok(view) => Ok(Downloaded::Bytes(view.to_vec())),
            Err(_) => {
                let mut t = 0;
                unsafe { sys::napi_typeof(env, value, &mut t) };
                let t = ValueType::from(t);
                if t == ValueType::BigInt {
                    // `SIZED`'s answer for bytes over the executor's maxModuleBytes: their length.
                    let (mut n, mut lossless) = (0u64, false);
                    if unsafe { sys::napi_get_value_bigint_uint64(env, value, &mut n, &mut lossless) } == sys::Status::napi_ok {
                        return Ok(Downloaded::TooLarge(usize::try_from(n).unwrap_or(usize::MAX)));
                    }
                }
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
/// their length (a BigInt), measured on the JS thread before anything is copied: a store handing
/// over 1000 MiB for a 1 KiB limit had them copied on the event loop (2.9 s) only to be refused.
/// A throw of `download` itself stays synchronous, and its value is adopted as `await` would.
/// Nothing of the store's can skip the measure or fake its answer (review AB):
/// - the length is read with the typed arrays' own `byteLength` getter, taken when the script
///   runs (a subclass's getter could say 10 for 1000 MiB);
/// - the measure is chained with `Promise.prototype.then` as it was then (a promise's own `then`
///   skipped it);
/// - a view on a buffer that can grow (resizable, growable) is copied as measured (it grew
///   between the measure and the copy, up to 1 GiB);
/// - a BigInt the store itself resolves to is boxed (it was taken for the measure's answer).
const SIZED: &str = "(function (apply, resolve, then, isView, byteLength, bufferOf, offsetOf) {
  const length = (v) => { try { return apply(byteLength, v, []) } catch { return 0 } }
  const canGrow = (v) => { try { const b = apply(bufferOf, v, []); return b.resizable === true || b.growable === true } catch { return false } }
  return function sized(store, download, max) {
    const atMost = (v) => {
      if (typeof v === 'bigint') return Object(v)
      const n = isView(v) ? length(v) : 0
      if (n > max) return BigInt(n)
      return n > 0 && canGrow(v) ? new Uint8Array(new Uint8Array(apply(bufferOf, v, []), apply(offsetOf, v, []), n)) : v
    }
    return function (path) { return apply(then, resolve(apply(download, store, [path])), [atMost]) }
  }
})(Reflect.apply, Promise.resolve.bind(Promise), Promise.prototype.then, ArrayBuffer.isView,
   Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Uint8Array.prototype), 'byteLength').get,
   Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Uint8Array.prototype), 'buffer').get,
   Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Uint8Array.prototype), 'byteOffset').get)";

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
    download: DownloadFn,
}

impl JsBlobSource {
    pub fn new(download: DownloadFn) -> Self {
        JsBlobSource { download }
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
    fn fetch<'a>(&'a self, path: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        Box::pin(async move {
            let not_found = |e: napi::Error| ExecError::BlobNotFound { path: path.to_string(), message: e.reason.clone() };
            let Resolved(promise) = self.download.call_async_catch(path.to_string()).await.map_err(not_found)?;
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
