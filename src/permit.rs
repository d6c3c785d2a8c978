//! A call's concurrency slot (`maxConcurrency`), given back while its guest waits on the host (a
//! host function's Promise, an HTTP response): a waiting call holds neither a thread nor a slot,
//! so two guest threads serve a thousand calls that each wait 50 ms.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct PermitSlot {
    sem: Arc<Semaphore>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
}

impl PermitSlot {
    pub fn new(sem: Arc<Semaphore>, permit: OwnedSemaphorePermit) -> Arc<Self> {
        Arc::new(PermitSlot { sem, held: Mutex::new(Some(permit)) })
    }

    /// Gives the slot back for good (the call runs no more guest code).
    pub fn release(&self) {
        drop(self.held.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Runs `wait` without the slot, then takes a slot again (in line with calls that want one)
    /// before the guest goes on.
    pub async fn without<F: Future>(&self, wait: F) -> F::Output {
        drop(self.held.lock().unwrap_or_else(|p| p.into_inner()).take());
        let out = wait.await;
        if let Ok(p) = self.sem.clone().acquire_owned().await {
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_slot_is_free_while_waiting_and_taken_again_after() {
        let sem = Arc::new(Semaphore::new(1));
        let slot = PermitSlot::new(sem.clone(), sem.clone().acquire_owned().await.unwrap());
        assert_eq!(sem.available_permits(), 0);
        let seen = slot.without(async { sem.available_permits() }).await;
        assert_eq!(seen, 1, "the slot is free during the wait");
        assert_eq!(sem.available_permits(), 0, "and held again after");
        drop(slot);
        assert_eq!(sem.available_permits(), 1);
    }
}
