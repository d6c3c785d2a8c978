//! The guest threads: one process-wide set of OS threads that run guest calls, shared by every
//! executor. A call is a future (its guest code runs on a wasmtime fiber); a thread polls it and,
//! when it has to wait (a download, a concurrency slot, a host call's answer, a timer), lets it
//! go: its waker puts it back in the queue, so a waiting call holds no thread. Threads start when
//! work arrives and none is idle: at once up to a few per core, past that only when work has
//! waited a tick (so bursts of short polls do not breed threads, while guests that run long, one
//! per thread, each still get one). They leave after a while without work (one stays), so an
//! executor itself holds no thread and a process of many executors runs as few as it needs.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crate::error::ExecError;

/// The most guest threads a process runs. Running calls are bounded by each executor's
/// `maxConcurrency`; past this many, runnable calls queue for a thread.
pub const MAX_THREADS: usize = 1024;
/// How long a thread without work stays before it leaves.
const IDLE: Duration = Duration::from_secs(30);
/// How long queued work waits for a busy pool before another thread is started for it.
const STARVED: Duration = Duration::from_millis(1);

/// The CPUs this process may use, read once: `available_parallelism` reads the cgroup's quota
/// files each time (100-250 us in a fresh process here), and start-up asked it seven times, four
/// of them on the first call's path.
pub fn cpus() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Threads started at once when work arrives and none is idle; past this, the monitor starts
/// more only for work that waited `STARVED`.
fn eager_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| cpus().max(2) * 2)
}
/// Guest code runs on wasmtime's fiber stacks, not these; the threads run host code.
const STACK_BYTES: usize = 2 * 1024 * 1024;
/// Guest threads (and the runtime's, see `runtime`) run at a lower priority than Node's event
/// loop: when a core is contended, the loop thread is scheduled first, so guests that keep every
/// core busy still leave the event loop responsive.
pub const NICE: i32 = 10;

/// Lowers the calling thread's priority by `NICE` (best effort: where the OS refuses, it stays).
pub fn lower_priority() {
    set_nice(NICE);
}

/// Sets the calling thread's nice value (on Linux a per-thread attribute); best effort, as above.
pub fn set_nice(nice: i32) {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice);
    }
}

/// The calling thread's nice value (tests).
#[cfg(test)]
pub fn this_threads_nice() -> i32 {
    // SAFETY: as above.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A task is idle (waiting to be woken), scheduled (in the queue), running, or running and woken
/// meanwhile (it goes back in the queue when the poll ends), or done.
const IDLE_TASK: u8 = 0;
const SCHEDULED: u8 = 1;
const RUNNING: u8 = 2;
const NOTIFIED: u8 = 3;
const DONE: u8 = 4;

struct Task {
    /// Only the thread that moved the state to RUNNING touches it.
    job: Mutex<Option<Job>>,
    state: AtomicU8,
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        schedule(self);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        schedule(self.clone());
    }
}

#[derive(Default)]
struct State {
    tasks: VecDeque<Arc<Task>>,
    threads: usize,
    idle: usize,
    /// Tasks taken from the queue so far (how the monitor sees progress).
    taken: u64,
    monitor: bool,
}

#[derive(Default)]
struct Pool {
    state: Mutex<State>,
    ready: Condvar,
    /// Wakes the monitor when work queues behind a busy pool.
    starved: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default)
}

