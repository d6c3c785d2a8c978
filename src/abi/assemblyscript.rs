//! The AssemblyScript guest ABI: `execute(inputJson: string): string` with the runtime exported
//! (`--exportRuntime`, stub or incremental runtime).
//!
//! An AS string is UTF-16LE whose byte length sits in the u32 just before its pointer (the
//! object header's `rtSize`). Strings are allocated with `__new(byteLength, 2)` (2 is String's
//! class id) and pinned with `__pin` while the host holds them. Results are read from the length
//! header, never by scanning for a terminator.

use wasmtime::{AsContextMut, ExternType, Instance, Memory, Module, Store, TypedFunc, ValType};

use crate::error::ExecError;

/// AssemblyScript's class id of `String`.
pub const STRING_CLASS_ID: i32 = 2;
/// AS objects cannot exceed this size (`BLOCK_MAXSIZE` is just under 1 GiB).
pub(crate) const MAX_AS_OBJECT_BYTES: u64 = (1 << 30) - 16;
/// Characters of an abort message or file name kept (a hostile guest may claim gigabytes).
pub const MAX_ABORT_TEXT_CHARS: usize = 4096;

/// What the module must export, with the exact types, checked once when it is compiled.
pub fn check_exports(module: &Module) -> Result<(), ExecError> {
    let want_func = |name: &str, params: &[ValType], results: &[ValType]| -> Result<(), ExecError> {
        let Some(ty) = module.get_export(name) else {
            return Err(ExecError::MissingExport(format!(
                "the module does not export `{name}` (an AssemblyScript guest built with --exportRuntime exports it)"
            )));
        };
        let ExternType::Func(f) = ty else {
            return Err(ExecError::MissingExport(format!("export `{name}` is not a function")));
        };
        let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
            a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
        };
        if !same(&mut f.params(), params) || !same(&mut f.results(), results) {
            return Err(ExecError::MissingExport(format!(
                "export `{name}` has type {f}, expected {}",
                describe(params, results)
            )));
        }
        Ok(())
    };
    want_func("execute", &[ValType::I32], &[ValType::I32])?;
    want_func("__new", &[ValType::I32, ValType::I32], &[ValType::I32])?;
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if !m.is_64() && !m.is_shared() => {}
        Some(_) => return Err(ExecError::MissingExport("export `memory` is not a 32-bit unshared memory".into())),
        None => return Err(ExecError::MissingExport("the module does not export `memory`".into())),
    }
    Ok(())
}

fn describe(params: &[ValType], results: &[ValType]) -> String {
    let list = |v: &[ValType]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ");
    format!("(func (param {}) (result {}))", list(params), list(results))
}

/// The exports of one instance that a call uses.
pub struct Exports {
    memory: Memory,
    new: TypedFunc<(i32, i32), i32>,
    pin: Option<TypedFunc<i32, i32>>,
    unpin: Option<TypedFunc<i32, ()>>,
    execute: TypedFunc<i32, i32>,
}

