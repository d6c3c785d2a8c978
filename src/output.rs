//! What a guest returns, checked off the caller's thread before it reaches `JSON.parse` there:
//! its nesting depth (a 16 MiB `[[[[...]]]]` would hold the event loop for most of a second,
//! and deeper still overflows the stack of whatever walks it next).

use crate::error::ExecError;

/// Calls `each(byte, 1)` with every byte of JSON text outside its strings, and `each(b'"', len)`
/// with each string of `len` bytes, quotes included (escapes honoured), until it returns false.
fn structure(text: &str, mut each: impl FnMut(u8, usize) -> bool) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let (b, start) = (bytes[i], i);
        i += 1;
        if b == b'"' {
            // To the closing quote, skipping the string's plain runs in one go (payloads are
            // mostly string contents) and each escaped character.
            loop {
                match crate::text::find_quote_or_backslash(bytes, i) {
                    None => i = bytes.len(),
                    Some(at) if bytes[at] == b'\\' => {
                        i = (at + 2).min(bytes.len());
                        continue;
                    }
                    Some(at) => i = at + 1,
                }
                break;
            }
        }
        if !each(b, i - start) {
            return;
        }
    }
}

/// The deepest nesting of arrays and objects in JSON text (strings skipped, escapes honoured).
/// Stops counting once past `limit`.
pub fn depth(text: &str, limit: u32) -> u32 {
    let mut depth: u32 = 0;
    let mut deepest: u32 = 0;
    structure(text, |b, _| {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        deepest <= limit
    });
    deepest
}

/// What `JSON.parse` of JSON text costs the JS thread, estimated in nanoseconds from its parts
/// (review AI's follow-up measured 16 MiB texts: an object of distinct keys 1.1 s, about 0.8 us a
/// member; distinct short strings 0.3 us each; numbers of ~750 digits near a rounding halfway point
/// 14-20 ns a byte; `[1,1,...]` 10 ns a byte; a string's contents 1.5-3.4 ns a byte in `JSON.parse`,
/// and up to 7.5 ns a byte of non-ASCII text with its conversion to a JS string: its second follow-up).
pub fn js_cost(text: &str) -> u64 {
    let mut cost: u64 = 0;
    structure(text, |b, len| {
        cost = cost.saturating_add(match b {
            b'"' => COST_STRING + COST_STRING_BYTE * len as u64,
            b'{' | b'[' => COST_CONTAINER,
            b':' => COST_MEMBER,
            b' ' | b'\n' | b'\r' | b'\t' => COST_STRING_BYTE,
            _ => COST_BYTE,
        });
        true
    });
    cost
}

/// `js_cost`'s parts, in nanoseconds (rounded up from what was measured on a 2-core EPYC).
pub const COST_STRING: u64 = 300;
pub const COST_STRING_BYTE: u64 = 8;
pub const COST_CONTAINER: u64 = 300;
pub const COST_MEMBER: u64 = 800;
pub const COST_BYTE: u64 = 20;

/// `INVALID_OUTPUT` for output nested deeper than `max_depth`.
pub fn check_depth(text: &str, max_depth: u32) -> Result<(), ExecError> {
    if depth(text, max_depth) > max_depth {
        return Err(ExecError::InvalidOutput {
            message: format!("the guest's output nests arrays and objects deeper than {max_depth} levels (maxOutputDepth)"),
            preview: text.chars().take(200).collect(),
        });
    }
    Ok(())
}

/// `INVALID_OUTPUT` unless the output is JSON that `JSON.parse` takes (RFC 8259's grammar; escaped
/// lone surrogates included, as it takes them) nested no deeper than `max_depth`. For the calls
/// whose state counts only if they do: a transactional or durable actor's call that returned
/// text the caller then refused kept (and stored) its state (review AJ).
pub fn check_json(text: &str, max_depth: u32) -> Result<(), ExecError> {
    match json_fault(text.as_bytes(), max_depth) {
        None => Ok(()),
        Some(Fault::TooDeep) => check_depth(text, max_depth).and(Err(ExecError::internal("JSON deeper than its depth"))),
        Some(Fault::At(at)) => Err(ExecError::InvalidOutput {
            message: match text.as_bytes().get(at) {
                None => "the guest returned text that is not JSON: it ends too soon".into(),
                Some(_) => {
                    let near: String = text[at..].chars().take(1).collect();
                    format!("the guest returned text that is not JSON: unexpected {near:?} at byte {at}")
                }
            },
            preview: text.chars().take(200).collect(),
        }),
    }
}

