//! A module's shape, read before it is compiled, and the compile limits it must fit: size,
//! functions, body size, locals, initializers. Checking first is what keeps a small hostile module from taking
//! seconds and gigabytes of compile: the optimizing compiler's cost grows with (locals × blocks)
//! of a function, so a function past `CRANELIFT_COST` goes to the baseline compiler (Winch),
//! whose cost is linear in the code.

use wasmparser::{Parser, Payload};

use crate::error::ExecError;

/// Compile limits (executor options). Defaults are V8's own limits, so whatever V8 accepts
/// compiles here too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompileLimits {
    pub max_module_bytes: u64,
    pub max_functions: u64,
    pub max_function_bytes: u64,
    pub max_locals: u64,
    /// Instructions in the module's initializers (see `Shape::init_instructions`).
    pub max_init_instructions: u64,
    /// What the module's compile may cost, estimated before compiling (`code_estimate`: its
    /// functions, their locals and instructions, as the machine code they make), in bytes.
    pub max_code_bytes: u64,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_module_bytes: 256 * 1024 * 1024,
            max_functions: 1_000_000,
            max_function_bytes: 7_654_321,
            max_locals: 50_000,
            max_init_instructions: 10_000,
            max_code_bytes: DEFAULT_MAX_CODE_BYTES,
        }
    }
}

/// `maxCodeBytes`' default: the 12 MB JavaScript component is estimated at 163 MB. A compile
/// estimated at this much takes about a gigabyte at its peak.
pub const DEFAULT_MAX_CODE_BYTES: u64 = 256 << 20;

/// Past this (locals × blocks) in any one function, the module is compiled by the baseline
/// compiler. Real code stays far below (an interpreter loop of a few hundred locals and a few
/// thousand blocks is ~1e6); a hostile function of 10,000 locals and 10,000 `if`s is 1e8.
pub const CRANELIFT_COST: u64 = 4_000_000;

/// Past this sum of (locals × blocks) over all its functions, too: the bound above is per
/// function, and review S had 40 functions just under it cost 188 s of optimizing compile in the
/// background (4.7 s each), going on after `close()` and holding up other executors' tier-ups.
/// The 12 MB JavaScript component sums to 3.1e6; a function at `CRANELIFT_COST` takes ~5 s.
pub const CRANELIFT_MODULE_COST: u64 = 8_000_000;

/// Past this many instructions in one function, or this sum of their squares over a module, too
/// (instructions weighted by `code_estimate::cranelift_weight`: an indirect call counts 5):
/// straight-line code escapes (locals × blocks), and the optimizing compiler's time grows faster
/// than its length (review T: one function of 2 locals, no blocks and 120,000 instructions took
/// 11.7 s, 60,000 took 1.9 s). The largest real guest here, the 12 MB JavaScript component, has a
/// function of 81,744 instructions and sums to 2.9e10; a module within both bounds costs about
/// what it does (~30 s of CPU).
pub const CRANELIFT_OPS: u64 = 100_000;
pub const CRANELIFT_MODULE_OPS_SQUARED: u64 = 40_000_000_000;

