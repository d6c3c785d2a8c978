//! The process's wasmtime engines and the one epoch ticker that drives their deadlines.
//!
//! Two engines share the process: `Plain` (epoch interruption only; the fast path) and
//! `Metered` (also counts fuel, ~20 % slower), used only by calls that set a fuel budget.
//! Code compiled for one cannot run on the other, so the module cache keys on the kind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use crate::error::ExecError;

/// How often the ticker bumps the epoch while any call runs: the granularity of timeouts and
/// cancellation.
pub const TICK: Duration = Duration::from_millis(1);
/// Instances the plain engine's pool holds at once, across all executors of the process
/// (running calls plus live actors).
pub const POOL_INSTANCES: u32 = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EngineKind {
    Plain,
    Metered,
}

fn config(kind: EngineKind, pooled: bool) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    cfg.consume_fuel(kind == EngineKind::Metered);
    cfg.cranelift_opt_level(OptLevel::Speed);
    cfg.parallel_compilation(true);
    cfg.max_wasm_stack(1024 * 1024);
    if pooled {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_INSTANCES)
            .total_memories(POOL_INSTANCES)
            .total_tables(POOL_INSTANCES)
            .total_stacks(POOL_INSTANCES)
            // Keep a little of each slot resident so reuse skips page faults and madvise.
            .linear_memory_keep_resident(64 * 1024)
            .table_keep_resident(4 * 1024);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

fn build(kind: EngineKind) -> Result<Engine, String> {
    // The pooling allocator reserves address space up front; where the OS refuses that
    // (a low ulimit -v, say), fall back to allocating on demand rather than failing.
    let pooled = kind == EngineKind::Plain;
    let engine = Engine::new(&config(kind, pooled))
        .or_else(|e| if pooled { Engine::new(&config(kind, false)) } else { Err(e) })
        .map_err(|e| format!("cannot create the wasmtime engine: {e:#}"))?;
    ticker().engines.lock().map_err(|_| "ticker poisoned".to_string())?.push(engine.clone());
    Ok(engine)
}

/// The process-wide engine of this kind, created on first use.
pub fn engine(kind: EngineKind) -> Result<&'static Engine, ExecError> {
    static PLAIN: OnceLock<Result<Engine, String>> = OnceLock::new();
    static METERED: OnceLock<Result<Engine, String>> = OnceLock::new();
    let cell = match kind {
        EngineKind::Plain => &PLAIN,
        EngineKind::Metered => &METERED,
    };
    cell.get_or_init(|| build(kind)).as_ref().map_err(|e| ExecError::Internal(e.clone()))
}

struct Ticker {
    engines: Mutex<Vec<Engine>>,
    running: AtomicUsize,
    thread: OnceLock<Option<Thread>>,
}

fn ticker() -> &'static Ticker {
    static TICKER: OnceLock<Ticker> = OnceLock::new();
    TICKER.get_or_init(|| Ticker {
        engines: Mutex::new(Vec::new()),
        running: AtomicUsize::new(0),
        thread: OnceLock::new(),
    })
}

fn ticker_thread() -> Option<&'static Thread> {
    ticker()
        .thread
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("loom-wasm-epoch".into())
                .spawn(|| {
                    let t = ticker();
                    loop {
                        if t.running.load(Ordering::SeqCst) == 0 {
                            // Idle: sleep until a call starts (spurious wake-ups just loop).
                            std::thread::park();
                            continue;
                        }
                        std::thread::sleep(TICK);
                        if let Ok(engines) = t.engines.lock() {
                            for e in engines.iter() {
                                e.increment_epoch();
                            }
                        }
                    }
                })
                .ok()
                .map(|h| h.thread().clone())
        })
        .as_ref()
}

/// Held while guest code may run: keeps the ticker ticking.
pub struct Running(());

impl Running {
    pub fn start() -> Result<Running, ExecError> {
        let thread = ticker_thread()
            .ok_or_else(|| ExecError::Internal("cannot start the epoch ticker thread".into()))?;
        if ticker().running.fetch_add(1, Ordering::SeqCst) == 0 {
            thread.unpark();
        }
        Ok(Running(()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        ticker().running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_are_shared_and_distinct_by_kind() {
        let a = engine(EngineKind::Plain).expect("plain engine");
        let b = engine(EngineKind::Plain).expect("plain engine");
        assert!(Engine::same(a, b));
        let m = engine(EngineKind::Metered).expect("metered engine");
        assert!(!Engine::same(a, m));
    }
}
