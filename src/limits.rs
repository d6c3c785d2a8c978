//! Limits of one call (time, memory, fuel, sizes) and how they become Store settings: one
//! deadline, one fuel budget and one memory cap per call, whatever the call runs (start
//! function, allocation, `execute`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use wasmtime::{ResourceLimiterAsync, Store, UpdateDeadline};

use crate::error::ExecError;

pub const MIB: u64 = 1024 * 1024;
/// Loom's own default for `maxExecutionMs`.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// The longest time limit accepted (a day): past it a "limit" is no limit.
pub const MAX_TIMEOUT_MS: f64 = 86_400_000.0;
/// Linear memory cap applied when a definition names none.
pub const DEFAULT_MAX_MEMORY_MB: u64 = 256;
pub const MAX_MEMORY_MB: f64 = 4096.0;
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 16 * MIB;
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 * MIB;
/// The largest input or output accepted (an AssemblyScript string holds at most 1 GiB).
pub const MAX_PAYLOAD_BYTES: u64 = 1024 * MIB;
/// The largest `maxOutputBytes`: V8's longest string, 2^29 - 24 UTF-16 units (an output past it
/// could only fail when handed to JS).
pub const MAX_OUTPUT_BYTES: u64 = ((1 << 29) - 24) * 2;
/// Deepest nesting of arrays and objects accepted in a guest's output (`JSON.parse` of deeper
/// text would hold the event loop).
pub const DEFAULT_MAX_OUTPUT_DEPTH: u32 = 1000;
/// Table elements a guest may hold across its tables (AssemblyScript uses a handful).
pub const MAX_TABLE_ELEMENTS: u64 = 100_000;
/// What one table element costs against the memory cap.
pub const TABLE_ELEMENT_BYTES: u64 = 8;
/// Memories, tables and instances one Store may hold (components hold several core instances).
pub const MAX_MEMORIES: usize = 16;
pub const MAX_TABLES: usize = 64;
pub const MAX_INSTANCES: usize = 64;
/// Memory a call may reach while it runs on the caller's thread (Node's event loop): a bulk
/// memory operation or the page faults of fresh memory are not interrupted by epoch ticks, so
/// a call about to pass this moves to a guest thread first.
pub const INLINE_MEMORY_BYTES: u64 = 8 * MIB;

/// Everything that bounds one call, resolved from the definition and the executor's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub timeout: Duration,
    pub max_memory_bytes: u64,
    pub max_fuel: Option<u64>,
    pub max_input_bytes: u64,
    pub max_output_bytes: u64,
    pub max_output_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            max_memory_bytes: DEFAULT_MAX_MEMORY_MB * MIB,
            max_fuel: None,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_output_depth: DEFAULT_MAX_OUTPUT_DEPTH,
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
            l.timeout = Duration::from_millis(whole_in("limits.maxExecutionMs", ms, 1.0, MAX_TIMEOUT_MS)?);
        }
        if let Some(mb) = o.max_memory_mb {
            if !(mb.is_finite() && mb > 0.0 && mb <= MAX_MEMORY_MB) {
                return Err(ExecError::InvalidArgument(format!(
                    "limits.maxMemoryMB must be a number in (0, {MAX_MEMORY_MB}], got {mb}"
                )));
            }
            l.max_memory_bytes = (mb * MIB as f64) as u64;
        }
        if let Some(fuel) = o.max_fuel {
            l.max_fuel = Some(whole_in("limits.maxFuel", fuel, 1.0, 9.0e15)?);
        }
        Ok(l)
    }
}

/// A whole number in `[min, max]`, or `INVALID_ARGUMENT` naming the option and the range.
pub fn whole_in(name: &str, v: f64, min: f64, max: f64) -> Result<u64, ExecError> {
    if v.is_finite() && v.fract() == 0.0 && v >= min && v <= max {
        Ok(v as u64)
    } else {
        Err(ExecError::InvalidArgument(format!("{name} must be a whole number in [{min}, {max}], got {v}")))
    }
}

