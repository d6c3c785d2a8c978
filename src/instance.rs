//! A live guest: a Store with its instance, and how one call runs on it: as a future whose guest
//! code runs on a wasmtime fiber, so a call may start on one thread and finish on another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap};

use crate::abi::assemblyscript::Exports;
use crate::capabilities::Grants;
use crate::engine::{EngineKind, Running};
use crate::error::ExecError;
use crate::host::{HostState, LogSink};
use crate::limits::{arm, CancelFlag, Limits};
use crate::modules::{CompiledModule, Digest};

/// What one call produced and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutput {
    /// The guest's result: JSON text, not yet parsed.
    pub output: String,
    pub duration: Duration,
    /// Fuel used, when the call ran with a fuel budget.
    pub fuel_consumed: Option<u64>,
    /// The largest linear memory the instance has had.
    pub peak_memory_bytes: u64,
}

pub struct GuestInstance {
    store: Store<HostState>,
    exports: Exports,
    pub digest: Digest,
    pub kind: EngineKind,
}

/// Turns what wasmtime reports into our error: our own errors raised in host code or limits
/// come back as they were; traps get their kind.
pub fn classify(err: wasmtime::Error, limits: &Limits) -> ExecError {
    if let Some(e) = err.downcast_ref::<ExecError>() {
        return e.clone();
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        if *trap == Trap::OutOfFuel {
            return ExecError::OutOfFuel { limit: limits.max_fuel.unwrap_or(0) };
        }
        return ExecError::Trap { kind: trap_kind(trap), message: format!("{err:#}") };
    }
    ExecError::Trap { kind: "host".into(), message: format!("{err:#}") }
}

/// `StackOverflow` -> `stack_overflow`.
fn trap_kind(trap: &Trap) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{trap:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

impl GuestInstance {
    /// Instantiates a module in a fresh Store (running its start function under the limits).
    pub async fn new(
        module: &CompiledModule,
        limits: &Limits,
        cancel: &CancelFlag,
        log: Option<Arc<dyn LogSink>>,
        grants: &Grants,
    ) -> Result<GuestInstance, ExecError> {
        let engine = module.pre.module().engine();
        let mut host = HostState::new(limits.max_memory_bytes, log);
        if !module.wasi_imports.is_empty() {
            host.wasi = Some(grants.wasi_context()?);
        }
        let mut store = Store::new(engine, host);
        store.limiter(|s| &mut s.limiter);
        arm(&mut store, limits, cancel, module.kind == EngineKind::Metered)?;
        let _running = Running::start()?;
        let instance = module.pre.instantiate_async(&mut store).await.map_err(|e| {
            if e.downcast_ref::<ExecError>().is_some() || e.downcast_ref::<Trap>().is_some() {
                classify(e, limits)
            } else {
                ExecError::InvalidModule(format!("cannot instantiate: {e:#}"))
            }
        })?;
        let exports = Exports::new(&instance, &mut store)?;
        Ok(GuestInstance { store, exports, digest: module.digest, kind: module.kind })
    }

    /// Runs `execute(input)` under `limits`. After an error the instance may be torn (a trap
    /// midway through guest code): callers discard it unless `is_reusable_after` says otherwise.
    pub async fn call(&mut self, input: &str, limits: &Limits, cancel: &CancelFlag) -> Result<CallOutput, ExecError> {
        let metered = self.kind == EngineKind::Metered;
        self.store.data_mut().limiter.set_max(limits.max_memory_bytes);
        self.store.data_mut().log_budget = crate::host::LOG_LINES_PER_CALL;
        arm(&mut self.store, limits, cancel, metered)?;
        let started = Instant::now();
        let output = {
            let _running = Running::start()?;
            self.exports.call_execute(&mut self.store, input, limits.max_output_bytes, |e| classify(e, limits)).await?
        };
        let duration = started.elapsed();
        let fuel_consumed = if metered {
            let left = self.store.get_fuel().map_err(ExecError::internal)?;
            limits.max_fuel.map(|max| max.saturating_sub(left))
        } else {
            None
        };
        let peak_memory_bytes = self.store.data().limiter.peak_memory_bytes();
        Ok(CallOutput { output, duration, fuel_consumed, peak_memory_bytes })
    }
}

/// Whether an instance can serve another call after this error: only when the guest itself
/// finished normally (its output was rejected, or the call never started).
pub fn is_reusable_after(err: &ExecError) -> bool {
    matches!(
        err,
        ExecError::InvalidOutput { .. } | ExecError::OutputTooLarge { .. } | ExecError::InputTooLarge { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_kinds_are_snake_case() {
        assert_eq!(trap_kind(&Trap::StackOverflow), "stack_overflow");
        assert_eq!(trap_kind(&Trap::UnreachableCodeReached), "unreachable_code_reached");
        assert_eq!(trap_kind(&Trap::MemoryOutOfBounds), "memory_out_of_bounds");
    }
}
