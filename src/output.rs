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

/// Units of work for the JS thread to make JSON text into values: `CONTAINER_UNITS` per array or
/// object, 1 per other value (a string counts once whatever its length: V8 copies text fast). Per
/// value, `JSON.parse` took ~0.27 us for `{}`, ~0.03 us for `0` (review AI).
pub fn js_units(text: &str) -> u64 {
    let mut units: u64 = 1;
    structure(text, |b| {
        match b {
            b'[' | b'{' => units += CONTAINER_UNITS,
            b',' => units += 1,
            _ => {}
        }
        true
    });
    units
}

/// An array or object costs about as much as this many numbers to make.
pub const CONTAINER_UNITS: u64 = 8;

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
