//! `options.onLog(level, message)`: guest log lines delivered to JS without blocking the guest.

use napi::bindgen_prelude::{FnArgs, Function, FunctionRef};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::turns::{Nudges, FROM_GUESTS};
use crate::host::{LogSink, ProgressSink};

/// Lines queued for `onLog` at most, and their bytes: past either, lines are dropped (and
/// counted, and said in the next line that is queued). Unbounded, guests logging faster than the
/// JS thread took them held 3.4 GB of lines (32 calls at once), and a slow `onLog` held the JS
/// thread a second per batch for as long as they logged (review AE's second follow-up).
/// (A call's own budget, `host::LOG_LINES_PER_CALL`, fits several times: a call run on the JS
/// thread queues all its lines before any is delivered.)
const MAX_QUEUED_LINES: usize = 4096;
const MAX_QUEUED_BYTES: u64 = 16 << 20;
/// Kept past those for the host's own warnings (and the note of dropped lines): guests flooding
/// the queue got them dropped (review AE's third follow-up).
const RESERVED_LINES: usize = 256;
const RESERVED_BYTES: u64 = 1 << 20;
/// Lines delivered in one turn of the event loop at most, and the time spent on them: the rest
/// wait for the next turn. Each line was its own call from the thread-safe function, which Node
/// runs up to 1,000 of per turn: guests logging long lines held the loop 40-58 ms a turn for as
/// long as they logged (review AI).
const LINES_PER_TURN: usize = 256;
const TIME_PER_TURN: Duration = Duration::from_millis(2);
/// And their text: 256 lines of 4 KiB made a MiB of strings a turn, whose collection, not
/// `onLog`'s time, held the loop (review AT2: another tenant's calls' p99 went from 0.07 to 69 ms
/// while a tenant's guests logged long lines).
const BYTES_PER_TURN: usize = 64 * 1024;

/// `onLog`, until its executor is closed (`release`). Guest threads queue lines and nudge the
/// JS thread when nothing was waiting; there, lines are delivered a turn's budget at a time.
pub struct JsLogSink {
    queue: Arc<LogQueue>,
    nudges: Arc<Mutex<Option<Nudges>>>,
}

/// The lines waiting for the JS thread, what was dropped since the last line queued, and whether
/// the JS thread has been woken for them.
#[derive(Default)]
struct LogQueue {
    state: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    lines: VecDeque<(String, String)>,
    bytes: u64,
    dropped: u64,
    woken: bool,
    /// Its executor is closed: no line is queued any more.
    closed: bool,
}

impl Waiting {
    /// Whether `lines` more lines of `bytes` fit (for a host's line, in its reserve too).
    fn fits(&self, lines: usize, bytes: u64, host: bool) -> bool {
        let (max_lines, max_bytes) = match host {
            true => (MAX_QUEUED_LINES + RESERVED_LINES, MAX_QUEUED_BYTES + RESERVED_BYTES),
            false => (MAX_QUEUED_LINES, MAX_QUEUED_BYTES),
        };
        self.lines.len() + lines <= max_lines && self.bytes + bytes <= max_bytes
    }

    fn queue(&mut self, level: String, message: String) {
        self.bytes += (level.len() + message.len()) as u64;
        self.lines.push_back((level, message));
    }
}

