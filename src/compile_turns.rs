//! The calls' compile slots, taken in turns by executor: when a slot frees, it goes to the
//! executor after the last one served that has a compile waiting, each executor's own compiles
//! in the order they came. Taken first come, first served, one tenant's twenty compiles of
//! large modules held another's first call of a 15 KB module 28.7 s (review AT2: past its
//! `compileTimeoutMs`, the call failed); in turns it waits for at most one compile per executor
//! ahead of it (and those running).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::oneshot;

/// Who a compile is for: an executor's module cache (`ModuleCache::compile_owner`).
pub type Owner = u64;

/// A new owner for an executor's compiles.
pub fn new_owner() -> Owner {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub struct Turns {
    state: Mutex<State>,
}

struct State {
    free: usize,
    /// Each owner's compiles waiting, in the order they came.
    waiting: HashMap<Owner, VecDeque<oneshot::Sender<Turn>>>,
    /// Owners with compiles waiting, the next to be served first.
    order: VecDeque<Owner>,
}

/// A slot, given back when dropped.
pub struct Turn {
    turns: &'static Turns,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.turns.give_back();
    }
}

impl Turns {
    pub fn new(slots: usize) -> Turns {
        Turns { state: Mutex::new(State { free: slots, waiting: HashMap::new(), order: VecDeque::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `owner`'s compile, once its turn comes.
    pub async fn take(&'static self, owner: Owner) -> Turn {
        let rx = {
            let mut s = self.lock();
            if s.free > 0 && s.order.is_empty() {
                s.free -= 1;
                return Turn { turns: self };
            }
            let (tx, rx) = oneshot::channel();
            let s = &mut *s;
            let queue = s.waiting.entry(owner).or_default();
            if queue.is_empty() {
                s.order.push_back(owner);
            }
            queue.push_back(tx);
            rx
        };
        match rx.await {
            Ok(turn) => turn,
            // Never: a sender is only dropped sending (the turn goes to the next one waiting).
            Err(_) => Box::pin(self.take(owner)).await,
        }
    }

    /// A slot freed: to the next owner in turn with a compile still waiting, else free.
    fn give_back(&'static self) {
        let mut s = self.lock();
        while let Some(owner) = s.order.pop_front() {
            let Some(queue) = s.waiting.get_mut(&owner) else { continue };
            let next = queue.pop_front();
            if queue.is_empty() {
                s.waiting.remove(&owner);
            } else {
                s.order.push_back(owner);
            }
            if let Some(tx) = next {
                match tx.send(Turn { turns: self }) {
                    Ok(()) => return,
                    // Its caller left: not dropped here (that would give it back again, under the
                    // lock); the slot goes on to the next.
                    Err(turn) => std::mem::forget(turn),
                }
            }
        }
        s.free += 1;
    }

    /// Compiles waiting (tests).
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().waiting.values().map(VecDeque::len).sum()
    }

    /// Compiles of `owner` waiting (tests: other tests' compiles wait beside them).
    #[cfg(test)]
    pub fn waiting_of(&self, owner: Owner) -> usize {
        self.lock().waiting.get(&owner).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn turns(slots: usize) -> &'static Turns {
        Box::leak(Box::new(Turns::new(slots)))
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_owner_in_turn_each_owners_compiles_in_order() {
        let t = turns(1);
        let running = t.take(1).await;
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Owner 1 queues five compiles, then owner 2 one.
        for (owner, n) in [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)] {
            let served = served.clone();
            tasks.push(tokio::spawn(async move {
                let turn = t.take(owner).await;
                served.lock().expect("served").push((owner, n));
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                drop(turn);
            }));
            while t.waiting() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(running);
        for task in tasks {
            task.await.expect("ran");
        }
        // Owner 2's compile came second, not sixth.
        assert_eq!(*served.lock().expect("served"), vec![(1, 0), (2, 0), (1, 1), (1, 2), (1, 3), (1, 4)]);
    }

    #[tokio::test]
    async fn a_caller_that_left_passes_its_turn_on_and_slots_are_never_lost() {
        let t = turns(2);
        let (a, b) = (t.take(1).await, t.take(1).await);
        let left = tokio::spawn(async move { t.take(2).await });
        while t.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        left.abort();
        let _ = left.await;
        let next = tokio::spawn(async move { t.take(3).await });
        while t.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        drop(a);
        let turn = tokio::time::timeout(std::time::Duration::from_secs(5), next).await.expect("passed on").expect("ran");
        drop((turn, b));
        // Both slots free again: two taken at once without waiting.
        let both = tokio::time::timeout(std::time::Duration::from_secs(5), async { (t.take(4).await, t.take(5).await) }).await;
        assert!(both.is_ok(), "no slot lost");
    }
}