impl Exports {
    pub fn new(instance: &Instance, mut store: impl AsContextMut) -> Result<Exports, ExecError> {
        let missing = |what: &str| ExecError::MissingExport(format!("export `{what}` is missing or mistyped"));
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| missing("memory"))?;
        let new = instance.get_typed_func(&mut store, "__new").map_err(|_| missing("__new"))?;
        let execute = instance.get_typed_func(&mut store, "execute").map_err(|_| missing("execute"))?;
        // __pin/__unpin exist with --exportRuntime; treat them as optional for hand-written guests.
        let pin = instance.get_typed_func(&mut store, "__pin").ok();
        let unpin = instance.get_typed_func(&mut store, "__unpin").ok();
        Ok(Exports { memory, new, pin, unpin, execute })
    }

    /// Calls `execute(input)` and returns the guest's string. `classify` turns a wasmtime error
    /// (trap, host error) into ours. Fails with `OUTPUT_TOO_LARGE` past `max_output_bytes`.
    /// Async: the guest runs on a fiber, so a call can be suspended at an epoch tick and
    /// resumed on another thread.
    pub async fn call_execute<T: Send + 'static>(
        &self,
        store: &mut Store<T>,
        input: &str,
        max_output_bytes: u64,
        classify: impl Fn(wasmtime::Error) -> ExecError,
    ) -> Result<String, ExecError> {
        let byte_len = crate::text::utf16_len_bytes(input);
        if byte_len > MAX_AS_OBJECT_BYTES {
            return Err(ExecError::InputTooLarge { size: byte_len, limit: MAX_AS_OBJECT_BYTES });
        }
        let ptr = self.new.call_async(&mut *store, (byte_len as i32, STRING_CLASS_ID)).await.map_err(&classify)?;
        write_utf16(self.memory.data_mut(&mut *store), ptr, input, byte_len)?;
        let pinned = match &self.pin {
            Some(pin) => Some(pin.call_async(&mut *store, ptr).await.map_err(&classify)?),
            None => None,
        };
        let out = self.execute.call_async(&mut *store, ptr).await.map_err(&classify)?;
        // Read the result before anything else can allocate (and so collect) in the guest.
        let result = read_string(self.memory.data(&*store), out, max_output_bytes);
        if let (Some(unpin), Some(p)) = (&self.unpin, pinned) {
            unpin.call_async(&mut *store, p).await.map_err(&classify)?;
        }
        result
    }
}

pub(crate) fn write_utf16(mem: &mut [u8], ptr: i32, s: &str, byte_len: u64) -> Result<(), ExecError> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(byte_len as usize);
    let dst = end.and_then(|end| mem.get_mut(start..end)).ok_or_else(|| {
        ExecError::Trap {
            kind: "bad_allocation".into(),
            message: format!("__new returned {ptr:#x}, which does not hold {byte_len} bytes in linear memory"),
        }
    })?;
    crate::text::write_utf16le(dst, s);
    Ok(())
}

/// The UTF-16 code units of the string at `ptr`, bounds-checked against memory.
fn string_units(mem: &[u8], ptr: i32) -> Result<&[u8], String> {
    let ptr = ptr as u32 as usize;
    if ptr == 0 {
        return Err("the guest returned null instead of a string".into());
    }
    let header = ptr
        .checked_sub(4)
        .and_then(|h| mem.get(h..ptr))
        .ok_or_else(|| format!("string pointer {ptr:#x} is outside linear memory ({} bytes)", mem.len()))?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len % 2 != 0 {
        return Err(format!("string at {ptr:#x} has an odd byte length {len}"));
    }
    ptr.checked_add(len).and_then(|end| mem.get(ptr..end)).ok_or_else(|| {
        format!("string at {ptr:#x} claims {len} bytes, past the end of linear memory ({} bytes)", mem.len())
    })
}

/// Reads the guest's result string; every fault is an `INVALID_OUTPUT`, never a panic.
pub fn read_string(mem: &[u8], ptr: i32, max_bytes: u64) -> Result<String, ExecError> {
    let invalid = |message: String| ExecError::InvalidOutput { message, preview: String::new() };
    // Check the claimed size before bounds, so a huge honest string reports its size.
    if let Some(h) = (ptr as u32 as usize).checked_sub(4).and_then(|h| mem.get(h..h + 4)) {
        let claimed = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
        if claimed > max_bytes && (ptr as u32 as u64) + claimed <= mem.len() as u64 {
            return Err(ExecError::OutputTooLarge { size: claimed, limit: max_bytes });
        }
    }
    let bytes = string_units(mem, ptr).map_err(invalid)?;
    crate::text::string_from_utf16le(bytes).ok_or_else(|| ExecError::InvalidOutput {
        message: "the guest's string is not valid UTF-16 (unpaired surrogate)".into(),
        preview: preview_lossy(bytes),
    })
}

/// Reads a string for a diagnostic (abort message, file name): lossy and truncated, `None` for
/// null, a placeholder for a bad pointer.
pub fn read_text_lossy(mem: &[u8], ptr: i32) -> String {
    read_text_lossy_up_to(mem, ptr, MAX_ABORT_TEXT_CHARS)
}

