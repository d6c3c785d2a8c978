//! What wasmtime reports of a guest, as our errors: our own raised in host code or limits as they
//! were, traps with their kind, exits, a full pool or an OS refusal as `BUSY`.

use wasmtime::{PoolConcurrencyLimitError, Trap};

use crate::error::ExecError;
use crate::limits::Limits;
use crate::modules::CompiledModule;

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
        return ExecError::Trap { kind: trap_kind(trap), message: crate::trap_text::describe(&err) };
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return ExecError::GuestError { message: format!("the guest exited with code {}", exit.0), exit_code: Some(exit.0) };
    }
    if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
        return ExecError::Busy(format!("no room in the process's instance pool: {}", crate::trap_text::describe(&err)));
    }
    ExecError::Trap { kind: "host".into(), message: crate::trap_text::describe(&err) }
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
pub(super) fn instantiate_error(e: wasmtime::Error, limits: &Limits, module: &CompiledModule) -> ExecError {
    let is_trap = e.downcast_ref::<Trap>().is_some_and(|t| *t != Trap::OutOfFuel && *t != Trap::Interrupt);
    // The OS refused something (a memfd for the module's memory image, out of descriptors): the
    // process's trouble, for now, not the module's (review BB2: `INVALID_MODULE`, not retryable).
    if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some()) {
        return ExecError::Busy(format!("cannot instantiate now: {}; retry later", crate::trap_text::describe(&e)));
    }
    if is_trap && !module.has_start {
        return ExecError::InvalidModule(format!("cannot instantiate: {}", crate::trap_text::describe(&e)));
    }
    match classify(e, limits) {
        ExecError::Trap { kind, message } if kind == "host" => ExecError::InvalidModule(format!("cannot instantiate: {message}")),
        other => other,
    }
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