/// A function type of more parameters and results than this is wide (see `WIDE_SIGNATURE_SLOTS`).
pub const WIDE_SIGNATURE: u64 = 16;
/// Most parameters and results of all functions of wide types together (a component's core modules'
/// summed). wasmtime has Cranelift compile a trampoline for each exported or referenced function
/// and each imported type, ~2 us of compile per parameter or result: 480 exported functions of
/// 1,000 parameters and 1,000 results, an 8 KB module, took 2.1 s (58.9 s in a component of four
/// such modules; review G). Real code passes a handful; this allows ~0.2 s of such trampolines.
pub const WIDE_SIGNATURE_SLOTS: u64 = 100_000;
/// Most function types (a component's core modules' summed): wasmtime compiles a trampoline for
/// each, used or not, ~45 us apiece: 65,536 types, 721 KB, took 3 s and 984 MiB (review H). The
/// 12 MB JavaScript component has 148.
pub const MAX_FUNCTION_TYPES: u64 = 10_000;
/// Most canonical functions (lifts, lowers, ...) of a component, in its bytes and once its nested
/// components are flattened (`component_types`): wasmtime compiles an adapter for each lift and
/// lower pair, 0.09-0.35 ms apiece whatever the type (review H: 10,000 took 1.6-3.5 s; review AI:
/// 48,951 made by instantiating a nested component 49 times took 4.3 s and 760 MB). The 12 MB
/// JavaScript component has 5, the one that fetches 64.
pub const MAX_CANONICAL_FUNCTIONS: u64 = 2_000;
/// Most effective size of the function types of a component's canonical lifts and lowers, summed
/// (`component_types`): an adapter's compile grows with it, ~1 us a unit (ten adapters of a
/// record of 990 records of 1,000 fields, a few KB, took 12.5 s).
pub const MAX_ADAPTER_UNITS: u64 = 100_000;
/// Most component instances once flattened, through every level of nesting
/// (`component_types`): each is built again with its adapters and core instances. Composed
/// components have a handful.
pub const MAX_COMPONENT_INSTANCES: u64 = 100;
/// Resource types of a component once its instances are all made (each instance of a nested
/// component defines its own; review AE's second follow-up: 400,000 in a component instantiated
/// 50 times took 2.2 GB to compile, then 650 MB per instance).
pub const MAX_RESOURCE_TYPES: u64 = 100_000;
/// Memory images beyond this plus twice the module's size are refused: wasmtime builds one for a
/// memory whose data segments span under 16 MiB however little data they hold (two bytes 16 MiB
/// apart: a 16 MiB image from 30 bytes; 40 core modules of that in a 1.5 KB component held 1.5 GB).
pub const IMAGE_ALLOWANCE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shape {
    pub functions: u64,
    pub largest_body: u64,
    pub most_locals: u64,
    /// The largest (locals × blocks) of any function.
    pub cost: u64,
    /// The sum of (locals × blocks) over all functions.
    pub total_cost: u64,
    /// The most instructions in one function, and the sum of their squares over all functions
    /// (what the optimizing compiler's time grows with in straight-line code).
    pub most_ops: u64,
    pub ops_squared: u64,
    /// The machine code the baseline compiler would make of all its functions, estimated
    /// (`code_estimate::winch_bytes`).
    pub code_estimate: u64,
    pub has_start: bool,
    /// Items of the code wasmtime compiles from the initializers, run whole as an instance starts
    /// (`initializers`; the sum over a component's core modules).
    pub init_instructions: u64,
    /// Parameters and results of the functions and types that are wide (`WIDE_SIGNATURE`).
    pub wide_signature_slots: u64,
    /// Function types, canonical functions, table elements and memory-image bytes of all the core
    /// modules (and the component) read so far.
    pub function_types: u64,
    pub canonical_functions: u64,
    pub table_elements: u64,
    pub image_bytes: u64,
    /// Some instruction changes a table or drops a segment: part of an instance's state lives
    /// outside its memory and globals (what snapshots and moves between instances carry).
    pub state_outside_memory: bool,
    /// What an instance holds in the host besides its memories and tables: its core module's, or
    /// each of a component's core instances' (`instance_metadata`).
    pub instance_bytes: u64,
}

impl Shape {
    /// What each of its instances is counted as for its metadata (`instance_metadata::charged`).
    pub fn charged_instance_bytes(&self) -> u64 {
        crate::instance_metadata::charged(crate::instance_metadata::bucket(self.instance_bytes))
    }

    /// Whether the optimizing compiler would be too slow on it.
    pub fn needs_baseline(&self) -> bool {
        self.cost > CRANELIFT_COST
            || self.total_cost > CRANELIFT_MODULE_COST
            || self.most_ops > CRANELIFT_OPS
            || self.ops_squared > CRANELIFT_MODULE_OPS_SQUARED
    }
}

impl Shape {
    /// Adds a finished module's initializers to the whole's.
    fn add_init(&mut self, n: u64, limits: &CompileLimits) -> Result<(), ExecError> {
        self.init_instructions = self.init_instructions.saturating_add(n);
        self.add_init_checked(0, limits)
    }

