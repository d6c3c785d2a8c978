//! What a compile that panicked ends in, and wasmparser's one known panic kept off stderr.

use crate::error::ExecError;

/// The error a compile (or an inspection) that panicked ends in: `INTERNAL`, save where the
/// panic was wasmparser 0.254's on the bytes. Its validator counts a type's depth through the
/// types it names (an import of a component type of a component type...) and asserts it is at
/// most 127, where later wasmparsers refuse the module: 128 component types each importing the
/// one before, 2.7 KB, ended every call in `INTERNAL` (review BA1). What nests in the bytes is
/// refused before (`component_types::MAX_NESTING`).
pub fn panicked(what: &str, panic: &str) -> ExecError {
    if panic.contains(DEPTH_PANIC) {
        return ExecError::CompileLimit("its types reach past the 127 levels of nesting wasmtime's parser takes, through the types they name".into());
    }
    ExecError::internal(format!("{what} panicked: {panic}"))
}

/// What wasmparser's depth assertion says (see `panicked`).
const DEPTH_PANIC: &str = "depth <= Self::MAX_DEPTH";

/// Keeps wasmparser's depth assertion (a refusal: `panicked`) off the process's stderr, where
/// Rust's panic hook printed it with its location and a backtrace note, once per module: any
/// module's author could write there at will (review BA1). Other panics are printed as before,
/// by the hook that was set. Set once, when an executor or an inspection first needs it.
pub fn quiet_known_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if text.is_some_and(|t| t.contains(DEPTH_PANIC)) {
                return;
            }
            previous(info)
        }));
    });
}
