//! What a component's canonical functions cost to compile. wasmtime compiles an adapter for each
//! lift and lower pair inside a component, with code for every value of the function's type, so
//! its compile grows with the type's effective size (its values counted through every nesting):
//! one adapter of a record of 990 records of 1,000 fields took 0.46 s, ten 12.5 s, a hundred 59 s,
//! from a component of a few KB. wasmparser lets a type reach an effective size of 1,000,000.
//!
//! This sums, before compiling, the effective size of the function type of every canonical lift
//! and lower. A lift names its type, found in its component's type index space; a lowered
//! function's type is not followed, and counts as the largest function type read so far. A type
//! out of reach (aliased from an instance, or from a scope not kept) counts as the largest type
//! read so far, which bounds it: every type a component can name is defined earlier in its bytes.
//! wasmtime flattens a component's instances, building a nested component's adapters again for
//! each instance of it (review I: a 792-byte component instantiating a nested one 4 levels deep,
//! 10 times a level, passed 6.5 GB): a nested component's units count once for each component
//! its parent instantiates, through every level.

use wasmparser::{
    CanonicalFunction, ComponentAlias, ComponentDefinedType, ComponentExternalKind, ComponentOuterAliasKind, ComponentType,
    ComponentTypeDeclaration, ComponentTypeRef, ComponentValType, Encoding, InstanceTypeDeclaration, Payload, TypeBounds,
};

/// Past any real size (sums stay far from overflowing).
const SATURATED: u64 = 1 << 48;

/// The deepest nesting of component and instance types in one type, and of component
/// definitions in one another, taken (later wasmparsers refuse types past 100 levels). The
/// wasmparser wasmtime 48 uses reads nested types recursively, with no bound: 1,200 levels of
/// component types, a 3 KB module, overflowed a compile thread's stack and killed the process,
/// from `execute` and `inspectModule` alike; and nested component definitions cost its validator
/// time and memory by the square of their depth (10,000 levels, 118 KB: 2 GB; 30,000: 17.8 GB in
/// 21 s). Review AZ2.
pub const MAX_NESTING: usize = 100;