    /// Checks the whole so far with `n` more of the module being read.
    fn add_init_checked(&self, n: u64, limits: &CompileLimits) -> Result<(), ExecError> {
        limit(
            "the items of the code compiled from the module's initializers (segments not precomputed, computed values)",
            self.init_instructions.saturating_add(n),
            limits.max_init_instructions,
            "maxInitInstructions",
        )
    }
}

fn wide_limit(shape: &Shape) -> Result<(), ExecError> {
    if shape.wide_signature_slots > WIDE_SIGNATURE_SLOTS {
        return Err(ExecError::CompileLimit(format!(
            "functions and types of more than {WIDE_SIGNATURE} parameters and results have {} of them in all, over the limit of {WIDE_SIGNATURE_SLOTS}",
            shape.wide_signature_slots
        )));
    }
    Ok(())
}

fn limit(what: &str, got: u64, max: u64, option: &str) -> Result<(), ExecError> {
    if got > max {
        return Err(ExecError::CompileLimit(format!("{what} is {got}, over the limit of {max} ({option})")));
    }
    Ok(())
}

/// Reads the shape of a module (or of every core module inside a component) and checks it
/// against `limits`. Malformed bytes are `INVALID_MODULE`; anything past a limit `COMPILE_LIMIT`.
pub fn check(bytes: &[u8], limits: &CompileLimits) -> Result<Shape, ExecError> {
    read(bytes, limits, true)
}

/// `check` without walking the instructions: the limits hold the same, but `cost` and
/// `state_outside_memory` are left unknown (0 and false).
pub fn check_limits(bytes: &[u8], limits: &CompileLimits) -> Result<Shape, ExecError> {
    read(bytes, limits, false)
}

/// A component's strings cross into the host in UTF-8 only: wasmtime decodes a string of another
/// encoding whole into a new one before the host sees any of it (review AI: a 128 MiB Latin-1
/// heartbeat, of which 65,536 characters are kept, took 256 MB of host memory and 0.7 s past the
/// call's deadline), while UTF-8 is read in place. Lifts and lowers that name another encoding are
/// refused (composing two UTF-16 components with each other is refused with them).
fn utf8_only(canon: &wasmparser::CanonicalFunction) -> Result<(), ExecError> {
    use wasmparser::{CanonicalFunction, CanonicalOption};
    let (CanonicalFunction::Lift { options, .. } | CanonicalFunction::Lower { options, .. }) = canon else { return Ok(()) };
    match options.iter().find(|o| matches!(o, CanonicalOption::UTF16 | CanonicalOption::CompactUTF16)) {
        Some(o) => Err(ExecError::InvalidModule(format!(
            "a canonical lift or lower takes strings as {}: components exchange strings with this executor in UTF-8 only",
            match o {
                CanonicalOption::UTF16 => "UTF-16",
                _ => "Latin-1 or UTF-16",
            }
        ))),
        None => Ok(()),
    }
}

