//! `options.onLog(level, message)`: guest log lines delivered to JS without blocking the guest.

use napi::bindgen_prelude::FnArgs;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

use crate::host::{LogSink, ProgressSink};

pub type LogFn = ThreadsafeFunction<FnArgs<(String, String)>, (), FnArgs<(String, String)>, Status, false, true>;

/// `onLog`, until its executor is closed (`release`).
pub struct JsLogSink(pub std::sync::Mutex<Option<LogFn>>);

impl LogSink for JsLogSink {
    fn log(&self, level: &str, message: &str) {
        let sink = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = sink.as_ref() else { return };
        // Non-blocking and fire-and-forget: a throwing callback is the caller's bug and is
        // swallowed here rather than raised as an uncaught exception.
        f.call_with_return_value(
            FnArgs { data: (level.to_string(), message.to_string()) },
            ThreadsafeFunctionCallMode::NonBlocking,
            |_, _| Ok(()),
        );
    }

    fn release(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A call's `onProgress(detail)`: each heartbeat's JSON parsed on the JS thread (the text itself if
/// it does not parse), delivered without blocking the guest, as `"<seq> <detail>"`.
pub type ProgressFn = ThreadsafeFunction<String, (), String, Status, false, true>;

/// A call's heartbeats in order. Each is numbered when the guest sends it; on the JS thread one
/// is delivered only if it is newer than the last delivered, and the newest is delivered before
/// the call's promise settles (`flush`): a heartbeat never comes after the result (one sent
/// through the queue reached JS a turn after an inline call had settled), nor after a newer one.
#[derive(Default)]
pub struct ProgressLine {
    /// (the newest's number, its text, the last delivered number)
    state: std::sync::Mutex<(u64, Option<String>, u64)>,
}

impl ProgressLine {
    fn record(&self, detail: &str) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        s.1 = Some(detail.to_string());
        s.0
    }

    /// Whether heartbeat `seq` is still news (then it counts as delivered).
    pub fn take(&self, seq: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if seq <= s.2 {
            return false;
        }
        s.2 = seq;
        true
    }

    /// The newest heartbeat if it was not delivered yet (it counts as delivered now).
    pub fn undelivered(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 <= s.2 {
            return None;
        }
        s.2 = s.0;
        s.1.clone()
    }
}

pub struct JsProgressSink {
    pub tsfn: ProgressFn,
    pub line: std::sync::Arc<ProgressLine>,
}

impl ProgressSink for JsProgressSink {
    fn progress(&self, detail: &str) {
        let seq = self.line.record(detail);
        self.tsfn.call_with_return_value(format!("{seq} {detail}"), ThreadsafeFunctionCallMode::NonBlocking, |_, _| Ok(()));
    }

    fn held(&self, detail: &str) {
        self.line.record(detail);
    }
}
