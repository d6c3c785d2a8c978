//! The tokio runtime the core waits on: timers (deadlines while a guest waits in a host call),
//! downloads, artifact I/O, compiles on its blocking pool. One per process, started on first use
//! and never shut down (napi-rs is given a runtime of its own: it shuts down the one it holds when
//! the last Node environment using the addon goes, and a later worker would find this one shut).

use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

static HANDLE: OnceLock<Handle> = OnceLock::new();

/// A runtime shaped for this work: few workers (they only wait and shuttle bytes; guest code
/// runs on guest threads), timers and I/O enabled.
pub fn build() -> std::io::Result<Runtime> {
    let workers = crate::threads::cpus().min(2);
    Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("loom-wasm-io")
        // Compiles run on its blocking threads: below the event loop, like guest threads.
        .on_thread_start(crate::threads::lower_priority)
        .enable_all()
        .build()
}

/// The core's runtime, started on first use if none was installed.
pub fn handle() -> Option<&'static Handle> {
    if let Some(h) = HANDLE.get() {
        return Some(h);
    }
    static OWN: OnceLock<Option<Runtime>> = OnceLock::new();
    let own = OWN.get_or_init(|| build().ok()).as_ref()?;
    let _ = HANDLE.set(own.handle().clone());
    HANDLE.get()
}

/// Most threads guests' file work holds at once (see `files`).
pub const FILE_THREADS: usize = 64;

/// A runtime of its own for calls granted a directory: wasmtime-wasi does each file operation on
/// the current runtime's blocking pool, and an operation the kernel holds (a leased file, a hung
/// network filesystem, a FIFO planted by another process after the look in `wasi_open`) keeps
/// its thread until it returns. Here such threads cannot starve the core's pool (compiles,
/// downloads, artifacts), and past `FILE_THREADS` file work queues: a queued operation is
/// dropped with its call, so stuck calls cannot add threads without bound. Started on first use.
pub fn files() -> Option<&'static Handle> {
    static FILES: OnceLock<Option<Runtime>> = OnceLock::new();
    let rt = FILES.get_or_init(|| {
        Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(FILE_THREADS)
            .thread_name("loom-wasm-files")
            .on_thread_start(crate::threads::lower_priority)
            .enable_all()
            .build()
            .ok()
    });
    rt.as_ref().map(|rt| rt.handle())
}

/// Runs `f` with the file runtime (`files`) as the current one when `granted`, else as is.
pub fn with_files<R>(granted: bool, f: impl FnOnce() -> R) -> R {
    match files().filter(|_| granted) {
        Some(h) => {
            let _guard = h.enter();
            f()
        }
        None => f(),
    }
}

/// Runs `f` with the core's runtime as the current one (so tokio timers, I/O and
/// `spawn_blocking` work from any thread, guest threads and Node's included).
pub fn enter<R>(f: impl FnOnce() -> R) -> R {
    match handle() {
        Some(h) => {
            let _guard = h.enter();
            f()
        }
        None => f(),
    }
}
