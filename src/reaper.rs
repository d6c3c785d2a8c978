//! Drops spent instances on a thread of its own, off the path of the call that used them.
//!
//! Dropping a pooled instance resets its slot for the next one: wasmtime zeroes (or copies the
//! data image back into) the first `engine::KEEP_RESIDENT_BYTES` of its linear memory, whatever
//! the guest touched. For a guest whose memory is a megabyte or more (C, Rust, Zig, an Extism
//! plugin) that memset was a third of a fresh-instance call, run on the JS thread when the call
//! finished inline, before its promise settled. Handed here instead, it runs beside the next
//! call.
//!
//! What is handed over is bounded: at most `MAX_QUEUED` wait at once, besides the one being
//! dropped (past that, the caller drops its own), so a busy machine, where this low-priority
//! thread gets little time, keeps at most that many pool slots in limbo and falls back to
//! dropping in place. The slot goes back to
//! the pool only once reset, as before: a later instance never sees a guest's data. An
//! instantiation the full pool refused calls `settle` and tries again; the room kept for actors
//! leaves out the slots held here (`holding`).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};

type Spent = Box<dyn Send>;

/// Drops waiting for the thread at most: two kept a fresh-instance Extism plugin's throughput at
/// 16 calls in flight where eight did (38-45k calls/s, against 31-35k dropping in place), with 14
/// MiB less resident (freed slots keep their first 2 MiB).
pub const MAX_QUEUED: usize = 2;

/// The longest `settle` waits for the drop under way on the thread (a drop takes microseconds to
/// a millisecond; the thread's low priority may make it wait longer on a busy machine).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Drops handed over to the thread since the process started.
static HANDED_OVER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Default)]
struct Queue {
    items: VecDeque<Spent>,
    /// The thread is dropping one it took (not in `items` any more).
    busy: bool,
    /// The thread is waiting for work (a hand-over must wake it).
    asleep: bool,
    /// Drops the thread has finished.
    done: u64,
}

struct Reaper {
    queue: Mutex<Queue>,
    /// Work for the thread.
    work: Condvar,
    /// The thread finished a drop (for `settle`).
    done: Condvar,
}

/// The process's reaper (none if its thread could not start: everything is dropped in place).
fn reaper() -> Option<&'static Reaper> {
    *REAPER.get_or_init(Reaper::start)
}

static REAPER: OnceLock<Option<&'static Reaper>> = OnceLock::new();

impl Reaper {
    /// A reaper with its thread, for the life of the process.
    fn start() -> Option<&'static Reaper> {
        let r: &'static Reaper =
            Box::leak(Box::new(Reaper { queue: Mutex::new(Queue::default()), work: Condvar::new(), done: Condvar::new() }));
        std::thread::Builder::new().name("loom-wasm-reaper".into()).spawn(move || r.run()).ok().map(|_| r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand_over(&self, spent: Spent) {
        let mut q = self.lock();
        if q.items.len() >= MAX_QUEUED {
            drop(q);
            drop(spent);
            return;
        }
        q.items.push_back(spent);
        HANDED_OVER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wake = q.asleep;
        drop(q);
        if wake {
            self.work.notify_one();
        }
    }

    fn settle(&self) -> usize {
        let (queued, busy, done) = {
            let mut q = self.lock();
            (q.items.drain(..).collect::<Vec<Spent>>(), q.busy, q.done)
        };
        let settled = queued.len() + usize::from(busy);
        queued.into_iter().for_each(drop_quietly);
        if busy {
            // Only the drop under way now: those handed over meanwhile are not waited for (a
            // stream of them would keep the thread busy for good), nor past `SETTLE_WAIT`.
            let until = std::time::Instant::now() + SETTLE_WAIT;
            let mut q = self.lock();
            while q.done == done {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                q = self.done.wait_timeout(q, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        settled
    }

    fn run(&self) {
        crate::threads::lower_priority();
        let mut q = self.lock();
        loop {
            let Some(spent) = q.items.pop_front() else {
                q.asleep = true;
                q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
                q.asleep = false;
                continue;
            };
            q.busy = true;
            drop(q);
            drop_quietly(spent);
            q = self.lock();
            q.busy = false;
            q.done += 1;
            self.done.notify_all();
        }
    }
}

/// A drop that panics loses only itself (and whatever it held: a pool slot it did not give back
/// stays taken), said on stderr: the thread (the reaper's, or one settling) goes on.
fn drop_quietly(spent: Spent) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(spent))).is_err() {
        // Not `eprintln!`, which panics when stderr cannot be written (a full non-blocking pipe).
        let _ = writeln!(std::io::stderr(), "loom-wasm-executor: dropping a spent instance panicked; what it held may stay taken");
    }
}

/// Drops `spent` on the reaper's thread, or here when `MAX_QUEUED` already wait (or the thread
/// could not start).
pub fn drop_later<T: Send + 'static>(spent: T) {
    match reaper() {
        Some(r) => r.hand_over(Box::new(spent)),
        None => drop(spent),
    }
}

