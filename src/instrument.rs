//! Module instrumentation, the way Wizer does it: every mutable global a module defines (and its
//! memory) is exported under a reserved name, so the host can read and restore an instance's
//! whole state, the globals a guest keeps to itself included (AssemblyScript's heap top is one).
//! Done once, before compiling; the compiled (and cached) module is the instrumented one.
//! Components are left as they are (their state cannot be snapshotted this way).

use wasm_encoder::{ExportKind, ExportSection, RawSection};
use wasmparser::{Encoding, ExternalKind, Parser, Payload, TypeRef};

use crate::error::ExecError;

/// Export-name prefix of an instrumented global: `__loom_g<index>`.
pub const GLOBAL_PREFIX: &str = "__loom_g";
/// Export name of an instrumented module's memory, when the module did not export it itself.
pub const MEMORY_EXPORT: &str = "__loom_memory";

/// What instrumentation added: the exported names of the mutable globals (in index order) and
/// of the memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateExports {
    pub globals: Vec<String>,
    pub memory: Option<String>,
}

impl StateExports {
    /// What an instrumented module exports for snapshots, read back from its exports (a module
    /// loaded from a compiled artifact has no bytes to instrument again).
    pub fn of(module: &wasmtime::Module) -> StateExports {
        let mut globals: Vec<(u32, String)> = module
            .exports()
            .filter_map(|e| {
                let index = e.name().strip_prefix(GLOBAL_PREFIX)?.parse().ok()?;
                // Only mutable globals are ours: a module compiled before its own reserved names
                // were refused (its artifact cached) may export an immutable one, which a restore
                // could not set (review AD's follow-up).
                let ours = matches!(e.ty(), wasmtime::ExternType::Global(g) if g.mutability() == wasmtime::Mutability::Var);
                ours.then(|| (index, e.name().to_string()))
            })
            .collect();
        globals.sort();
        let memories: Vec<String> = module
            .exports()
            .filter(|e| matches!(e.ty(), wasmtime::ExternType::Memory(_)))
            .map(|e| e.name().to_string())
            .collect();
        let memory = if memories.iter().any(|m| m == MEMORY_EXPORT) { Some(MEMORY_EXPORT.to_string()) } else { memories.into_iter().next() };
        StateExports { globals: globals.into_iter().map(|(_, n)| n).collect(), memory }
    }
}

const EXPORT_SECTION: u8 = 7;
/// Sections that come after the export section (start, element, data count, code, data).
const AFTER_EXPORTS: [u8; 5] = [8, 9, 12, 10, 11];

fn invalid(e: wasmparser::BinaryReaderError) -> ExecError {
    ExecError::InvalidModule(format!("{e}"))
}

/// Returns the instrumented module and what it exports for snapshots; a component is returned
/// unchanged with no state exports.
pub fn instrument(bytes: &[u8]) -> Result<(Vec<u8>, StateExports), ExecError> {
    let mut imported_globals = 0u32;
    let mut mutable: Vec<u32> = Vec::new();
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    let mut memory_defined = false;
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        match &payload {
            Payload::Version { encoding: Encoding::Component, .. } => return Ok((bytes.to_vec(), StateExports::default())),
            Payload::ImportSection(r) => {
                for imp in r.clone().into_imports() {
                    if matches!(imp.map_err(invalid)?.ty, TypeRef::Global(_)) {
                        imported_globals += 1;
                    }
                }
            }
            Payload::GlobalSection(r) => {
                for (i, g) in r.clone().into_iter().enumerate() {
                    if g.map_err(invalid)?.ty.mutable {
                        mutable.push(imported_globals + i as u32);
                    }
                }
            }
            Payload::MemorySection(r) => memory_defined = r.count() > 0,
            Payload::ExportSection(r) => {
                for e in r.clone() {
                    let e = e.map_err(invalid)?;
                    exports.push((e.name.to_string(), e.kind, e.index));
                }
            }
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            sections.push((id, range));
        }
    }
    // The reserved names are read back from a compiled module's exports (`StateExports::of`,
    // whatever their kind or mutability): a module of its own exporting one, say an immutable
    // `__loom_g9`, had its snapshots fail to restore, its transactional and durable actors
    // unusable after their first rollback or restart (review AD).
    if let Some((name, _, _)) = exports.iter().find(|(n, _, _)| n.starts_with(GLOBAL_PREFIX) || n == MEMORY_EXPORT) {
        return Err(ExecError::InvalidModule(format!("the module exports the reserved name {name:?}")));
    }
    let mut state = StateExports::default();
    let mut added: Vec<(String, ExportKind, u32)> = Vec::new();
    for g in &mutable {
        let name = format!("{GLOBAL_PREFIX}{g}");
        added.push((name.clone(), ExportKind::Global, *g));
        state.globals.push(name);
    }
    if memory_defined {
        match exports.iter().find(|(_, k, i)| *k == ExternalKind::Memory && *i == 0) {
            Some((name, _, _)) => state.memory = Some(name.clone()),
            None => {
                added.push((MEMORY_EXPORT.to_string(), ExportKind::Memory, 0));
                state.memory = Some(MEMORY_EXPORT.to_string());
            }
        }
    }
    if added.is_empty() {
        return Ok((bytes.to_vec(), state));
    }
    let mut section = ExportSection::new();
    for (name, kind, index) in &exports {
        section.export(name, export_kind(*kind)?, *index);
    }
    for (name, kind, index) in &added {
        section.export(name, *kind, *index);
    }
    let mut out = wasm_encoder::Module::new();
    let mut written = false;
    for (id, range) in &sections {
        let id = *id;
        if !written && (id == EXPORT_SECTION || AFTER_EXPORTS.contains(&id)) {
            out.section(&section);
            written = true;
        }
        if id != EXPORT_SECTION {
            out.section(&RawSection { id, data: &bytes[range.clone()] });
        }
    }
    if !written {
        out.section(&section);
    }
    Ok((out.finish(), state))
}

