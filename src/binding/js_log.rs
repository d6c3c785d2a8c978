//! `options.onLog(level, message)`: guest log lines delivered to JS without blocking the guest.

use napi::bindgen_prelude::FnArgs;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::host::{LogSink, ProgressSink};

pub type LogFn = ThreadsafeFunction<FnArgs<(String, String)>, (), FnArgs<(String, String)>, Status, false, true>;

/// Lines queued for `onLog` at most, and their bytes: past either, lines are dropped (and
/// counted, and said in the next line that is queued). Unbounded, guests logging faster than the
/// JS thread took them held 3.4 GB of lines (32 calls at once), and a slow `onLog` held the JS
/// thread a second per batch for as long as they logged (review AE's second follow-up).
/// (A call's own budget, `host::LOG_LINES_PER_CALL`, fits several times: a call run on the JS
/// thread queues all its lines before any is delivered.)
const MAX_QUEUED_LINES: u64 = 4096;
const MAX_QUEUED_BYTES: u64 = 16 << 20;

/// `onLog`, until its executor is closed (`release`).
pub struct JsLogSink {
    f: std::sync::Mutex<Option<LogFn>>,
    queued: std::sync::Arc<Queued>,
}

/// What is queued for the JS thread now, and what was dropped since the last line queued.
#[derive(Default)]
struct Queued {
    lines: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl Queued {
    /// Takes a place for a line of `bytes`, unless the queue is full.
    fn admit(&self, bytes: u64) -> bool {
        let lines = self.lines.fetch_add(1, Ordering::AcqRel);
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        if lines < MAX_QUEUED_LINES && total <= MAX_QUEUED_BYTES {
            return true;
        }
        self.leave(bytes);
        false
    }

    fn leave(&self, bytes: u64) {
        self.lines.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl JsLogSink {
    pub fn new(f: LogFn) -> JsLogSink {
        JsLogSink { f: std::sync::Mutex::new(Some(f)), queued: Default::default() }
    }

    /// Queues a line; false if the queue is full.
    fn send(&self, f: &LogFn, level: String, message: String) -> bool {
        let bytes = (level.len() + message.len()) as u64;
        if !self.queued.admit(bytes) {
            return false;
        }
        let queued = self.queued.clone();
        // Non-blocking and fire-and-forget: a throwing callback is the caller's bug and is
        // swallowed here rather than raised as an uncaught exception.
        let status = f.call_with_return_value(FnArgs { data: (level, message) }, ThreadsafeFunctionCallMode::NonBlocking, {
            let queued = queued.clone();
            move |_, _| {
                queued.leave(bytes);
                Ok(())
            }
        });
        if status != Status::Ok {
            queued.leave(bytes);
        }
        true
    }
}

impl LogSink for JsLogSink {
    fn log(&self, level: &str, message: &str) {
        let sink = self.f.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = sink.as_ref() else { return };
        let dropped = self.queued.dropped.swap(0, Ordering::AcqRel);
        if dropped > 0 {
            let note = format!("loom-wasm-executor: {dropped} log lines were dropped: onLog fell behind the guests' logging");
            if !self.send(f, "warn".into(), note) {
                self.queued.dropped.fetch_add(dropped, Ordering::AcqRel);
            }
        }
        if !self.send(f, level.to_string(), message.to_string()) {
            self.queued.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn release(&self) {
        self.f.lock().unwrap_or_else(|p| p.into_inner()).take();
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