impl LogQueue {
    /// Queues a line (`host`: one of the host's own), after the note of lines dropped before it
    /// if any; true if the JS thread must be woken for it.
    fn push(&self, level: &str, message: &str, host: bool) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.closed {
            return false;
        }
        let bytes = (level.len() + message.len()) as u64;
        if s.dropped > 0 {
            let note = format!("loom-wasm-executor: {} log lines were dropped: onLog fell behind the guests' logging", s.dropped);
            // Only with the line it comes with, in that line's places: a guest's line's note did
            // not take the host's reserve (a flood's notes filled it), and a freed place went to a
            // note while its line was dropped (review AJ's follow-up).
            if s.fits(2, bytes + note.len() as u64 + 4, host) {
                s.queue("warn".into(), note);
                s.dropped = 0;
            }
        }
        match s.fits(1, bytes, host) {
            true => s.queue(level.to_string(), message.to_string()),
            false => s.dropped += 1,
        }
        let wake = !s.woken && !s.lines.is_empty();
        s.woken |= wake;
        wake
    }

    /// The next line to deliver; `None` when there is none (the next line queued wakes the JS
    /// thread again).
    fn next(&self) -> Option<(String, String)> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let line = s.lines.pop_front();
        match &line {
            Some((level, message)) => s.bytes -= (level.len() + message.len()) as u64,
            None => s.woken = false,
        }
        line
    }

    /// Whether lines wait (if none, the next line queued wakes the JS thread again).
    fn waiting(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.woken = !s.lines.is_empty();
        s.woken
    }

    /// The JS thread could not be woken (its executor is closed): the next line tries again.
    fn not_woken(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).woken = false;
    }

    /// No line is queued from now on; true if none waits for the JS thread (else the lines
    /// waiting are still delivered, a turn's share at a time).
    fn close(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.closed = true;
        !s.woken
    }

    fn closed(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed
    }
}

impl JsLogSink {
    pub fn new(env: &Env, on_log: Function<'_, FnArgs<(String, String)>, ()>) -> napi::Result<JsLogSink> {
        let queue = Arc::new(LogQueue::default());
        let nudges: Arc<Mutex<Option<Nudges>>> = Default::default();
        let deliver = Delivery { queue: queue.clone(), on_log: on_log.create_ref()?, nudges: Arc::downgrade(&nudges) };
        let f = env.create_function_from_closure::<u32, (), _>("onLog", move |ctx| {
            deliver.turn(ctx.env, ctx.get::<u32>(0).unwrap_or(FROM_GUESTS));
            Ok(())
        })?;
        *nudges.lock().unwrap_or_else(|p| p.into_inner()) = Some(Nudges::new(&f)?);
        Ok(JsLogSink { queue, nudges })
    }

    fn line(&self, level: &str, message: &str, host: bool) {
        let nudges = self.nudges.lock().unwrap_or_else(|p| p.into_inner());
        let Some(nudges) = nudges.as_ref() else { return };
        if self.queue.push(level, message, host) && !nudges.wake() {
            self.queue.not_woken();
        }
    }
}

/// On the JS thread: the lines' way to `onLog`.
struct Delivery {
    queue: Arc<LogQueue>,
    on_log: FunctionRef<FnArgs<(String, String)>, ()>,
    /// Weak: the functions hold this one (the executor's sink holds them).
    nudges: Weak<Mutex<Option<Nudges>>>,
}

impl Delivery {
    /// Delivers lines for one turn's budget; if lines still wait, wakes the JS thread again
    /// through the other thread-safe function (every line now if it cannot, which does not
    /// happen: a closed executor's functions stay until its lines are delivered).
    fn turn(&self, env: &Env, woken_by: u32) {
        self.deliver(env, woken_by);
        // All delivered, the executor closed: its functions go (and with them `onLog`).
        if self.queue.closed() && !self.queue.waiting() {
            if let Some(nudges) = self.nudges.upgrade() {
                nudges.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
        }
    }

    fn deliver(&self, env: &Env, woken_by: u32) {
        let Ok(on_log) = self.on_log.borrow_back(env) else { return };
        let started = Instant::now();
        let bytes = std::cell::Cell::new(0);
        let spent = |n| n == LINES_PER_TURN || bytes.get() >= BYTES_PER_TURN || started.elapsed() >= TIME_PER_TURN;
        super::turns::turn(&self.nudges, woken_by, || self.queue.waiting(), spent, || {
            let Some((level, message)) = self.queue.next() else { return false };
            bytes.set(bytes.get() + level.len() + message.len());
            // A throwing callback is the caller's bug: swallowed, never pending.
            if on_log.call(FnArgs { data: (level, message) }).is_err() {
                crate::binding::js::take_exception(env.raw());
            }
            true
        });
    }
}

impl LogSink for JsLogSink {
    fn log(&self, level: &str, message: &str) {
        self.line(level, message, false)
    }

    fn warn(&self, message: &str) {
        self.line("warn", message, true)
    }

