//! A module's host function imports: which of its imports are host functions and by which
//! convention (`Convention`, from the import's type), the check of a call's grants against them,
//! and the linker entries that carry a guest's call to `HostAccess::call` (or the network's).
use super::*;

/// How a host import passes text, by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// `(i32) -> i32`: AssemblyScript strings.
    AsString,
    /// `(i64) -> i64`: Extism kernel memory handles.
    ExtismHandle,
}

impl Convention {
    fn of(ty: &FuncType) -> Option<Convention> {
        let params: Vec<ValType> = ty.params().collect();
        let results: Vec<ValType> = ty.results().collect();
        match (params.as_slice(), results.as_slice()) {
            ([ValType::I32], [ValType::I32]) => Some(Convention::AsString),
            ([ValType::I64], [ValType::I64]) => Some(Convention::ExtismHandle),
            _ => None,
        }
    }
}

/// The AssemblyScript import of the network capability: `loom.http(requestJson) -> responseJson`.
pub const HTTP_IMPORT: (&str, &str) = ("loom", "http");

/// A function import the process linker does not satisfy: a host function (or `loom.http`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostImport {
    pub module: String,
    pub name: String,
    /// `module.name`, what `capabilities.hostFunctions` names.
    pub key: String,
    /// `None`: a type no convention fits (refused when the call starts).
    pub convention: Option<Convention>,
    pub ty: String,
}

impl HostImport {
    pub fn is_http(&self) -> bool {
        (self.module.as_str(), self.name.as_str()) == HTTP_IMPORT
    }
}

/// A module's host imports, or `INVALID_MODULE` for an unknown import that is not a function.
pub fn host_imports<'a>(module: &Module, unknown: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Vec<HostImport>, ExecError> {
    let types = import_types(module);
    let mut out = Vec::new();
    for (m, n) in unknown {
        let Some(ty) = types.get(&(m, n)) else { continue };
        let ExternType::Func(ty) = ty.clone() else {
            return Err(ExecError::InvalidModule(format!(
                "unknown import {m}.{n} is not a function (the host provides only functions)"
            )));
        };
        out.push(HostImport {
            module: m.to_string(),
            name: n.to_string(),
            key: format!("{m}.{n}"),
            convention: Convention::of(&ty),
            ty: ty.to_string(),
        });
    }
    Ok(out)
}

/// The type of each import by its module and name (the first, for a name imported twice). Looked
/// up by a scan of the imports per import, a module of 80,000 imports (672 KB) took over two
/// minutes of compile thread, on past its call's `compileTimeoutMs` and `close()` (review AE).
fn import_types(module: &Module) -> HashMap<(&str, &str), ExternType> {
    let mut types = HashMap::new();
    for i in module.imports() {
        types.entry((i.module(), i.name())).or_insert_with(|| i.ty());
    }
    types
}

/// Before a call starts: every host import must be granted by the definition and offered by the
/// executor (else `CAPABILITY_DENIED`, named), and of a type its ABI's convention fits. (The
/// network import is `network::authorize`'s.)
pub fn authorize(imports: &[HostImport], granted: &[String], offered: &[String]) -> Result<(), ExecError> {
    if imports.is_empty() {
        return Ok(());
    }
    for (names, whose) in [(granted, "its definition does not grant (capabilities.hostFunctions)"), (offered, "the executor does not offer (options.hostFunctions)")] {
        // A set: looked up in the list per import, 10,000 granted imports held the JS thread
        // ~200 ms per call (review AE's follow-up).
        let names: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let outside: Vec<&str> =
            imports.iter().filter(|i| !i.is_http() && !names.contains(i.key.as_str())).map(|i| i.key.as_str()).collect();
        if !outside.is_empty() {
            return Err(ExecError::CapabilityDenied(format!("the module imports {}, which {whose}", crate::trap_text::name_list(&outside, 20))));
        }
    }
    if let Some(bad) = imports.iter().find(|i| i.convention.is_none() || (i.is_http() && i.convention != Some(Convention::AsString))) {
        return Err(ExecError::InvalidModule(format!(
            "host import {} has type {}; a host function takes and returns JSON text as (i32) -> i32 (an AssemblyScript string) or (i64) -> i64 (an Extism memory handle)",
            crate::trap_text::short(&bad.key),
            crate::trap_text::short(&bad.ty)
        )));
    }
    Ok(())
}

/// A linker for a module with host imports: the process linker plus one async function per
/// import, which dispatches on the Store's `HostAccess` at call time.
pub fn link(base: &Linker<HostState>, module: &Module, imports: &[HostImport]) -> Result<Linker<HostState>, ExecError> {
    let mut linker = base.clone();
    let types = import_types(module);
    for imp in imports {
        let Some(ExternType::Func(ty)) = types.get(&(imp.module.as_str(), imp.name.as_str())).cloned() else {
            continue;
        };
        let import = Arc::new(imp.clone());
        linker
            .func_new_async(&imp.module, &imp.name, ty, move |caller, params, results| {
                let import = import.clone();
                Box::new(async move { dispatch(caller, &import, params, results).await })
            })
            .map_err(|e| ExecError::InvalidModule(format!("cannot link {}: {e:#}", imp.key)))?;
    }
    Ok(linker)
}

