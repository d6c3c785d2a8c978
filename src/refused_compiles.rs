//! Compiles that were refused, remembered: the same bytes on the same engine under the same
//! limits are refused again, so a call of a module that cannot run gets its error without another
//! compile. Review AD: a module that compiled but could not be linked or run (an import nothing
//! provides, a component whose `execute` has the wrong type) was compiled again by every call, a
//! 12 MB component's full second of compile per retry.
//!
//! Only refusals the bytes decide (`INVALID_MODULE`, `COMPILE_LIMIT`, `MISSING_EXPORT`, and
//! `CAPABILITY_DENIED`, which a compile meets only for imports no grant can give) are kept,
//! never `BUSY`, `CANCELLED` or an internal error, and only with a short message; at most
//! `MAX_REFUSED` of them, the least recently asked going first. `clearCache()` forgets them.

use std::num::NonZeroUsize;
use std::sync::{Mutex, OnceLock};

use lru::LruCache;

use crate::digest::Digest;
use crate::engine::EngineKind;
use crate::error::ExecError;
use crate::shape::CompileLimits;

type Key = (Digest, EngineKind, CompileLimits);

/// Refusals kept (each with a message of at most `MAX_MESSAGE_BYTES`: under 1.2 MiB in all).
const MAX_REFUSED: usize = 256;
const MAX_MESSAGE_BYTES: usize = 4096;

/// Refusals, by compile.
pub(crate) struct Refused(Mutex<LruCache<Key, ExecError>>);

impl Refused {
    fn new(capacity: usize) -> Refused {
        Refused(Mutex::new(LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN))))
    }

    /// The refusal a compile of `key` met before, if it is kept.
    pub(crate) fn get(&self, key: &Key) -> Option<ExecError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    /// Keeps `e` as the refusal of `key` if the bytes decided it.
    pub(crate) fn note(&self, key: Key, e: &ExecError) {
        let decided = matches!(
            e,
            ExecError::InvalidModule(_) | ExecError::CompileLimit(_) | ExecError::MissingExport(_) | ExecError::CapabilityDenied(_)
        );
        if decided && e.to_string().len() <= MAX_MESSAGE_BYTES {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).put(key, e.clone());
        }
    }

    /// Forgets every refusal (`clearCache()`).
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The process's refusals.
pub(crate) fn refused() -> &'static Refused {
    static REFUSED: OnceLock<Refused> = OnceLock::new();
    REFUSED.get_or_init(|| Refused::new(MAX_REFUSED))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        ([n; 32], EngineKind::Baseline, CompileLimits::default())
    }

    #[test]
    fn only_refusals_the_bytes_decide_are_kept_and_only_with_short_messages() {
        let r = Refused::new(MAX_REFUSED);
        let (note, get) = (|k, e: &ExecError| r.note(k, e), |k: &Key| r.get(k));
        note(key(201), &ExecError::InvalidModule("no".into()));
        note(key(202), &ExecError::Busy("later".into()));
        note(key(203), &ExecError::Cancelled);
        note(key(204), &ExecError::internal("bug"));
        note(key(205), &ExecError::CompileLimit("x".repeat(MAX_MESSAGE_BYTES + 1)));
        note(key(206), &ExecError::MissingExport("execute".into()));
        assert_eq!(get(&key(201)), Some(ExecError::InvalidModule("no".into())));
        for n in 202..=205 {
            assert_eq!(get(&key(n)), None, "{n}");
        }
        assert_eq!(get(&key(206)), Some(ExecError::MissingExport("execute".into())));
        // Another engine or other limits: not the same compile.
        assert_eq!(get(&([201; 32], EngineKind::Plain, CompileLimits::default())), None);
        let other = CompileLimits { max_functions: 7, ..CompileLimits::default() };
        assert_eq!(get(&([201; 32], EngineKind::Baseline, other)), None);
    }

    #[test]
    fn at_most_max_refused_are_kept() {
        let r = Refused::new(MAX_REFUSED);
        for n in 0..(MAX_REFUSED + 10) {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(n as u64).to_le_bytes());
            digest[31] = 77;
            r.note((digest, EngineKind::Metered, CompileLimits::default()), &ExecError::InvalidModule(n.to_string()));
        }
        assert_eq!(r.0.lock().unwrap().len(), MAX_REFUSED);
        r.clear();
        assert_eq!(r.0.lock().unwrap().len(), 0);
    }
}
