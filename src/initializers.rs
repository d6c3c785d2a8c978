//! What a core module's initializers cost to compile. V8 evaluates element segments, data segments
//! and global values as it instantiates a module; wasmtime turns whatever it cannot precompute into
//! one function that an instance runs as it starts (`translate_module_startup` in wasmtime's
//! Cranelift crate), with code for each item: ~15 us of compile per item with Winch, ~12-25 us with
//! Cranelift. That function has no epoch checks (it runs whole, on whatever thread starts the
//! instance), and the baseline engine compiles it like a trampoline (`OptLevel::None`, single-pass
//! register allocation), whose stack frame grows with the items: 60,000 data segments made it
//! larger than a fiber stack, and wasmtime aborted the process.
//!
//! This counts, before compiling, the items that function would hold, following wasmtime-environ
//! 48's `module_environ.rs` and erring on the side of counting: a segment wasmtime might precompute
//! is counted unless every condition it checks holds.
//! - Element segments: active segments are copied into a precomputed table (nothing to run) while
//!   each in turn is of function indices, at a constant offset, within the initial size (and 2^20)
//!   of a defined funcref table without an initial value of its own; from the first that is not,
//!   it and all after it are code, one item each. Passive segments are code, one item each.
//! - Data segments: all of them go into a memory image (nothing to run) when each active one is in
//!   a defined memory, at a constant offset, within its initial size, and each memory's image is
//!   dense (its extent under twice its data, or under 16 MiB); otherwise every active segment is
//!   code, the costliest item: a bounds-checked `memory.init` through a libcall, 65-120 us of
//!   compile each, so each counts `DATA_SEGMENT_ITEMS`.
//! - A global's or a table's initial value that is not a single constant: its instructions.

use wasmparser::{ConstExpr, DataKind, ElementItems, ElementKind, Operator, Payload, RefType, TableInit};

/// wasmtime's largest precomputed table (`MAX_FUNC_TABLE_SIZE`).
const MAX_PRECOMPUTED_TABLE: u64 = 1 << 20;
/// wasmtime's `memory_guaranteed_dense_image_size` (its default; `engine.rs` leaves it).
const DENSE_IMAGE_BYTES: u64 = 16 << 20;
/// What a data segment run as code counts: ~5 other items' compile (review G measured 65-70 us
/// each on the baseline engine, 100-120 us optimized, against 12-25 us for an element item).
pub const DATA_SEGMENT_ITEMS: u64 = 5;

/// A defined table, as the precomputed tables see it.
struct Table {
    initial: u64,
    funcref: bool,
    /// An initial value wasmtime does not precompute: segments into it are code.
    computed_init: bool,
}

/// A core module's initializers, read section by section.
#[derive(Default)]
pub struct Initializers {
    /// Items of the start-up function so far.
    pub items: u64,
    /// The defined tables' initial elements: wasmtime precomputes a table of function indices up to
    /// a segment's end (5 bytes an entry in the artifact), up to 2^20 entries per table.
    pub table_elements: u64,
    /// The memory images wasmtime builds from the data segments: each memory's extent from its
    /// lowest to its highest byte of data.
    pub image_bytes: u64,
    imported_tables: u32,
    imported_memories: u32,
    tables: Vec<Table>,
    /// Each defined memory's initial size in bytes (none: past u64).
    memories: Vec<Option<u64>>,
    /// An active element segment was not precomputed: all later ones are code.
    tables_dynamic: bool,
}

/// The instructions of a constant expression (its final `end` not counted).
pub fn instructions(expr: &ConstExpr) -> wasmparser::Result<u64> {
    let mut ops = expr.get_operators_reader();
    let mut n = 0;
    while !ops.eof() {
        if !matches!(ops.read()?, Operator::End) {
            n += 1;
        }
    }
    Ok(n)
}

/// A constant expression's value when it is a single `i32.const` or `i64.const` (an offset).
fn constant_offset(expr: &ConstExpr) -> wasmparser::Result<Option<u64>> {
    let mut ops = expr.get_operators_reader();
    let value = match ops.read()? {
        Operator::I32Const { value } => u64::from(value as u32),
        Operator::I64Const { value } => value as u64,
        _ => return Ok(None),
    };
    Ok((instructions(expr)? == 1).then_some(value))
}

/// What a global's initial value adds: nothing for a single constant (wasmtime evaluates it
/// without code), else its instructions.
fn value_cost(expr: &ConstExpr) -> wasmparser::Result<u64> {
    let mut ops = expr.get_operators_reader();
    let constant = matches!(
        ops.read()?,
        Operator::I32Const { .. } | Operator::I64Const { .. } | Operator::F32Const { .. } | Operator::F64Const { .. } | Operator::V128Const { .. }
    );
    let n = instructions(expr)?;
    Ok(if constant && n == 1 { 0 } else { n })
}

