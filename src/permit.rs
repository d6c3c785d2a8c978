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
    /// before the guest goes on. A `wait` ready at once keeps the slot (a WASI poll of nothing
    /// pending, a host function answered synchronously): it does not go to the back of the line.
    pub async fn without<F: Future>(&self, wait: F) -> F::Output {
        let mut wait = std::pin::pin!(wait);
        if let std::task::Poll::Ready(out) = wait.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            return out;
        }
        drop(self.held.lock().unwrap_or_else(|p| p.into_inner()).take());
        let out = wait.await;
        if let Ok(p) = self.sem.clone().acquire_owned().await {
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        }
        out
    }
}

/// Waits for `wait` with the call's concurrency slot given back, if the call has one.
pub async fn without_slot<F: Future>(permit: Option<&PermitSlot>, wait: F) -> F::Output {
    match permit {
        Some(p) => p.without(wait).await,
        None => wait.await,
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
        let seen = slot.without(async { tokio::task::yield_now().await; sem.available_permits() }).await;
        assert_eq!(seen, 1, "the slot is free during the wait");
        assert_eq!(sem.available_permits(), 0, "and held again after");
        drop(slot);
        assert_eq!(sem.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_wait_ready_at_once_keeps_the_slot() {
        let sem = Arc::new(Semaphore::new(1));
        let slot = PermitSlot::new(sem.clone(), sem.clone().acquire_owned().await.unwrap());
        let seen = slot.without(async { sem.available_permits() }).await;
        assert_eq!(seen, 0, "a wait ready at once kept the slot");
        let waited = slot.without(async { tokio::task::yield_now().await; sem.available_permits() }).await;
        assert_eq!(waited, 1, "a wait that is pending gives the slot back");
        assert_eq!(sem.available_permits(), 0);
    }
}
