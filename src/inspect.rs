//! What a module is: size, digest, imports and exports with their types, and whether (and why
//! not) it matches a guest ABI the executor runs. Used by `loom-wasm inspect`.

use wasmtime::Module;

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
    /// The guest ABI it fits ("assemblyscript", "extism", "wasi-command", "component"), if any.
    pub abi: Option<String>,
    /// Why it does not match, or what it needs (e.g. a WASI grant).
    pub notes: Vec<String>,
}

/// At most this many inspections compile at once in the process (one per core): each is a whole
/// compile, and 64 at once started 63 threads compiling the same bytes.
pub fn permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(crate::threads::cpus()))
}

/// Compiles (within the default compile limits) and describes a module. Blocking: run it off
/// the caller's thread, holding one of `permits`. Describing needs the module's types, not fast
/// code: the baseline compiler (linear in the code) does it, the optimizing one only for what the
/// baseline cannot compile (the 12 MB JS component took 15 s of CPU with the optimizing one).
pub fn inspect(bytes: &[u8]) -> Result<Inspection, ExecError> {
    // On the threads of large compiles, whatever its size: nobody's call waits for it (review
    // AD's follow-up: inspecting a 1.1 MB module of 200,000 functions held a call's 328-byte
    // module 3.5 s on the shared threads).
    match crate::compile::large_pool() {
        Some(pool) => pool.install(|| inspect_here(bytes)),
        None => inspect_here(bytes),
    }
}

fn inspect_here(bytes: &[u8]) -> Result<Inspection, ExecError> {
    let shape = shape::check(bytes, &CompileLimits::default())?;
    let baseline = inspect_with(bytes, EngineKind::Baseline);
    match baseline {
        Err(ExecError::InvalidModule(_)) if !shape.needs_baseline() => inspect_with(bytes, EngineKind::Plain),
        other => other,
    }
}

fn inspect_with(bytes: &[u8], kind: EngineKind) -> Result<Inspection, ExecError> {
    if crate::abi::is_component(bytes) {
        return inspect_component(bytes, kind);
    }
    let module = Module::new(engine(kind)?, bytes).map_err(|e| ExecError::InvalidModule(format!("{e:#}")))?;
    let (exports, imports, notes) = listed(
        module.exports().map(|e| (e.name().to_string(), describe(e.ty()))),
        module.imports().map(|i| (i.module().to_string(), i.name().to_string(), describe(i.ty()))),
    );
    let mut notes = notes;
    let detected = crate::abi::detect(&module, None);
    let exports_ok = match &detected {
        Ok(_) => true,
        Err(e) => {
            notes.push(e.to_string());
            false
        }
    };
    let imports_ok = match check_imports(&module) {
        Ok(found) => {
            let wasi = &found.wasi;
            if !wasi.is_empty() && detected == Ok(crate::abi::Abi::WasiCommand) {
                notes.push(format!("a WASI command: input on stdin, output on stdout (imports {} functions)", wasi.len()));
            } else if !wasi.is_empty() {
                notes.push(format!("imports WASI ({}): runs only with capabilities.env or capabilities.filesystem", named(wasi)));
            }
            if let Some(net) = &found.network {
                notes.push(format!("imports {net}: makes HTTP requests, runs only with capabilities.network and options.network"));
            }
            let fns: Vec<&String> = found.host.iter().filter(|h| !h.is_http()).map(|h| &h.key).collect();
            if !fns.is_empty() {
                notes.push(format!("imports host functions ({}): each must be in capabilities.hostFunctions and options.hostFunctions", named(&fns)));
            }
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
        abi: detected.ok().filter(|_| exports_ok && imports_ok).map(|a| a.name().to_string()),
        notes,
    })
}

fn inspect_component(bytes: &[u8], kind: EngineKind) -> Result<Inspection, ExecError> {
    let engine = engine(kind)?;
    let component = wasmtime::component::Component::new(engine, bytes).map_err(|e| ExecError::InvalidModule(format!("{e:#}")))?;
    let ty = component.component_type();
    // Bounded as a module's listing (review AI: 900,000 imports held the JS thread 1.4 s).
    let (exports, imports, mut notes) = listed(
        ty.exports(engine).map(|(n, t)| (n.to_string(), describe_item(&t.ty))),
        ty.imports(engine).map(|(n, t)| (n.to_string(), String::new(), describe_item(&t.ty))),
    );
    let check = crate::abi::component::check(&component, engine);
    Ok(Inspection {
        size: bytes.len(),
        sha256: hex(&sha256(bytes)),
        exports,
        imports,
        abi: check.is_ok().then(|| "component".to_string()),
        notes: {
            match check {
                Ok(Some(http)) => notes.push(format!("imports {http}: makes HTTP requests, runs only with capabilities.network and options.network")),
                Ok(None) => {}
                Err(e) => notes.push(e.to_string()),
            }
            notes
        },
    })
}

/// Imports and exports listed at most (each list): the result is built on the JS thread, and a
/// module of 330,000 imports and as many exports (12 MB) held it 0.7 s (review AE).
pub const MAX_LISTED: usize = 10_000;
/// Bytes of names and types listed at most, both lists together (2,000 imports of 99 KB names
/// made 207 million characters: review AE's follow-up).
pub const MAX_LISTED_BYTES: usize = 1 << 20;

