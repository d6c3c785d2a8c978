//! Which compile runs when: the calls' compile slots (one per core, taken in turns by executor),
//! the large modules' and optimizing compiles' share of them, and the background compiles' slot.

use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::compile::LARGE_CODE_ESTIMATE;
use crate::compile_turns::{Owner, Turn, Turns};

/// Compiles running at once in the process; more wait, and one whose callers all left by its
/// turn is dropped without compiling. Background compiles have a slot of their own: they never
/// hold one a call waits for (a worker's first calls of new modules, one after another, each
/// waited behind the tier-ups of the modules before).
pub(crate) const BACKGROUND_SLOTS: u32 = 1;

/// The background compiles' slot.
pub(crate) fn background_slots() -> &'static Arc<Semaphore> {
    static BACKGROUND: OnceLock<Arc<Semaphore>> = OnceLock::new();
    BACKGROUND.get_or_init(|| Arc::new(Semaphore::new(BACKGROUND_SLOTS as usize)))
}

/// The calls' compile slots, one per core, taken in turns by executor (`compile_turns`).
pub(crate) fn call_turns() -> &'static Turns {
    static NOW: OnceLock<Turns> = OnceLock::new();
    NOW.get_or_init(|| Turns::new(crate::threads::cpus()))
}

/// The call slots compiles of large modules (`takes_large_slot`) may hold at once: all but
/// one, so that one is always left to small modules (review BG2: a `precompile` and a call of one
/// 2.5 MB module took both cores' slots, and another executor's 16 KB first call waited 0.5-1.0 s
/// behind them). Taken in turns by executor too, before a call slot.
fn large_turns() -> &'static Turns {
    static LARGE: OnceLock<Turns> = OnceLock::new();
    LARGE.get_or_init(|| Turns::new(crate::threads::cpus().saturating_sub(1).max(1)))
}

/// A compile's slot: a call's (in turns; a large module's with its large turn) or the background
/// one.
pub(crate) enum Slot {
    Call(#[allow(dead_code)] Turn, #[allow(dead_code)] Option<Turn>),
    Background(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// A call's slot for `owner`: a large module's takes its large turn first (`large_turns`).
pub(crate) async fn call_slot(owner: Owner, large: bool) -> Slot {
    let large = if large { Some(large_turns().take(owner).await) } else { None };
    Slot::Call(call_turns().take(owner).await, large)
}

/// Modules of more functions than this are estimated past `LARGE_CODE_ESTIMATE` by their
/// functions alone (`code_estimate`: 1.5 KiB each at least).
pub(crate) const LARGE_FUNCTIONS: u64 = LARGE_CODE_ESTIMATE / 1536;

/// Modules past this many bytes take a large module's slot (`takes_large_slot`): the optimizing
/// compiler takes about 1.7 s of a core per MB of small functions (review BM1: two modules of
/// 981 KB, 10,900 functions of 90 bytes, compiled at once for deterministic definitions, held
/// both call slots and a 1 KB module's first call waited 3.5 s).
pub(crate) const LARGE_SLOT_BYTES: usize = 256 << 10;

/// Whether a call's compile of `bytes` takes a large module's slot (`large_turns`) and threads
/// (`large_pool`): over `LARGE_SLOT_BYTES`, or declaring more than `LARGE_FUNCTIONS` functions
/// (read from the function sections' counts, before the module is weighed): review BL1 had two
/// 600 KB modules of 150,000 empty functions hold both call slots, and a 1 KB module's first
/// call waited 4.3-5.6 s.
pub(crate) fn takes_large_slot(bytes: &[u8]) -> bool {
    if bytes.len() > LARGE_SLOT_BYTES {
        return true;
    }
    let mut functions = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(wasmparser::Payload::FunctionSection(r)) => functions += u64::from(r.count()),
            Ok(_) => {}
            // Refused when it is compiled.
            Err(_) => break,
        }
        if functions > LARGE_FUNCTIONS {
            return true;
        }
    }
    false
}

/// Holds every large module's slot turn until dropped (tests).
#[cfg(test)]
pub(crate) async fn hold_large_slots() -> Vec<Turn> {
    let mut held = Vec::new();
    for _ in 0..crate::threads::cpus().saturating_sub(1).max(1) {
        held.push(large_turns().take(0).await);
    }
    held
}

/// Holds every call compile slot until dropped (tests: compiles a call waits for queue).
#[cfg(test)]
pub(crate) async fn hold_call_slots() -> Vec<Turn> {
    let mut held = Vec::new();
    for _ in 0..crate::threads::cpus() {
        held.push(call_turns().take(0).await);
    }
    held
}

/// Holds every background compile slot until dropped (tests: background compiles wait). All
/// the semaphore has, should it ever be the calls' one again.
#[cfg(test)]
pub(crate) async fn hold_background_slots() -> OwnedSemaphorePermit {
    let slots = background_slots();
    let n = (slots.available_permits() as u32).max(BACKGROUND_SLOTS);
    slots.clone().acquire_many_owned(n).await.expect("slots open")
}