fn read(bytes: &[u8], limits: &CompileLimits, walk: bool) -> Result<Shape, ExecError> {
    limit("the module's size in bytes", bytes.len() as u64, limits.max_module_bytes, "maxModuleBytes")?;
    let invalid = |e: wasmparser::BinaryReaderError| ExecError::InvalidModule(format!("{e}"));
    let mut shape = Shape::default();
    // Each core module's (a component holds several, each with its own start-up code and types).
    let mut init = crate::initializers::Initializers::default();
    // Parameters and results of each function type of the module being read.
    let mut type_slots: Vec<u64> = Vec::new();
    let mut component = crate::component_types::ComponentTypes::default();
    // The function bodies to walk (walked together at the end), and each core module's function
    // signatures (what a call and a function's start compile to grows with).
    let mut bodies: Vec<crate::body_walk::Body> = Vec::new();
    let mut signatures: Vec<crate::body_walk::Signatures> = Vec::new();
    let mut metadata = crate::instance_metadata::Metadata::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(invalid)?;
        // First: past its depth, nesting is not read any further, by anything (the readers below
        // would recurse through it).
        component.read(&payload, bytes).map_err(invalid)?;
        if let Some((what, depth)) = component.too_deep {
            return Err(ExecError::CompileLimit(format!(
                "its {what} nest {depth} levels deep, past the {} taken",
                crate::component_types::MAX_NESTING
            )));
        }
        if let Payload::Version { encoding: wasmparser::Encoding::Module, .. } = payload {
            shape.add_init(init.items, limits)?;
            shape.table_elements = shape.table_elements.saturating_add(init.table_elements);
            shape.image_bytes = shape.image_bytes.saturating_add(init.image_bytes);
            init = Default::default();
            type_slots.clear();
            signatures.push(Default::default());
        }
        init.read(&payload).map_err(invalid)?;
        metadata.read(&payload, signatures.last().map_or(0, |s| s.escaping_count)).map_err(invalid)?;
        if let Some(sigs) = signatures.last_mut() {
            sigs.note_escaping(&payload).map_err(invalid)?;
        }
        shape.add_init_checked(init.items, limits)?;
        if component.component_instances > MAX_COMPONENT_INSTANCES {
            return Err(ExecError::CompileLimit(format!(
                "its nested components make {} component instances once flattened, over the limit of {MAX_COMPONENT_INSTANCES}",
                component.component_instances
            )));
        }
        if component.unknown_instantiated {
            return Err(ExecError::CompileLimit(
                "it instantiates a component it imports or takes from an instance: what that makes cannot be counted before compiling".into(),
            ));
        }
        if component.core_instances > crate::limits::MAX_INSTANCES as u64 {
            return Err(ExecError::CompileLimit(format!(
                "its components make {} core instances once flattened, over the {} an instance may hold",
                component.core_instances,
                crate::limits::MAX_INSTANCES
            )));
        }
        if component.canonical_functions > MAX_CANONICAL_FUNCTIONS {
            return Err(ExecError::CompileLimit(format!(
                "its nested components make {} canonical functions once flattened, over the limit of {MAX_CANONICAL_FUNCTIONS}",
                component.canonical_functions
            )));
        }
        if component.adapter_units > MAX_ADAPTER_UNITS {
            return Err(ExecError::CompileLimit(format!(
                "the function types of its canonical lifts and lowers add up to an effective size of {}, over the limit of {MAX_ADAPTER_UNITS}",
                component.adapter_units
            )));
        }
        // A component's core instances share one store, and its limits: the tables of all count.
        let tables = shape.table_elements.saturating_add(init.table_elements);
        if tables > crate::limits::MAX_TABLE_ELEMENTS {
            return Err(ExecError::CompileLimit(format!(
                "the tables' initial sizes add up to {tables} elements, over the {} an instance may hold",
                crate::limits::MAX_TABLE_ELEMENTS
            )));
        }
        let images = shape.image_bytes.saturating_add(init.image_bytes);
        let allowed = IMAGE_ALLOWANCE_BYTES.saturating_add(2 * bytes.len() as u64);
        if images > allowed {
            return Err(ExecError::CompileLimit(format!(
                "the memory images of its data segments would take {images} bytes, over the {allowed} allowed a module of {} bytes",
                bytes.len()
            )));
        }
        let function_of_type = |shape: &mut Shape, ty: u32| -> Result<(), ExecError> {
            let slots = type_slots.get(ty as usize).copied().unwrap_or(0);
            if slots > WIDE_SIGNATURE {
                shape.wide_signature_slots = shape.wide_signature_slots.saturating_add(slots);
            }
            wide_limit(shape)
        };
        match payload {
            Payload::TypeSection(r) => {
                for group in r {
                    for sub in group.map_err(invalid)?.into_types() {
                        let (params, results) = match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => {
                                shape.function_types += 1;
                                limit("the number of function types", shape.function_types, MAX_FUNCTION_TYPES, "a fixed limit")?;
                                (f.params().len() as u64, f.results().len() as u64)
                            }
                            _ => (0, 0),
                        };
                        let slots = params + results;
                        if let Some(sigs) = signatures.last_mut() {
                            sigs.types.push((params, results));
                        }
                        type_slots.push(slots);
                        // Each type's own trampoline, used or not.
                        if slots > WIDE_SIGNATURE {
                            shape.wide_signature_slots = shape.wide_signature_slots.saturating_add(slots);
                        }
                    }
                }
                wide_limit(&shape)?;
            }
            Payload::ComponentCanonicalSection(r) => {
                shape.canonical_functions = shape.canonical_functions.saturating_add(u64::from(r.count()));
                limit("the number of canonical functions", shape.canonical_functions, MAX_CANONICAL_FUNCTIONS, "a fixed limit")?;
                for canon in r {
                    utf8_only(&canon.map_err(invalid)?)?;
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    if let wasmparser::TypeRef::Func(ty) = imp.map_err(invalid)?.ty {
                        shape.functions += 1;
                        if let Some(sigs) = signatures.last_mut() {
                            sigs.imported += 1;
                            sigs.functions.push(ty);
                        }
                        function_of_type(&mut shape, ty)?;
                    }
                }
            }
            Payload::FunctionSection(r) => {
                shape.functions += r.count() as u64;
                limit("the number of functions", shape.functions, limits.max_functions, "maxFunctions")?;
                for ty in r {
                    let ty = ty.map_err(invalid)?;
                    function_of_type(&mut shape, ty)?;
                    if let Some(sigs) = signatures.last_mut() {
                        sigs.functions.push(ty);
                    }
                }
            }
            Payload::StartSection { .. } => shape.has_start = true,
            Payload::CustomSection(c) if c.name() == "name" => crate::name_section::check(c.data(), c.data_offset())?,
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len() as u64;
                limit("a function body's size in bytes", size, limits.max_function_bytes, "maxFunctionBytes")?;
                shape.largest_body = shape.largest_body.max(size);
                let mut locals: u64 = 0;
                // 8-byte stack words: the baseline compiler zeroes each at the function's start.
                let mut local_words: u64 = 0;
                for l in body.get_locals_reader().map_err(invalid)? {
                    let (count, ty) = l.map_err(invalid)?;
                    locals = locals.saturating_add(count as u64);
                    limit("a function's number of locals", locals, limits.max_locals, "maxLocals")?;
                    let words = if ty == wasmparser::ValType::V128 { 2 } else { 1 };
                    local_words = local_words.saturating_add(words * count as u64);
                }
                shape.most_locals = shape.most_locals.max(locals);
                let module = signatures.len().saturating_sub(1);
                let (params, results) = signatures.last_mut().map_or((0, 0), |sigs| {
                    let index = sigs.imported + sigs.defined;
                    sigs.defined += 1;
                    sigs.of_function(index)
                });
                if walk {
                    bodies.push(crate::body_walk::Body { body, locals, local_words: local_words + params, results, module });
                }
            }
            _ => {}
        }
    }
    shape.add_init(init.items, limits)?;
    shape.table_elements = shape.table_elements.saturating_add(init.table_elements);
    shape.image_bytes = shape.image_bytes.saturating_add(init.image_bytes);
    let costs = crate::body_walk::walk_all(bytes, &bodies, &signatures).map_err(invalid)?;
    shape.cost = costs.cost;
    shape.total_cost = costs.total_cost;
    shape.most_ops = costs.most_ops;
    shape.ops_squared = costs.ops_squared;
    let escaping: u64 = signatures.iter().map(|s| s.escaping_count).sum();
    shape.code_estimate = costs.code_estimate.saturating_add(crate::code_estimate::ESCAPING_FUNCTION_BYTES.saturating_mul(escaping));
    shape.instance_bytes = metadata.bytes;
    limit("the resource types its component instances define", metadata.resources, MAX_RESOURCE_TYPES, "a fixed limit")?;
    shape.state_outside_memory = costs.state_outside_memory;
    limit(
        "its compile, estimated from its functions, their locals and instructions as the machine code they make,",
        shape.code_estimate,
        limits.max_code_bytes,
        "maxCodeBytes",
    )?;
    Ok(shape)
}

#[cfg(test)]
#[path = "shape_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "shape_bomb_tests.rs"]
mod bomb_tests;
