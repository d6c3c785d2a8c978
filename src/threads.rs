//! The guest threads: a fixed set of OS threads (one per concurrency slot) that run guest code,
//! fed straight from the caller's thread. A call that can start at once pays one hand-off to a
//! waiting thread, nothing else; the async runtime is only involved when a call has to wait.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

pub struct GuestThreads {
    shared: Arc<Shared>,
}

/// Guest code runs on wasmtime's fiber stacks, not these; the threads run host code (the block_on
/// loop, WASI's blocking runtime, artifact I/O). Generous headroom costs only address space.
const STACK_BYTES: usize = 8 * 1024 * 1024;

impl GuestThreads {
    pub fn new(count: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        for i in 0..count.max(1) {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("loom-wasm-guest-{i}"))
                .stack_size(STACK_BYTES)
                .spawn(move || worker(&s))?;
        }
        Ok(GuestThreads { shared })
    }

    /// Runs `job` on a guest thread. The executor submits only jobs that hold a concurrency
    /// permit, so a thread is free for each.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.jobs.push_back(Box::new(job));
        drop(q);
        self.shared.ready.notify_one();
    }
}

fn worker(s: &Shared) {
    loop {
        let job = {
            let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = s.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        // Jobs report their own failures; a panic must not take the thread down with it.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

/// Drives a future to completion on this thread (a guest call's fiber, possibly suspended
/// elsewhere before), parking between polls.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => return v,
            std::task::Poll::Pending => std::thread::park(),
        }
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_jobs_and_survives_panics() {
        let threads = GuestThreads::new(2).expect("threads start");
        let (tx, rx) = mpsc::channel();
        threads.submit(|| panic!("a job panics"));
        for i in 0..10 {
            let tx = tx.clone();
            threads.submit(move || tx.send(i).expect("receiver alive"));
        }
        let mut got: Vec<i32> = (0..10).map(|_| rx.recv().expect("job ran")).collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
