// A WASI command in Rust (built with Debian's rustc for wasm32-wasi, no crates): the echo contract
// with the input JSON on stdin and the output JSON on stdout.
use std::io::{Read, Write};

/// The raw JSON value after `"key":`, if any.
fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{}\"", key);
    let mut from = 0;
    while let Some(at) = text[from..].find(&pattern) {
        let rest = text[from + at + pattern.len()..].trim_start();
        if let Some(v) = rest.strip_prefix(':') {
            return Some(v.trim_start());
        }
        from += at + pattern.len();
    }
    None
}

/// A JSON string value, decoded.
fn string(v: &str) -> Option<String> {
    let mut chars = v.strip_prefix('"')?.chars();
    let mut out = String::new();
    let mut units: Vec<u16> = Vec::new();
    loop {
        let c = chars.next()?;
        if c != '\\' && !units.is_empty() {
            out.push_str(&String::from_utf16_lossy(&units));
            units.clear();
        }
        match c {
            '"' => {
                out.push_str(&String::from_utf16_lossy(&units));
                return Some(out);
            }
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    units.push(u16::from_str_radix(&hex, 16).ok()?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).expect("stdin");
    let out = match value(&input, "message").and_then(string) {
        None => String::from("{\"error\":\"message must be a string\"}"),
        Some(message) => {
            let times: i64 = value(&input, "times")
                .map(|v| v.chars().take_while(|c| c.is_ascii_digit() || *c == '-').collect::<String>())
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let result = vec![message.as_str(); times.max(0) as usize].join(" ");
            format!(
                "{{\"result\":{},\"length\":{},\"executedBy\":\"WASM\"}}",
                quote(&result),
                result.encode_utf16().count()
            )
        }
    };
    std::io::stdout().write_all(out.as_bytes()).expect("stdout");
}
