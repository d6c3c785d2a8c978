//! Limits of one call (time, memory, fuel, sizes) and how they become Store settings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};

use crate::error::ExecError;

pub const MIB: u64 = 1024 * 1024;
/// Loom's own default for `maxExecutionMs`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Linear memory cap applied when a definition names none.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 256;
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 16 * MIB;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 * MIB;
/// Table elements a guest may hold (AssemblyScript uses a handful).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Everything that bounds one call, resolved from the definition and the executor's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_memory_bytes: u64,
    pub max_fuel: Option<u64>,
    pub max_input_bytes: u64,
    pub max_output_bytes: u64,
    /// How long the call may run before it yields at an epoch tick (its future returns
    /// `Pending`), so the caller can move it to another thread. `None`: it never yields.
    pub inline_budget: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_memory_bytes: DEFAULT_MAX_MEMORY_MB * MIB,
            max_fuel: None,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            inline_budget: None,
        }
    }
}

/// A definition's `limits` as given by the caller (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitOverrides {
    pub max_memory_mb: Option<f64>,
    pub max_execution_ms: Option<f64>,
    pub max_fuel: Option<f64>,
}

impl Limits {
    /// Applies a definition's overrides on top of these defaults, rejecting nonsense values.
    pub fn with_overrides(&self, o: &LimitOverrides) -> Result<Limits, ExecError> {
        let mut l = self.clone();
        if let Some(ms) = o.max_execution_ms {
            l.timeout = Duration::from_millis(positive_whole("limits.maxExecutionMs", ms)?);
        }
        if let Some(mb) = o.max_memory_mb {
            if !(mb.is_finite() && mb > 0.0 && mb <= 4096.0) {
                return Err(ExecError::InvalidArgument(format!(
                    "limits.maxMemoryMB must be a number in (0, 4096], got {mb}"
                )));
            }
            l.max_memory_bytes = (mb * MIB as f64) as u64;
        }
        if let Some(fuel) = o.max_fuel {
            l.max_fuel = Some(positive_whole("limits.maxFuel", fuel)?);
        }
        Ok(l)
    }
}

fn positive_whole(name: &str, v: f64) -> Result<u64, ExecError> {
    if v.is_finite() && v >= 1.0 && v <= 9.0e15 {
        Ok(v as u64)
    } else {
        Err(ExecError::InvalidArgument(format!("{name} must be a positive number, got {v}")))
    }
}

/// Caps linear memory and tables of one Store, and remembers the peak it allowed.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_memory_bytes: u64,
    peak_memory_bytes: u64,
}

impl MemoryLimiter {
    pub fn new(max_memory_bytes: u64) -> Self {
        MemoryLimiter { max_memory_bytes, peak_memory_bytes: 0 }
    }

    pub fn peak_memory_bytes(&self) -> u64 {
        self.peak_memory_bytes
    }

    /// Sets a new cap (an actor's instance may be reused under a different definition's limits).
    pub fn set_max(&mut self, max_memory_bytes: u64) {
        self.max_memory_bytes = max_memory_bytes;
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.max_memory_bytes {
            // An error (not `Ok(false)`) ends the call at once with a precise cause, instead of
            // handing the guest a -1 that it usually turns into an unrelated trap.
            return Err(wasmtime::Error::new(ExecError::OutOfMemory {
                limit_bytes: self.max_memory_bytes,
                requested_bytes: desired,
            }));
        }
        self.peak_memory_bytes = self.peak_memory_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(ExecError::OutOfMemory {
                limit_bytes: (MAX_TABLE_ELEMENTS * std::mem::size_of::<usize>()) as u64,
                requested_bytes: (desired * std::mem::size_of::<usize>()) as u64,
            }));
        }
        Ok(true)
    }
}

/// Lets another thread stop a queued or running call; a running guest notices at its next
/// epoch tick, a queued call at once.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }
    /// Resolves once `cancel` has been called.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
    /// Runs `fut` unless the flag is (or becomes) cancelled first.
    pub async fn guard<F: std::future::Future>(&self, fut: F) -> Result<F::Output, ExecError> {
        if self.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        tokio::select! {
            out = fut => Ok(out),
            _ = self.cancelled() => Err(ExecError::Cancelled),
        }
    }
}

/// Arms a Store for one call: fuel (when metered), a wall-clock deadline and cancellation, both
/// checked at every epoch tick of the engine's ticker.
pub fn arm<T: 'static>(
    store: &mut Store<T>,
    limits: &Limits,
    cancel: &CancelFlag,
    metered: bool,
) -> Result<(), ExecError> {
    if metered {
        let fuel = limits.max_fuel.unwrap_or(u64::MAX);
        store.set_fuel(fuel).map_err(ExecError::internal)?;
    }
    let now = Instant::now();
    let deadline = now + limits.timeout;
    let budget = limits.inline_budget.map(|b| now + b);
    let limit_ms = limits.timeout.as_millis() as u64;
    let cancel = cancel.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_ctx| {
        if cancel.is_cancelled() {
            return Err(wasmtime::Error::new(ExecError::Cancelled));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(wasmtime::Error::new(ExecError::Timeout { limit_ms }));
        }
        if budget.is_some_and(|b| now >= b) {
            // Suspend the fiber; whoever polls next (another thread) resumes it at the next tick.
            return Ok(UpdateDeadline::Yield(1));
        }
        Ok(UpdateDeadline::Continue(1))
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_and_reject_nonsense() {
        let base = Limits::default();
        let l = base
            .with_overrides(&LimitOverrides {
                max_memory_mb: Some(10.0),
                max_execution_ms: Some(200.0),
                max_fuel: Some(1000.0),
            })
            .expect("valid overrides");
        assert_eq!(l.max_memory_bytes, 10 * MIB);
        assert_eq!(l.timeout, Duration::from_millis(200));
        assert_eq!(l.max_fuel, Some(1000));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let o = LimitOverrides { max_execution_ms: Some(bad), ..Default::default() };
            assert_eq!(base.with_overrides(&o).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
        }
        let o = LimitOverrides { max_memory_mb: Some(5000.0), ..Default::default() };
        assert!(base.with_overrides(&o).is_err());
    }

    #[test]
    fn limiter_refuses_growth_past_cap_and_tracks_peak() {
        let mut lim = MemoryLimiter::new(2 * 65536);
        assert!(lim.memory_growing(0, 65536, None).expect("allowed"));
        assert!(lim.memory_growing(65536, 2 * 65536, None).expect("allowed"));
        let err = lim.memory_growing(2 * 65536, 3 * 65536, None).expect_err("over cap");
        assert_eq!(err.downcast_ref::<ExecError>().map(|e| e.code()), Some("OUT_OF_MEMORY"));
        assert_eq!(lim.peak_memory_bytes(), 2 * 65536);
    }
}