    /// No line is queued any more; the functions (and `onLog`) go once the lines waiting are
    /// delivered (delivered all in one turn once the functions had gone: seconds with a slow
    /// `onLog`, review AJ's follow-up).
    fn release(&self) {
        let mut nudges = self.nudges.lock().unwrap_or_else(|p| p.into_inner());
        if self.queue.close() {
            nudges.take();
        }
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

    fn lines(q: &LogQueue) -> Vec<String> {
        std::iter::from_fn(|| q.next()).map(|(_, m)| m).collect()
    }

    fn note(n: usize) -> String {
        format!("loom-wasm-executor: {n} log lines were dropped: onLog fell behind the guests' logging")
    }

    #[test]
    fn guests_lines_cannot_take_the_place_kept_for_the_hosts_warnings() {
        let q = LogQueue::default();
        for i in 0..2 * MAX_QUEUED_LINES {
            q.push("info", &format!("guest {i}"), false);
        }
        for _ in 0..RESERVED_LINES {
            q.push("warn", "host", true);
        }
        q.push("info", "no place", false);
        q.next();
        // The place freed is the host's (a guest's line, and the note of those dropped that would
        // come with it, wait for the queue to go below its guests' part).
        q.push("info", "no place either", false);
        let mut expected: Vec<String> = (1..MAX_QUEUED_LINES).map(|i| format!("guest {i}")).collect();
        expected.push(note(MAX_QUEUED_LINES));
        expected.extend(std::iter::repeat_n("host".to_string(), RESERVED_LINES - 1));
        assert_eq!(lines(&q), expected);
        // Emptied, the next line brings the count of those dropped since.
        q.push("info", "after", false);
        assert_eq!(lines(&q), [note(3), "after".to_string()]);
        assert_eq!(q.state.lock().unwrap().bytes, 0);
        // In bytes as in lines.
        let q = LogQueue::default();
        q.push("info", &"x".repeat(MAX_QUEUED_BYTES as usize - 4), false);
        q.push("info", "", false);
        q.push("warn", "h", true);
        q.push("warn", &"y".repeat(RESERVED_BYTES as usize), true);
        let s = q.state.lock().unwrap();
        assert_eq!(s.lines.iter().map(|(_, m)| m.len()).collect::<Vec<_>>(), [MAX_QUEUED_BYTES as usize - 4, note(1).len(), 1]);
        assert_eq!((s.bytes, s.dropped), (MAX_QUEUED_BYTES + 4 + note(1).len() as u64 + 5, 1));
    }

    #[test]
    fn the_js_thread_is_woken_once_for_lines_waiting_and_again_once_they_are_all_taken() {
        let q = LogQueue::default();
        assert!(q.push("info", "a", false), "the first line wakes the JS thread");
        assert!(!q.push("info", "b", false), "it is woken already");
        assert!(q.waiting(), "a turn out of budget: lines wait, it stays woken");
        assert!(!q.push("info", "c", false));
        assert_eq!(lines(&q), ["a", "b", "c"]);
        assert!(q.push("info", "d", false), "all taken: the next line wakes it again");
        assert_eq!(q.next().map(|(_, m)| m).as_deref(), Some("d"));
        assert!(!q.waiting(), "none left when the budget ran out");
        assert!(q.push("info", "e", false));
        q.not_woken();
        assert!(q.push("info", "f", false), "a wake that could not be sent is tried again");
        // Closed: lines waiting are still delivered, none is queued any more.
        assert!(!q.close(), "lines wait: the functions stay for them");
        assert!(!q.push("info", "g", false));
        assert_eq!(lines(&q), ["e", "f"]);
        assert!(q.close() && q.closed(), "none waits");
    }

    #[test]
    fn a_note_of_dropped_lines_comes_only_with_its_line() {
        // A place freed by a flood's full queue went to a note, the line with it dropped.
        let q = LogQueue::default();
        for i in 0..MAX_QUEUED_LINES + 10 {
            q.push("info", &format!("{i}"), false);
        }
        q.next();
        q.push("info", "fits alone", false);
        q.push("info", "no place", false);
        let got = lines(&q);
        assert_eq!(got.last().map(String::as_str), Some("fits alone"));
        assert!(!got.iter().any(|m| m.contains("dropped")));
        q.push("info", "after", false);
        assert_eq!(lines(&q), [note(11), "after".to_string()]);
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
