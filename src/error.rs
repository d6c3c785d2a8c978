//! One error type for everything the executor can fail at. Each variant has a stable `code`
//! (what JS callers switch on) and a human message; `details` lists the extra fields the JS
//! error object carries (abort location, trap kind, limits).

use std::fmt;

/// A value attached to a JS error as a property.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    Str(String),
    Num(f64),
    Bool(bool),
    /// JSON text, given to JS parsed (as the string itself if it does not parse).
    Json(String),
}

/// Every message starts with its code in plain words ("timeout: ...", "out of memory: ..."), so
/// retry policies that match patterns against `error.message` (Loom's `retryableErrors`) work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    /// The definition or options passed by the caller are malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The blob store has no object at this path (or its download rejected).
    #[error("blob not found: {path}: {message}")]
    BlobNotFound { path: String, message: String },
    /// The blob store failed (network, 5xx, timeout) — not a missing object.
    #[error("blob unavailable: {path}: {message}")]
    BlobUnavailable { path: String, message: String },
    /// The module's bytes do not hash to the definition's `sha256`.
    #[error("integrity mismatch for {path}: expected sha256 {expected}, got {actual}")]
    IntegrityMismatch { path: String, expected: String, actual: String },
    /// Not WebAssembly, fails validation, or cannot be linked or instantiated.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The module is past a compile limit (size, functions, body size, locals, compile time).
    #[error("compile limit: {0}")]
    CompileLimit(String),
    /// A function the guest ABI needs is not exported (or has the wrong type).
    #[error("missing export: {0}")]
    MissingExport(String),
    /// The guest imports something it was not granted.
    #[error("capability denied: {0}")]
    CapabilityDenied(String),
    /// The guest called `abort(msg, file, line, col)`.
    #[error("guest abort: {message} ({file}:{line}:{column})")]
    GuestAbort { message: String, file: String, line: u32, column: u32 },
    /// The guest reported a failure its own way (a WASI exit code, an ABI's error call).
    #[error("guest error: {message}")]
    GuestError { message: String, exit_code: Option<i32> },
    /// A WebAssembly trap (out of bounds, unreachable, stack overflow, ...).
    #[error("trap ({kind}): {message}")]
    Trap { kind: String, message: String },
    /// The call ran past `limits.maxExecutionMs`.
    #[error("timeout: the call ran past its time limit of {limit_ms} ms{during}")]
    Timeout { limit_ms: u64, during: &'static str },
    /// The guest tried to grow its memories and tables past the cap.
    #[error("out of memory: the limit of {limit_bytes} bytes would be exceeded (requested {requested_bytes} bytes)")]
    OutOfMemory { limit_bytes: u64, requested_bytes: u64 },
    /// The call used up its fuel budget.
    #[error("out of fuel: the budget of {limit} was used up")]
    OutOfFuel { limit: u64 },
    /// The caller cancelled the call.
    #[error("cancelled: the call was cancelled")]
    Cancelled,
    /// The input could not be serialized to JSON.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The input is larger than the executor accepts.
    #[error("input too large: {size} bytes, over the limit of {limit} bytes")]
    InputTooLarge { size: u64, limit: u64 },
    /// The guest's output is larger than the executor accepts.
    #[error("output too large: {size} bytes, over the limit of {limit} bytes")]
    OutputTooLarge { size: u64, limit: u64 },
    /// The guest returned something that is not a valid string of JSON.
    #[error("invalid output: {message}")]
    InvalidOutput { message: String, preview: String },
    /// A snapshot is corrupt, truncated, of another format version, or too large.
    #[error("snapshot invalid: {0}")]
    SnapshotInvalid(String),
    /// A snapshot was taken of another module than the definition's.
    #[error("snapshot mismatch: the actor's state (or snapshot) is of module sha256 {actual}, the definition's is {expected}")]
    SnapshotMismatch { expected: String, actual: String },
    /// Another worker advanced this actor in its store first: its state here is stale (dropped);
    /// the next call reloads it.
    #[error("actor conflict: {0}")]
    ActorConflict(String),
    /// A host function (`options.hostFunctions`) threw or rejected: its message, and its `code`
    /// when the JS error had one (`hostCode`).
    #[error("host function error: {function}: {message}")]
    HostFunctionError { function: String, message: String, code: Option<String> },
    /// A guest's HTTP request broke a rule of the network grant (a host not allowed, a private
    /// address, a scheme, a cap): `host` names what it tried to reach.
    #[error("network denied: {message}")]
    NetworkDenied { host: String, message: String },
    /// An allowed HTTP request failed on the way (connection refused, reset, timed out).
    #[error("network error: {message}")]
    NetworkError { host: String, message: String },
    /// The process has no room for the call right now (instance pool, fiber stacks); try again.
    #[error("busy: {0}")]
    Busy(String),
    /// The executor was closed.
    #[error("closed: the executor was closed")]
    Closed,
    /// A bug or resource failure inside the executor itself.
    #[error("internal: {0}")]
    Internal(String),
    /// An actor's call failed and its instance was discarded: the actor's state is gone and its
    /// next call starts fresh. Code, message and details are the cause's, plus `actorReset`.
    #[error("{0}; the actor's instance was discarded and its state lost")]
    ActorReset(Box<ExecError>),
    /// A call that timed out or was cancelled after it reported progress: the cause, plus its
    /// last heartbeat (`lastProgress`), so a workflow can resume where it got to.
    #[error("{error}")]
    WithProgress { error: Box<ExecError>, last: String },
}