thread_local! {
    /// Set while a call is polled on the caller's thread: until when it may run there.
    static INLINE_UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` (one poll of a call) as an inline attempt that may last until `until`: past it, or
/// about to touch more than `INLINE_MEMORY_BYTES`, the call yields so it can move.
pub fn inline_window<R>(until: Instant, f: impl FnOnce() -> R) -> R {
    // Restores the window it replaced (a nested call's window ends, the caller's goes on).
    struct Reset(Option<Instant>);
    impl Drop for Reset {
        fn drop(&mut self) {
            INLINE_UNTIL.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(INLINE_UNTIL.with(|c| c.replace(Some(until))));
    f()
}

/// Whether the current thread is running an inline attempt.
pub fn in_inline_window() -> bool {
    INLINE_UNTIL.with(|c| c.get()).is_some()
}

/// Resolves after returning `Pending` once (waking itself): lets a call's fiber suspend so the
/// call can move to a guest thread.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// A cap beyond the instance's own, asked as its memories and tables grow past what they held:
/// an actor's call's share of its executor's `maxActorMemoryMB` (`actors::MemoryCap`).
pub trait SharedCap: Send + Sync {
    /// Whether the instance may hold `total` bytes (its memories and tables together).
    fn admit(&self, total: u64) -> Result<(), ExecError>;
    /// A growth admitted failed: the instance holds `total` bytes.
    fn took_back(&self, total: u64);
}

/// The `SharedCap` a Store's limiter asks, if any.
#[derive(Default)]
pub struct SharedCapSlot(pub Option<std::sync::Arc<dyn SharedCap>>);

impl std::fmt::Debug for SharedCapSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "SharedCap" } else { "None" })
    }
}

/// Caps all linear memories and tables of one Store together (what a module declares, what it
/// grows, across every memory and table), and remembers the peak it allowed.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: u64,
    /// Bytes held now by memories and by tables (elements × `TABLE_ELEMENT_BYTES`).
    memory_bytes: u64,
    table_elements: u64,
    /// Memory the host keeps for the guest (an ABI's kernel memory, e.g. Extism's).
    host_bytes: u64,
    peak_bytes: u64,
    /// What the last approved growth added, taken back if the growth then failed.
    last_memory_growth: u64,
    last_table_growth: u64,
    /// Asked too, past the instance's own cap: set for an actor's call.
    pub shared_cap: SharedCapSlot,
}

impl MemoryLimiter {
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes,
            memory_bytes: 0,
            table_elements: 0,
            host_bytes: 0,
            peak_bytes: 0,
            last_memory_growth: 0,
            last_table_growth: 0,
            shared_cap: SharedCapSlot(None),
        }
    }

    /// The largest total this Store has held.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    /// Keeps the peak of the instance this one takes the place of (an actor's move).
    pub fn carry_peak(&mut self, peak: u64) {
        self.peak_bytes = self.peak_bytes.max(peak);
    }

    /// What the Store holds now.
    pub fn total_bytes(&self) -> u64 {
        self.memory_bytes + self.table_elements * TABLE_ELEMENT_BYTES + self.host_bytes
    }

    /// Counts `n` bytes the host keeps for the guest against the cap.
    pub fn reserve_host(&mut self, n: u64) -> Result<(), ExecError> {
        let new_total = self.total_bytes().saturating_add(n);
        if new_total > self.max_bytes {
            return Err(ExecError::OutOfMemory { limit_bytes: self.max_bytes, requested_bytes: new_total });
        }
        self.host_bytes += n;
        self.peak_bytes = self.peak_bytes.max(new_total);
        Ok(())
    }

    /// Gives back host memory counted by `reserve_host`.
    pub fn release_host(&mut self, n: u64) {
        self.host_bytes = self.host_bytes.saturating_sub(n);
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Sets a new cap (an actor's instance runs under each call's current limits).
    pub fn set_max(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    fn admit(&mut self, new_total: u64) -> wasmtime::Result<()> {
        if new_total > self.max_bytes {
            // An error (not `Ok(false)`) ends the call at once with a precise cause, instead of
            // handing the guest a -1 that it usually turns into an unrelated trap.
            return Err(wasmtime::Error::new(ExecError::OutOfMemory {
                limit_bytes: self.max_bytes,
                requested_bytes: new_total,
            }));
        }
        if let Some(cap) = &self.shared_cap.0 {
            cap.admit(new_total).map_err(wasmtime::Error::new)?;
        }
        self.peak_bytes = self.peak_bytes.max(new_total);
        Ok(())
    }

    /// A growth it admitted failed: the shared cap no longer counts it (review CD1: it counted
    /// until the call ended, and other actors' growth was refused `BUSY` meanwhile).
    fn took_back(&self) {
        if let Some(cap) = &self.shared_cap.0 {
            cap.took_back(self.total_bytes());
        }
    }

    /// Inline, growth past `INLINE_MEMORY_BYTES` first moves the call off the caller's thread.
    async fn leave_inline_if_large(new_total: u64) {
        if new_total > INLINE_MEMORY_BYTES && in_inline_window() {
            YieldOnce(false).await;
        }
    }
}

#[async_trait::async_trait]
impl ResourceLimiterAsync for MemoryLimiter {
    async fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Past the memory's own maximum the growth fails (`-1` to the guest) whatever the caps:
        // asked first, a cap refused it (`OUT_OF_MEMORY`, or `BUSY` for an actor: review CD1).
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = (desired as u64).saturating_sub(current as u64);
        let new_total = self.total_bytes().saturating_add(growth);
        self.admit(new_total)?;
        Self::leave_inline_if_large(new_total).await;
        self.memory_bytes += growth;
        self.last_memory_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_bytes = self.memory_bytes.saturating_sub(std::mem::take(&mut self.last_memory_growth));
        self.took_back();
        Ok(())
    }

    async fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = (desired as u64).saturating_sub(current as u64);
        let elements = self.table_elements.saturating_add(growth);
        if elements > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(ExecError::OutOfMemory {
                limit_bytes: MAX_TABLE_ELEMENTS * TABLE_ELEMENT_BYTES,
                requested_bytes: elements * TABLE_ELEMENT_BYTES,
            }));
        }
        self.admit(self.memory_bytes.saturating_add(self.host_bytes).saturating_add(elements * TABLE_ELEMENT_BYTES))?;
        self.table_elements = elements;
        self.last_table_growth = growth;
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_elements = self.table_elements.saturating_sub(std::mem::take(&mut self.last_table_growth));
        self.took_back();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }
    fn tables(&self) -> usize {
        MAX_TABLES
    }
    fn memories(&self) -> usize {
        MAX_MEMORIES
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

/// What one call may spend, fixed when the call starts and shared by everything it runs.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub deadline: Instant,
    pub limit_ms: u64,
}

impl Budget {
    pub fn starting_now(limits: &Limits) -> Budget {
        Budget { deadline: Instant::now() + limits.timeout, limit_ms: limits.timeout.as_millis() as u64 }
    }

    pub fn timeout(&self) -> ExecError {
        ExecError::Timeout { limit_ms: self.limit_ms, during: "" }
    }

    /// `timeout`, its message saying what the call was doing (`during` follows "... ms").
    pub fn timeout_in(&self, during: &'static str) -> ExecError {
        ExecError::Timeout { limit_ms: self.limit_ms, during }
    }
}

/// Arms a Store for one call: its fuel (when metered) and its deadline and cancellation, both
/// checked at every epoch tick of the engine's ticker. Called once per call: the start function,
/// the allocation of the input and `execute` share the budget.
pub fn arm<T: 'static>(
    store: &mut Store<T>,
    limits: &Limits,
    budget: Budget,
    cancel: &CancelFlag,
    metered: bool,
) -> Result<(), ExecError> {
    if metered {
        let fuel = limits.max_fuel.unwrap_or(u64::MAX);
        store.set_fuel(fuel).map_err(ExecError::internal)?;
    }
    let cancel = cancel.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_ctx| {
        if cancel.is_cancelled() {
            return Err(wasmtime::Error::new(ExecError::Cancelled));
        }
        let now = Instant::now();
        if now >= budget.deadline {
            return Err(wasmtime::Error::new(budget.timeout()));
        }
        if INLINE_UNTIL.with(|c| c.get()).is_some_and(|until| now >= until) {
            // Suspend the fiber; a guest thread resumes it.
            return Ok(UpdateDeadline::Yield(1));
        }
        Ok(UpdateDeadline::Continue(1))
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

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

    fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the limiter yielded outside an inline window"),
        }
    }

    #[test]
    fn limiter_counts_every_memory_and_table_together() {
        let page = 65536;
        let mut lim = MemoryLimiter::new(4 * page as u64);
        // Two memories of two pages each fill the cap; a third memory does not fit.
        assert!(ready(lim.memory_growing(0, 2 * page, None)).expect("allowed"));
        assert!(ready(lim.memory_growing(0, 2 * page, None)).expect("allowed"));
        let err = ready(lim.memory_growing(0, page, None)).expect_err("over cap across memories");
        assert_eq!(err.downcast_ref::<ExecError>().map(|e| e.code()), Some("OUT_OF_MEMORY"));
        assert_eq!(lim.peak_bytes(), 4 * page as u64);
        // A growth the limiter approved but the memory could not make is taken back.
        let mut lim = MemoryLimiter::new(4 * page as u64);
        assert!(ready(lim.memory_growing(0, 3 * page, None)).expect("allowed"));
        lim.memory_grow_failed(wasmtime::Error::msg("no room")).expect("ok");
        assert_eq!(lim.total_bytes(), 0);
        // Tables count against the same cap.
        let mut lim = MemoryLimiter::new(1000);
        assert!(ready(lim.table_growing(0, 100, None)).expect("800 bytes"));
        assert!(ready(lim.table_growing(0, 100, None)).is_err(), "1600 bytes of tables");
        let mut lim = MemoryLimiter::new(u64::MAX);
        assert!(ready(lim.table_growing(0, MAX_TABLE_ELEMENTS as usize + 1, None)).is_err());
    }

    #[test]
    fn inline_growth_past_the_inline_bound_yields_first() {
        let mut lim = MemoryLimiter::new(u64::MAX);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let small = inline_window(Instant::now() + Duration::from_secs(1), || {
            let mut f = std::pin::pin!(lim.memory_growing(0, 65536, None));
            f.as_mut().poll(&mut cx).is_ready()
        });
        assert!(small);
        let mut lim = MemoryLimiter::new(u64::MAX);
        let mut f = Box::pin(lim.memory_growing(0, (INLINE_MEMORY_BYTES + 1) as usize, None));
        let first = inline_window(Instant::now() + Duration::from_secs(1), || f.as_mut().poll(&mut cx).is_ready());
        assert!(!first, "a large growth yields on the caller's thread");
        assert!(f.as_mut().poll(&mut cx).is_ready(), "and goes on once moved");
    }
}