/// Exports as (name, type) and imports as (module, name, type), each list at most `MAX_LISTED`
/// and both at most `MAX_LISTED_BYTES` of text, with a note for each list cut.
#[allow(clippy::type_complexity)]
fn listed(
    exports: impl ExactSizeIterator<Item = (String, String)>,
    imports: impl ExactSizeIterator<Item = (String, String, String)>,
) -> (Vec<(String, String)>, Vec<(String, String, String)>, Vec<String>) {
    let (export_count, import_count) = (exports.len(), imports.len());
    let mut left = MAX_LISTED_BYTES;
    let mut fits = |text: usize| {
        left = left.saturating_sub(text);
        left > 0
    };
    let exports: Vec<(String, String)> = exports.take(MAX_LISTED).take_while(|(n, t)| fits(n.len() + t.len())).collect();
    let imports: Vec<(String, String, String)> =
        imports.take(MAX_LISTED).take_while(|(m, n, t)| fits(m.len() + n.len() + t.len())).collect();
    let mut notes = Vec::new();
    for (what, listed, n) in [("imports", imports.len(), import_count), ("exports", exports.len(), export_count)] {
        if n > listed {
            notes.push(format!("lists the first {listed} of its {n} {what}"));
        }
    }
    (exports, imports, notes)
}

/// A component's import or export, briefly (its kind; a function's parameter names).
fn describe_item(item: &wasmtime::component::types::ComponentItem) -> String {
    use wasmtime::component::types::ComponentItem as I;
    match item {
        I::ComponentFunc(f) => {
            let params: Vec<&str> = f.params().map(|(name, _)| name).take(16).collect();
            let more = if f.params().len() > params.len() { ", ..." } else { "" };
            crate::trap_text::short(&format!("func({}{more})", params.join(", "))).into_owned()
        }
        I::CoreFunc(f) => format!("core func {f}"),
        I::Module(_) => "core module".into(),
        I::Component(_) => "component".into(),
        I::ComponentInstance(_) => "instance".into(),
        I::Type(_) => "type".into(),
        I::Resource(_) => "resource".into(),
    }
}

/// Names joined for a note: the first 100 (a note joining 330,000 names was 9.5 million
/// characters), each cut to 256 bytes.
fn named<S: AsRef<str>>(names: &[S]) -> String {
    crate::trap_text::name_list(names, 100)
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
    fn a_components_listing_is_bounded_as_a_modules() {
        // Review AI: 900,000 imports were all listed, held the JS thread 1.4 s.
        let imports: String = (0..MAX_LISTED + 5).map(|k| format!("(import \"i{k}\" (func))")).collect();
        let found = inspect(&wat::parse_str(format!("(component {imports})")).expect("parses")).expect("inspects");
        assert_eq!(found.imports.len(), MAX_LISTED);
        assert!(found.notes.iter().any(|n| n.contains(&format!("lists the first {MAX_LISTED} of its {} imports", MAX_LISTED + 5))), "{:?}", found.notes);
        assert_eq!(found.imports[0], ("i0".to_string(), String::new(), "func()".to_string()));
        let f = inspect(&wat::parse_str(r#"(component (import "f" (func (param "a" u32) (param "b" string))))"#).expect("parses")).expect("inspects");
        assert_eq!(f.imports[0].2, "func(a, b)");
    }

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

    #[test]
    fn lists_and_notes_are_bounded() {
        let n = MAX_LISTED + 50;
        let imports: String = (0..n).map(|i| format!(r#"(import "m" "f{i}" (func))"#)).collect();
        let exports: String = (0..n).map(|i| format!(r#"(export "e{i}" (func 0))"#)).collect();
        let bytes = wat::parse_str(format!("(module {imports} {exports})")).expect("parses");
        let i = inspect(&bytes).expect("valid");
        assert_eq!((i.imports.len(), i.exports.len()), (MAX_LISTED, MAX_LISTED));
        assert_eq!(i.imports.last().map(|(_, n, _)| n.as_str()), Some("f9999"));
        assert!(i.notes.contains(&format!("lists the first {MAX_LISTED} of its {n} imports")), "{:?}", i.notes);
        assert!(i.notes.contains(&format!("lists the first {MAX_LISTED} of its {n} exports")), "{:?}", i.notes);
        let host = i.notes.iter().find(|n| n.starts_with("imports host functions")).expect("a note of them");
        assert!(host.contains("m.f99, and 9950 more") && host.len() < 2000, "{host}");
        // Long names: at most MAX_LISTED_BYTES of them are listed.
        let name = "n".repeat(8_000);
        let imports: String = (0..200).map(|i| format!(r#"(import "m" "{i}{name}" (func))"#)).collect();
        let i = inspect(&wat::parse_str(format!("(module {imports})")).expect("parses")).expect("valid");
        assert!(i.imports.len() < 140 && i.imports.len() > 120, "{}", i.imports.len());
        assert!(i.notes.contains(&format!("lists the first {} of its 200 imports", i.imports.len())), "{:?}", i.notes);
        assert!(i.notes.iter().all(|n| n.len() < 100 * 300 + 200));
    }
}
