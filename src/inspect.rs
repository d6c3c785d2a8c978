//! What a module is: size, digest, imports and exports with their types, and whether (and why
//! not) it matches a guest ABI the executor runs. Used by `loom-wasm inspect`.

use wasmtime::Module;

use crate::abi::assemblyscript;
use crate::digest::{hex, sha256};
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::host::check_imports;
use crate::shape::{self, CompileLimits};

#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    pub size: usize,
    pub sha256: String,
    /// (name, type)
    pub exports: Vec<(String, String)>,
    /// (module, name, type)
    pub imports: Vec<(String, String, String)>,
    /// The ABI it matches ("assemblyscript"), if any.
    pub abi: Option<String>,
    /// Why it does not match, or what it needs (e.g. a WASI grant).
    pub notes: Vec<String>,
}

/// Compiles (within the default compile limits) and describes a module. Blocking: run it off
/// the caller's thread.
pub fn inspect(bytes: &[u8]) -> Result<Inspection, ExecError> {
    let shape = shape::check(bytes, &CompileLimits::default())?;
    let kind = EngineKind::Plain.with_baseline(shape.needs_baseline());
    let module = Module::new(engine(kind)?, bytes).map_err(|e| ExecError::InvalidModule(format!("{e:#}")))?;
    let exports = module.exports().map(|e| (e.name().to_string(), format!("{}", describe(e.ty())))).collect();
    let imports = module
        .imports()
        .map(|i| (i.module().to_string(), i.name().to_string(), format!("{}", describe(i.ty()))))
        .collect();
    let mut notes = Vec::new();
    let exports_ok = match assemblyscript::check_exports(&module) {
        Ok(()) => true,
        Err(e) => {
            notes.push(e.to_string());
            false
        }
    };
    let imports_ok = match check_imports(&module) {
        Ok(wasi) if wasi.is_empty() => true,
        Ok(wasi) => {
            notes.push(format!("imports WASI ({}): runs only with capabilities.env or capabilities.filesystem", wasi.join(", ")));
            true
        }
        Err(e) => {
            notes.push(e.to_string());
            false
        }
    };
    Ok(Inspection {
        size: bytes.len(),
        sha256: hex(&sha256(bytes)),
        exports,
        imports,
        abi: (exports_ok && imports_ok).then(|| "assemblyscript".to_string()),
        notes,
    })
}

fn describe(ty: wasmtime::ExternType) -> String {
    match ty {
        wasmtime::ExternType::Func(f) => format!("{f}"),
        wasmtime::ExternType::Memory(m) => format!("memory (min {} pages)", m.minimum()),
        wasmtime::ExternType::Global(g) => format!("global {}", g.content()),
        wasmtime::ExternType::Table(t) => format!("table {}", t.element()),
        wasmtime::ExternType::Tag(_) => "tag".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_guests as g;

    #[test]
    fn tells_whether_and_why_a_module_matches() {
        let ok = inspect(&g::echo()).expect("valid");
        assert_eq!(ok.abi.as_deref(), Some("assemblyscript"));
        assert!(ok.exports.iter().any(|(n, t)| n == "execute" && t.contains("i32")));
        assert!(ok.imports.iter().any(|(m, n, _)| m == "env" && n == "abort"));
        let bad = inspect(&g::no_execute()).expect("valid");
        assert_eq!(bad.abi, None);
        assert!(bad.notes[0].contains("execute"));
        let wasi = inspect(&g::imports_wasi()).expect("valid");
        assert_eq!(wasi.abi.as_deref(), Some("assemblyscript"));
        assert!(wasi.notes[0].contains("WASI"));
        assert_eq!(inspect(b"nope").map_err(|e| e.code()), Err("INVALID_MODULE"));
    }
}
