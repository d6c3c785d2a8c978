//! Compiles that were refused, remembered: the same bytes on the same engine under the same
//! limits are refused again, so a call of a module that cannot run gets its error without another
//! compile. Review AD: a module that compiled but could not be linked or run (an import nothing
//! provides, a component whose `execute` has the wrong type) was compiled again by every call, a
//! 12 MB component's full second of compile per retry.
//!
//! Only refusals the bytes decide (`INVALID_MODULE`, `COMPILE_LIMIT`, `MISSING_EXPORT`, and
//! `CAPABILITY_DENIED`, which a compile meets only for imports no grant can give) are kept,
//! never `BUSY`, `CANCELLED`, an internal error or one of the system's (`os error`), with its
//! message cut to 4 KiB; at most
//! `MAX_REFUSED` of them, the least recently asked going first, each for `KEPT_FOR`: a refusal
//! that was not the bytes' doing after all (the compiler's memory could not be mapped, say) does
//! not outlast a minute. `clearCache()` forgets them.

use std::num::NonZeroUsize;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::digest::Digest;
use crate::engine::EngineKind;
use crate::error::ExecError;
use crate::shape::CompileLimits;

type Key = (Digest, EngineKind, CompileLimits);

/// Refusals kept (each with a message of at most `MAX_MESSAGE_BYTES`: under 1.2 MiB in all).
const MAX_REFUSED: usize = 256;
const MAX_MESSAGE_BYTES: usize = 4096;
/// How long a refusal is kept.
const KEPT_FOR: Duration = Duration::from_secs(60);

/// Refusals, by compile.
pub(crate) struct Refused {
    refused: Mutex<LruCache<Key, (ExecError, Instant)>>,
    kept_for: Duration,
}

impl Refused {
    fn new(capacity: usize, kept_for: Duration) -> Refused {
        Refused { refused: Mutex::new(LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN))), kept_for }
    }

    /// The refusal a compile of `key` met before, if it is kept (and not older than `kept_for`).
    pub(crate) fn get(&self, key: &Key) -> Option<ExecError> {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        match refused.get(key) {
            Some((e, at)) if at.elapsed() < self.kept_for => Some(e.clone()),
            Some(_) => {
                refused.pop(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `e` as the refusal of `key` if the bytes decided it, its message cut to
    /// `MAX_MESSAGE_BYTES` (review AE's follow-up: a message made long by an import's name was not
    /// kept, and every retry compiled again).
    pub(crate) fn note(&self, key: Key, e: &ExecError) {
        let kept = match e {
            ExecError::InvalidModule(m) => ExecError::InvalidModule(cut(m)),
            ExecError::CompileLimit(m) => ExecError::CompileLimit(cut(m)),
            ExecError::MissingExport(m) => ExecError::MissingExport(cut(m)),
            ExecError::CapabilityDenied(m) => ExecError::CapabilityDenied(cut(m)),
            _ => return,
        };
        // The system's refusal (code memory that could not be mapped), not the bytes'.
        if e.to_string().contains("os error") {
            return;
        }
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).put(key, (kept, Instant::now()));
    }

    /// Forgets every refusal (`clearCache()`).
    pub(crate) fn clear(&self) {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// `m`, or its first `MAX_MESSAGE_BYTES` (on a character boundary) and `…`.
fn cut(m: &str) -> String {
    let mut end = m.len().min(MAX_MESSAGE_BYTES);
    while !m.is_char_boundary(end) {
        end -= 1;
    }
    match end == m.len() {
        true => m.to_string(),
        false => format!("{}…", &m[..end]),
    }
}

/// The process's refusals.
pub(crate) fn refused() -> &'static Refused {
    static REFUSED: OnceLock<Refused> = OnceLock::new();
    REFUSED.get_or_init(|| Refused::new(MAX_REFUSED, KEPT_FOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        ([n; 32], EngineKind::Baseline, CompileLimits::default())
    }

    #[test]
    fn only_refusals_the_bytes_decide_are_kept_and_only_with_short_messages() {
        let r = Refused::new(MAX_REFUSED, KEPT_FOR);
        let (note, get) = (|k, e: &ExecError| r.note(k, e), |k: &Key| r.get(k));
        note(key(201), &ExecError::InvalidModule("no".into()));
        note(key(202), &ExecError::Busy("later".into()));
        note(key(203), &ExecError::Cancelled);
        note(key(204), &ExecError::internal("bug"));
        note(key(205), &ExecError::InvalidModule("failed to mmap (os error 12)".into()));
        note(key(206), &ExecError::MissingExport("execute".into()));
        note(key(207), &ExecError::CompileLimit("é".repeat(MAX_MESSAGE_BYTES)));
        assert_eq!(get(&key(201)), Some(ExecError::InvalidModule("no".into())));
        let Some(ExecError::CompileLimit(long)) = get(&key(207)) else { panic!("a long refusal is kept") };
        assert!(long.len() <= MAX_MESSAGE_BYTES + 3 && long.ends_with('…'), "{}", long.len());
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
    fn a_refusal_is_kept_for_a_while_only() {
        let r = Refused::new(MAX_REFUSED, Duration::from_millis(50));
        r.note(key(210), &ExecError::InvalidModule("no".into()));
        assert!(r.get(&key(210)).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.get(&key(210)), None);
        assert_eq!(r.refused.lock().unwrap().len(), 0, "and is let go of");
    }

    #[test]
    fn at_most_max_refused_are_kept() {
        let r = Refused::new(MAX_REFUSED, KEPT_FOR);
        for n in 0..(MAX_REFUSED + 10) {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(n as u64).to_le_bytes());
            digest[31] = 77;
            r.note((digest, EngineKind::Metered, CompileLimits::default()), &ExecError::InvalidModule(n.to_string()));
        }
        assert_eq!(r.refused.lock().unwrap().len(), MAX_REFUSED);
        r.clear();
        assert_eq!(r.refused.lock().unwrap().len(), 0);
    }
}
