//! The names a module gives itself and its functions (the `name` custom section): wasmtime copies
//! a function's name into every frame of a trap's backtrace, and its module's name too. A 24 MB
//! function name 30 frames deep cost 360 ms and 480 MB per trap, on the JS thread for an inline
//! call (review AD). Names are debug information: real ones are short, even C++'s.

use wasmparser::BinaryReader;

use crate::error::ExecError;

/// The longest name a module or function may have, in bytes.
pub const MAX_NAME_BYTES: u64 = 64 * 1024;

/// Refuses a `name` section (`data`, its contents) that names a module or function by more than
/// `MAX_NAME_BYTES`. Read by hand: wasmparser refuses a module name past 100,000 bytes where
/// wasmtime, which ignores a name section it cannot read, might not. A section that stops being
/// readable midway still counts the names before (and the length of the one it stops in):
/// wasmtime keeps the names it read before an error (review AD: a huge name followed by a
/// truncated entry passed).
pub fn check(data: &[u8], offset: usize) -> Result<(), ExecError> {
    let mut r = BinaryReader::new(data, offset);
    let mut longest = 0;
    while !r.eof() {
        let read = next_subsection(&mut r, &mut longest);
        if longest > MAX_NAME_BYTES {
            return Err(ExecError::CompileLimit(format!(
                "its name section names a module or function by {longest} bytes, over the limit of {MAX_NAME_BYTES} (a fixed limit)"
            )));
        }
        if read.is_err() {
            break;
        }
    }
    Ok(())
}

/// Reads one subsection, keeping in `longest` the length of the longest module or function name
/// seen (as each length is read, before its bytes).
fn next_subsection(r: &mut BinaryReader, longest: &mut u64) -> wasmparser::Result<()> {
    let id = r.read_u8()?;
    let size = r.read_var_u32()? as usize;
    // A subsection that claims more than is left is read as far as it goes.
    let size = size.min(r.bytes_remaining());
    let mut sub = BinaryReader::new(r.read_bytes(size)?, 0);
    match id {
        // The module's name.
        0 => *longest = (*longest).max(u64::from(sub.read_var_u32()?)),
        // The functions' names: (index, name) pairs.
        1 => {
            for _ in 0..sub.read_var_u32()? {
                sub.read_var_u32()?;
                let len = sub.read_var_u32()?;
                *longest = (*longest).max(u64::from(len));
                sub.read_bytes(len as usize)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{check as shape_check, CompileLimits};

    /// A module whose name section names it `module` and its function `function`.
    fn named(module: &str, function: &str) -> Vec<u8> {
        named_then(module, function, &[])
    }

    /// `named`, the functions' subsection claiming a second entry whose bytes are `tail`.
    fn named_then(module: &str, function: &str, tail: &[u8]) -> Vec<u8> {
        let mut bytes = wat::parse_str("(module (func (export \"f\")))").expect("parses");
        let leb = |mut n: usize, out: &mut Vec<u8>| loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n > 0 { b | 0x80 } else { b });
            if n == 0 {
                break;
            }
        };
        let mut sub0 = Vec::new();
        leb(module.len(), &mut sub0);
        sub0.extend_from_slice(module.as_bytes());
        let mut sub1 = vec![if tail.is_empty() { 1 } else { 2 }, 0];
        leb(function.len(), &mut sub1);
        sub1.extend_from_slice(function.as_bytes());
        sub1.extend_from_slice(tail);
        let mut content = vec![4];
        content.extend_from_slice(b"name");
        for (id, sub) in [(0u8, sub0), (1u8, sub1)] {
            content.push(id);
            leb(sub.len(), &mut content);
            content.extend_from_slice(&sub);
        }
        bytes.push(0);
        leb(content.len(), &mut bytes);
        bytes.extend_from_slice(&content);
        bytes
    }

    #[test]
    fn long_module_and_function_names_are_refused() {
        let long = "n".repeat(MAX_NAME_BYTES as usize + 1);
        let ok = "n".repeat(MAX_NAME_BYTES as usize);
        assert!(shape_check(&named("m", &ok), &CompileLimits::default()).is_ok());
        assert!(shape_check(&named(&ok, "f"), &CompileLimits::default()).is_ok());
        // A huge name followed by an entry cut short: wasmtime keeps what it read before the error.
        // (The second entry: function 1, a name of 100 bytes of which 3 are there.)
        let cut = named_then("m", &long, &[1, 100, b'a', b'b', b'c']);
        for bytes in [named("m", &long), named(&long, "f"), cut] {
            let e = shape_check(&bytes, &CompileLimits::default()).expect_err("refused");
            assert_eq!(e.code(), "COMPILE_LIMIT");
            assert!(e.to_string().contains("name section"), "{e}");
        }
        // The module still compiles with its names: the section is well formed.
        let engine = crate::engine::engine(crate::engine::EngineKind::Plain).expect("engine");
        assert!(wasmtime::Module::new(engine, named("m", &ok)).is_ok());
    }
}
