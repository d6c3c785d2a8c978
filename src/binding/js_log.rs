//! `options.onLog(level, message)`: guest log lines delivered to JS without blocking the guest.

use napi::bindgen_prelude::FnArgs;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

use crate::host::LogSink;

pub type LogFn = ThreadsafeFunction<FnArgs<(String, String)>, (), FnArgs<(String, String)>, Status, false, true>;

pub struct JsLogSink(pub LogFn);

impl LogSink for JsLogSink {
    fn log(&self, level: &str, message: &str) {
        // Non-blocking and fire-and-forget: a throwing callback is the caller's bug and is
        // swallowed here rather than raised as an uncaught exception.
        self.0.call_with_return_value(
            FnArgs { data: (level.to_string(), message.to_string()) },
            ThreadsafeFunctionCallMode::NonBlocking,
            |_, _| Ok(()),
        );
    }
}
