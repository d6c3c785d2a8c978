//! Text between its three shapes: JS strings (UTF-16 through napi), Rust strings (UTF-8) and
//! AssemblyScript strings (UTF-16LE bytes in linear memory). Payloads are JSON, and JSON text is
//! nearly always ASCII, so each conversion first checks for ASCII with a loop the compiler
//! vectorizes and then widens or narrows bytes; anything else takes the exact general path.
//! The checks never trust the guest: lone surrogates are still found and refused.

/// Block size of the ASCII scans: big enough to vectorize, small enough to stop early on text
/// that is not ASCII near its start.
const BLOCK: usize = 512;

/// Whether all `units` are ASCII. Branch-free per block, so it vectorizes.
pub fn utf16_is_ascii(units: &[u16]) -> bool {
    units.chunks(BLOCK).all(|b| b.iter().fold(0u16, |acc, &u| acc | u) < 0x80)
}

/// Whether the UTF-16LE bytes `bytes` (an even count) are all ASCII.
fn utf16le_is_ascii(bytes: &[u8]) -> bool {
    bytes.chunks(2 * BLOCK).all(|b| {
        b.chunks_exact(2).fold(0u16, |acc, c| acc | u16::from_le_bytes([c[0], c[1]])) < 0x80
    })
}

/// `String::from_utf16`, with a fast path for ASCII. `None` for a lone surrogate.
pub fn string_from_utf16(units: &[u16]) -> Option<String> {
    if utf16_is_ascii(units) {
        let bytes: Vec<u8> = units.iter().map(|&u| u as u8).collect();
        return String::from_utf8(bytes).ok();
    }
    String::from_utf16(units).ok()
}

/// Decodes UTF-16LE bytes (an even count); `None` for a lone surrogate.
pub fn string_from_utf16le(bytes: &[u8]) -> Option<String> {
    if utf16le_is_ascii(bytes) {
        let narrow: Vec<u8> = bytes.chunks_exact(2).map(|c| c[0]).collect();
        return String::from_utf8(narrow).ok();
    }
    let mut out = String::with_capacity(bytes.len() / 2);
    let units = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
    for c in char::decode_utf16(units) {
        out.push(c.ok()?);
    }
    Some(out)
}

/// Bytes `s` takes as UTF-16.
/// An output held in UTF-8 (`bytes`, already valid text) as `maxOutputBytes` counts it: in UTF-16
/// bytes, as JS holds it (an ASCII output of N bytes is 2N; measured in UTF-8, ASCII reached twice
/// the limit, and 540 MB of it passed a 1 GiB limit only to fail as no JS string can be that long).
pub fn check_output_size(text: &str, max_bytes: u64) -> Result<(), crate::error::ExecError> {
    let size = utf16_len_bytes(text);
    if size > max_bytes {
        return Err(crate::error::ExecError::OutputTooLarge { size, limit: max_bytes });
    }
    Ok(())
}

/// Whether UTF-8 text of `utf8_len` bytes is surely over `max_bytes` in UTF-16 (each character
/// takes at least two thirds as many bytes there): checked before the text is read at all.
pub fn surely_over(utf8_len: u64, max_bytes: u64) -> bool {
    utf8_len.saturating_mul(2) / 3 > max_bytes
}

pub fn utf16_len_bytes(s: &str) -> u64 {
    if s.is_ascii() {
        return s.len() as u64 * 2;
    }
    s.encode_utf16().count() as u64 * 2
}

