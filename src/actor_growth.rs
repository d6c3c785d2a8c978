//! An actor's memory watched across its calls: steady growth means a guest runtime that never
//! frees (AssemblyScript's `--runtime stub`), which the executor warns about once.

/// Watches an actor's memory across calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Growth {
    pub first_bytes: u64,
    pub calls: u64,
}

impl Growth {
    /// Calls watched before judging.
    pub const CALLS: u64 = 200;
    /// Growth over `CALLS` calls that counts as never freeing (three 64 KiB pages).
    pub const BYTES: u64 = 3 * 65536;

    /// Records a call that left the instance with `bytes`; the growth per call when the
    /// instance has grown steadily enough to warn about (once: the watch then stops).
    pub fn record(&mut self, bytes: u64) -> Option<u64> {
        if self.calls == u64::MAX {
            return None;
        }
        if self.calls == 0 {
            self.first_bytes = bytes;
        }
        self.calls += 1;
        if self.calls >= Self::CALLS && bytes >= self.first_bytes + Self::BYTES {
            let per_call = (bytes - self.first_bytes) / (self.calls - 1);
            self.calls = u64::MAX;
            return Some(per_call);
        }
        if self.calls >= 50 * Self::CALLS {
            // Flat for a long while: stop watching.
            self.calls = u64::MAX;
        }
        None
    }
}
