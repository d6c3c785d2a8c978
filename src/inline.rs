//! Inline starts: how much of the caller's thread (Node's event loop) calls may use before they
//! move to a guest thread. Three bounds:
//!
//! - each call runs inline for at most `BUDGET`, then yields and moves (see `limits`);
//! - a chain of inline calls may hold the event loop for at most `MAX_HOLD`: calls whose promises
//!   are settled at once run as microtasks, so `for (...) await execute(...)` would never let the
//!   loop turn (timers, I/O). The binding queues a marker on the loop when a chain starts and
//!   reports when it ran (`loop_turned`); until then, past `MAX_HOLD`, calls go to guest threads,
//!   whose promises settle on a later turn of the loop. Per thread (each Node worker has its own
//!   loop); without a loop (Rust callers) there is no chain to bound;
//! - a gate per module: a module whose call overran its inline budget is kept off the caller's
//!   thread for its next calls, twice as many after each overrun. `FORGIVE_AFTER` calls that
//!   finish inline with no overrun between forgive one overrun: a module that overruns now and
//!   then (a busy machine preempting the thread mid-call) is not kept off the thread for good,
//!   one that keeps overrunning is.
//!
//! A host function called by a guest running inline can run on the caller's thread too: the
//! embedder installs a runner (the binding: JS host functions), the host call defers to it and
//! suspends the guest, the poll returns, the runner runs the function outside the guest's fiber
//! and the call is polled again. A sync JS host function then costs no thread hop at all.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long one call may run inline before it is moved to a guest thread.
pub const BUDGET: Duration = Duration::from_millis(1);
/// How long a chain of inline calls may keep the event loop from turning.
pub const MAX_HOLD: Duration = Duration::from_millis(4);
/// Inputs larger than this are not run inline: converting them is work enough.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

thread_local! {
    /// When the marker now waiting for the loop to turn was queued (none: the loop turned since).
    static WAITING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

thread_local! {
    /// What runs host calls deferred to the caller's thread (installed by the embedder).
    static RUNNER: RefCell<Option<Box<dyn FnMut() -> bool>>> = const { RefCell::new(None) };
    /// A host call of the call being polled waits for the runner.
    static DEFERRED: Cell<bool> = const { Cell::new(false) };
    /// The runner is running (host code: calls it starts do not run inline).
    static RUNNING_DEFERRED: Cell<bool> = const { Cell::new(false) };
}

/// Whether a call on this thread may run inline now: the loop turned less than `MAX_HOLD` ago
/// (or this thread has no loop watch), and this is not a call started by a host function run
/// between the polls of another.
pub fn admit() -> bool {
    !RUNNING_DEFERRED.with(Cell::get) && WAITING_SINCE.with(|w| w.get().is_none_or(|since| since.elapsed() < MAX_HOLD))
}

/// Installs this thread's runner of deferred host calls, once: later calls (an executor made
/// while the runner runs, say) leave it as it is.
pub fn install_runner(runner: Box<dyn FnMut() -> bool>) {
    RUNNER.with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            if r.is_none() {
                *r = Some(runner);
            }
        }
    });
}

/// Whether this thread can run host calls between polls.
pub fn has_runner() -> bool {
    RUNNER.with(|r| r.try_borrow().map(|r| r.is_some()).unwrap_or(true))
}

/// For a host function called by a guest: true (and noted) when its call can be run by the
/// runner right after this poll: the guest runs inline on a thread with a runner.
pub fn defer_to_caller() -> bool {
    if !crate::limits::in_inline_window() || RUNNING_DEFERRED.with(Cell::get) || !has_runner() {
        return false;
    }
    DEFERRED.with(|d| d.set(true));
    true
}

/// Whether the pending poll is waiting for the runner (not an overrun).
pub fn deferred() -> bool {
    DEFERRED.with(Cell::get)
}

/// Runs the host calls deferred during the last poll; true if there were any (poll again).
pub fn run_deferred() -> bool {
    if !DEFERRED.with(|d| d.replace(false)) {
        return false;
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RUNNING_DEFERRED.with(|r| r.set(false));
        }
    }
    RUNNING_DEFERRED.with(|r| r.set(true));
    let _done = Done;
    RUNNER.with(|r| match r.try_borrow_mut() {
        Ok(mut r) => r.as_mut().is_some_and(|f| f()),
        Err(_) => false,
    })
}