fn lock(p: &Pool) -> std::sync::MutexGuard<'_, State> {
    p.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues a woken task (unless it is queued already, or running: then it goes back in the
/// queue when that poll ends).
fn schedule(task: Arc<Task>) {
    let mut cur = task.state.load(Ordering::Acquire);
    loop {
        let next = match cur {
            IDLE_TASK => SCHEDULED,
            RUNNING => NOTIFIED,
            _ => return,
        };
        match task.state.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) if next == SCHEDULED => return enqueue(task),
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Puts a task in the queue and makes sure a thread will poll it: an idle one, or a new one.
fn enqueue(task: Arc<Task>) {
    let p = pool();
    let mut st = lock(p);
    st.tasks.push_back(task);
    if st.idle >= st.tasks.len() {
        drop(st);
        p.ready.notify_one();
        return;
    }
    if st.threads < eager_threads() {
        add_thread(st);
        return;
    }
    if !st.monitor {
        st.monitor = true;
        if std::thread::Builder::new().name("loom-wasm-monitor".into()).spawn(monitor).is_err() {
            st.monitor = false;
        }
    }
    drop(st);
    p.starved.notify_one();
}

/// Starts one more guest thread (the caller holds the pool's lock).
fn add_thread(mut st: std::sync::MutexGuard<'_, State>) {
    if st.threads >= MAX_THREADS {
        return;
    }
    st.threads += 1;
    let n = st.threads;
    drop(st);
    if start_thread(n).is_err() {
        // The OS refused a thread; the running ones (at least one stays) will get to it.
        lock(pool()).threads -= 1;
    }
}

/// Watches for queued work that no thread takes (every thread busy in a long guest run) and
/// starts a thread for it after `STARVED`.
fn monitor() {
    let p = pool();
    let mut st = lock(p);
    loop {
        while st.tasks.is_empty() || st.idle >= st.tasks.len() {
            st = p.starved.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let seen = st.taken;
        drop(st);
        std::thread::sleep(STARVED);
        st = lock(p);
        if st.taken == seen && !st.tasks.is_empty() && st.idle == 0 {
            add_thread(st);
            st = lock(p);
        }
    }
}

fn start_thread(n: usize) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("loom-wasm-guest-{n}"))
        .stack_size(STACK_BYTES)
        .spawn(|| {
            lower_priority();
            worker()
        })
        .map(|_| ())
}

fn worker() {
    let p = pool();
    loop {
        let task = {
            let mut st = lock(p);
            loop {
                if let Some(t) = st.tasks.pop_front() {
                    st.taken += 1;
                    break t;
                }
                st.idle += 1;
                let (guard, timeout) = p.ready.wait_timeout(st, IDLE).unwrap_or_else(|e| e.into_inner());
                st = guard;
                st.idle -= 1;
                if timeout.timed_out() && st.tasks.is_empty() && st.threads > 1 {
                    st.threads -= 1;
                    return;
                }
            }
        };
        run(task);
    }
}

fn run(task: Arc<Task>) {
    task.state.store(RUNNING, Ordering::Release);
    let waker = Waker::from(task.clone());
    let mut cx = Context::from_waker(&waker);
    let finished = {
        let mut slot = task.job.lock().unwrap_or_else(|e| e.into_inner());
        let Some(job) = slot.as_mut() else { return };
        // A panic drops the job: whoever waits for its result is told by the job's own guard.
        let finished = crate::runtime::enter(|| catch_unwind(AssertUnwindSafe(|| job.as_mut().poll(&mut cx))))
            .map_or(true, |p| p.is_ready());
        if finished {
            *slot = None;
        }
        finished
    };
    if finished {
        task.state.store(DONE, Ordering::Release);
    } else if task.state.compare_exchange(RUNNING, IDLE_TASK, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Woken while it ran: poll it again.
        task.state.store(SCHEDULED, Ordering::Release);
        enqueue(task);
    }
}

/// Runs `job` on the guest threads until it completes.
pub fn spawn(job: impl Future<Output = ()> + Send + 'static) -> Result<(), ExecError> {
    let p = pool();
    {
        // The very first thread is started here, so a process that cannot start one gets an
        // error instead of a call that never runs.
        let mut st = lock(p);
        if st.threads == 0 {
            st.threads = 1;
            drop(st);
            if let Err(e) = start_thread(1) {
                lock(p).threads = 0;
                return Err(ExecError::Busy(format!("cannot start a guest thread: {e}")));
            }
        }
    }
    schedule(Arc::new(Task { job: Mutex::new(Some(Box::pin(job))), state: AtomicU8::new(IDLE_TASK) }));
    Ok(())
}

/// Polls a future once on this thread with a waker that does nothing (a future left pending is
/// then handed to `spawn`, whose first poll registers the real waker). A panic is `Err`.
pub fn poll_once<F: Future + Unpin>(fut: &mut F) -> Result<Poll<F::Output>, ()> {
    let mut cx = Context::from_waker(Waker::noop());
    crate::runtime::enter(|| catch_unwind(AssertUnwindSafe(|| Pin::new(fut).poll(&mut cx)))).map_err(|_| ())
}

/// Drives a future to completion on this thread, parking between polls (tests and the CLI's
/// synchronous paths; calls themselves go through `spawn`).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match crate::runtime::enter(|| fut.as_mut().poll(&mut cx)) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    #[test]
    fn runs_jobs_and_survives_panics() {
        let (tx, rx) = mpsc::channel();
        spawn(async { panic!("a job panics") }).expect("spawned");
        for i in 0..10 {
            let tx = tx.clone();
            spawn(async move { tx.send(i).expect("receiver alive") }).expect("spawned");
        }
        let mut got: Vec<i32> = (0..10).map(|_| rx.recv().expect("job ran")).collect();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn long_jobs_each_get_a_thread() {
        // More jobs that each hold their thread than eager threads: the monitor starts more, so
        // all of them run at once instead of in waves.
        let n = eager_threads() + 4;
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(std::sync::Barrier::new(n));
        for _ in 0..n {
            let (tx, gate) = (tx.clone(), gate.clone());
            spawn(async move {
                gate.wait();
                tx.send(()).expect("receiver alive");
            })
            .expect("spawned");
        }
        for _ in 0..n {
            rx.recv_timeout(Duration::from_secs(10)).expect("every job ran at the same time");
        }
    }

    #[test]
    fn waiting_jobs_hold_no_thread() {
        // 500 jobs each wait 50 ms on a timer: they finish together, on a handful of threads.
        // The pool is shared with the tests running beside this one (a test holding eager + 4
        // threads at once leaves them idle for 30 s), so the pool's size says nothing here: count
        // the threads that ran these jobs. Jobs that held their thread while waiting ran on 116.
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        for _ in 0..500 {
            let tx = tx.clone();
            spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send(std::thread::current().id()).expect("receiver alive");
            })
            .expect("spawned");
        }
        let ran: std::collections::HashSet<_> = (0..500).map(|_| rx.recv().expect("job finished")).collect();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(ran.len() <= 64, "500 waiting jobs ran on {} threads", ran.len());
    }
}