/// `read_text_lossy`, cut at `max_units` UTF-16 units (with `…` when longer).
pub fn read_text_lossy_up_to(mem: &[u8], ptr: i32, max_units: usize) -> String {
    if ptr == 0 {
        return String::new();
    }
    match string_units(mem, ptr) {
        Ok(bytes) => {
            let limit = bytes.len().min(max_units.saturating_mul(2));
            let units: Vec<u16> = bytes[..limit].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            let mut s = String::from_utf16_lossy(&units);
            if limit < bytes.len() {
                s.push('…');
            }
            s
        }
        Err(_) => format!("<unreadable string at {:#x}>", ptr as u32),
    }
}

fn preview_lossy(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes.chunks_exact(2).take(200).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16_lossy(&units)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_string_at(mem: &mut [u8], ptr: usize, s: &str) {
        let units: Vec<u16> = s.encode_utf16().collect();
        mem[ptr - 4..ptr].copy_from_slice(&((units.len() * 2) as u32).to_le_bytes());
        for (i, u) in units.iter().enumerate() {
            mem[ptr + 2 * i..ptr + 2 * i + 2].copy_from_slice(&u.to_le_bytes());
        }
    }

    #[test]
    fn reads_unicode_by_length_header() {
        let mut mem = vec![0u8; 256];
        as_string_at(&mut mem, 16, "héllo 🌍 中文");
        assert_eq!(read_string(&mem, 16, 1000).expect("valid"), "héllo 🌍 中文");
        // Not terminated: what follows the string does not matter.
        mem[16 + 2 * "héllo 🌍 中文".encode_utf16().count()] = b'x';
        assert_eq!(read_string(&mem, 16, 1000).expect("valid"), "héllo 🌍 中文");
    }

    #[test]
    fn hostile_pointers_and_headers_are_invalid_output() {
        let mut mem = vec![0u8; 64];
        let code = |r: Result<String, ExecError>| r.map_err(|e| e.code()).err();
        assert_eq!(code(read_string(&mem, 0, 100)), Some("INVALID_OUTPUT"));
        assert_eq!(code(read_string(&mem, 2, 100)), Some("INVALID_OUTPUT"));
        assert_eq!(code(read_string(&mem, -8, 100)), Some("INVALID_OUTPUT"));
        assert_eq!(code(read_string(&mem, 1 << 20, 100)), Some("INVALID_OUTPUT"));
        // A header claiming more than memory holds.
        mem[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(code(read_string(&mem, 16, 1 << 20)), Some("INVALID_OUTPUT"));
        // An odd length.
        mem[12..16].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(code(read_string(&mem, 16, 100)), Some("INVALID_OUTPUT"));
        // A lone surrogate.
        mem[12..16].copy_from_slice(&2u32.to_le_bytes());
        mem[16..18].copy_from_slice(&0xD800u16.to_le_bytes());
        assert_eq!(code(read_string(&mem, 16, 100)), Some("INVALID_OUTPUT"));
        // Honest but over the output cap.
        mem[12..16].copy_from_slice(&40u32.to_le_bytes());
        assert_eq!(code(read_string(&mem, 16, 10)), Some("OUTPUT_TOO_LARGE"));
    }

    #[test]
    fn diagnostics_are_lossy_and_bounded() {
        let mut mem = vec![0u8; 64];
        as_string_at(&mut mem, 8, "oops");
        assert_eq!(read_text_lossy(&mem, 8), "oops");
        assert_eq!(read_text_lossy(&mem, 0), "");
        assert!(read_text_lossy(&mem, 9999).starts_with("<unreadable"));
        let mut big = vec![0u8; 20_000];
        as_string_at(&mut big, 8, &"a".repeat(9000));
        let s = read_text_lossy(&big, 8);
        assert_eq!(s.chars().count(), MAX_ABORT_TEXT_CHARS + 1);
    }
}
