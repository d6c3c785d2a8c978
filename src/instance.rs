//! A live guest: a Store with its instance, and how one call runs on it: as a future whose guest
//! code runs on a wasmtime fiber, so a call may start on one thread and finish on another.
//! A call's budget (deadline, fuel, log lines) is armed once and covers everything the call runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{PoolConcurrencyLimitError, Store, Trap};

use crate::abi::assemblyscript::Exports;
use crate::capabilities::Grants;
use crate::digest::Digest;
use crate::engine::{EngineKind, Running};
use crate::error::ExecError;
use crate::host::{HostState, LogSink};
use crate::limits::{arm, Budget, CancelFlag, Limits};
use crate::modules::CompiledModule;

/// What one call produced and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutput {
    /// The guest's result: JSON text, not yet parsed.
    pub output: String,
    /// Time the guest ran for this call (instantiation included for a fresh instance).
    pub duration: Duration,
    /// Fuel used, when the call ran with a fuel budget.
    pub fuel_consumed: Option<u64>,
    /// The most memory (all memories and tables) the instance has held.
    pub peak_memory_bytes: u64,
    /// Whether the call ran on an actor instance created for it (its first call, or the first
    /// after its state was lost or dropped).
    pub actor_created: bool,
}

pub struct GuestInstance {
    store: Store<HostState>,
    exports: Exports,
    pub digest: Digest,
    pub kind: EngineKind,
    /// What its WASI context was built from.
    grants: Grants,
}

/// Turns what wasmtime reports into our error: our own errors raised in host code or limits
/// come back as they were; traps get their kind; a full pool is `BUSY`.
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
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return ExecError::GuestError { message: format!("the guest exited with code {}", exit.0), exit_code: Some(exit.0) };
    }
    if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return ExecError::Busy(format!("no room in the process's instance pool: {err:#}"));
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

/// What can go wrong while instantiating: a trap without a start function is a segment that
/// does not fit (the module can never instantiate), not a guest fault.
fn instantiate_error(e: wasmtime::Error, limits: &Limits, module: &CompiledModule) -> ExecError {
    let is_trap = e.downcast_ref::<Trap>().is_some_and(|t| *t != Trap::OutOfFuel && *t != Trap::Interrupt);
    if is_trap && !module.has_start {
        return ExecError::InvalidModule(format!("cannot instantiate: {e:#}"));
    }
    match classify(e, limits) {
        ExecError::Trap { kind, message } if kind == "host" => ExecError::InvalidModule(format!("cannot instantiate: {message}")),
        other => other,
    }
}

impl GuestInstance {
    /// Instantiates a module in a fresh Store armed with the call's budget (its start function
    /// spends from it).
    pub async fn new(
        module: &CompiledModule,
        limits: &Limits,
        budget: Budget,
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
        store.limiter_async(|s| &mut s.limiter);
        arm(&mut store, limits, budget, cancel, module.kind.metered())?;
        let _running = Running::start()?;
        let instance =
            module.pre.instantiate_async(&mut store).await.map_err(|e| instantiate_error(e, limits, module))?;
        let exports = Exports::new(&instance, &mut store)?;
        Ok(GuestInstance { store, exports, digest: module.digest, kind: module.kind, grants: grants.clone() })
    }

    /// Readies a kept instance for a new call under the definition's current limits and grants:
    /// the memory cap (an instance already past a lowered cap is refused, `OUT_OF_MEMORY`, and
    /// kept as it is), a WASI context rebuilt from the current grants, a fresh budget.
    pub fn rearm(
        &mut self,
        limits: &Limits,
        budget: Budget,
        cancel: &CancelFlag,
        grants: &Grants,
    ) -> Result<(), ExecError> {
        let held = self.store.data().limiter.total_bytes();
        if held > limits.max_memory_bytes {
            return Err(ExecError::OutOfMemory { limit_bytes: limits.max_memory_bytes, requested_bytes: held });
        }
        if self.store.data().wasi.is_some() && self.grants != *grants {
            self.store.data_mut().wasi = Some(grants.wasi_context()?);
            self.grants = grants.clone();
        }
        let data = self.store.data_mut();
        data.limiter.set_max(limits.max_memory_bytes);
        data.log_budget = crate::host::LOG_LINES_PER_CALL;
        arm(&mut self.store, limits, budget, cancel, self.kind.metered())
    }

    /// Runs `execute(input)` within the budget armed for this call. After an error the instance
    /// may be torn (a trap midway through guest code): callers discard it unless
    /// `is_reusable_after` says otherwise.
    pub async fn call(&mut self, input: &str, limits: &Limits, started: Instant) -> Result<CallOutput, ExecError> {
        let output = {
            let _running = Running::start()?;
            self.exports.call_execute(&mut self.store, input, limits.max_output_bytes, |e| classify(e, limits)).await?
        };
        let fuel_consumed = if self.kind.metered() {
            let left = self.store.get_fuel().map_err(ExecError::internal)?;
            limits.max_fuel.map(|max| max.saturating_sub(left))
        } else {
            None
        };
        Ok(CallOutput {
            output,
            duration: started.elapsed(),
            fuel_consumed,
            peak_memory_bytes: self.store.data().limiter.peak_bytes(),
            actor_created: false,
        })
    }

    /// Memory (all memories and tables) the instance holds now.
    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.total_bytes()
    }
}

/// Whether an instance can serve another call after this error: only when the guest itself
/// finished normally (its output was rejected), or the call never started.
pub fn is_reusable_after(err: &ExecError) -> bool {
    matches!(err, ExecError::InvalidOutput { .. } | ExecError::OutputTooLarge { .. } | ExecError::InputTooLarge { .. })
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
