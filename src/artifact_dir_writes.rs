//! An executor's `cacheDir` writes off its calls' paths (code taken from another executor, a
//! tier-up's optimized code): `close()` resolves after those under way end, and none begins
//! after it (review AR1: a process that took shared code and exited after `await close()` lost
//! its `cacheDir` write, and the next process compiled again; the file landed after `close()`
//! resolved, racing whoever removed the directory next).

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct DirWrites(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// (writes under way, closed)
    state: Mutex<(usize, bool)>,
    idle: Notify,
    closing: Notify,
}

/// A write under way; it ends when this is dropped.
pub struct Begun(DirWrites);

impl DirWrites {
    /// A write begun, unless closed.
    pub fn begin(&self) -> Option<Begun> {
        let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.1 {
            return None;
        }
        state.0 += 1;
        Some(Begun(self.clone()))
    }

    /// No write begins from now on.
    pub fn close(&self) {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.0.closing.notify_waiters();
    }

    /// Resolves once closed.
    async fn closed(&self) {
        loop {
            let notified = self.0.closing.notified();
            if self.0.state.lock().unwrap_or_else(|p| p.into_inner()).1 {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once no write is under way, or after `most` (a `cacheDir` on a filesystem that
    /// stops answering would hold `close()` for ever; the write goes on in the background).
    /// Whether none is under way.
    pub async fn idle_within(&self, most: std::time::Duration) -> bool {
        tokio::time::timeout(most, self.idle()).await.is_ok()
    }

    /// Resolves once no write is under way.
    pub async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.0.state.lock().unwrap_or_else(|p| p.into_inner()).0 == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Begun {
    /// Resolves once `close()` waits for this write.
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

impl Drop for Begun {
    fn drop(&mut self) {
        let mut state = self.0 .0.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 -= 1;
        if state.0 == 0 {
            self.0 .0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_writes_under_way_and_none_begins_once_closed() {
        let writes = DirWrites::default();
        writes.idle().await;
        let (a, b) = (writes.begin().expect("open"), writes.begin().expect("open"));
        let told = tokio::spawn({
            let writes = writes.clone();
            async move { writes.closed().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!told.is_finished(), "open");
        writes.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), a.closed()).await.expect("a write is told");
        tokio::time::timeout(std::time::Duration::from_secs(5), told).await.expect("told").expect("not cancelled");
        assert!(writes.begin().is_none(), "closed");
        let waiting = tokio::spawn({
            let writes = writes.clone();
            async move { writes.idle().await }
        });
        drop(a);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one still under way");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("idle").expect("not cancelled");
    }

    #[tokio::test]
    async fn a_write_that_never_ends_holds_the_wait_only_so_long() {
        let writes = DirWrites::default();
        assert!(writes.idle_within(std::time::Duration::from_millis(1)).await, "none under way");
        let stuck = writes.begin().expect("open");
        writes.close();
        let start = std::time::Instant::now();
        assert!(!writes.idle_within(std::time::Duration::from_millis(50)).await, "one under way");
        assert!(start.elapsed() >= std::time::Duration::from_millis(50), "waited its time");
        let waiting = tokio::spawn({
            let writes = writes.clone();
            async move { writes.idle_within(std::time::Duration::from_secs(5)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(stuck);
        assert!(tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("ends").expect("not cancelled"));
    }
}
