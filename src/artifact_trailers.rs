//! The trailers (flags, tag, magic) of the artifacts this process sealed or checked, by key and
//! name, with their lengths. Whether a tier holds a module's artifact is told from the length and
//! the trailer of what is under its name, and code taken from another executor (`shared_code`)
//! need not be serialized and sealed again to learn them (review AQ1: each executor that took
//! the 12 MB component's code spent 0.6 s of CPU and 50 MB sealing it, whatever the store held).
//! What is noted is a valid artifact of that name and key (a tier holding another one, if a
//! compile made other bytes, is written over: a write at most).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::artifact_seal::TRAILER;
use crate::digest::Digest;

/// An artifact's trailer.
pub(crate) type Trailer = [u8; TRAILER];

/// Artifacts noted, at most (past it, the notes start over: a note forgotten costs a seal).
const MAX_NOTED: usize = 4096;

/// (the key's digest, the artifact's name) -> (its length, its trailer).
type Notes = HashMap<(Digest, String), (u64, Trailer)>;

static NOTED: Mutex<Option<Notes>> = Mutex::new(None);

/// Notes the artifact `name`, sealed with `key`, of `sealed_len` bytes ending in `trailer`.
pub(crate) fn note(key: &[u8], name: &str, sealed_len: u64, trailer: &[u8]) {
    let Ok(trailer) = Trailer::try_from(trailer) else { return };
    let mut noted = NOTED.lock().unwrap_or_else(|p| p.into_inner());
    let noted = noted.get_or_insert_with(HashMap::new);
    if noted.len() >= MAX_NOTED {
        noted.clear();
    }
    noted.insert((crate::digest::sha256(key), name.to_string()), (sealed_len, trailer));
}

/// Notes a whole sealed artifact.
pub(crate) fn note_sealed(key: &[u8], name: &str, sealed: &[u8]) {
    if let Some(at) = sealed.len().checked_sub(TRAILER) {
        note(key, name, sealed.len() as u64, &sealed[at..]);
    }
}

/// The length and trailer noted for the artifact `name` sealed with `key`, if any.
pub(crate) fn noted(key: &[u8], name: &str) -> Option<(u64, Trailer)> {
    let noted = NOTED.lock().unwrap_or_else(|p| p.into_inner());
    noted.as_ref()?.get(&(crate::digest::sha256(key), name.to_string())).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_is_noted_by_its_key_and_name() {
        let sealed: Vec<u8> = (0..100u8).collect();
        note_sealed(&[1u8; 32], "trailers-test-a", &sealed);
        assert_eq!(noted(&[1u8; 32], "trailers-test-a"), Some((100, Trailer::try_from(&sealed[100 - TRAILER..]).expect("a trailer"))));
        assert_eq!(noted(&[2u8; 32], "trailers-test-a"), None, "another key");
        assert_eq!(noted(&[1u8; 32], "trailers-test-b"), None, "another name");
        note_sealed(&[1u8; 32], "trailers-test-short", &sealed[..TRAILER - 1]);
        assert_eq!(noted(&[1u8; 32], "trailers-test-short"), None, "shorter than a trailer");
    }
}
