//! `options.onLog(level, message)`: guest log lines delivered to JS without blocking the guest.

use napi::bindgen_prelude::FnArgs;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

use crate::host::{LogSink, ProgressSink};

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

/// A call's `onProgress(detail)`: each heartbeat's JSON parsed on the JS thread (the text itself if
/// it does not parse), delivered without blocking the guest.
pub type ProgressFn = ThreadsafeFunction<String, (), String, Status, false, true>;

pub struct JsProgressSink(pub ProgressFn);

impl ProgressSink for JsProgressSink {
    fn progress(&self, detail: &str) {
        self.0.call_with_return_value(detail.to_string(), ThreadsafeFunctionCallMode::NonBlocking, |_, _| Ok(()));
    }
}
