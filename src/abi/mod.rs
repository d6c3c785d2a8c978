//! Guest ABIs: how input and output cross into and out of a guest, one file per ABI. A module's
//! ABI is detected from its imports and exports (or forced by `definition.abi`):
//!
//! - `assemblyscript`: exports `execute(i32) -> i32`, `__new` and `memory` (strings by their
//!   length header);
//! - `extism`: imports from `extism:host/env` (an Extism plugin, unmodified); its export
//!   `definition.entrypoint` (default `execute`) is `() -> i32`;
//! - `wasi-command`: exports `_start` (a WASI program: JSON in on stdin, out on stdout);
//! - `component`: a WebAssembly component exporting `execute: func(input: string) ->
//!   result<string, string>` (`wit/activity.wit`).

pub mod assemblyscript;
pub mod component;
pub mod extism;
pub mod wasi_command;
pub mod wasi_command_stdio;

use wasmtime::{ExternType, Module, ValType};

use crate::error::ExecError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Abi {
    AssemblyScript,
    Extism,
    WasiCommand,
    Component,
}

impl Abi {
    pub const ALL: [Abi; 4] = [Abi::AssemblyScript, Abi::Extism, Abi::WasiCommand, Abi::Component];

    pub fn name(self) -> &'static str {
        match self {
            Abi::AssemblyScript => "assemblyscript",
            Abi::Extism => "extism",
            Abi::WasiCommand => "wasi-command",
            Abi::Component => "component",
        }
    }

    pub fn parse(name: &str) -> Result<Abi, ExecError> {
        Abi::ALL.into_iter().find(|a| a.name() == name).ok_or_else(|| {
            ExecError::InvalidArgument(format!(
                "definition.abi must be one of {}, got {name:?}",
                Abi::ALL.map(|a| a.name()).join(", ")
            ))
        })
    }
}

/// Whether an export is a function of exactly this type.
pub fn has_func(module: &Module, name: &str, params: &[ValType], results: &[ValType]) -> Result<(), String> {
    let Some(ty) = module.get_export(name) else { return Err(format!("no export `{name}`")) };
    let ExternType::Func(f) = ty else { return Err(format!("export `{name}` is not a function")) };
    let same = |a: &mut dyn ExactSizeIterator<Item = ValType>, b: &[ValType]| {
        a.len() == b.len() && a.zip(b).all(|(x, y)| ValType::eq(&x, y))
    };
    if !same(&mut f.params(), params) || !same(&mut f.results(), results) {
        return Err(format!("export `{name}` has type {f}, expected {}", describe(params, results)));
    }
    Ok(())
}

pub fn describe(params: &[ValType], results: &[ValType]) -> String {
    let list = |v: &[ValType]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ");
    format!("(func (param {}) (result {}))", list(params), list(results))
}

/// A 32-bit unshared exported `memory`.
pub fn has_memory(module: &Module) -> Result<(), String> {
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if !m.is_64() && !m.is_shared() => Ok(()),
        Some(_) => Err("export `memory` is not a 32-bit unshared memory".into()),
        None => Err("no export `memory`".into()),
    }
}

fn fits(abi: Abi, module: &Module) -> Result<(), String> {
    match abi {
        Abi::AssemblyScript => assemblyscript::check_exports(module).map_err(|e| e.to_string()),
        Abi::Extism => extism::check(module),
        Abi::WasiCommand => wasi_command::check(module),
        Abi::Component => Err("not a component (a core module)".into()),
    }
}

/// The ABI of a core module: the one `forced`, or the first that fits. When none fits, the error
/// of the ABI the module looks closest to (`MISSING_EXPORT` for an AssemblyScript guest without
/// `execute`), or `INVALID_MODULE` saying why each did not fit.
pub fn detect(module: &Module, forced: Option<Abi>) -> Result<Abi, ExecError> {
    if let Some(abi) = forced {
        return match fits(abi, module) {
            Ok(()) => Ok(abi),
            Err(why) => Err(ExecError::MissingExport(format!("the module does not fit the {} ABI: {why}", abi.name()))),
        };
    }
    let imports_extism = module.imports().any(|i| i.module().starts_with("extism:"));
    let order: &[Abi] = if imports_extism { &[Abi::Extism] } else { &[Abi::AssemblyScript, Abi::WasiCommand] };
    let mut why = Vec::new();
    for abi in order {
        match fits(*abi, module) {
            Ok(()) => return Ok(*abi),
            Err(w) => why.push((*abi, w)),
        }
    }
    let looks_as = module.get_export("__new").is_some() || module.get_export("execute").is_some();
    if imports_extism || looks_as {
        let (abi, w) = &why[0];
        if imports_extism {
            return Err(ExecError::MissingExport(format!("an {} plugin: {w}", abi.name())));
        }
        // Keep the AssemblyScript message (it names the export and its expected type).
        return Err(assemblyscript::check_exports(module).err().unwrap_or_else(|| ExecError::MissingExport(w.clone())));
    }
    why.push((Abi::Extism, "imports nothing from extism:host/env".into()));
    why.push((Abi::Component, "not a component (a core module)".into()));
    Err(ExecError::InvalidModule(format!(
        "the module fits no guest ABI: {}",
        why.iter().map(|(a, w)| format!("{}: {w}", a.name())).collect::<Vec<_>>().join("; ")
    )))
}