/// Writes `s` as UTF-16LE into `dst`, which holds exactly `utf16_len_bytes(s)` bytes.
pub fn write_utf16le(dst: &mut [u8], s: &str) {
    if s.is_ascii() {
        for (d, &b) in dst.chunks_exact_mut(2).zip(s.as_bytes()) {
            d[0] = b;
            d[1] = 0;
        }
        return;
    }
    for (d, unit) in dst.chunks_exact_mut(2).zip(s.encode_utf16()) {
        d.copy_from_slice(&unit.to_le_bytes());
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` that is `b` (and maybe of bytes above one that is).
fn has_byte(w: u64, b: u8) -> u64 {
    let x = w ^ (ONES * b as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The index of the first byte at or after `from` that `hit` takes, skipping eight bytes at a
/// time while `word_may_hit` says none of them can be one.
fn find_by_words(bytes: &[u8], from: usize, word_may_hit: impl Fn(u64) -> bool, hit: impl Fn(u8) -> bool) -> Option<usize> {
    let mut i = from;
    while i + 8 <= bytes.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i..i + 8]);
        if word_may_hit(u64::from_le_bytes(w)) {
            break;
        }
        i += 8;
    }
    bytes.get(i..)?.iter().position(|&b| hit(b)).map(|p| i + p)
}

/// The index of the first `"` or `\` in `bytes` at or after `from`, eight bytes at a time.
pub fn find_quote_or_backslash(bytes: &[u8], from: usize) -> Option<usize> {
    find_by_words(bytes, from, |w| has_byte(w, b'"') | has_byte(w, b'\\') != 0, |b| b == b'"' || b == b'\\')
}

/// The index of the first byte at or after `from` that ends a run of a JSON string's plain
/// contents (`"`, `\\` or a control byte below 0x20), eight bytes at a time.
pub fn find_json_string_special(bytes: &[u8], from: usize) -> Option<usize> {
    // A byte below 0x20 (one with its high bit set is not).
    let control = |w: u64| w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    find_by_words(
        bytes,
        from,
        |w| has_byte(w, b'"') | has_byte(w, b'\\') | control(w) != 0,
        |b| b == b'"' || b == b'\\' || b < 0x20,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_specials_are_found_wherever_they_are() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut v: Vec<u8> = (0..len).map(|i| [b'a', 0x20, 0x7f, 0x80, 0xff, b'!'][i % 6]).collect();
                    assert_eq!(find_json_string_special(&v, 0), None);
                    v[at] = special;
                    assert_eq!(find_json_string_special(&v, 0), Some(at), "{len} {at} {special}");
                    assert_eq!(find_json_string_special(&v, at + 1), None);
                }
            }
        }
    }

    fn le(s: &str) -> Vec<u8> {
        let mut v = vec![0u8; utf16_len_bytes(s) as usize];
        write_utf16le(&mut v, s);
        v
    }

    #[test]
    fn round_trips_ascii_and_not() {
        for s in ["", "a", &"x".repeat(5000), "héllo 🌍 中文", &format!("{}é", "a".repeat(1500)), "\u{7f}\u{80}"] {
            let bytes = le(s);
            let units: Vec<u16> = s.encode_utf16().collect();
            assert_eq!(bytes.len(), units.len() * 2);
            assert_eq!(bytes, units.iter().flat_map(|u| u.to_le_bytes()).collect::<Vec<u8>>());
            assert_eq!(string_from_utf16le(&bytes).as_deref(), Some(s));
            assert_eq!(string_from_utf16(&units).as_deref(), Some(s));
        }
    }

    #[test]
    fn lone_surrogates_are_refused_on_every_path() {
        // A lone surrogate after a long ASCII run (the fast check fails in the last block only).
        let mut units: Vec<u16> = "a".repeat(3000).encode_utf16().collect();
        units.push(0xD800);
        assert!(string_from_utf16(&units).is_none());
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
        assert!(string_from_utf16le(&bytes).is_none());
        // A high byte that only looks ASCII in its low half.
        assert_eq!(string_from_utf16le(&[b'a', 0x01]).as_deref(), Some("\u{161}"));
        assert!(!utf16_is_ascii(&[0x0100]));
    }

    #[test]
    fn finds_quotes_and_backslashes_at_any_offset() {
        for n in 0..40 {
            let mut s = "x".repeat(n);
            assert_eq!(find_quote_or_backslash(s.as_bytes(), 0), None);
            s.push('"');
            s.push_str("yyyyyyyyyy\\");
            assert_eq!(find_quote_or_backslash(s.as_bytes(), 0), Some(n));
            assert_eq!(find_quote_or_backslash(s.as_bytes(), n + 1), Some(n + 11));
            assert_eq!(find_quote_or_backslash(s.as_bytes(), s.len()), None);
            assert_eq!(find_quote_or_backslash(s.as_bytes(), s.len() + 5), None);
        }
        // Bytes that differ from '"' (0x22) or '\' (0x5c) by borrow-prone values.
        let tricky = [0x21u8, 0x23, 0xa2, 0x5b, 0x5d, 0xdc, 0x00, 0xff, 0x22];
        assert_eq!(find_quote_or_backslash(&tricky, 0), Some(8));
    }
}
