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

#[cfg(test)]
mod tests {
    use super::*;

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
