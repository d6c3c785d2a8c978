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

use wasmparser::{
    CanonicalFunction, ComponentAlias, ComponentDefinedType, ComponentExternalKind, ComponentOuterAliasKind, ComponentType,
    ComponentTypeDeclaration, ComponentTypeRef, ComponentValType, Encoding, InstanceTypeDeclaration, Payload, TypeBounds,
};

/// Past any real size (sums stay far from overflowing).
const SATURATED: u64 = 1 << 48;

#[derive(Default)]
pub struct ComponentTypes {
    /// What the binary being read is nested in, innermost last (components and core modules).
    open: Vec<Encoding>,
    /// The type index space of each component being read (each type's effective size),
    /// innermost last.
    scopes: Vec<Vec<u64>>,
    /// The largest type read so far, and the largest function type.
    max_type: u64,
    max_func: u64,
    /// Summed over canonical lifts and lowers: their function types' effective sizes.
    pub adapter_units: u64,
}

impl ComponentTypes {
    /// Takes in one payload of the binary (the core modules' are ignored).
    pub fn read(&mut self, payload: &Payload) -> wasmparser::Result<()> {
        match payload {
            Payload::Version { encoding, .. } => {
                self.open.push(*encoding);
                if *encoding == Encoding::Component {
                    self.scopes.push(Vec::new());
                }
            }
            Payload::End(_) => self.close(),
            Payload::ComponentTypeSection(r) => {
                for ty in r.clone() {
                    let ty = ty?;
                    let size = self.type_size(&ty, None);
                    self.push(size);
                }
            }
            Payload::ComponentImportSection(r) => {
                for import in r.clone() {
                    if let ComponentTypeRef::Type(bounds) = import?.ty {
                        let size = self.bounds(&bounds, None);
                        self.push(size);
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
                                .and_then(|s| self.scopes[s].get(index as usize).copied())
                                .unwrap_or(self.max_type);
                            self.push(size);
                        }
                        _ => {}
                    }
                }
            }
            Payload::ComponentExportSection(r) => {
                for export in r.clone() {
                    let export = export?;
                    if export.kind == ComponentExternalKind::Type {
                        let size = self.local(export.index, None);
                        self.push(size);
                    }
                }
            }
            Payload::ComponentCanonicalSection(r) => {
                for canon in r.clone() {
                    let units = match canon? {
                        CanonicalFunction::Lift { type_index, .. } => self.local(type_index, None),
                        CanonicalFunction::Lower { .. } => self.max_func,
                        _ => 1,
                    };
                    self.adapter_units = self.adapter_units.saturating_add(units).min(SATURATED);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The innermost binary ends (a component's type index space with it).
    fn close(&mut self) {
        if self.open.pop() == Some(Encoding::Component) {
            self.scopes.pop();
        }
    }

    fn push(&mut self, size: u64) {
        self.max_type = self.max_type.max(size);
        if let Some(scope) = self.scopes.last_mut() {
            scope.push(size);
        }
    }

    /// A type index's size: in `decl` (a type declaration's own index space) when there is one,
    /// else in the innermost component's; the largest type so far when out of reach.
    fn local(&self, index: u32, decl: Option<&[u64]>) -> u64 {
        let space = decl.unwrap_or_else(|| self.scopes.last().map(Vec::as_slice).unwrap_or(&[]));
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
                let mut local = Vec::new();
                for d in decls.iter() {
                    let size = match d {
                        ComponentTypeDeclaration::Type(t) => Some(self.type_size(t, Some(&local))),
                        ComponentTypeDeclaration::Alias(_) => Some(self.max_type),
                        ComponentTypeDeclaration::Export { ty: ComponentTypeRef::Type(b), .. }
                        | ComponentTypeDeclaration::Import(wasmparser::ComponentImport { ty: ComponentTypeRef::Type(b), .. }) => {
                            Some(self.bounds(b, Some(&local)))
                        }
                        _ => None,
                    };
                    if let Some(size) = size {
                        self.max_type = self.max_type.max(size.min(SATURATED));
                        local.push(size.min(SATURATED));
                    }
                }
                1
            }
            ComponentType::Instance(decls) => {
                let mut local = Vec::new();
                for d in decls.iter() {
                    let size = match d {
                        InstanceTypeDeclaration::Type(t) => Some(self.type_size(t, Some(&local))),
                        InstanceTypeDeclaration::Alias(_) => Some(self.max_type),
                        InstanceTypeDeclaration::Export { ty: ComponentTypeRef::Type(b), .. } => Some(self.bounds(b, Some(&local))),
                        _ => None,
                    };
                    if let Some(size) = size {
                        self.max_type = self.max_type.max(size.min(SATURATED));
                        local.push(size.min(SATURATED));
                    }
                }
                1
            }
            ComponentType::Resource { .. } => 1,
        };
        size.min(SATURATED)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn units(wat: &str) -> u64 {
        let bytes = wat::parse_str(wat).expect("parses");
        let mut types = ComponentTypes::default();
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            types.read(&payload.expect("payload")).expect("reads");
        }
        types.adapter_units
    }

    const CORE: &str = r#"(core module $m (func (export "f") (param i32)) (memory (export "memory") 1)
        (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 0))
        (core instance $i (instantiate $m))"#;

    #[test]
    fn a_lift_counts_its_function_type_through_every_nesting() {
        let fields = |n: usize, ty: &str| (0..n).map(|i| format!("(field \"f{i}\" {ty})")).collect::<String>();
        let lifts = |n: usize| {
            (0..n)
                .map(|_| r#"(func (type $f) (canon lift (core func $i "f") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))"#)
                .collect::<String>()
        };
        // A record of 100 u32 (101), one of 100 of those (10,101), a function taking one (10,102).
        let wat = |n: usize| {
            format!(
                "(component (type $r0 (record {})) (type $r1 (record {})) (type $f (func (param \"x\" $r1))) {CORE} {})",
                fields(100, "u32"),
                fields(100, "$r0"),
                lifts(n)
            )
        };
        assert_eq!(units(&wat(1)), 10_102);
        assert_eq!(units(&wat(10)), 101_020);
        // Past the limit: refused before compiling.
        let limits = crate::shape::CompileLimits::default();
        assert!(crate::shape::check(&wat::parse_str(wat(9)).expect("parses"), &limits).is_ok());
        let refused = crate::shape::check(&wat::parse_str(wat(10)).expect("parses"), &limits).expect_err("over");
        assert!(refused.to_string().contains("effective size of 101020"), "{refused}");
        // A lowered function counts as the largest function type so far.
        let lowered = format!(
            "(component (type $f (func (param \"a\" u32) (param \"b\" string))) (import \"g\" (func $g (type $f))) {CORE}
             (core func (canon lower (func $g))) (core func (canon lower (func $g))))"
        );
        assert_eq!(units(&lowered), 2 * 3);
        // A type aliased from out of reach counts as the largest type so far.
        let aliased = format!(
            "(component (type $big (record {})) (import \"i\" (instance $inst (type $x (record (field \"a\" u32))) (export \"t\" (type (eq $x)))))
             (alias export $inst \"t\" (type $t)) (type $f (func (param \"x\" $t))) {CORE} {})",
            fields(50, "u32"),
            lifts(1)
        );
        assert_eq!(units(&aliased), 1 + 51);
    }
}
