//! Content digests: the sha256 that names a module's bytes everywhere (cache keys, pins,
//! artifact names, snapshots).

use sha2::{Digest as _, Sha256};

use crate::error::ExecError;

pub type Digest = [u8; 32];

pub fn sha256(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

pub fn hex(d: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(d.len() * 2);
    for b in d {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses a definition's `sha256` (64 hex digits).
pub fn parse_digest(hex_text: &str) -> Result<Digest, ExecError> {
    let bad = || ExecError::InvalidArgument(format!("definition.sha256 must be 64 hex digits, got {hex_text:?}"));
    if hex_text.len() != 64 || !hex_text.is_ascii() {
        return Err(bad());
    }
    let mut d = [0u8; 32];
    for (i, byte) in d.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex_text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(d)
}

/// HMAC-SHA256 (RFC 2104): what authenticates compiled artifacts and snapshots.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Digest {
    let mut h = HmacSha256::new(key);
    for p in parts {
        h.update(p);
    }
    h.finish()
}

/// HMAC-SHA256 over bytes that arrive in pieces (a file read a chunk at a time).
pub struct HmacSha256 {
    inner: Sha256,
    key: [u8; 64],
}

impl HmacSha256 {
    pub fn new(key: &[u8]) -> Self {
        let mut k = [0u8; 64];
        if key.len() > k.len() {
            k[..32].copy_from_slice(&sha256(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        inner.update(k.map(|b| b ^ 0x36));
        HmacSha256 { inner, key: k }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }

    pub fn finish(self) -> Digest {
        let mut outer = Sha256::new();
        outer.update(self.key.map(|b| b ^ 0x5c));
        outer.update(self.inner.finalize());
        outer.finalize().into()
    }
}

/// Compares two digests in time independent of where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let d = sha256(b"abc");
        assert_eq!(hex(&d), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(parse_digest(&hex(&d)).expect("valid"), d);
        for bad in ["zz", "", &"g".repeat(64), &"é".repeat(32)] {
            assert_eq!(parse_digest(bad).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
        assert!(same(&mac, &mac));
        assert!(!same(&mac, &sha256(b"x")));
    }
}
