//! Inline starts: how much of the caller's thread (Node's event loop) calls may use before they
//! move to a guest thread. Two bounds, both process-wide:
//!
//! - a clock: inline attempts together may take `SHARE` of the thread's time, with a burst of at
//!   most `BURST`; an attempt that overruns leaves a debt that later attempts wait out (nothing
//!   is forgotten at a window's edge);
//! - a gate per module: a module whose call overran its inline budget is kept off the caller's
//!   thread for its next calls, twice as many after each overrun; a fast call does not undo it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long one call may run inline before it is moved to a guest thread.
pub const BUDGET: Duration = Duration::from_millis(1);
/// The share of the caller's thread that inline attempts may take over time.
const SHARE: f64 = 0.2;
/// The most inline time that may be spent at once after a quiet spell.
const BURST: Duration = Duration::from_millis(4);
/// Inputs larger than this are not run inline: converting them is work enough.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

struct Clock {
    last: Instant,
    /// Inline time available now, in seconds; negative while a debt is being waited out.
    credit: f64,
}

impl Clock {
    fn new() -> Clock {
        Clock { last: Instant::now(), credit: BURST.as_secs_f64() }
    }
    fn refill(&mut self) {
        let now = Instant::now();
        self.credit = (self.credit + now.duration_since(self.last).as_secs_f64() * SHARE).min(BURST.as_secs_f64());
        self.last = now;
    }
    fn admit(&mut self) -> bool {
        self.refill();
        self.credit > 0.0
    }
    fn spend(&mut self, d: Duration) {
        self.refill();
        self.credit -= d.as_secs_f64();
    }
}

fn clock() -> std::sync::MutexGuard<'static, Clock> {
    static CLOCK: OnceLock<Mutex<Clock>> = OnceLock::new();
    CLOCK.get_or_init(|| Mutex::new(Clock::new())).lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the caller's thread may run a call inline now.
pub fn admit() -> bool {
    clock().admit()
}

/// Records what an inline attempt took (all of it, however far past its budget).
pub fn spend(d: Duration) {
    clock().spend(d)
}

/// The per-module back-off.
#[derive(Debug, Default)]
pub struct Gate {
    overruns: AtomicU32,
    /// Calls still to be kept off the caller's thread.
    skip: AtomicU32,
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
        self.skip.store(16u32 << n, Ordering::Relaxed);
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
        g.overran();
        let refused = (0..100).take_while(|_| !g.admit()).count();
        assert_eq!(refused, 32);
    }

    #[test]
    fn overspending_leaves_a_debt() {
        // Spend far more than the burst: admission stays closed until the debt is paid back at
        // SHARE of real time.
        let mut c = Clock::new();
        assert!(c.admit());
        c.spend(Duration::from_millis(50));
        assert!(!c.admit());
        std::thread::sleep(Duration::from_millis(20));
        assert!(!c.admit(), "20 ms repays only 4 ms of a 50 ms debt");
    }
}