impl Initializers {
    /// Takes in one payload of the module (the others are ignored).
    pub fn read(&mut self, payload: &Payload) -> wasmparser::Result<()> {
        match payload {
            Payload::ImportSection(r) => {
                for import in r.clone().into_imports() {
                    match import?.ty {
                        wasmparser::TypeRef::Table(_) => self.imported_tables += 1,
                        wasmparser::TypeRef::Memory(_) => self.imported_memories += 1,
                        _ => {}
                    }
                }
            }
            Payload::TableSection(r) => {
                for table in r.clone() {
                    let table = table?;
                    let funcref = table.ty.element_type == RefType::FUNCREF;
                    let computed_init = match &table.init {
                        TableInit::RefNull => false,
                        TableInit::Expr(expr) => {
                            let mut ops = expr.get_operators_reader();
                            let one_function = matches!(ops.read()?, Operator::RefFunc { .. }) && instructions(expr)? == 1;
                            if one_function && table.ty.initial <= MAX_PRECOMPUTED_TABLE {
                                false
                            } else {
                                // Filled at start-up: one fill, after its value.
                                self.items = self.items.saturating_add(1 + instructions(expr)?);
                                true
                            }
                        }
                    };
                    self.table_elements = self.table_elements.saturating_add(table.ty.initial);
                    self.tables.push(Table { initial: table.ty.initial, funcref, computed_init });
                }
            }
            Payload::MemorySection(r) => {
                for memory in r.clone() {
                    let memory = memory?;
                    let custom_pages = memory.page_size_log2.is_some_and(|p| p != 16);
                    let bytes = memory.initial.checked_mul(65536).filter(|_| !custom_pages);
                    self.memories.push(bytes);
                }
            }
            Payload::GlobalSection(r) => {
                for global in r.clone() {
                    self.items = self.items.saturating_add(value_cost(&global?.init_expr)?);
                }
            }
            Payload::ElementSection(r) => {
                for element in r.clone() {
                    let element = element?;
                    let count = match &element.items {
                        ElementItems::Functions(f) => u64::from(f.count()),
                        ElementItems::Expressions(_, e) => u64::from(e.count()),
                    };
                    let items = |element: &wasmparser::Element| -> wasmparser::Result<u64> {
                        let mut n: u64 = 1;
                        match &element.items {
                            ElementItems::Functions(_) => n = n.saturating_add(count),
                            ElementItems::Expressions(_, exprs) => {
                                for expr in exprs.clone() {
                                    n = n.saturating_add(instructions(&expr?)?.max(1));
                                }
                            }
                        }
                        Ok(n)
                    };
                    let cost = match &element.kind {
                        ElementKind::Declared => 0,
                        ElementKind::Passive => items(&element)?,
                        ElementKind::Active { table_index, offset_expr } => {
                            if !self.tables_dynamic && !self.precomputed(table_index.unwrap_or(0), offset_expr, count, &element.items)? {
                                self.tables_dynamic = true;
                            }
                            if self.tables_dynamic {
                                items(&element)?.saturating_add(instructions(offset_expr)?)
                            } else {
                                0
                            }
                        }
                    };
                    self.items = self.items.saturating_add(cost);
                }
            }
            Payload::DataSection(r) => {
                let mut segments = 0u64;
                let mut offsets = 0u64;
                // Per memory: data bytes, lowest and highest address.
                let mut extent: Vec<(u64, u64, u64)> = vec![(0, u64::MAX, 0); self.memories.len()];
                let mut image = true;
                for data in r.clone() {
                    let data = data?;
                    let DataKind::Active { memory_index, offset_expr } = &data.kind else { continue };
                    segments += 1;
                    offsets = offsets.saturating_add(value_cost(offset_expr)?);
                    let defined = memory_index.checked_sub(self.imported_memories).map(|i| i as usize);
                    let (Some(i), Some(start)) = (defined, constant_offset(offset_expr)?) else {
                        image = false;
                        continue;
                    };
                    let len = data.data.len() as u64;
                    let end = start.checked_add(len);
                    let fits = match (self.memories.get(i).copied().flatten(), end) {
                        (Some(size), Some(end)) => end <= size,
                        _ => false,
                    };
                    if !fits {
                        image = false;
                        continue;
                    }
                    if len > 0 {
                        let e = &mut extent[i];
                        *e = (e.0 + len, e.1.min(start), e.2.max(start + len));
                    }
                }
                let dense = extent.iter().filter(|e| e.0 > 0).all(|&(data, low, high)| {
                    let size = high - low;
                    size < data.saturating_mul(2) || size < DENSE_IMAGE_BYTES
                });
                if !(image && dense) {
                    self.items = self.items.saturating_add(segments.saturating_mul(DATA_SEGMENT_ITEMS)).saturating_add(offsets);
                } else {
                    let extents = extent.iter().filter(|e| e.0 > 0).map(|&(_, low, high)| high - low);
                    self.image_bytes = self.image_bytes.saturating_add(extents.sum());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether wasmtime copies this active element segment into a precomputed table.
    fn precomputed(&self, table: u32, offset: &ConstExpr, count: u64, items: &ElementItems) -> wasmparser::Result<bool> {
        let Some(t) = table.checked_sub(self.imported_tables).and_then(|i| self.tables.get(i as usize)) else {
            return Ok(false);
        };
        let Some(start) = constant_offset(offset)? else { return Ok(false) };
        let Some(top) = start.checked_add(count) else { return Ok(false) };
        Ok(top <= t.initial
            && top <= MAX_PRECOMPUTED_TABLE
            && t.funcref
            && !t.computed_init
            && matches!(items, ElementItems::Functions(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(wat: &str) -> u64 {
        let bytes = wat::parse_str(wat).expect("parses");
        let mut init = Initializers::default();
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            init.read(&payload.expect("payload")).expect("reads");
        }
        init.items
    }

    #[test]
    fn precomputed_tables_and_memory_images_cost_nothing() {
        // What toolchains write: function indices at constant offsets, data at constant offsets.
        assert_eq!(items(r#"(module (table 4 funcref) (func) (elem (i32.const 1) func 0 0 0)
            (memory 1) (data (i32.const 8) "ab") (data (i32.const 1000) "cd")
            (global i32 (i32.const 5)))"#), 0);
        // A table whose initial value is one function is precomputed too.
        assert_eq!(items(r#"(module (func) (table 4 funcref (ref.func 0)) (elem (i32.const 0) func 0))"#), 0);
    }

    #[test]
    fn whatever_wasmtime_turns_into_code_is_counted_item_by_item() {
        // Items written as expressions: each is code (and so is everything after).
        assert_eq!(items(r#"(module (table 4 funcref) (func)
            (elem (i32.const 0) funcref (ref.null func) (ref.func 0))
            (elem (i32.const 2) func 0 0))"#), (1 + 2 + 1) + (1 + 2 + 1));
        // Past the table's initial size: this segment and the next are code.
        assert_eq!(items(r#"(module (table 2 funcref) (func) (elem (i32.const 0) func 0)
            (elem (i32.const 1) func 0 0) (elem (i32.const 0) func 0))"#), (1 + 2 + 1) + (1 + 1 + 1));
        // Passive segments, function indices or not.
        assert_eq!(items(r#"(module (func) (elem func 0 0 0) (elem declare func 0))"#), 1 + 3);
        // One data segment at a computed offset: the image is given up, every segment is code.
        assert_eq!(items(r#"(module (memory 1) (data (i32.const 0) "a") (data (i32.const 9) "")
            (data (offset (i32.add (i32.const 0) (i32.const 0))) "b"))"#), 3 * DATA_SEGMENT_ITEMS + 3);
        // Out of the memory's initial size, or an image far sparser than its data.
        assert_eq!(items(r#"(module (memory 1) (data (i32.const 0) "a") (data (i32.const 65536) "b"))"#), 2 * DATA_SEGMENT_ITEMS);
        assert_eq!(items(r#"(module (memory 1000) (data (i32.const 0) "a") (data (i32.const 60000000) "b"))"#), 2 * DATA_SEGMENT_ITEMS);
        // A table filled with a computed value at start-up, and segments into it.
        assert_eq!(items(r#"(module (table 4 funcref (ref.null func)) (func) (elem (i32.const 0) func 0))"#), 2 + 3);
        // Values computed from imports.
        assert_eq!(items(r#"(module (import "env" "base" (global $base i32))
            (global i32 (i32.add (global.get $base) (i32.const 8))))"#), 3);
        // An imported memory or table: never precomputed.
        assert_eq!(items(r#"(module (import "env" "m" (memory 1)) (data (i32.const 0) "a"))"#), DATA_SEGMENT_ITEMS);
        assert_eq!(items(r#"(module (import "env" "t" (table 4 funcref)) (func) (elem (i32.const 0) func 0))"#), 3);
    }
}