enum Fault {
    At(usize),
    TooDeep,
}

/// Where JSON text stops being JSON, if it does; iterative (any depth up to `max_depth` costs a
/// byte per level, never stack).
fn json_fault(b: &[u8], max_depth: u32) -> Option<Fault> {
    let ws = |mut i: usize| {
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    };
    let key = |i: usize| -> Result<usize, usize> {
        if b.get(i) != Some(&b'"') {
            return Err(i);
        }
        let i = ws(json_string(b, i)?);
        match b.get(i) {
            Some(b':') => Ok(i + 1),
            _ => Err(i),
        }
    };
    // The closing brackets of the containers open.
    let mut open: Vec<u8> = Vec::new();
    let mut i = 0;
    let fault = |r: Result<usize, usize>| r.err().map(Fault::At);
    loop {
        // A value.
        i = ws(i);
        let end = match b.get(i) {
            Some(&c @ (b'{' | b'[')) => {
                if open.len() as u64 >= max_depth as u64 {
                    return Some(Fault::TooDeep);
                }
                let close = if c == b'{' { b'}' } else { b']' };
                let inside = ws(i + 1);
                if b.get(inside) == Some(&close) {
                    Ok(inside + 1)
                } else {
                    open.push(close);
                    i = inside;
                    if close == b'}' {
                        match key(i) {
                            Ok(after) => i = after,
                            Err(at) => return Some(Fault::At(at)),
                        }
                    }
                    continue;
                }
            }
            Some(b'"') => json_string(b, i),
            Some(b't') => literal(b, i, b"true"),
            Some(b'f') => literal(b, i, b"false"),
            Some(b'n') => literal(b, i, b"null"),
            Some(b'-' | b'0'..=b'9') => json_number(b, i),
            _ => Err(i),
        };
        i = match end {
            Ok(end) => end,
            r => return fault(r),
        };
        // After a value: the containers it closes, then the next member's place.
        loop {
            i = ws(i);
            let Some(&close) = open.last() else {
                return (i != b.len()).then_some(Fault::At(i));
            };
            match b.get(i) {
                Some(&c) if c == close => {
                    open.pop();
                    i += 1;
                }
                Some(b',') if close == b'}' => match key(ws(i + 1)) {
                    Ok(after) => {
                        i = after;
                        break;
                    }
                    Err(at) => return Some(Fault::At(at)),
                },
                Some(b',') => {
                    i += 1;
                    break;
                }
                _ => return Some(Fault::At(i)),
            }
        }
    }
}

/// The end of the string at `i` (its opening quote), or where it stops being one.
fn json_string(b: &[u8], mut i: usize) -> Result<usize, usize> {
    i += 1;
    loop {
        // Plain runs (most of a payload) skipped eight bytes at a time.
        i = crate::text::find_json_string_special(b, i).unwrap_or(b.len());
        match b.get(i) {
            None => return Err(i),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') if b.get(i + 2..i + 6).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) => i += 6,
                _ => return Err(i),
            },
            Some(&c) if c < 0x20 => return Err(i),
            Some(_) => i += 1,
        }
    }
}