/// Drops handed over to the reaper's thread since the process started (tests).
#[cfg(test)]
pub fn handed_over() -> u64 {
    HANDED_OVER.load(std::sync::atomic::Ordering::Relaxed)
}

/// Drops handed over and not yet done (each holds a pool slot until then).
pub fn holding() -> usize {
    REAPER.get().copied().flatten().map_or(0, |r| {
        let q = r.lock();
        q.items.len() + usize::from(q.busy)
    })
}

/// Returns once every drop handed over before it is done: those still queued are dropped here,
/// and one under way on the reaper's thread is waited for (at most `SETTLE_WAIT`). How many there
/// were (0: none).
pub fn settle() -> usize {
    REAPER.get().copied().flatten().map_or(0, Reaper::settle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Counts its drops, after sleeping `slow` in each.
    struct Probe(Arc<AtomicUsize>, Duration);
    impl Drop for Probe {
        fn drop(&mut self) {
            std::thread::sleep(self.1);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drops_happen_off_the_callers_thread_and_settle_waits_for_every_one() {
        let r = Reaper::start().expect("a thread");
        let dropped = Arc::new(AtomicUsize::new(0));
        let here = std::thread::current().id();
        let on = Arc::new(Mutex::new(Vec::new()));
        struct Where(Arc<Mutex<Vec<std::thread::ThreadId>>>);
        impl Drop for Where {
            fn drop(&mut self) {
                self.0.lock().unwrap().push(std::thread::current().id());
            }
        }
        r.hand_over(Box::new(Where(on.clone())));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while on.lock().unwrap().is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Slow drops, more than the queue holds: the caller drops those past it itself.
        for _ in 0..MAX_QUEUED * 3 {
            r.hand_over(Box::new(Probe(dropped.clone(), Duration::from_millis(5))));
        }
        r.settle();
        assert_eq!(dropped.load(Ordering::SeqCst), MAX_QUEUED * 3, "every drop done once settle returns");
        let q = r.lock();
        assert!(q.items.is_empty() && !q.busy);
        drop(q);
        let threads = on.lock().unwrap().clone();
        assert_eq!(threads.len(), 1);
        assert_ne!(threads[0], here, "dropped on the reaper's thread");
    }

    #[test]
    fn settle_waits_only_for_the_drop_under_way_not_for_a_stream_of_them() {
        // Before: the thread took the next drop without letting go of the lock, so a settle
        // woken by the last drop's end found the thread busy again, for as long as drops came.
        let r = Reaper::start().expect("a thread");
        let streaming = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let dropped = Arc::new(AtomicUsize::new(0));
        let stream = {
            let (streaming, dropped) = (streaming.clone(), dropped.clone());
            std::thread::spawn(move || {
                let until = std::time::Instant::now() + Duration::from_secs(20);
                while streaming.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    r.hand_over(Box::new(Probe(dropped.clone(), Duration::from_millis(1))));
                }
            })
        };
        while dropped.load(Ordering::SeqCst) < 10 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let before = r.lock().done;
        r.settle();
        let during = r.lock().done - before;
        let still = streaming.swap(false, Ordering::SeqCst);
        stream.join().expect("stream");
        assert!(still, "settle returned only once the stream of drops had stopped (after 20 s)");
        // The one under way, and a few more begun before settle looked: not the stream's.
        assert!(during <= 10, "settle waited for {during} drops the thread took after it began");
    }

    #[test]
    fn a_drop_that_panics_does_not_stop_the_thread() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("a drop that panics");
            }
        }
        let r = Reaper::start().expect("a thread");
        r.hand_over(Box::new(Bomb));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while { let q = r.lock(); !q.items.is_empty() || q.busy } && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        // One settling drops what waits itself: a panic there stays there too.
        r.hand_over(Box::new(Bomb));
        r.settle();
        let dropped = Arc::new(AtomicUsize::new(0));
        r.hand_over(Box::new(Probe(dropped.clone(), Duration::ZERO)));
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while dropped.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the thread dropped the next one");
    }
}