fn export_kind(k: ExternalKind) -> Result<ExportKind, ExecError> {
    Ok(match k {
        ExternalKind::Func => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
        other => return Err(ExecError::InvalidModule(format!("unsupported export kind {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_mutable_global_and_the_memory() {
        let bytes = wat::parse_str(
            r#"(module
                (import "env" "g" (global $imported i32))
                (memory 1)
                (global $a (mut i32) (i32.const 1))
                (global $b i32 (i32.const 2))
                (global $c (mut i64) (i64.const 3))
                (func (export "f") (result i32) (global.get $a))
                (data (i32.const 0) "hi"))"#,
        )
        .expect("parses");
        let (out, state) = instrument(&bytes).expect("instruments");
        assert_eq!(state.globals, vec!["__loom_g1", "__loom_g3"]);
        assert_eq!(state.memory.as_deref(), Some(MEMORY_EXPORT));
        wasmparser::Validator::new().validate_all(&out).expect("still valid");
        let names: Vec<String> = Parser::new(0)
            .parse_all(&out)
            .filter_map(|p| match p {
                Ok(Payload::ExportSection(r)) => Some(r.into_iter().map(|e| e.expect("export").name.to_string()).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, vec!["f", "__loom_g1", "__loom_g3", "__loom_memory"]);
    }

    #[test]
    fn a_module_without_exports_gets_a_section_in_the_right_place() {
        let bytes = wat::parse_str("(module (global (mut i32) (i32.const 0)) (func) (start 0))").expect("parses");
        let (out, state) = instrument(&bytes).expect("instruments");
        assert_eq!(state.globals, vec!["__loom_g0"]);
        wasmparser::Validator::new().validate_all(&out).expect("valid: export section before start");
        let unchanged = wat::parse_str("(module (func))").expect("parses");
        assert_eq!(instrument(&unchanged).expect("ok").0, unchanged);
    }

    #[test]
    fn reserved_names_are_refused_whatever_they_export() {
        for export in [
            r#"(global (export "__loom_g9") i32 (i32.const 7))"#,
            r#"(global (export "__loom_g0") (mut i32) (i32.const 7))"#,
            r#"(func (export "__loom_gx"))"#,
            r#"(func (export "__loom_memory"))"#,
            r#"(memory (export "__loom_memory") 1)"#,
        ] {
            let bytes = wat::parse_str(format!("(module (global (mut i32) (i32.const 0)) {export})")).expect("parses");
            let e = instrument(&bytes).expect_err(export);
            assert!(matches!(&e, ExecError::InvalidModule(m) if m.contains("reserved name")), "{export}: {e:?}");
        }
        let own = wat::parse_str(r#"(module (memory (export "memory") 1) (global (export "__loom") i32 (i32.const 1)))"#).expect("parses");
        assert!(instrument(&own).is_ok(), "other names are the module's own");
    }

    #[test]
    fn state_exports_read_back_are_mutable_globals_only() {
        // As an artifact of a build before the reserved names were refused would hold it.
        let bytes = wat::parse_str(
            r#"(module (global (export "__loom_g9") i32 (i32.const 7)) (global (export "__loom_g0") (mut i32) (i32.const 1)))"#,
        )
        .expect("parses");
        let engine = crate::engine::engine(crate::engine::EngineKind::Plain).expect("engine");
        let module = wasmtime::Module::new(engine, &bytes).expect("compiles");
        assert_eq!(StateExports::of(&module).globals, vec!["__loom_g0"]);
    }
}