/// The end of the number at `i`: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn json_number(b: &[u8], mut i: usize) -> Result<usize, usize> {
    let digits = |mut i: usize| -> Result<usize, usize> {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start { Err(i) } else { Ok(i) }
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i) {
        Some(b'0') => i + 1,
        _ => digits(i)?,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Ok(i)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, usize> {
    match b.get(i..i + word.len()) {
        Some(w) if w == word => Ok(i + word.len()),
        _ => Err(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_what_json_parse_takes() {
        let takes = [
            "0", "-0", "1.5e+10", "-12.25E-3", "1e5", "true", "false", "null", r#""""#, " \t\r\n[ ] ", "{}", "[[],{}]",
            r#"{"a":[1,{"b":[]}],"c":"x\"y\\z\/\b\f\n\r\t\u00e9\uD800"}"#, r#"["é😀", -1, 0.0]"#, r#"{ "k" : 1 , "l" : [ 2 , 3 ] }"#,
        ];
        for t in takes {
            assert!(check_json(t, 10).is_ok(), "{t:?}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok(), "{t:?}");
        }
        let refuses = [
            "", " ", "not json 105", "01", "-", "1.", ".5", "1e", "+1", "NaN", "tru", "nul", "True", "[1,]", "[,1]", "[1 2]",
            "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "{\"a\":}", "{,}", "[", "]", "[1]]", "{\"a\":1}}", "1 2", "\"abc", "\"a\\x\"",
            "\"\\u12\"", "\"tab\there\"", "'s'", "[1}", "{\"a\":1]", "\u{feff}1", "[]x", "{\"a\":[1,{\"b\":2]}}",
        ];
        for t in refuses {
            let e = check_json(t, 10).expect_err(t);
            assert_eq!(e.code(), "INVALID_OUTPUT", "{t:?}");
            assert!(e.to_string().contains("not JSON"), "{t:?}: {e}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(t).is_err(), "{t:?}");
        }
        // Depth as check_depth counts it, at any depth without stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(check_json(&deep, 100_000).is_ok());
        let e = check_json(&deep, 1000).unwrap_err();
        assert!(e.to_string().contains("deeper than 1000 levels"), "{e}");
        assert!(check_json(r#"[{"a":[]}]"#, 3).is_ok() && check_json(r#"[{"a":[]}]"#, 2).is_err());
        assert!(check_json(&format!("{}1{}", "[".repeat(5), "]".repeat(4)), 10).unwrap_err().to_string().contains("ends too soon"));
    }

    #[test]
    fn json_agrees_with_serde_json_on_random_texts() {
        // Short texts of JSON's own characters (serde_json takes exactly RFC 8259, lone surrogate
        // escapes included; its depth limit, 128, is out of reach here).
        let alphabet: Vec<char> = "[]{}\":,0123456789.eE+- \ntrufalsn\\/bu\u{1}é".chars().collect();
        let pieces = ["true", "false", "null", "\"a\"", "\"\\u00e9\"", "1.5e3", "-0", "[]", "{}", "{\"k\":", "],", "},"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut valid, mut total) = (0, 0);
        for _ in 0..200_000 {
            let mut t = String::new();
            for _ in 0..next(24) {
                match next(3) {
                    0 => t.push_str(pieces[next(pieces.len())]),
                    _ => t.push(alphabet[next(alphabet.len())]),
                }
            }
            let ours = check_json(&t, 1000).is_ok();
            assert_eq!(ours, serde_json::from_str::<serde::de::IgnoredAny>(&t).is_ok(), "{t:?}");
            valid += ours as u32;
            total += 1;
        }
        assert!(valid > 1000, "{valid} of {total} valid: the texts must exercise both sides");
    }

    #[test]
    fn counts_nesting_outside_strings() {
        assert_eq!(depth("1", 10), 0);
        assert_eq!(depth(r#"{"a":[1,{"b":[]}]}"#, 10), 4);
        assert_eq!(depth(r#"["[[[[", "\"[[[", {"x":"]]]"}]"#, 10), 2);
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(depth(&deep, 1000), 1001, "stops counting past the limit");
        assert_eq!(check_depth(&deep, 1000).map_err(|e| e.code()), Err("INVALID_OUTPUT"));
        assert!(check_depth(&deep, 5000).is_ok());
        // Long strings (skipped in runs) holding brackets, escaped quotes and escaped backslashes.
        let long = "[[[ ]]] {{".repeat(50);
        let text = format!(r#"[{{"k":"{long}\"{long}\\","j":["{long}"]}},"\\"]"#);
        assert_eq!(depth(&text, 10), 3);
        let text = format!(r#"["{long}\\\"[[[", [[]]]"#);
        assert_eq!(depth(&text, 10), 3);
    }
}