async fn dispatch(mut caller: Caller<'_, HostState>, imp: &HostImport, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let convention = imp.convention.ok_or_else(|| wasmtime::Error::new(ExecError::InvalidModule(format!("host import {} has type {}", imp.key, imp.ty))))?;
    if caller.data().in_guest_for_host {
        // Unrefused, a guest whose `__new` calls a host function nests without end, a fiber
        // stack (two mappings) per level: ~31,000 levels exhausted the process's mappings.
        return Err(wasmtime::Error::new(ExecError::Trap {
            kind: "host_reentry".into(),
            message: format!("host import {} was called from the guest's `__new` while the host was handing back a host function's result", imp.key),
        }));
    }
    let input = match (convention, params.first()) {
        (Convention::AsString, Some(Val::I32(ptr))) => read_as(&mut caller, *ptr, &imp.key)?,
        (Convention::ExtismHandle, Some(Val::I64(off))) => caller.data().extism.read_text_capped(*off as u64, MAX_HOST_ARG_BYTES)?,
        _ => return Err(wasmtime::Error::new(ExecError::internal("a host import called with the wrong arguments"))),
    };
    let access = caller.data().access.clone();
    let output = if imp.is_http() {
        // `authorize` admits the network import as `(i32) -> i32` only (an Extism plugin reaches
        // the network through the kernel's `http_request`): its text goes to the guest's own
        // heap, whose free space the host cannot see (a memory at its cap may be mostly free:
        // review AN1F had every response refused, 10 bytes too), so it may take the whole cap.
        let request = HttpRequest::from_json(&input).map_err(wasmtime::Error::new)?;
        let cap = caller.data().limiter.max_bytes();
        let response = access.http(request, cap).await.map_err(wasmtime::Error::new)?;
        response.to_json_within(cap, crate::http_client::TextUnits::Utf16).map_err(wasmtime::Error::new)?
    } else {
        access.call(&imp.key, input).await.map_err(wasmtime::Error::new)?
    };
    results[0] = match convention {
        Convention::AsString => Val::I32(write_as(&mut caller, &output).await?),
        Convention::ExtismHandle => {
            let d = caller.data_mut();
            Val::I64(d.extism.write_bytes(output.as_bytes(), &mut d.limiter)? as i64)
        }
    };
    Ok(())
}

fn memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::Error::new(ExecError::MissingExport("a host function needs the guest's exported `memory`".into())))
}

fn read_as(caller: &mut Caller<'_, HostState>, ptr: i32, key: &str) -> wasmtime::Result<String> {
    let mem = memory(caller)?;
    crate::abi::assemblyscript::read_string(mem.data(&*caller), ptr, MAX_HOST_ARG_BYTES).map_err(|e| {
        wasmtime::Error::new(match e {
            ExecError::InvalidOutput { message, preview } => {
                ExecError::InvalidOutput { message: format!("the argument of host import {key}: {message}"), preview }
            }
            ExecError::OutputTooLarge { size, limit } => ExecError::InvalidOutput {
                message: format!("the argument of host import {key} is {size} bytes, over the limit of {limit}"),
                preview: String::new(),
            },
            other => other,
        })
    })
}

/// Allocates an AssemblyScript string with the guest's `__new` and fills it.
async fn write_as(caller: &mut Caller<'_, HostState>, text: &str) -> wasmtime::Result<i32> {
    let new = caller
        .get_export("__new")
        .and_then(|e| e.into_func())
        .ok_or_else(|| wasmtime::Error::new(ExecError::MissingExport("a host function returning text needs the guest's `__new` (asc --exportRuntime)".into())))?
        .typed::<(i32, i32), i32>(&*caller)?;
    let byte_len = crate::text::utf16_len_bytes(text);
    if byte_len > crate::abi::assemblyscript::MAX_AS_OBJECT_BYTES {
        return Err(wasmtime::Error::new(ExecError::InputTooLarge { size: byte_len, limit: crate::abi::assemblyscript::MAX_AS_OBJECT_BYTES }));
    }
    // The call runs on a fiber stack of its own, which the Store keeps (its one cached stack)
    // until the call's own fiber ends (`engine::STACKS_PER_INSTANCE`).
    caller.data_mut().in_guest_for_host = true;
    let ptr = new.call_async(&mut *caller, (byte_len as i32, crate::abi::assemblyscript::STRING_CLASS_ID)).await;
    caller.data_mut().in_guest_for_host = false;
    let ptr = ptr?;
    let mem = memory(caller)?;
    crate::abi::assemblyscript::write_utf16(mem.data_mut(&mut *caller), ptr, text, byte_len).map_err(wasmtime::Error::new)?;
    Ok(ptr)
}
