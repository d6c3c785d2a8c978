//! What a fresh process's first call needs before it can compile or load a module: the engine it
//! runs on (wasmtime's `Engine::new`, the start of the compile threads) and that engine's linker
//! (every WASI function wrapped). Built on first use, they took about 1 ms of the first call's
//! path (`perf record --call-graph dwarf` of fresh processes: 35 samples at 10 kHz over 3 cold
//! first calls, on the thread that compiles). The first executor of a process starts building
//! them on a background thread, so that they overlap the call's download and checks. A call that
//! needs one meanwhile waits for it (engines and linkers are `OnceLock`s): nothing is built twice.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::{engine, EngineKind};

/// The engine a fresh process's first call most likely runs on, given an executor's options:
/// with a compiled-artifact cache, a `Plain` artifact loads on the unpooled twin (the pool is not
/// built yet); else new modules compile on the baseline engine when tiering up, or on the pooled
/// one. Calls with `maxFuel` take the metered engines, built when such a call comes.
pub fn first_engine(artifacts: bool, tier_up: bool) -> EngineKind {
    match (artifacts, tier_up) {
        (true, _) => EngineKind::PlainUnpooled,
        (false, true) => EngineKind::Baseline,
        (false, false) => EngineKind::Plain,
    }
}

/// Builds `kind`'s engine and core-module linker on the runtime's blocking pool (which runs below
/// the event loop's priority), once per process: later executors find them built.
pub fn start(kind: EngineKind) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    let Some(runtime) = crate::runtime::handle() else { return };
    // A worker of the runtime starts the blocking thread, not the executor's constructor.
    runtime.spawn(async move {
        let _ = tokio::task::spawn_blocking(move || {
            if engine(kind).is_ok() {
                let _ = crate::host::linker(kind);
            }
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::built;
    use crate::executor::Executor;
    use crate::options::ExecutorOptions;
    use crate::store::MemorySource;

    const CHILD: &str = "LOOM_WARM_UP_TEST_CHILD";

    /// Run in a process of its own (the test binary again, this test alone): the engines are the
    /// process's, and other tests build them.
    #[test]
    fn the_first_executor_has_the_engine_of_its_first_call_built_before_any_call() {
        if std::env::var_os(CHILD).is_none() {
            let this = "warm_up::tests::the_first_executor_has_the_engine_of_its_first_call_built_before_any_call";
            let exe = std::env::current_exe().expect("the test binary");
            let status = std::process::Command::new(exe).args(["--exact", this, "--test-threads=1"]).env(CHILD, "1").status();
            assert!(status.expect("runs").success(), "the child process's assertions failed");
            return;
        }
        assert!(!built(EngineKind::Baseline) && !built(EngineKind::Plain), "nothing built before the executor");
        let _ex = Executor::new(Arc::new(MemorySource::new()), ExecutorOptions::default()).expect("executor");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !built(EngineKind::Baseline) {
            assert!(Instant::now() < deadline, "the baseline engine was never built");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Only the engine the first call runs on: the pooled one is built when a tier-up needs it.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!built(EngineKind::Plain) && !built(EngineKind::PlainUnpooled), "other engines were built");
    }

    #[test]
    fn the_first_engine_follows_the_options() {
        assert_eq!(first_engine(true, true), EngineKind::PlainUnpooled);
        assert_eq!(first_engine(true, false), EngineKind::PlainUnpooled);
        assert_eq!(first_engine(false, true), EngineKind::Baseline);
        assert_eq!(first_engine(false, false), EngineKind::Plain);
    }
}
