//! What an instance holds in the host besides its memories and tables: wasmtime's `VMContext`
//! (16 bytes per global, imported or defined, about 64 per imported function and 32 per function
//! that escapes, some per table, memory and type), for each core instance. Nothing bounded it: a 7 MB module of 999,000
//! globals held 16 MB per instance outside `maxMemoryMB`, and 100 of its actors 2.4 GB outside
//! `maxActorMemoryMB` (review AE). It is counted now against the instance's memory limit, as
//! host memory (`limits::StoreLimiter::reserve_host`), when it is over `UNCOUNTED_BYTES`.
//!
//! The count is made from the bytes (`shape`), rounded up to a power of two and kept in an
//! artifact's flags (`bucket`), so code loaded from an artifact is counted as compiled code is.

use wasmparser::{ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind, ComponentTypeRef, Encoding, Payload, TypeRef};

/// Metadata up to this much is not counted (every module has some: `peakMemoryBytes` stays its
/// memories and tables for all but modules of thousands of globals or escaping functions).
pub const UNCOUNTED_BYTES: u64 = 64 * 1024;

/// Bytes per item, rounded up from wasmtime 48's `VMOffsets`.
const GLOBAL_BYTES: u64 = 16;
const FUNCTION_BYTES: u64 = 32;
/// An imported function: its slot, and the Store's own copy of the host function (review AE's
/// follow-up measured 55-60 bytes each).
const IMPORTED_FUNCTION_BYTES: u64 = 64;
const TABLE_OR_MEMORY_BYTES: u64 = 64;
const TYPE_BYTES: u64 = 4;
const TAG_BYTES: u64 = 16;
/// A component's resource type: its destructor's slot and its `ResourceType`.
const RESOURCE_BYTES: u64 = 32;
/// Per core module: the `Instance` and the `VMContext`'s fixed part.
const MODULE_BYTES: u64 = 1024;
/// A canonical function: its lowering's and trampoline's slots in the component's context, and
/// the fused adapter's imports and exports in the core instance wasmtime makes for a component's
/// adapters, counted as one more core module (review AI: 999 lifts lowered again in a component
/// instantiated 20 times held 3.5 MiB per actor, 2.1 MiB charged).
const CANONICAL_BYTES: u64 = 96;
/// The most canonical functions once flattened, and an adapters' module for each component instance:
/// what an unresolved binary's adapters count.
const UNRESOLVED_ADAPTERS: u64 =
    CANONICAL_BYTES * crate::shape::MAX_CANONICAL_FUNCTIONS + MODULE_BYTES * crate::shape::MAX_COMPONENT_INSTANCES;

/// An instance's metadata, read from a binary's payloads in order: a core module's own, or a
/// component's, which is that of each core instance it makes (review AE's follow-up: a core
/// module of 100,000 globals instantiated 20 times in one component was counted once, and 40
/// actors held 1.3 GB under `maxActorMemoryMB: 100`), with its nested components' once for each
/// instance of them.
#[derive(Default)]
pub struct Metadata {
    /// What the binary being read is nested in, innermost last.
    open: Vec<Encoding>,
    /// The components being read, innermost last.
    frames: Vec<Frame>,
    /// The core module being read's metadata so far.
    module: u64,
    /// The largest core module's, and the most resource types one component defines.
    largest_module: u64,
    most_resources: u64,
    /// Some instance is of a module or component reached otherwise than by its index among
    /// those defined where it is made (an import, an alias, an export): the whole binary is then
    /// counted as `MAX_INSTANCES` of its largest module (review AE's second follow-up: modules
    /// reached by an outer alias counted nothing, 492 MB per actor charged 64 KiB).
    unresolved: bool,
    /// The whole binary's, once it has ended.
    pub bytes: u64,
    /// Resource types once every component instance is made (each instance of a component
    /// defines its own; review AE's second follow-up: 200,000 in a component instantiated 20
    /// times held 125 MB per actor).
    pub resources: u64,
}

