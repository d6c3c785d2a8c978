//! Work that guest threads hand the JS thread (log lines, host-function calls), done a turn's
//! budget at a time. A thread-safe function's calls all run in the turn that wakes it (Node runs
//! up to 1,000 queued calls per wake-up), so work queued as fast as the JS thread did it held the
//! event loop for seconds: no timer, I/O or other executor's call got a turn meanwhile. The work
//! waits in a queue of its own; the JS thread is nudged when nothing was waiting, and a turn that
//! ran out of its budget nudges the other of two thread-safe functions over the same callback
//! (Node runs a thread-safe function's calls queued during its own callback in the same turn;
//! libuv wakes each handle once per turn).

use std::sync::{Mutex, Weak};

use napi::bindgen_prelude::Function;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;

/// What wakes the JS thread: the payload says which of the two woke it.
type Nudge = ThreadsafeFunction<u32, (), u32, Status, false, true>;
pub const FROM_GUESTS: u32 = 0;
const FROM_LAST_TURN: u32 = 1;

/// Two weak thread-safe functions (they never keep Node alive) over one callback.
pub struct Nudges {
    from_guests: Nudge,
    from_last_turn: Nudge,
}

impl Nudges {
    /// Over `f`, which is called with the one that woke it (`FROM_GUESTS` or the other).
    pub fn new(f: &Function<'_, u32, ()>) -> napi::Result<Nudges> {
        let nudge = || f.build_threadsafe_function::<u32>().callee_handled::<false>().weak::<true>().build();
        Ok(Nudges { from_guests: nudge()?, from_last_turn: nudge()? })
    }

    /// Wakes the JS thread for work queued from guest threads; false if it cannot (its
    /// environment is closing).
    pub fn wake(&self) -> bool {
        self.send(FROM_GUESTS)
    }

    /// Wakes the JS thread again on its next turn, for the work a turn woken by `woken_by` left.
    pub fn next_turn(&self, woken_by: u32) -> bool {
        self.send(if woken_by == FROM_GUESTS { FROM_LAST_TURN } else { FROM_GUESTS })
    }

    fn send(&self, which: u32) -> bool {
        let f = if which == FROM_GUESTS { &self.from_guests } else { &self.from_last_turn };
        f.call_with_return_value(which, ThreadsafeFunctionCallMode::NonBlocking, |_, _| Ok(())) == Status::Ok
    }
}

/// One turn's work on the JS thread, woken by `woken_by`: `next` does one piece (false when none
/// is left) until `spent(pieces done)` says the turn's budget is spent; then, if `waiting` says
/// work is left, the JS thread is woken for its next turn (or, should it not be woken again, the
/// rest is done now).
pub fn turn(
    nudges: &Weak<Mutex<Option<Nudges>>>,
    woken_by: u32,
    waiting: impl Fn() -> bool,
    mut spent: impl FnMut(usize) -> bool,
    mut next: impl FnMut() -> bool,
) {
    let mut budget = true;
    for n in 0.. {
        if budget && spent(n) {
            if !waiting() {
                return;
            }
            let nudges = nudges.upgrade();
            let nudges = nudges.as_ref().map(|n| n.lock().unwrap_or_else(|p| p.into_inner()));
            if nudges.as_ref().and_then(|n| n.as_ref()).is_some_and(|n| n.next_turn(woken_by)) {
                return;
            }
            budget = false;
        }
        if !next() {
            return;
        }
    }
}
