//! What a compile that panicked ends in, and the known panics (refusals) kept off stderr.

use crate::error::ExecError;

/// The error a compile (or an inspection) that panicked ends in: `INTERNAL`, save where the
/// panic was wasmparser 0.254's on the bytes. Its validator counts a type's depth through the
/// types it names (an import of a component type of a component type...) and asserts it is at
/// most 127, where later wasmparsers refuse the module: 128 component types each importing the
/// one before, 2.7 KB, ended every call in `INTERNAL` (review BA1). What nests in the bytes is
/// refused before (`component_types::MAX_NESTING`).
///
/// Also wasmtime's own check of the adapters it makes between a composed component's parts: an
/// adapter between two parts that each own a memory needs two memories in one module
/// (multi-memory, which the engine refuses), and wasmtime panics where it would refuse it. A
/// component `wasm-tools compose` makes of two such parts ended every call in `INTERNAL`, compiled
/// again each time, two panics on stderr per call (review BQ3); it is `INVALID_MODULE`, kept.
pub fn panicked(what: &str, panic: &str) -> ExecError {
    if panic.contains(DEPTH_PANIC) {
        return ExecError::CompileLimit("its types reach past the 127 levels of nesting wasmtime's parser takes, through the types they name".into());
    }
    if panic.contains(ADAPTER_PANIC) {
        return ExecError::InvalidModule(
            "a component whose parts each own a memory, and pass values between them: the adapter between two memories needs multi-memory, which this engine refuses".into(),
        );
    }
    ExecError::internal(format!("{what} panicked: {panic}"))
}

/// What wasmparser's depth assertion says (see `panicked`).
const DEPTH_PANIC: &str = "depth <= Self::MAX_DEPTH";
/// What wasmtime says of an adapter module that does not validate (see `panicked`).
const ADAPTER_PANIC: &str = "invalid adapter module generated";

/// Keeps wasmparser's depth assertion and wasmtime's adapter check (refusals: `panicked`) off the
/// process's stderr, where Rust's panic hook printed them with their location and a backtrace
/// note, once per module: any module's author could write there at will (review BA1). Other panics are printed as before,
/// by the hook that was set. Set once, when an executor or an inspection first needs it.
pub fn quiet_known_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if text.is_some_and(|t| t.contains(DEPTH_PANIC) || t.contains(ADAPTER_PANIC)) {
                return;
            }
            previous(info)
        }));
    });
}