impl ExecError {
    /// The stable code JS callers see as `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ExecError::InvalidArgument(_) => "INVALID_ARGUMENT",
            ExecError::BlobNotFound { .. } => "BLOB_NOT_FOUND",
            ExecError::BlobUnavailable { .. } => "BLOB_UNAVAILABLE",
            ExecError::IntegrityMismatch { .. } => "INTEGRITY_MISMATCH",
            ExecError::InvalidModule(_) => "INVALID_MODULE",
            ExecError::CompileLimit(_) => "COMPILE_LIMIT",
            ExecError::MissingExport(_) => "MISSING_EXPORT",
            ExecError::CapabilityDenied(_) => "CAPABILITY_DENIED",
            ExecError::GuestAbort { .. } => "GUEST_ABORT",
            ExecError::GuestError { .. } => "GUEST_ERROR",
            ExecError::Trap { .. } => "TRAP",
            ExecError::Timeout { .. } => "TIMEOUT",
            ExecError::OutOfMemory { .. } => "OUT_OF_MEMORY",
            ExecError::OutOfFuel { .. } => "OUT_OF_FUEL",
            ExecError::Cancelled => "CANCELLED",
            ExecError::InvalidInput(_) => "INVALID_INPUT",
            ExecError::InputTooLarge { .. } => "INPUT_TOO_LARGE",
            ExecError::OutputTooLarge { .. } => "OUTPUT_TOO_LARGE",
            ExecError::InvalidOutput { .. } => "INVALID_OUTPUT",
            ExecError::SnapshotInvalid(_) => "SNAPSHOT_INVALID",
            ExecError::SnapshotMismatch { .. } => "SNAPSHOT_MISMATCH",
            ExecError::ActorConflict(_) => "ACTOR_CONFLICT",
            ExecError::HostFunctionError { .. } => "HOST_FUNCTION_ERROR",
            ExecError::NetworkDenied { .. } => "NETWORK_DENIED",
            ExecError::NetworkError { .. } => "NETWORK_ERROR",
            ExecError::Busy(_) => "BUSY",
            ExecError::Closed => "CLOSED",
            ExecError::Internal(_) => "INTERNAL",
            ExecError::ActorReset(cause) => cause.code(),
            ExecError::WithProgress { error, .. } => error.code(),
        }
    }

    /// Whether the same call may succeed if tried again unchanged. A trap, an abort, a limit the
    /// guest ran into or a bad module fails the same way again; a store that was unavailable, a
    /// full process or a timeout under load may not.
    pub fn retryable(&self) -> bool {
        match self {
            ExecError::BlobUnavailable { .. }
            | ExecError::Timeout { .. }
            | ExecError::Busy(_)
            | ExecError::NetworkError { .. }
            | ExecError::ActorConflict(_) => true,
            ExecError::ActorReset(cause) => cause.retryable(),
            ExecError::WithProgress { error, .. } => error.retryable(),
            _ => false,
        }
    }

    /// The cause, for an error that wraps one.
    pub fn root(&self) -> &ExecError {
        match self {
            ExecError::ActorReset(cause) => cause.root(),
            ExecError::WithProgress { error, .. } => error.root(),
            other => other,
        }
    }

    /// Extra properties for the JS error object.
    pub fn details(&self) -> Vec<(&'static str, Detail)> {
        use Detail::*;
        match self {
            ExecError::BlobNotFound { path, .. } | ExecError::BlobUnavailable { path, .. } => {
                vec![("path", Str(path.clone()))]
            }
            ExecError::IntegrityMismatch { path, expected, actual } => vec![
                ("path", Str(path.clone())),
                ("expected", Str(expected.clone())),
                ("actual", Str(actual.clone())),
            ],
            ExecError::GuestAbort { message, file, line, column } => vec![
                ("guestMessage", Str(message.clone())),
                ("file", Str(file.clone())),
                ("line", Num(*line as f64)),
                ("column", Num(*column as f64)),
            ],
            ExecError::GuestError { message, exit_code } => {
                let mut d = vec![("guestMessage", Str(message.clone()))];
                if let Some(c) = exit_code {
                    d.push(("exitCode", Num(*c as f64)));
                }
                d
            }
            ExecError::Trap { kind, .. } => vec![("trapKind", Str(kind.clone()))],
            ExecError::HostFunctionError { function, code, .. } => {
                let mut d = vec![("hostFunction", Str(function.clone()))];
                if let Some(c) = code {
                    d.push(("hostCode", Str(c.clone())));
                }
                d
            }
            ExecError::NetworkDenied { host, .. } | ExecError::NetworkError { host, .. } => vec![("host", Str(host.clone()))],
            ExecError::Timeout { limit_ms, .. } => vec![("limitMs", Num(*limit_ms as f64))],
            ExecError::OutOfMemory { limit_bytes, requested_bytes } => vec![
                ("limitBytes", Num(*limit_bytes as f64)),
                ("requestedBytes", Num(*requested_bytes as f64)),
            ],
            ExecError::OutOfFuel { limit } => vec![("limitFuel", Num(*limit as f64))],
            ExecError::InputTooLarge { size, limit } | ExecError::OutputTooLarge { size, limit } => {
                vec![("size", Num(*size as f64)), ("limit", Num(*limit as f64))]
            }
            ExecError::InvalidOutput { preview, .. } => vec![("preview", Str(preview.clone()))],
            ExecError::SnapshotMismatch { expected, actual } => {
                vec![("expected", Str(expected.clone())), ("actual", Str(actual.clone()))]
            }
            ExecError::ActorReset(cause) => {
                let mut d = cause.details();
                d.push(("actorReset", Bool(true)));
                d
            }
            ExecError::WithProgress { error, last } => {
                let mut d = error.details();
                d.push(("lastProgress", Json(last.clone())));
                d
            }
            _ => Vec::new(),
        }
    }

    pub(crate) fn internal(what: impl fmt::Display) -> Self {
        ExecError::Internal(what.to_string())
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let all = [
            ExecError::InvalidArgument(String::new()),
            ExecError::BlobNotFound { path: "p".into(), message: String::new() },
            ExecError::BlobUnavailable { path: "p".into(), message: String::new() },
            ExecError::IntegrityMismatch { path: "p".into(), expected: String::new(), actual: String::new() },
            ExecError::InvalidModule(String::new()),
            ExecError::MissingExport(String::new()),
            ExecError::CapabilityDenied(String::new()),
            ExecError::GuestAbort { message: String::new(), file: String::new(), line: 0, column: 0 },
            ExecError::Trap { kind: String::new(), message: String::new() },
            ExecError::Timeout { limit_ms: 1, during: "" },
            ExecError::OutOfMemory { limit_bytes: 1, requested_bytes: 2 },
            ExecError::OutOfFuel { limit: 1 },
            ExecError::Cancelled,
            ExecError::InvalidInput(String::new()),
            ExecError::InputTooLarge { size: 2, limit: 1 },
            ExecError::OutputTooLarge { size: 2, limit: 1 },
            ExecError::InvalidOutput { message: String::new(), preview: String::new() },
            ExecError::CompileLimit(String::new()),
            ExecError::GuestError { message: String::new(), exit_code: None },
            ExecError::Busy(String::new()),
            ExecError::HostFunctionError { function: "a.b".into(), message: String::new(), code: None },
            ExecError::NetworkDenied { host: "h".into(), message: String::new() },
            ExecError::NetworkError { host: "h".into(), message: String::new() },
            ExecError::Closed,
            ExecError::SnapshotInvalid(String::new()),
            ExecError::SnapshotMismatch { expected: String::new(), actual: String::new() },
            ExecError::ActorConflict(String::new()),
            ExecError::Internal(String::new()),
        ];
        let mut codes: Vec<_> = all.iter().map(|e| e.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(codes.iter().all(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')));
        // Each message starts with its code in plain words.
        for e in &all {
            let words = e.code().to_lowercase().replace('_', " ");
            assert!(e.to_string().starts_with(&words), "{e}");
        }
        let retryable: Vec<_> = all.iter().filter(|e| e.retryable()).map(|e| e.code()).collect();
        assert_eq!(retryable, ["BLOB_UNAVAILABLE", "TIMEOUT", "BUSY", "NETWORK_ERROR", "ACTOR_CONFLICT"]);
    }

    #[test]
    fn actor_reset_keeps_the_cause() {
        let e = ExecError::ActorReset(Box::new(ExecError::Timeout { limit_ms: 5, during: "" }));
        assert_eq!(e.code(), "TIMEOUT");
        assert!(e.retryable());
        assert!(e.to_string().starts_with("timeout: "));
        assert!(e.details().contains(&("actorReset", Detail::Bool(true))));
        assert_eq!(e.root(), &ExecError::Timeout { limit_ms: 5, during: "" });
    }

    #[test]
    fn abort_details_carry_location() {
        let e = ExecError::GuestAbort { message: "boom".into(), file: "a.ts".into(), line: 3, column: 7 };
        let d = e.details();
        assert!(d.contains(&("line", Detail::Num(3.0))));
        assert!(d.contains(&("file", Detail::Str("a.ts".into()))));
        assert_eq!(e.to_string(), "guest abort: boom (a.ts:3:7)");
    }
}
