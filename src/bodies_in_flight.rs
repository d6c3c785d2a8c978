//! Response bodies the host reads for guests, bounded for the whole process.
//!
//! A guest's HTTP request (`loom.http`, Extism's `http_request`, a component's `wasi:http`) has
//! its response body read whole into host memory, up to `maxResponseBytes`, before the guest gets
//! it. A call waiting on the network gives its concurrency slot back, so nothing else bounded how
//! many bodies were being read at once: 250 calls of guests capped at 1 MiB each made 2.7 GiB of
//! host memory (review AA). Every body now holds its bytes, as they arrive, from one budget of
//! the process (`Budget::process`: a sixteenth of the machine's memory, between 128 MiB and 1
//! GiB); a body that would pass it waits for room (until its request's timeout), and its bytes go
//! back when the response is dropped (once the guest has its copy).

use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget's unit: bytes are held in whole KiB.
const UNIT: u64 = 1024;

/// A budget of bytes (one for the process: `process`; tests make small ones).
pub struct Budget {
    units: Arc<Semaphore>,
    total: u64,
}

/// What one body holds of a budget (given back when dropped).
#[derive(Debug)]
pub struct Held {
    budget: Arc<Semaphore>,
    total: u64,
    permit: Option<OwnedSemaphorePermit>,
    units: u64,
}

/// A body the whole budget could not hold (it would wait forever): the budget, in bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget(pub u64);

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let total = (bytes / UNIT).clamp(1, u32::MAX as u64);
        Budget { units: Arc::new(Semaphore::new(total as usize)), total }
    }

    /// The process's budget.
    pub fn process() -> &'static Budget {
        static BUDGET: OnceLock<Budget> = OnceLock::new();
        BUDGET.get_or_init(|| Budget::new((crate::options::physical_memory_bytes() / 16).clamp(128 << 20, 1 << 30)))
    }

    /// A body's share, holding nothing yet.
    pub fn hold(&self) -> Held {
        Held { budget: self.units.clone(), total: self.total, permit: None, units: 0 }
    }

    /// The budget in bytes.
    pub fn bytes(&self) -> u64 {
        self.total * UNIT
    }

    /// Bytes held now, all bodies together.
    pub fn held_bytes(&self) -> u64 {
        self.total.saturating_sub(self.units.available_permits() as u64) * UNIT
    }
}

impl Held {
    /// Holds enough for a body of `bytes`, waiting for room; `OverBudget` at once for a body the
    /// whole budget could not hold.
    pub async fn cover(&mut self, bytes: u64) -> Result<(), OverBudget> {
        let want = bytes.div_ceil(UNIT);
        if want <= self.units {
            return Ok(());
        }
        if want > self.total {
            return Err(OverBudget(self.total * UNIT));
        }
        // At most `total`, which fits a u32; the semaphore is never closed.
        let more = (want - self.units) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(more).await else {
            return Err(OverBudget(self.total * UNIT));
        };
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        self.units = want;
        Ok(())
    }

    /// Bytes this body holds (whole units).
    pub fn bytes(&self) -> u64 {
        self.units * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bodies_hold_their_bytes_wait_for_room_and_give_them_back() {
        let budget = Budget::new(8 * UNIT);
        let mut a = budget.hold();
        a.cover(1).await.expect("room");
        assert_eq!((a.bytes(), budget.held_bytes()), (UNIT, UNIT));
        a.cover(5 * UNIT).await.expect("room");
        a.cover(3 * UNIT).await.expect("held already");
        assert_eq!(budget.held_bytes(), 5 * UNIT);
        // More than the whole budget: refused at once, not waited for.
        let mut b = budget.hold();
        assert_eq!(b.cover(8 * UNIT + 1).await, Err(OverBudget(8 * UNIT)));
        // Room for 3 units: a body of 4 waits until the first goes.
        b.cover(3 * UNIT).await.expect("room");
        let mut c = budget.hold();
        let waited = tokio::time::timeout(Duration::from_millis(50), c.cover(UNIT)).await;
        assert!(waited.is_err(), "the budget is full: the third body waits");
        drop(a);
        assert_eq!(budget.held_bytes(), 3 * UNIT);
        tokio::time::timeout(Duration::from_secs(5), c.cover(4 * UNIT)).await.expect("room once the first went").expect("fits");
        assert_eq!(budget.held_bytes(), 7 * UNIT);
        drop((b, c));
        assert_eq!(budget.held_bytes(), 0);
        assert!(Budget::process().bytes() >= 128 << 20 && Budget::process().bytes() <= 1 << 30);
    }
}
