//! Artifact bytes read into memory and not yet authenticated, held at once: by the whole
//! process's `cacheDir` reads, and by each executor's artifact store lookups (review AO1: one
//! budget for both let a store that held it keep every executor's `cacheDir` loads from loading).
//!
//! An artifact's tag can only be checked once all of it is read, so whoever can write to
//! `cacheDir` or the artifact store can plant a large object under an artifact's name and have it
//! read whole before it is refused: up to `MAX_ARTIFACT_BYTES` (2 GiB) for each module loading at
//! once, unbounded together. Every read of an artifact therefore first takes its size (known
//! before its body: the file's length, the answer's head) from a budget; a read the budget
//! cannot take now is not made, and the module is compiled as if no tier had its artifact.
//! Nothing waits for the budget: a lookup that waited while the store sent nothing would be
//! judged a stalled store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// What the process's artifact reads may hold before their tags are checked. An artifact is its
/// code (at most `maxCodeBytes`, 256 MiB by default, and the largest compile measured made
/// 21.5 MB) and its memory image; the 12 MB JavaScript component's is 37 MB.
pub const MAX_UNCHECKED_BYTES: u64 = 1 << 30;

/// What all executors' artifact store lookups may hold together, each executor's within its own
/// `MAX_UNCHECKED_BYTES` (review AO1F: three executors on a store sending 1 GiB bodies took the
/// process to 3 GiB) and within its share of this (`UncheckedBytes::share`).
pub const MAX_STORE_UNCHECKED_BYTES: u64 = 2 << 30;

/// The least share of a budget an executor may hold, however many share it: 64 MiB, above an
/// honest artifact's usual size (the 12 MB JavaScript component's is 37 MB).
pub const MIN_SHARE: u64 = 64 << 20;

/// The process's budget for artifact store lookups, all executors together.
pub fn store_reads() -> &'static UncheckedBytes {
    static STORE: OnceLock<UncheckedBytes> = OnceLock::new();
    STORE.get_or_init(|| UncheckedBytes::with_max(MAX_STORE_UNCHECKED_BYTES))
}

struct Budget {
    max: u64,
    held: AtomicU64,
    /// Executors sharing it (`register`).
    users: std::sync::atomic::AtomicUsize,
    /// The most `held` has been (tests).
    peak: AtomicU64,
}

/// A handle on a budget of unchecked artifact bytes: by default the process's one (`cacheDir`).
#[derive(Clone)]
pub struct UncheckedBytes(Arc<Budget>);

impl Default for UncheckedBytes {
    fn default() -> Self {
        static PROCESS: OnceLock<UncheckedBytes> = OnceLock::new();
        PROCESS.get_or_init(|| UncheckedBytes::with_max(MAX_UNCHECKED_BYTES)).clone()
    }
}

impl UncheckedBytes {
    /// A budget of its own of `max` bytes.
    pub fn with_max(max: u64) -> Self {
        UncheckedBytes(Arc::new(Budget { max, held: AtomicU64::new(0), users: Default::default(), peak: AtomicU64::new(0) }))
    }

    /// `n` bytes of the budget until the result is dropped, if it has them now.
    pub fn take(&self, n: u64) -> Option<Admitted> {
        let b = &self.0;
        let was = b.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| held.checked_add(n).filter(|&t| t <= b.max)).ok()?;
        b.peak.fetch_max(was + n, Ordering::AcqRel);
        Some(Admitted { budget: self.0.clone(), n })
    }

    /// What it holds at most.
    pub fn max(&self) -> u64 {
        self.0.max
    }

    /// Counts an executor among those sharing this budget until the result is dropped.
    pub fn register(&self) -> Registered {
        self.0.users.fetch_add(1, Ordering::AcqRel);
        Registered(self.0.clone())
    }

    /// What one of the executors sharing it may hold: an equal share, at least `MIN_SHARE`
    /// (review AO2: two executors whose stores each held 1 GiB of the process's 2 GiB kept every
    /// other executor's lookups from loading). Stores of a few executors holding their shares
    /// leave the others theirs (up to `max / MIN_SHARE` executors).
    pub fn share(&self) -> u64 {
        (self.0.max / self.0.users.load(Ordering::Acquire).max(1) as u64).max(MIN_SHARE).min(self.0.max)
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.0.held.load(Ordering::Acquire)
    }

    /// The most ever held at once.
    pub fn peak(&self) -> u64 {
        self.0.peak.load(Ordering::Acquire)
    }
}

/// An executor counted among a budget's users (`UncheckedBytes::register`), until dropped.
pub struct Registered(Arc<Budget>);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes taken from a budget, given back when dropped (once the artifact's tag was checked, or
/// the read failed).
pub struct Admitted {
    budget: Arc<Budget>,
    n: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_its_max_and_gives_back_what_is_dropped() {
        let b = UncheckedBytes::with_max(100);
        let first = b.take(60).expect("room");
        assert!(b.take(41).is_none(), "over the max");
        assert!(b.take(u64::MAX).is_none(), "no overflow");
        let second = b.take(40).expect("exactly the rest");
        assert_eq!(b.held(), 100);
        drop(first);
        assert_eq!(b.held(), 40);
        assert!(b.take(60).is_some());
        drop(second);
        assert_eq!((b.held(), b.peak()), (0, 100));
    }

    #[test]
    fn a_share_is_the_budget_over_its_users_but_never_under_min_share() {
        let b = UncheckedBytes::with_max(MIN_SHARE * 3);
        assert_eq!(b.share(), MIN_SHARE * 3);
        let users: Vec<_> = (0..3).map(|_| b.register()).collect();
        assert_eq!(b.share(), MIN_SHARE);
        let more = b.register();
        assert_eq!(b.share(), MIN_SHARE);
        drop((users, more));
        assert_eq!(b.share(), MIN_SHARE * 3);
        assert_eq!(UncheckedBytes::with_max(10).share(), 10, "never over the budget");
    }
}
