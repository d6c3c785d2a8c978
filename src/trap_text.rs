//! The text of an error wasmtime reports, bounded: what a guest names goes into it (its
//! functions' and module's names from the name section, a host error's message), and wasmtime's
//! own display writes those whole and demangled, every frame. A 24 MB function name 30 frames
//! deep took 1.27 s and 1.26 GB of the JS thread per call before the text was cut for JS
//! (review AD). Here the backtrace is written by us, each name cut short (names are shown as the
//! module has them, not demangled, as wasmtime without its `demangle` feature shows them), and
//! the whole text stops at `MAX_TEXT` bytes.

use std::fmt::Write;

use wasmtime::WasmBacktrace;

/// The most an error's text takes, in bytes (JS is handed at most 64 Ki characters of it).
pub const MAX_TEXT: usize = 64 * 1024;
/// The most of one name (a function's, a module's) a backtrace line shows, in bytes.
pub const MAX_NAME: usize = 256;

/// `format!("{err:#}")`, bounded: the error, then each cause after `: `, the wasm backtrace (if
/// any) last.
pub fn describe(err: &wasmtime::Error) -> String {
    let mut out = Bounded::default();
    let backtrace = err.downcast_ref::<WasmBacktrace>();
    // The backtrace is one of the chain's links (a context wasmtime adds, whose first field it
    // is): skipped there by its address, written after the rest by `frames`.
    let skip = backtrace.map(|b| b as *const WasmBacktrace as *const u8);
    let mut first = true;
    for cause in err.chain() {
        if skip == Some(cause as *const dyn std::error::Error as *const u8) {
            continue;
        }
        if !first && out.write_str(": ").is_err() {
            break;
        }
        first = false;
        if write!(out, "{cause}").is_err() {
            break;
        }
    }
    if let Some(b) = backtrace {
        let _ = frames(&mut out, b);
    }
    out.text
}

fn frames(out: &mut Bounded, b: &WasmBacktrace) -> std::fmt::Result {
    out.write_str("\nwasm backtrace:")?;
    for (i, frame) in b.frames().iter().enumerate() {
        write!(out, "\n  {i:>3}: ")?;
        if let Some(offset) = frame.module_offset() {
            write!(out, "{offset:#8x} - ")?;
        }
        write!(out, "{}!", short(frame.module().name().unwrap_or("<unknown>")))?;
        match frame.func_name() {
            Some(name) => out.write_str(&short(name))?,
            None => write!(out, "<wasm function {}>", frame.func_index())?,
        }
    }
    Ok(())
}

/// Names joined for an error or a note: the first `max`, each cut as `short` cuts it, and how
/// many more there are (review AE's follow-up: a refusal joining 2,000 import names of 99 KB
/// each, 188 MB of text, held the JS thread 400 ms per call).
pub(crate) fn name_list<S: AsRef<str>>(names: &[S], max: usize) -> String {
    let shown: Vec<std::borrow::Cow<'_, str>> = names.iter().take(max).map(|n| short(n.as_ref())).collect();
    match names.len().saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{}, and {more} more", shown.join(", ")),
    }
}

/// `name`, or its first `MAX_NAME` bytes (on a character boundary) and how long it was.
pub(crate) fn short(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= MAX_NAME {
        return name.into();
    }
    let mut end = MAX_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &name[..end], name.len()).into()
}

/// A `String` that takes at most `MAX_TEXT` bytes; a write past that fails, which stops the
/// display writing it (so a long message is not made whole first).
#[derive(Default)]
struct Bounded {
    text: String,
}

impl Write for Bounded {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = MAX_TEXT.saturating_sub(self.text.len());
        if s.len() <= room {
            self.text.push_str(s);
            return Ok(());
        }
        let mut end = room;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.text.push_str(&s[..end]);
        self.text.push('…');
        Err(std::fmt::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn trap_of(wat: &str) -> wasmtime::Error {
        let engine = crate::engine::engine(crate::engine::EngineKind::Plain).expect("engine");
        let module = wasmtime::Module::new(engine, wat::parse_str(wat).expect("parses")).expect("compiles");
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(1_000_000);
        let instance = wasmtime::Linker::<()>::new(engine).instantiate_async(&mut store, &module).await.expect("instantiates");
        let f = instance.get_typed_func::<(), ()>(&mut store, "f").expect("f");
        f.call_async(&mut store, ()).await.expect_err("traps")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn huge_names_are_cut_and_the_trap_still_named() {
        // A function named by 4 MiB, 11 frames deep: wasmtime's own text is over 44 MiB.
        let long = "x".repeat(4 << 20);
        let err = trap_of(&format!(
            r#"(module (func $f (export "f") (call ${long} (i32.const 10)))
                 (func ${long} (param i32) (if (local.get 0) (then (call ${long} (i32.sub (local.get 0) (i32.const 1)))) (else unreachable))))"#
        ))
        .await;
        let text = describe(&err);
        assert!(text.len() <= MAX_TEXT + 4, "{} bytes", text.len());
        assert!(text.starts_with("wasm trap: wasm `unreachable` instruction executed"), "{}", &text[..200]);
        assert!(text.contains(&format!("xxx… ({} bytes)", long.len())), "names are cut and say how long they were");
        assert!(text.contains("!f"), "short names stay whole");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn short_text_is_as_wasmtime_writes_it_but_for_the_backtrace_heading() {
        let err = trap_of(r#"(module (func $_ZN4core9panicking5panic17h0123456789abcdefE (export "f") unreachable))"#).await;
        let text = describe(&err);
        assert!(text.starts_with("wasm trap: wasm `unreachable` instruction executed\nwasm backtrace:\n    0: "), "{text}");
        assert!(text.contains("!_ZN4core9panicking5panic17h0123456789abcdefE"), "names as the module has them: {text}");
        let plain = wasmtime::Error::msg("root").context("outer");
        assert_eq!(describe(&plain), "outer: root");
    }

    #[test]
    fn a_long_message_is_cut_while_written() {
        let err = wasmtime::Error::msg("m".repeat(10 << 20));
        let text = describe(&err);
        assert_eq!(text.len(), MAX_TEXT + '…'.len_utf8());
    }
}
