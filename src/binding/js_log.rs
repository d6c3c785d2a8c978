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
/// Kept past those for the host's own warnings (and the note of dropped lines): guests flooding
/// the queue got them dropped (review AE's third follow-up).
const RESERVED_LINES: u64 = 256;
const RESERVED_BYTES: u64 = 1 << 20;

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
    /// Takes a place for a line of `bytes`, unless the queue is full (for a host's line, unless
    /// its reserve is full too).
    fn admit(&self, bytes: u64, host: bool) -> bool {
        let (max_lines, max_bytes) = match host {
            true => (MAX_QUEUED_LINES + RESERVED_LINES, MAX_QUEUED_BYTES + RESERVED_BYTES),
            false => (MAX_QUEUED_LINES, MAX_QUEUED_BYTES),
        };
        let lines = self.lines.fetch_add(1, Ordering::AcqRel);
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel).saturating_add(bytes);
        if lines < max_lines && total <= max_bytes {
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

    /// Queues a line (`host`: one of the host's own); false if the queue is full.
    fn send(&self, f: &LogFn, level: String, message: String, host: bool) -> bool {
        let bytes = (level.len() + message.len()) as u64;
        if !self.queued.admit(bytes, host) {
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

impl JsLogSink {
    fn line(&self, level: &str, message: &str, host: bool) {
        let sink = self.f.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = sink.as_ref() else { return };
        let dropped = self.queued.dropped.swap(0, Ordering::AcqRel);
        if dropped > 0 {
            let note = format!("loom-wasm-executor: {dropped} log lines were dropped: onLog fell behind the guests' logging");
            if !self.send(f, "warn".into(), note, true) {
                self.queued.dropped.fetch_add(dropped, Ordering::AcqRel);
            }
        }
        if !self.send(f, level.to_string(), message.to_string(), host) {
            self.queued.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl LogSink for JsLogSink {
    fn log(&self, level: &str, message: &str) {
        self.line(level, message, false)
    }

    fn warn(&self, message: &str) {
        self.line("warn", message, true)
    }

    fn release(&self) {
        self.f.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A call's `onProgress(detail)`: each heartbeat's JSON parsed on the JS thread (the text itself if
/// it does not parse), delivered without blocking the guest. What is queued for the JS thread is
/// only a nudge: there the newest heartbeat sent and not yet delivered is made into JS values,
/// once (each was converted three times, stale or not: review AE's second follow-up).
pub type ProgressFn = ThreadsafeFunction<u32, (), u32, Status, false, true>;

/// A call's heartbeats in order, each numbered when the guest sends it. A nudge delivers the newest
/// sent (not one the rate limit holds back) if nothing newer was delivered; the call's newest,
/// held back or not, is delivered before its promise settles (`undelivered`). A heartbeat never
/// comes after the result (one sent through the queue reached JS a turn after an inline call had
/// settled), nor after a newer one.
#[derive(Default)]
pub struct ProgressLine {
    state: std::sync::Mutex<Line>,
}

#[derive(Default)]
struct Line {
    /// The newest heartbeat's number, and the last delivered's.
    newest: u64,
    delivered: u64,
    /// The newest sent to the JS thread, and the newest held back (each until delivered or
    /// outdated).
    sent: Option<(u64, String)>,
    held: Option<(u64, String)>,
}

impl ProgressLine {
    fn record(&self, detail: &str, sent: bool) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.newest += 1;
        let entry = Some((s.newest, detail.to_string()));
        match sent {
            true => (s.sent, s.held) = (entry, None),
            false => s.held = entry,
        }
    }

    /// The newest heartbeat sent, unless it or a newer one was delivered (it counts as delivered
    /// now).
    pub fn sent(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, text) = s.sent.take()?;
        if seq <= s.delivered {
            return None;
        }
        s.delivered = seq;
        Some(text)
    }

    /// The newest heartbeat if it was not delivered yet (it counts as delivered now).
    pub fn undelivered(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.newest <= s.delivered {
            return None;
        }
        let newest = s.newest;
        s.delivered = newest;
        let (sent, held) = (s.sent.take(), s.held.take());
        [held, sent].into_iter().flatten().find(|(seq, _)| *seq == newest).map(|(_, text)| text)
    }
}

pub struct JsProgressSink {
    pub tsfn: ProgressFn,
    pub line: std::sync::Arc<ProgressLine>,
}

impl ProgressSink for JsProgressSink {
    fn progress(&self, detail: &str) {
        self.line.record(detail, true);
        self.tsfn.call_with_return_value(0, ThreadsafeFunctionCallMode::NonBlocking, |_, _| Ok(()));
    }

    fn held(&self, detail: &str) {
        self.line.record(detail, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_lines_cannot_take_the_place_kept_for_the_hosts_warnings() {
        let q = Queued::default();
        let guests = (0..2 * MAX_QUEUED_LINES).take_while(|_| q.admit(10, false)).count() as u64;
        assert_eq!(guests, MAX_QUEUED_LINES);
        let host = (0..2 * RESERVED_LINES).take_while(|_| q.admit(10, true)).count() as u64;
        assert_eq!(host, RESERVED_LINES);
        assert!(!q.admit(10, false) && !q.admit(10, true));
        q.leave(10);
        assert!(q.admit(10, true) && !q.admit(10, false), "a place freed in the reserve is the host's");
        for _ in 0..=RESERVED_LINES {
            q.leave(10);
        }
        assert!(q.admit(10, false), "lines delivered free places for guests");
        // In bytes as in lines.
        let q = Queued::default();
        assert!(q.admit(MAX_QUEUED_BYTES, false));
        assert!(!q.admit(1, false));
        assert!(q.admit(RESERVED_BYTES, true));
        assert!(!q.admit(1, true));
    }

    #[test]
    fn a_nudge_delivers_the_newest_sent_heartbeat_once_and_the_end_the_newest_of_all() {
        let line = ProgressLine::default();
        line.record("a1", true);
        line.record("a2", false);
        assert_eq!(line.sent().as_deref(), Some("a1"), "a held one waits for its time");
        assert_eq!(line.sent(), None);
        assert_eq!(line.undelivered().as_deref(), Some("a2"));
        assert_eq!(line.undelivered(), None);
        // Two sent before the JS thread took the first nudge: the newer, once.
        line.record("b1", true);
        line.record("b2", true);
        assert_eq!((line.sent().as_deref(), line.sent()), (Some("b2"), None));
        assert_eq!(line.undelivered(), None, "nothing newer");
        // A held one outdated by a newer sent one is never delivered.
        line.record("c1", false);
        line.record("c2", true);
        assert_eq!((line.undelivered().as_deref(), line.sent()), (Some("c2"), None));
    }
}
