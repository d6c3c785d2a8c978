//! What a guest returns, checked off the caller's thread before it reaches `JSON.parse` there:
//! its nesting depth (a 16 MiB `[[[[...]]]]` would hold the event loop for most of a second,
//! and deeper still overflows the stack of whatever walks it next).

use crate::error::ExecError;

/// Calls `each` with every byte of JSON text outside its strings (escapes honoured), until it
/// returns false.
fn structure(text: &str, mut each: impl FnMut(u8) -> bool) {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if in_string {
            if escaped {
                escaped = false;
                continue;
            }
            // Skip the string's plain run in one go (payloads are mostly string contents).
            let Some(at) = crate::text::find_quote_or_backslash(bytes, i - 1) else { break };
            i = at + 1;
            match bytes[at] {
                b'\\' => escaped = true,
                _ => in_string = false,
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            _ if !each(b) => return,
            _ => {}
        }
    }
}

/// The deepest nesting of arrays and objects in JSON text (strings skipped, escapes honoured).
/// Stops counting once past `limit`.
pub fn depth(text: &str, limit: u32) -> u32 {
    let mut depth: u32 = 0;
    let mut deepest: u32 = 0;
    structure(text, |b| {
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
    let bytes = text.as_bytes();
    let mut cost: u64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                // To the closing quote, skipping escaped characters.
                loop {
                    match crate::text::find_quote_or_backslash(bytes, i) {
                        None => {
                            i = bytes.len();
                            break;
                        }
                        Some(at) if bytes[at] == b'\\' => i = at + 2,
                        Some(at) => {
                            i = at + 1;
                            break;
                        }
                    }
                }
                let len = (i.min(bytes.len()) - start) as u64;
                cost = cost.saturating_add(COST_STRING + COST_STRING_BYTE * len);
                continue;
            }
            b'{' | b'[' => cost += COST_CONTAINER,
            b':' => cost += COST_MEMBER,
            b' ' | b'\n' | b'\r' | b'\t' => cost += COST_STRING_BYTE,
            _ => cost += COST_BYTE,
        }
        i += 1;
    }
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
