//! Deterministic calls (`definition.deterministic`): the clock and the randomness a guest sees come
//! from the call (`{ now, seed }`, default 0 and 0), not from the host, so the same state, input and
//! options give byte-identical output and byte-identical next state: a workflow can replay an
//! actor's steps. Covers `env.Date.now`, `env.seed` (AssemblyScript's `Math.random` seed) and WASI's
//! clocks and random (a deterministic WASI context is built for each call).

use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// What a deterministic call's guest sees as time and randomness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Determinism {
    /// Milliseconds since the Unix epoch.
    pub now_ms: f64,
    pub seed: u64,
}

impl Determinism {
    /// What an actor's start function and a module's initial image run under in a deterministic
    /// definition: clocks at 0, randomness seeded with 0, on every worker (review BK1, BL1).
    pub const START: Determinism = Determinism { now_ms: 0.0, seed: 0 };

    /// `env.seed`: a double derived from the seed (AssemblyScript seeds `Math.random` with it).
    pub fn seed_value(&self) -> f64 {
        (splitmix64(self.seed) >> 11) as f64
    }

    /// The bytes WASI's random functions return, in a cycle (derived from the seed).
    pub fn random_bytes(&self) -> Vec<u8> {
        let mut state = self.seed ^ 0x9E37_79B9_7F4A_7C15;
        (0..1024).flat_map(|_| {
            state = splitmix64(state);
            state.to_le_bytes()
        })
        .collect()
    }

    pub fn wall_clock(&self) -> FixedWallClock {
        // `options.now` is checked to Date's range; a time no Duration holds would panic.
        FixedWallClock(Duration::try_from_secs_f64((self.now_ms / 1000.0).max(0.0)).unwrap_or_default())
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// WASI's wall clock, stopped at the call's `now`.
pub struct FixedWallClock(Duration);

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// WASI's monotonic clock, stopped at 0.
pub struct FixedMonotonicClock;

impl HostMonotonicClock for FixedMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The monotonic clock of a call that is not deterministic: nanoseconds since the process first
/// read it, so it never goes back across an actor's WASI contexts (each rebuilt context had
/// started its own from 0: 1003.7 ms, then 0.008 ms after a deterministic call; review O).
pub struct ProcessMonotonicClock;

impl HostMonotonicClock for ProcessMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_nanos().min(u64::MAX as u128) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_options_give_the_same_values() {
        let a = Determinism { now_ms: 1_700_000_000_000.0, seed: 42 };
        let b = a;
        assert_eq!(a.seed_value(), b.seed_value());
        assert_eq!(a.random_bytes(), b.random_bytes());
        assert_ne!(a.seed_value(), Determinism { seed: 43, ..a }.seed_value());
        assert_eq!(a.wall_clock().now(), Duration::from_millis(1_700_000_000_000));
    }
}