/// Whether bytes are a component rather than a core module (the binary's layer field).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{engine, EngineKind};

    fn module(wat: &str) -> Module {
        Module::new(engine(EngineKind::Plain).expect("engine"), wat::parse_str(wat).expect("parses")).expect("valid")
    }

    #[test]
    fn detects_each_abi_and_says_why_none_fits() {
        let as_guest = Module::new(engine(EngineKind::Plain).expect("engine"), crate::test_guests::echo()).expect("valid");
        assert_eq!(detect(&as_guest, None), Ok(Abi::AssemblyScript));
        let plugin = module(r#"(module (import "extism:host/env" "input_length" (func (result i64)))
            (memory (export "memory") 1) (func (export "execute") (result i32) (i32.const 0)))"#);
        assert_eq!(detect(&plugin, None), Ok(Abi::Extism));
        let command = module(r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))
            (memory (export "memory") 1) (func (export "_start")))"#);
        assert_eq!(detect(&command, None), Ok(Abi::WasiCommand));
        let none = module(r#"(module (memory (export "memory") 1) (func (export "run")))"#);
        let e = detect(&none, None).expect_err("fits none");
        assert_eq!(e.code(), "INVALID_MODULE");
        for abi in Abi::ALL {
            assert!(e.to_string().contains(abi.name()), "{e}");
        }
        assert_eq!(detect(&none, Some(Abi::WasiCommand)).map_err(|e| e.code()), Err("MISSING_EXPORT"));
        assert_eq!(Abi::parse("cobol").map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
        assert!(is_component(b"\0asm\x0d\0\x01\0") && !is_component(b"\0asm\x01\0\0\0"));
    }

    #[test]
    fn extism_vars_round_trip_and_garbage_is_refused() {
        let mut k = extism::Kernel::default();
        k.set_var("count".into(), vec![1, 2, 3]);
        k.set_var("é".into(), Vec::new());
        let bytes = k.encode_vars();
        assert_eq!(extism::Kernel::decode_vars(&bytes).expect("decodes"), k.vars);
        for cut in 1..bytes.len() {
            assert!(extism::Kernel::decode_vars(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(extism::Kernel::decode_vars(&[255, 255, 255, 255]).is_err());
        // A plugin's state always has its count: none at all is another ABI's.
        assert_eq!(extism::Kernel::decode_vars(&[]).map_err(|e| e.code()), Err("SNAPSHOT_INVALID"));
        assert_eq!(extism::Kernel::decode_vars(&extism::Kernel::default().encode_vars()).map(|v| v.len()), Ok(0));
        // Trailing bytes, and more than var_set allows.
        assert!(extism::Kernel::decode_vars(&[bytes.as_slice(), &[0]].concat()).is_err());
        let mut big = extism::Kernel::default();
        big.set_var("a".into(), vec![0; extism::MAX_VAR_BYTES]);
        assert_eq!(extism::Kernel::decode_vars(&big.encode_vars()).map_err(|e| e.code()), Err("SNAPSHOT_INVALID"));
        big.set_var("a".into(), vec![0; extism::MAX_VAR_BYTES - 1 - extism::VAR_OVERHEAD]);
        assert_eq!(extism::Kernel::decode_vars(&big.encode_vars()).map(|v| v.len()), Ok(1));
    }

    #[test]
    fn the_vars_count_is_kept_as_they_change() {
        // Review BE2: var_set summed every var anew; the count is kept instead, and must match.
        let sum = |k: &extism::Kernel| k.vars.iter().map(|(n, v)| (n.len() + v.len() + extism::VAR_OVERHEAD) as u64).sum::<u64>();
        let mut k = extism::Kernel::default();
        assert_eq!(k.vars_bytes(), 0);
        k.set_var("a".into(), vec![1; 10]);
        k.set_var("bb".into(), vec![2; 3]);
        assert_eq!(k.vars_bytes(), sum(&k));
        assert_eq!(k.vars_bytes_with("a", 1), sum(&k) - 10 + 1, "a var set anew replaces its old size");
        assert_eq!(k.vars_bytes_with("c", 5), sum(&k) + 1 + 5 + extism::VAR_OVERHEAD as u64);
        k.set_var("a".into(), vec![]);
        assert_eq!(k.vars_bytes(), sum(&k));
        k.remove_var("bb");
        k.remove_var("never set");
        assert_eq!(k.vars_bytes(), sum(&k));
        let mut other = extism::Kernel::default();
        other.set_var("x".into(), vec![0; 100]);
        k.replace_vars(extism::Kernel::decode_vars(&other.encode_vars()).expect("decodes"));
        assert_eq!((k.vars_bytes(), sum(&k)), (sum(&other), sum(&other)));
    }

    #[test]
    fn an_actor_counts_a_var_at_what_the_host_holds_for_it() {
        // Review BR2: a var of a 3-byte key and a 1-byte value held 172-174 bytes, counted 132.
        let mut k = extism::Kernel::default();
        for i in 0..1000 {
            k.set_var(format!("{i:03}"), vec![1]);
        }
        assert!(k.vars_held_bytes() >= 1000 * 174, "{}", k.vars_held_bytes());
        assert_eq!(k.vars_bytes(), 1000 * (3 + 1 + extism::VAR_OVERHEAD as u64), "the 1 MiB limit's count is as it was");
    }
}
