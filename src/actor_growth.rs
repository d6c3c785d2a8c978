//! An actor's memory watched across its calls: steady growth means a guest runtime that never
//! frees (AssemblyScript's `--runtime stub`), which the executor warns about once.

/// Watches an actor's memory across calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Growth {
    pub first_bytes: u64,
    pub calls: u64,
    /// The last call's bytes, and how many calls grew the memory since `first_bytes`.
    last_bytes: u64,
    grew: u64,
    /// Told already (for the actor, whatever instances it has had since).
    told: bool,
}

impl Growth {
    /// Calls watched before judging.
    pub const CALLS: u64 = 200;
    /// Growth over `CALLS` calls that counts as never freeing (three 64 KiB pages).
    pub const BYTES: u64 = 3 * 65536;
    /// Calls that grew the memory, at least, for the growth to be steady (one call that kept
    /// 256 KiB was told as a runtime that never frees: review AJ).
    pub const GROWING_CALLS: u64 = 3;

    /// The watch of the actor's next instance: the actor is told once, not once per instance
    /// (a leaking actor run out of memory again and again was told each time: review AJ).
    pub fn next_instance(self) -> Growth {
        Growth { told: self.told, ..Default::default() }
    }

    /// Records a call that left the instance with `bytes`; the growth per call when the
    /// instance has grown steadily enough to warn about (once: the watch then stops).
    pub fn record(&mut self, bytes: u64) -> Option<u64> {
        if self.told {
            return None;
        }
        if self.calls == 0 {
            (self.first_bytes, self.last_bytes, self.grew) = (bytes, bytes, 0);
        }
        self.calls += 1;
        self.grew += u64::from(bytes > self.last_bytes);
        self.last_bytes = bytes;
        if self.calls >= Self::CALLS && bytes >= self.first_bytes + Self::BYTES && self.grew >= Self::GROWING_CALLS {
            let per_call = (bytes - self.first_bytes) / (self.calls - 1);
            self.told = true;
            return Some(per_call);
        }
        if self.calls >= 50 * Self::CALLS {
            // Flat for a long while: the watch starts again from here (it stopped for good, and
            // growth that began later ran the actor out of memory unannounced: review AJ).
            self.calls = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first call that warns, of `calls` growing by a page each after `flat` flat ones.
    fn warned_at(flat: u64, calls: u64) -> Option<u64> {
        let mut g = Growth::default();
        let base = 1 << 20;
        (0..flat).for_each(|_| assert_eq!(g.record(base), None));
        (1..=calls).find(|i| g.record(base + i * 65536).is_some())
    }

    #[test]
    fn steady_growth_is_told_once_however_long_the_actor_was_flat_before() {
        assert_eq!(warned_at(0, 1000), Some(Growth::CALLS));
        for flat in [Growth::CALLS, 50 * Growth::CALLS - 1, 50 * Growth::CALLS, 200_000] {
            let at = warned_at(flat, 1000).unwrap_or_else(|| panic!("growth after {flat} flat calls unannounced"));
            assert!(at <= 2 * Growth::CALLS, "{flat} flat calls: told after {at} growing ones");
        }
        let mut g = Growth::default();
        let told = (1..=100_000u64).filter(|i| g.record(i * 65536).is_some()).count();
        assert_eq!(told, 1, "once");
        let mut next = g.next_instance();
        assert_eq!((1..=1000u64).filter(|i| next.record(i * 65536).is_some()).count(), 0, "once for the actor, not per instance");
    }

    #[test]
    fn one_call_that_keeps_memory_is_no_steady_growth() {
        let mut g = Growth::default();
        let base = 1 << 20;
        for i in 0..10_400u64 {
            let bytes = if i < 10_000 { base } else { base + 4 * 65536 };
            assert_eq!(g.record(bytes), None, "call {i}");
        }
        // Growth in three calls is.
        let mut g = Growth::default();
        let told: Vec<u64> = (0..400u64).filter(|i| g.record(base + [0, 1, 2, 3][(*i as usize / 60).min(3)] * 65536).is_some()).collect();
        assert_eq!(told, [Growth::CALLS - 1], "at the 200th call");
    }
}