/// A component being read.
#[derive(Default)]
struct Frame {
    /// Each core module's metadata, by index (when `modules_in_order`).
    modules: Vec<u64>,
    /// Each nested component's, for one instance of it, by index (when `components_in_order`).
    components: Vec<u64>,
    /// Whether the index spaces hold only the modules and components defined here (no import,
    /// alias or export added an index): else every index stands for the largest.
    modules_in_order: bool,
    components_in_order: bool,
    /// Summed over the core instances and the component instances it makes.
    instances: u64,
    /// Resource types it defines (or imports fresh), and its component instances' in all.
    resources: u64,
    /// Its own canonical functions.
    canonicals: u64,
    nested_resources: u64,
    /// Each nested component's resource types once made, by index.
    component_resources: Vec<u64>,
}

impl Frame {
    fn new() -> Frame {
        Frame { modules_in_order: true, components_in_order: true, ..Default::default() }
    }
}

/// The entry at `index` when the space is in order and holds it.
fn at(space: &[u64], in_order: bool, index: u32) -> Option<u64> {
    space.get(index as usize).copied().filter(|_| in_order)
}

impl Metadata {
    /// Takes in one payload; `escaping` is the functions that escape in the core module being
    /// read (final at its end).
    pub fn read(&mut self, payload: &Payload<'_>, escaping: u64) -> Result<(), wasmparser::BinaryReaderError> {
        let in_module = self.open.last() == Some(&Encoding::Module);
        match payload {
            Payload::Version { encoding, .. } => {
                self.open.push(*encoding);
                match encoding {
                    Encoding::Module => self.module = MODULE_BYTES,
                    Encoding::Component => self.frames.push(Frame::new()),
                }
            }
            Payload::End(_) => self.close(escaping),
            Payload::ImportSection(r) if in_module => {
                for imp in r.clone().into_imports() {
                    self.module = self.module.saturating_add(match imp?.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => IMPORTED_FUNCTION_BYTES,
                        TypeRef::Global(_) => GLOBAL_BYTES,
                        TypeRef::Table(_) | TypeRef::Memory(_) => TABLE_OR_MEMORY_BYTES,
                        TypeRef::Tag(_) => TAG_BYTES,
                    });
                }
            }
            Payload::GlobalSection(r) if in_module => self.add(GLOBAL_BYTES, r.count()),
            Payload::TableSection(r) if in_module => self.add(TABLE_OR_MEMORY_BYTES, r.count()),
            Payload::MemorySection(r) if in_module => self.add(TABLE_OR_MEMORY_BYTES, r.count()),
            Payload::TagSection(r) if in_module => self.add(TAG_BYTES, r.count()),
            Payload::TypeSection(r) if in_module => self.add(TYPE_BYTES, r.count()),
            Payload::InstanceSection(r) => {
                for instance in r.clone() {
                    if let wasmparser::Instance::Instantiate { module_index, .. } = instance? {
                        if let Some(f) = self.frames.last_mut() {
                            match at(&f.modules, f.modules_in_order, module_index) {
                                Some(bytes) => f.instances = f.instances.saturating_add(bytes),
                                None => self.unresolved = true,
                            }
                        }
                    }
                }
            }
            Payload::ComponentInstanceSection(r) => {
                for instance in r.clone() {
                    if let wasmparser::ComponentInstance::Instantiate { component_index, .. } = instance? {
                        if let Some(f) = self.frames.last_mut() {
                            match (at(&f.components, f.components_in_order, component_index), f.component_resources.get(component_index as usize)) {
                                (Some(bytes), Some(resources)) => {
                                    f.instances = f.instances.saturating_add(bytes);
                                    f.nested_resources = f.nested_resources.saturating_add(*resources);
                                }
                                _ => self.unresolved = true,
                            }
                        }
                    }
                }
            }
            Payload::ComponentCanonicalSection(r) => {
                if let Some(f) = self.frames.last_mut() {
                    f.canonicals = f.canonicals.saturating_add(r.count().into());
                }
            }
            Payload::ComponentTypeSection(r) => {
                for ty in r.clone() {
                    if let wasmparser::ComponentType::Resource { .. } = ty? {
                        self.add_resource();
                    }
                }
            }
            // Indices added to the spaces otherwise than by definitions here.
            Payload::ComponentImportSection(r) => {
                for import in r.clone() {
                    match import?.ty {
                        ComponentTypeRef::Module(_) => self.shift(true),
                        ComponentTypeRef::Component(_) => self.shift(false),
                        ComponentTypeRef::Type(wasmparser::TypeBounds::SubResource) => self.add_resource(),
                        _ => {}
                    }
                }
            }
            Payload::ComponentAliasSection(r) => {
                for alias in r.clone() {
                    match alias? {
                        ComponentAlias::Outer { kind: ComponentOuterAliasKind::CoreModule, .. }
                        | ComponentAlias::InstanceExport { kind: ComponentExternalKind::Module, .. } => self.shift(true),
                        ComponentAlias::Outer { kind: ComponentOuterAliasKind::Component, .. }
                        | ComponentAlias::InstanceExport { kind: ComponentExternalKind::Component, .. } => self.shift(false),
                        _ => {}
                    }
                }
            }
            Payload::ComponentExportSection(r) => {
                for export in r.clone() {
                    match export?.kind {
                        ComponentExternalKind::Module => self.shift(true),
                        ComponentExternalKind::Component => self.shift(false),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn add_resource(&mut self) {
        if let Some(f) = self.frames.last_mut() {
            f.resources = f.resources.saturating_add(1);
            self.most_resources = self.most_resources.max(f.resources);
        }
    }

    fn add(&mut self, each: u64, count: u32) {
        self.module = self.module.saturating_add(each.saturating_mul(count.into()));
    }

    fn shift(&mut self, modules: bool) {
        if let Some(f) = self.frames.last_mut() {
            match modules {
                true => f.modules_in_order = false,
                false => f.components_in_order = false,
            }
        }
    }

    fn close(&mut self, escaping: u64) {
        let (bytes, resources, module) = match self.open.pop() {
            Some(Encoding::Module) => {
                let bytes = self.module.saturating_add(FUNCTION_BYTES.saturating_mul(escaping));
                self.largest_module = self.largest_module.max(bytes);
                (bytes, 0, true)
            }
            Some(Encoding::Component) => match self.frames.pop() {
                Some(f) => {
                    let resources = f.resources.saturating_add(f.nested_resources);
                    let adapters = match f.canonicals {
                        0 => 0,
                        n => MODULE_BYTES.saturating_add(CANONICAL_BYTES.saturating_mul(n)),
                    };
                    (f.instances.saturating_add(RESOURCE_BYTES.saturating_mul(f.resources)).saturating_add(adapters), resources, false)
                }
                None => return,
            },
            None => return,
        };
        match self.frames.last_mut() {
            Some(f) if module => f.modules.push(bytes),
            Some(f) => {
                f.components.push(bytes);
                f.component_resources.push(resources);
            }
            None if self.unresolved => {
                // Whatever each instance is: at most a Store's instances of the largest module,
                // and at most the flattened component instances of the most resources.
                let instances = crate::limits::MAX_INSTANCES as u64;
                let components = crate::shape::MAX_COMPONENT_INSTANCES;
                self.resources = self.most_resources.saturating_mul(components).max(resources);
                // And the most canonical functions once flattened, and an adapters' module for
                // each component instance.
                self.bytes = self
                    .largest_module
                    .saturating_mul(instances)
                    .saturating_add(RESOURCE_BYTES.saturating_mul(self.resources))
                    .saturating_add(UNRESOLVED_ADAPTERS)
                    .max(bytes);
            }
            None => {
                self.bytes = bytes;
                self.resources = resources;
            }
        }
    }
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

    fn metadata_of(text: &str) -> u64 {
        let bytes = wat::parse_str(text).expect("parses");
        let mut m = Metadata::default();
        let mut escaping = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            let payload = payload.expect("valid");
            if let Payload::Version { encoding: Encoding::Module, .. } = payload {
                escaping.push(0);
            }
            if let Payload::ExportSection(r) = &payload {
                if let Some(e) = escaping.last_mut() {
                    *e += r.clone().into_iter().filter(|x| x.as_ref().is_ok_and(|x| x.kind == wasmparser::ExternalKind::Func)).count() as u64;
                }
            }
            m.read(&payload, escaping.last().copied().unwrap_or(0)).expect("reads");
        }
        m.bytes
    }

    #[test]
    fn a_core_module_counts_its_globals_imports_and_escaping_functions() {
        let globals: String = (0..1000).map(|_| "(global (mut i64) (i64.const 0))").collect();
        let base = metadata_of("(module)");
        assert_eq!(base, MODULE_BYTES);
        assert_eq!(metadata_of(&format!("(module {globals})")), MODULE_BYTES + 1000 * GLOBAL_BYTES);
        let imports: String = (0..10).map(|i| format!(r#"(import "m" "f{i}" (func))"#)).collect();
        let exports: String = (0..7).map(|i| format!(r#"(func (export "e{i}"))"#)).collect();
        assert_eq!(metadata_of(&format!("(module {imports} {exports})")), MODULE_BYTES + 10 * IMPORTED_FUNCTION_BYTES + 7 * FUNCTION_BYTES + TYPE_BYTES);
    }

    #[test]
    fn a_component_counts_each_core_instance_and_each_nested_components_instance() {
        let globals: String = (0..1000).map(|_| "(global (mut i64) (i64.const 0))").collect();
        let one = MODULE_BYTES + 1000 * GLOBAL_BYTES;
        // Review AE's follow-up: one core module instantiated 20 times was counted once.
        let instances: String = (0..20).map(|_| "(core instance (instantiate $m))").collect();
        assert_eq!(metadata_of(&format!("(component (core module $m {globals}) (core module $small) {instances} (core instance (instantiate $small)))")), 20 * one + MODULE_BYTES);
        // A nested component instantiated 3 times, each making 2 instances of its module.
        let nested = format!("(component $inner (core module $m {globals}) (core instance (instantiate $m)) (core instance (instantiate $m)))");
        let outer = format!("(component {nested} (instance (instantiate $inner)) (instance (instantiate $inner)) (instance (instantiate $inner)))");
        assert_eq!(metadata_of(&outer), 3 * 2 * one);
        // An imported module shifts the index space: the binary counts as a Store's most
        // instances of its largest module.
        let most = crate::limits::MAX_INSTANCES as u64 * one + UNRESOLVED_ADAPTERS;
        let shifted = format!(r#"(component (import "m" (core module $imp)) (core module $big {globals}) (core module $small) (core instance (instantiate $small)))"#);
        assert_eq!(metadata_of(&shifted), most);
        // Review AE's second follow-up: a module reached by an outer alias counted nothing.
        let outer = format!("(component (core module $big {globals}) (component $c (alias outer 1 $big (core module $m)) (core instance (instantiate $m)) (core instance (instantiate $m))) (instance (instantiate $c)))");
        assert_eq!(metadata_of(&outer), most);
        let exported = format!(r#"(component (component $c (core module $big {globals}) (export "m" (core module $big))) (instance $i (instantiate $c)) (alias export $i "m" (core module $m)) (core instance (instantiate $m)))"#);
        assert_eq!(metadata_of(&exported), most);
    }

    #[test]
    fn resource_types_count_for_each_instance_of_the_component_that_defines_them() {
        let resources: String = (0..1000).map(|_| "(type (resource (rep i32)))").collect();
        let bytes = wat::parse_str(format!("(component $outer (component $c {resources}) (instance (instantiate $c)) (instance (instantiate $c)) (instance (instantiate $c)) {resources})")).expect("parses");
        let mut m = Metadata::default();
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            m.read(&payload.expect("valid"), 0).expect("reads");
        }
        assert_eq!(m.resources, 4 * 1000);
        assert_eq!(m.bytes, 4 * 1000 * RESOURCE_BYTES);
    }

    #[test]
    fn canonical_functions_count_for_each_instance_of_their_component() {
        // Review AI: wasmtime makes a core instance of fused adapters for each component instance
        // that lowers lifted functions, with slots for each (3.5 MiB per actor, 2.1 MiB charged).
        let core = "(core module $m (func (export \"f\"))) (core instance $i (instantiate $m))";
        let pairs: String = (0..10).map(|k| format!("(func $l{k} (canon lift (core func $i \"f\"))) (core func (canon lower (func $l{k})))")).collect();
        let module = MODULE_BYTES + TYPE_BYTES + FUNCTION_BYTES;
        let one = module + MODULE_BYTES + 20 * CANONICAL_BYTES;
        assert_eq!(metadata_of(&format!("(component {core} {pairs})")), one);
        assert_eq!(metadata_of(&format!("(component (component $c {core} {pairs}) (instance (instantiate $c)) (instance (instantiate $c)))")), 2 * one);
    }

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
