//! What an instance holds in the host besides its memories and tables: wasmtime's `VMContext`
//! (16 bytes per global, imported or defined, about 32 per imported function and per function
//! that escapes, some per table, memory and type). Nothing bounded it: a 7 MB module of 999,000
//! globals held 16 MB per instance outside `maxMemoryMB`, and 100 of its actors 2.4 GB outside
//! `maxActorMemoryMB` (review AE). It is counted now against the instance's memory limit, as
//! host memory (`limits::StoreLimiter::reserve_host`), when it is over `UNCOUNTED_BYTES`.
//!
//! The count is made from the bytes (`shape`), rounded up to a power of two and kept in an
//! artifact's flags (`bucket`), so code loaded from an artifact is counted as compiled code is.

use wasmparser::{Payload, TypeRef};

/// Metadata up to this much is not counted (every module has some: `peakMemoryBytes` stays its
/// memories and tables for all but modules of thousands of globals or escaping functions).
pub const UNCOUNTED_BYTES: u64 = 64 * 1024;

/// Bytes per item, rounded up from wasmtime 48's `VMOffsets`.
const GLOBAL_BYTES: u64 = 16;
const FUNCTION_BYTES: u64 = 32;
const TABLE_OR_MEMORY_BYTES: u64 = 64;
const TYPE_BYTES: u64 = 4;
const TAG_BYTES: u64 = 16;
/// Per core module: the `Instance` and the `VMContext`'s fixed part.
const MODULE_BYTES: u64 = 1024;

/// Adds what `payload` puts in an instance's metadata to `bytes` (escaping functions are added
/// by `escaping`, once they are all known).
pub fn read(payload: &Payload<'_>, bytes: &mut u64) -> Result<(), wasmparser::BinaryReaderError> {
    let add = match payload {
        Payload::Version { encoding: wasmparser::Encoding::Module, .. } => MODULE_BYTES,
        Payload::ImportSection(r) => {
            let mut n = 0u64;
            for imp in r.clone().into_imports() {
                n = n.saturating_add(match imp?.ty {
                    TypeRef::Func(_) | TypeRef::FuncExact(_) => FUNCTION_BYTES,
                    TypeRef::Global(_) => GLOBAL_BYTES,
                    TypeRef::Table(_) | TypeRef::Memory(_) => TABLE_OR_MEMORY_BYTES,
                    TypeRef::Tag(_) => TAG_BYTES,
                });
            }
            n
        }
        Payload::GlobalSection(r) => GLOBAL_BYTES.saturating_mul(r.count().into()),
        Payload::TableSection(r) => TABLE_OR_MEMORY_BYTES.saturating_mul(r.count().into()),
        Payload::MemorySection(r) => TABLE_OR_MEMORY_BYTES.saturating_mul(r.count().into()),
        Payload::TagSection(r) => TAG_BYTES.saturating_mul(r.count().into()),
        Payload::TypeSection(r) => TYPE_BYTES.saturating_mul(r.count().into()),
        _ => 0,
    };
    *bytes = bytes.saturating_add(add);
    Ok(())
}

/// What `escaping` functions that escape add.
pub fn escaping(escaping: u64) -> u64 {
    FUNCTION_BYTES.saturating_mul(escaping)
}

/// The bucket (0..=31) of an instance's metadata of `bytes`: 0 up to `UNCOUNTED_BYTES`, else the
/// least `b` whose `charged(b)` holds it.
pub fn bucket(bytes: u64) -> u8 {
    if bytes <= UNCOUNTED_BYTES {
        return 0;
    }
    let mut b = 1u8;
    while charged(b) < bytes && b < 31 {
        b += 1;
    }
    b
}

/// What an instance of a module in bucket `b` is counted as: nothing for 0, else
/// `UNCOUNTED_BYTES << b` (at most twice its metadata).
pub fn charged(b: u8) -> u64 {
    match b {
        0 => 0,
        b => UNCOUNTED_BYTES << b.min(31),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_bytes_within_twice() {
        assert_eq!((bucket(0), bucket(UNCOUNTED_BYTES)), (0, 0));
        for bytes in [UNCOUNTED_BYTES + 1, 100_000, 1 << 20, 16_000_000, 1 << 34] {
            let b = bucket(bytes);
            assert!(b > 0 && charged(b) >= bytes && charged(b) < 2 * bytes.max(UNCOUNTED_BYTES + 1), "{bytes}: {b}");
        }
        assert_eq!(bucket(u64::MAX), 31);
    }
}