#[derive(Default)]
pub struct ComponentTypes {
    /// What the binary being read is nested in, innermost last (components and core modules).
    open: Vec<Encoding>,
    /// The components being read, innermost last.
    scopes: Vec<Frame>,
    /// The largest type read so far, and the largest function type.
    max_type: u64,
    max_func: u64,
    /// Summed over canonical lifts and lowers: their function types' effective sizes, each
    /// nested component's counted once for each instance of it (known when the binary ends).
    pub adapter_units: u64,
    /// Component instances once wasmtime has flattened them all (known when the binary ends):
    /// each has its adapters and its core instances built again (review I: 10,000 of a leaf with
    /// one small adapter, four levels of 10 in 792 bytes, took 15.7 s and 6.4 GB before the
    /// instance pool refused it).
    pub component_instances: u64,
    /// Canonical functions once flattened (known when the binary ends): wasmtime builds a nested
    /// component's again for each instance of it, a fused adapter for each lift lowered in the
    /// same component (review AI: a 68 KB component of 1,998 in a nested component instantiated
    /// 49 times, 98,000 units of `func()`, took 4.3 s of CPU and 760 MB to compile).
    pub canonical_functions: u64,
    /// Core instances of modules once flattened (known when the binary ends): past the Store's
    /// limit the component cannot be instantiated, and was compiled first (review AI: 74 ms for
    /// one of 20 lifts and lowers instantiated 49 times).
    pub core_instances: u64,
    /// Some component instantiates one whose cost is not known before compiling (one it
    /// imports, or takes from an instance's exports).
    pub unknown_instantiated: bool,
    /// Nesting past `MAX_NESTING` (of types, or of component definitions), found before it was
    /// read any deeper: what, and how deep (the rest of the binary is not read).
    pub too_deep: Option<(&'static str, usize)>,
}

/// What one instance of a component makes once flattened.
#[derive(Default, Clone, Copy)]
struct Cost {
    units: u64,
    instances: u64,
    canonicals: u64,
    /// Core instances of modules (the Store's limit counts them).
    cores: u64,
}

impl Cost {
    fn add(self, o: Cost) -> Cost {
        let sum = |a: u64, b: u64| a.saturating_add(b).min(SATURATED);
        Cost {
            units: sum(self.units, o.units),
            instances: sum(self.instances, o.instances),
            canonicals: sum(self.canonicals, o.canonicals),
            cores: sum(self.cores, o.cores),
        }
    }
}

/// A component being read.
#[derive(Default)]
struct Frame {
    /// Its type index space (each type's effective size).
    types: Vec<u64>,
    /// Its own canonical functions, and their units; its own core instances of modules.
    units: u64,
    canonicals: u64,
    cores: u64,
    /// Its component index space: what one instance of each makes (`None`: not known before
    /// compiling, one it imports or takes from an instance), whether it is defined here, and
    /// whether it was instantiated.
    components: Vec<(Option<Cost>, bool, bool)>,
    /// What the instances it makes make, summed.
    made: Cost,
}
impl ComponentTypes {
    /// Takes in one payload of the binary (the core modules' are ignored).
    /// `bytes`: the whole binary, whose offsets the payloads' ranges are.
    pub fn read(&mut self, payload: &Payload, bytes: &[u8]) -> wasmparser::Result<()> {
        if self.too_deep.is_some() {
            return Ok(());
        }
        match payload {
            Payload::Version { encoding, .. } => {
                self.open.push(*encoding);
                if *encoding == Encoding::Component {
                    self.scopes.push(Frame::default());
                    if self.scopes.len() > MAX_NESTING {
                        self.too_deep = Some(("component definitions", self.scopes.len()));
                    }
                }
            }
            Payload::End(_) => self.close(),
            Payload::ComponentTypeSection(r) => {
                let range = r.range();
                let section = bytes.get(range.clone()).unwrap_or(&[]);
                if let Some(depth) = type_nesting(section, range.start)?.filter(|d| *d > MAX_NESTING) {
                    self.too_deep = Some(("component and instance types", depth));
                    return Ok(());
                }
                for ty in r.clone() {
                    let ty = ty?;
                    let size = self.type_size(&ty, None);
                    self.push(size);
                }
            }
            Payload::ComponentImportSection(r) => {
                for import in r.clone() {
                    match import?.ty {
                        ComponentTypeRef::Type(bounds) => {
                            let size = self.bounds(&bounds, None);
                            self.push(size);
                        }
                        ComponentTypeRef::Component(_) => self.push_component(None, false),
                        _ => {}
                    }
                }
            }
            Payload::ComponentAliasSection(r) => {
                for alias in r.clone() {
                    match alias? {
                        ComponentAlias::InstanceExport { kind: ComponentExternalKind::Type, .. } => self.push(self.max_type),
                        ComponentAlias::Outer { kind: ComponentOuterAliasKind::Type, count, index } => {
                            let size = self
                                .scopes
                                .len()
                                .checked_sub(1 + count as usize)
                                .and_then(|s| self.scopes[s].types.get(index as usize).copied())
                                .unwrap_or(self.max_type);
                            self.push(size);
                        }
                        ComponentAlias::InstanceExport { kind: ComponentExternalKind::Component, .. } => self.push_component(None, false),
                        // Another index of a component of an enclosing one (review AI's follow-up:
                        // instantiated 49 times there, it was counted once).
                        ComponentAlias::Outer { kind: ComponentOuterAliasKind::Component, count, index } => {
                            let cost = self
                                .scopes
                                .len()
                                .checked_sub(1 + count as usize)
                                .and_then(|s| self.scopes[s].components.get(index as usize))
                                .and_then(|c| c.0);
                            self.push_component(cost, false);
                        }
                        _ => {}
                    }
                }
            }
            Payload::ComponentExportSection(r) => {
                for export in r.clone() {
                    let export = export?;
                    match export.kind {
                        ComponentExternalKind::Type => {
                            let size = self.local(export.index, None);
                            self.push(size);
                        }
                        ComponentExternalKind::Component => {
                            let cost = self.scopes.last().and_then(|f| f.components.get(export.index as usize)).and_then(|c| c.0);
                            self.push_component(cost, false);
                        }
                        _ => {}
                    }
                }
            }
            Payload::ComponentCanonicalSection(r) => {
                if let Some(frame) = self.scopes.last_mut() {
                    frame.canonicals = frame.canonicals.saturating_add(u64::from(r.count())).min(SATURATED);
                }
                for canon in r.clone() {
                    let units = match canon? {
                        CanonicalFunction::Lift { type_index, .. } => self.local(type_index, None),
                        CanonicalFunction::Lower { .. } => self.max_func,
                        _ => 1,
                    };
                    if let Some(frame) = self.scopes.last_mut() {
                        frame.units = frame.units.saturating_add(units).min(SATURATED);
                    }
                }
            }
            Payload::InstanceSection(r) => {
                for instance in r.clone() {
                    if let wasmparser::Instance::Instantiate { .. } = instance? {
                        if let Some(frame) = self.scopes.last_mut() {
                            frame.cores = frame.cores.saturating_add(1);
                        }
                    }
                }
            }
            Payload::ComponentInstanceSection(r) => {
                for instance in r.clone() {
                    if let wasmparser::ComponentInstance::Instantiate { component_index, .. } = instance? {
                        let Some(frame) = self.scopes.last_mut() else { continue };
                        match frame.components.get_mut(component_index as usize) {
                            Some((Some(cost), _, instantiated)) => {
                                *instantiated = true;
                                let one = Cost { instances: cost.instances.saturating_add(1), ..*cost };
                                frame.made = frame.made.add(one);
                            }
                            _ => self.unknown_instantiated = true,
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The innermost binary ends: what one instance of a component makes (its own canonical
    /// functions, what each instance it makes makes, and once what each component it defines but
    /// never instantiates would) goes into its parent's component index space, or is the whole
    /// binary's.
    fn close(&mut self) {
        if self.open.pop() != Some(Encoding::Component) {
            return;
        }
        let Some(frame) = self.scopes.pop() else { return };
        let own = Cost { units: frame.units, instances: 0, canonicals: frame.canonicals, cores: frame.cores };
        let unused = frame.components.iter().filter(|(_, defined, instantiated)| *defined && !instantiated).filter_map(|c| c.0);
        let cost = unused.fold(own.add(frame.made), |sum, c| sum.add(Cost { instances: 0, cores: 0, ..c }));
        if self.scopes.is_empty() {
            self.adapter_units = cost.units;
            self.component_instances = cost.instances;
            self.canonical_functions = cost.canonicals;
            self.core_instances = cost.cores;
        } else {
            self.push_component(Some(cost), true);
        }
    }

    /// A component's index in the innermost component's space.
    fn push_component(&mut self, cost: Option<Cost>, defined: bool) {
        if let Some(frame) = self.scopes.last_mut() {
            frame.components.push((cost, defined, false));
        }
    }

    fn push(&mut self, size: u64) {
        self.max_type = self.max_type.max(size);
        if let Some(frame) = self.scopes.last_mut() {
            frame.types.push(size);
        }
    }

    /// A type index's size: in `decl` (a type declaration's own index space) when there is one,
    /// else in the innermost component's; the largest type so far when out of reach.
    fn local(&self, index: u32, decl: Option<&[u64]>) -> u64 {
        let space = decl.unwrap_or_else(|| self.scopes.last().map(|f| f.types.as_slice()).unwrap_or(&[]));
        space.get(index as usize).copied().unwrap_or(self.max_type)
    }

    fn bounds(&self, bounds: &TypeBounds, decl: Option<&[u64]>) -> u64 {
        match bounds {
            TypeBounds::Eq(index) => self.local(*index, decl),
            _ => 1,
        }
    }

    fn value(&self, v: &ComponentValType, decl: Option<&[u64]>) -> u64 {
        match v {
            ComponentValType::Primitive(_) => 1,
            ComponentValType::Type(index) => self.local(*index, decl),
        }
    }

    /// A type's effective size; `decl`: the index space of the type declaration it is in (none:
    /// its component's).
    fn type_size(&mut self, ty: &ComponentType, decl: Option<&[u64]>) -> u64 {
        let size = match ty {
            ComponentType::Defined(d) => self.defined(d, decl),
            ComponentType::Func(f) => {
                let params: u64 = f.params.iter().map(|(_, v)| self.value(v, decl)).fold(0, u64::saturating_add);
                let size = 1u64.saturating_add(params).saturating_add(f.result.as_ref().map_or(0, |v| self.value(v, decl)));
                self.max_func = self.max_func.max(size.min(SATURATED));
                size
            }
            ComponentType::Component(decls) => {
                self.declarations(decls.iter().map(|d| match d {
                    ComponentTypeDeclaration::Type(t) => Decl::Type(t),
                    ComponentTypeDeclaration::Alias(a) => Decl::Alias(a),
                    ComponentTypeDeclaration::Export { ty: ComponentTypeRef::Type(b), .. }
                    | ComponentTypeDeclaration::Import(wasmparser::ComponentImport { ty: ComponentTypeRef::Type(b), .. }) => Decl::Bounds(b),
                    _ => Decl::Other,
                }));
                1
            }
            ComponentType::Instance(decls) => {
                self.declarations(decls.iter().map(|d| match d {
                    InstanceTypeDeclaration::Type(t) => Decl::Type(t),
                    InstanceTypeDeclaration::Alias(a) => Decl::Alias(a),
                    InstanceTypeDeclaration::Export { ty: ComponentTypeRef::Type(b), .. } => Decl::Bounds(b),
                    _ => Decl::Other,
                }));
                1
            }
            ComponentType::Resource { .. } => 1,
        };
        size.min(SATURATED)
    }

    /// Reads a component or instance type's declarations in an index space of their own.
    fn declarations<'d>(&mut self, decls: impl Iterator<Item = Decl<'d>>) {
        let mut local = Vec::new();
        for d in decls {
            let size = match d {
                Decl::Type(t) => self.type_size(t, Some(&local)),
                Decl::Alias(a) if type_alias(a) => self.max_type,
                Decl::Bounds(b) => self.bounds(b, Some(&local)),
                Decl::Alias(_) | Decl::Other => continue,
            }
            .min(SATURATED);
            self.max_type = self.max_type.max(size);
            local.push(size);
        }
    }

    fn defined(&self, d: &ComponentDefinedType, decl: Option<&[u64]>) -> u64 {
        let sum = |vs: &mut dyn Iterator<Item = u64>| vs.fold(1u64, u64::saturating_add);
        match d {
            ComponentDefinedType::Primitive(_) | ComponentDefinedType::Own(_) | ComponentDefinedType::Borrow(_) => 1,
            ComponentDefinedType::Record(fields) => sum(&mut fields.iter().map(|(_, v)| self.value(v, decl))),
            ComponentDefinedType::Variant(cases) => sum(&mut cases.iter().map(|c| c.ty.as_ref().map_or(1, |v| self.value(v, decl)))),
            ComponentDefinedType::List(v) | ComponentDefinedType::Option(v) => 1 + self.value(v, decl),
            ComponentDefinedType::Map(k, v) => sum(&mut [self.value(k, decl), self.value(v, decl)].into_iter()),
            ComponentDefinedType::FixedLengthList(v, n) => 1u64.saturating_add(self.value(v, decl).saturating_mul(u64::from(*n))),
            ComponentDefinedType::Tuple(vs) => sum(&mut vs.iter().map(|v| self.value(v, decl))),
            ComponentDefinedType::Flags(names) | ComponentDefinedType::Enum(names) => 1 + names.len() as u64,
            ComponentDefinedType::Result { ok, err } => {
                sum(&mut [ok, err].into_iter().map(|v| v.as_ref().map_or(0, |v| self.value(v, decl))))
            }
            ComponentDefinedType::Future(v) | ComponentDefinedType::Stream(v) => 1 + v.as_ref().map_or(0, |v| self.value(v, decl)),
        }
    }
}

/// The deepest nesting of component and instance types in a type section (`section`, at
/// `offset` in the binary), read without recursion, up to one level past `MAX_NESTING`; `None`
/// for bytes that do not read as a type section (wasmparser then refuses them where this stopped,
/// having read no deeper).
fn type_nesting(section: &[u8], offset: usize) -> wasmparser::Result<Option<usize>> {
    use wasmparser::{BinaryReader, ComponentImport, CoreType};
    let mut r = BinaryReader::new(section, offset);
    // The count of types, then the types (errors are wasmparser's to report, where it reads).
    let mut types_left = r.read_var_u32()?;
    // The declarations left to read at each open level, and whether it is a component type's
    // (which may import).
    let mut open: Vec<(u32, bool)> = Vec::new();
    let mut deepest = 0;
    loop {
        match open.last_mut() {
            Some((0, _)) => {
                open.pop();
                continue;
            }
            Some((left, component)) => {
                *left -= 1;
                let component = *component;
                // A declaration: only a type (0x01) may nest further.
                match r.read_u8()? {
                    0x01 => {}
                    0x00 => {
                        r.read::<CoreType>()?;
                        continue;
                    }
                    0x02 => {
                        r.read::<ComponentAlias>()?;
                        continue;
                    }
                    // An import, or an export: a name and a type reference both.
                    0x03 if component => {
                        r.read::<ComponentImport>()?;
                        continue;
                    }
                    0x04 => {
                        r.read::<ComponentImport>()?;
                        continue;
                    }
                    _ => return Ok(None),
                }
            }
            None if types_left == 0 => return Ok(Some(deepest)),
            None => types_left -= 1,
        }
        // A type.
        let mut probe = r.clone();
        match probe.read_u8()? {
            kind @ (0x41 | 0x42) => {
                r = probe;
                let decls = r.read_var_u32()?;
                open.push((decls, kind == 0x41));
                deepest = deepest.max(open.len());
                if deepest > MAX_NESTING {
                    return Ok(Some(deepest));
                }
            }
            // Any other type holds no type: read whole, as wasmparser reads it.
            _ => {
                r.read::<ComponentType>()?;
            }
        }
    }
}

/// What a declaration in a component or instance type adds to its type index space.
enum Decl<'d> {
    Type(&'d ComponentType<'d>),
    Alias(&'d ComponentAlias<'d>),
    /// An import or export of a type.
    Bounds(&'d TypeBounds),
    /// Nothing (a core type, a function, an instance).
    Other,
}

/// Whether an alias adds to the component type index space (aliases of core types, modules,
/// functions or instances do not: counting them would shift every later index, review I).
fn type_alias(alias: &ComponentAlias) -> bool {
    matches!(
        alias,
        ComponentAlias::InstanceExport { kind: ComponentExternalKind::Type, .. } | ComponentAlias::Outer { kind: ComponentOuterAliasKind::Type, .. }
    )
}

#[cfg(test)]
#[path = "component_types_tests.rs"]
mod tests;