/// Called by the binding before a call: true when a marker must be queued on the event loop (none
/// is waiting), so the chain this call starts is timed from now.
pub fn watch_loop() -> bool {
    WAITING_SINCE.with(|w| {
        if w.get().is_some() {
            return false;
        }
        w.set(Some(Instant::now()));
        true
    })
}

/// Called by the binding when its marker ran: the event loop turned.
pub fn loop_turned() {
    WAITING_SINCE.with(|w| w.set(None));
}

/// Calls that finish inline, with no overrun between, that forgive one overrun.
pub const FORGIVE_AFTER: u32 = 1024;

/// The per-module back-off.
#[derive(Debug, Default)]
pub struct Gate {
    overruns: AtomicU32,
    /// Calls still to be kept off the caller's thread.
    skip: AtomicU32,
    /// Calls that finished inline since the last overrun (or forgiveness).
    clean: AtomicU32,
}

impl Gate {
    /// Whether this call may try inline (each refusal counts down the back-off).
    pub fn admit(&self) -> bool {
        self.skip.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_sub(1)).is_err()
    }

    /// A call ran past its inline budget: keep the module's next 16, 32, 64, ... calls off the
    /// caller's thread (at most about a million).
    pub fn overran(&self) {
        let n = self.overruns.fetch_add(1, Ordering::Relaxed).min(16);
        self.clean.store(0, Ordering::Relaxed);
        self.skip.store(16u32 << n, Ordering::Relaxed);
    }

    /// A call finished on the caller's thread without being moved (its result or its error,
    /// such as a trap): `FORGIVE_AFTER` of them with no overrun between forgive one overrun (the
    /// next back-off is half as long). Calls refused by the gate or moved for other reasons
    /// count neither way.
    pub fn finished_inline(&self) {
        if self.overruns.load(Ordering::Relaxed) == 0 {
            return;
        }
        let next = |c: u32| if c + 1 >= FORGIVE_AFTER { 0 } else { c + 1 };
        let before = self.clean.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(next(c)));
        if before.is_ok_and(|c| next(c) == 0) {
            let _ = self.overruns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_backs_off_longer_after_each_overrun() {
        let g = Gate::default();
        assert!(g.admit());
        g.overran();
        let refused = (0..100).take_while(|_| !g.admit()).count();
        assert_eq!(refused, 16);
        assert!(g.admit(), "a fast call after the back-off does not reset the count");
        g.finished_inline();
        g.overran();
        let refused = (0..100).take_while(|_| !g.admit()).count();
        assert_eq!(refused, 32);
    }

    /// How many calls the gate refuses right after one more overrun.
    fn back_off_after_an_overrun(g: &Gate) -> usize {
        g.overran();
        (0..1 << 22).take_while(|_| !g.admit()).count()
    }

    #[test]
    fn calls_that_finish_inline_forgive_an_overrun_now_and_then_but_not_a_module_that_keeps_overrunning() {
        // Now and then (a busy machine): each overrun is followed by a long clean run.
        let g = Gate::default();
        for _ in 0..3 {
            assert_eq!(back_off_after_an_overrun(&g), 16, "forgiven since the last one");
            (0..FORGIVE_AFTER).for_each(|_| g.finished_inline());
        }
        // One call short of the run forgives nothing.
        back_off_after_an_overrun(&g);
        (0..FORGIVE_AFTER - 1).for_each(|_| g.finished_inline());
        assert_eq!(back_off_after_an_overrun(&g), 32);
        // A module that overruns every few hundred calls backs off longer each time.
        let g = Gate::default();
        let refused: Vec<usize> = (0..6)
            .map(|_| {
                let r = back_off_after_an_overrun(&g);
                (0..FORGIVE_AFTER / 4).for_each(|_| g.finished_inline());
                r
            })
            .collect();
        assert_eq!(refused, [16, 32, 64, 128, 256, 512]);
    }

    #[test]
    fn a_chain_that_keeps_the_loop_from_turning_is_cut() {
        assert!(admit(), "no loop watch: nothing to bound");
        assert!(watch_loop(), "the first call of a chain queues a marker");
        assert!(!watch_loop(), "one marker at a time");
        assert!(admit());
        std::thread::sleep(MAX_HOLD + Duration::from_millis(1));
        assert!(!admit(), "the loop has not turned for MAX_HOLD");
        loop_turned();
        assert!(admit());
        assert!(watch_loop());
        loop_turned();
    }
}
