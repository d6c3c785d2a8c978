//! The walk of every instruction of a module's functions (`shape::check`): what the compilers'
//! costs grow with, the machine code estimate (`code_estimate`), and the instructions that keep
//! state outside memory. Large modules are walked in parallel: the 12 MB JavaScript component's
//! 4.3 million instructions took 85 ms on one thread, on the way to its first result.

use rayon::prelude::*;
use wasmparser::{BinaryReaderError, ElementItems, ExternalKind, FunctionBody, Operator, Payload};

use crate::code_estimate::{cranelift_weight, function_bytes, winch_bytes};

/// A function body to walk.
pub struct Body<'a> {
    pub body: FunctionBody<'a>,
    /// Its locals, and the 8-byte stack words they and its parameters take.
    pub locals: u64,
    pub local_words: u64,
    /// Its results (what its `return` carries).
    pub results: u64,
    /// Which core module it is in (an index into the `Signatures` given with it).
    pub module: usize,
}

/// A core module's function types (parameters, results) and each function's type, imports first.
#[derive(Debug, Default)]
pub struct Signatures {
    pub types: Vec<(u64, u64)>,
    pub functions: Vec<u32>,
    pub imported: usize,
    /// Bodies read so far (the next one's index is `imported + defined`).
    pub defined: usize,
    /// The functions that escape (exported, in an element segment, or in a global's value):
    /// wasmtime compiles each a trampoline more, with the optimizing compiler.
    escaping: Vec<bool>,
    pub escaping_count: u64,
}

impl Signatures {
    /// Notes the functions `payload` makes escape.
    pub fn note_escaping(&mut self, payload: &Payload<'_>) -> Result<(), BinaryReaderError> {
        match payload {
            Payload::ExportSection(r) => {
                for e in r.clone() {
                    let e = e?;
                    if e.kind == ExternalKind::Func {
                        self.escapes(e.index);
                    }
                }
            }
            Payload::ElementSection(r) => {
                for element in r.clone() {
                    match element?.items {
                        ElementItems::Functions(f) => {
                            for index in f {
                                self.escapes(index?);
                            }
                        }
                        ElementItems::Expressions(_, exprs) => {
                            for expr in exprs {
                                self.escapes_in(expr?.get_operators_reader())?;
                            }
                        }
                    }
                }
            }
            Payload::GlobalSection(r) => {
                for g in r.clone() {
                    self.escapes_in(g?.init_expr.get_operators_reader())?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn escapes_in(&mut self, mut ops: wasmparser::OperatorsReader<'_>) -> Result<(), BinaryReaderError> {
        while !ops.eof() {
            if let Operator::RefFunc { function_index } = ops.read()? {
                self.escapes(function_index);
            }
        }
        Ok(())
    }

    fn escapes(&mut self, index: u32) {
        let i = index as usize;
        // Indices past the module's functions (read before these sections) are refused by
        // validation; not counted, nor made room for.
        if i >= self.functions.len() {
            return;
        }
        if self.escaping.len() < self.functions.len() {
            self.escaping.resize(self.functions.len(), false);
        }
        if !self.escaping[i] {
            self.escaping[i] = true;
            self.escaping_count += 1;
        }
    }
}

impl Signatures {
    /// The parameters and results of function `index` (0 if unknown: validation refuses that).
    pub fn of_function(&self, index: usize) -> (u64, u64) {
        self.functions.get(index).map_or((0, 0), |ty| self.of_type(*ty))
    }

    pub fn of_type(&self, ty: u32) -> (u64, u64) {
        self.types.get(ty as usize).copied().unwrap_or((0, 0))
    }
}

/// Function bodies past this many bytes in all are walked in parallel (on the rayon pool the
/// compile runs in).
const PARALLEL_FROM_BYTES: usize = 1 << 20;

/// What the walk found, over the functions walked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Costs {
    /// The largest (locals × blocks) of any function, and their sum.
    pub cost: u64,
    pub total_cost: u64,
    /// The most weighted instructions in one function, and the sum of their squares.
    pub most_ops: u64,
    pub ops_squared: u64,
    pub code_estimate: u64,
    pub state_outside_memory: bool,
}

impl Costs {
    fn join(self, o: Costs) -> Costs {
        Costs {
            cost: self.cost.max(o.cost),
            total_cost: self.total_cost.saturating_add(o.total_cost),
            most_ops: self.most_ops.max(o.most_ops),
            ops_squared: self.ops_squared.saturating_add(o.ops_squared),
            code_estimate: self.code_estimate.saturating_add(o.code_estimate),
            state_outside_memory: self.state_outside_memory || o.state_outside_memory,
        }
    }
}

/// Walks `bodies` of the module `bytes`.
pub fn walk_all(bytes: &[u8], bodies: &[Body<'_>], signatures: &[Signatures]) -> Result<Costs, BinaryReaderError> {
    let size: usize = bodies.iter().map(|b| b.body.range().len()).sum();
    let none = Signatures::default();
    let walk_one = |b: &Body<'_>| walk(bytes, b, signatures.get(b.module).unwrap_or(&none));
    if size < PARALLEL_FROM_BYTES {
        return bodies.iter().try_fold(Costs::default(), |all, b| Ok(all.join(walk_one(b)?)));
    }
    bodies.par_iter().map(walk_one).try_reduce(Costs::default, |a, b| Ok(a.join(b)))
}

/// The values label `depth` (0: the innermost) carries.
fn label(labels: &[u64], depth: u32) -> u64 {
    labels.len().checked_sub(1 + depth as usize).and_then(|i| labels.get(i)).copied().unwrap_or(0)
}

/// The values a block of `ty` carries to its label: its results, or a loop's parameters.
fn block_values(sigs: &Signatures, ty: &wasmparser::BlockType, is_loop: bool) -> u64 {
    match ty {
        wasmparser::BlockType::Empty => 0,
        wasmparser::BlockType::Type(_) => u64::from(!is_loop),
        wasmparser::BlockType::FuncType(t) => {
            let (params, results) = sigs.of_type(*t);
            if is_loop {
                params
            } else {
                results
            }
        }
    }
}

fn walk(bytes: &[u8], b: &Body<'_>, sigs: &Signatures) -> Result<Costs, BinaryReaderError> {
    let (body, locals) = (&b.body, b.locals);
    let mut c = Costs { code_estimate: function_bytes(b.local_words), ..Default::default() };
    let mut blocks: u64 = 1;
    let mut n_ops: u64 = 0;
    // The values each enclosing label carries (a block's or if's results, a loop's parameters),
    // the function's own outermost: a branch moves that many (`code_estimate::winch_bytes`).
    let mut labels: Vec<u64> = vec![b.results];
    let mut ops = body.get_operators_reader()?;
    while !ops.eof() {
        let (op, at) = ops.read_with_offset()?;
        n_ops += cranelift_weight(&op);
        let carried = match &op {
            Operator::Br { relative_depth } | Operator::BrIf { relative_depth } => label(&labels, *relative_depth),
            Operator::BrTable { targets } => label(&labels, targets.default()),
            Operator::Return => labels.first().copied().unwrap_or(0),
            Operator::End | Operator::Else => labels.last().copied().unwrap_or(0),
            _ => 0,
        };
        c.code_estimate = c.code_estimate.saturating_add(winch_bytes(&op, bytes.get(at) == Some(&0xfd), sigs, carried));
        match &op {
            Operator::Block { blockty } | Operator::If { blockty } => labels.push(block_values(sigs, blockty, false)),
            Operator::Loop { blockty } => labels.push(block_values(sigs, blockty, true)),
            Operator::End => {
                labels.pop();
            }
            _ => {}
        }
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } | Operator::Else => blocks += 1,
            // With the proposals `engine::features` allows (no GC, exceptions, threads or
            // multi-memory), these are all the instructions that change state outside memory and
            // globals. Allowing GC would add struct.set/array.set.
            Operator::TableSet { .. }
            | Operator::TableGrow { .. }
            | Operator::TableFill { .. }
            | Operator::TableCopy { .. }
            | Operator::TableInit { .. }
            | Operator::ElemDrop { .. }
            | Operator::DataDrop { .. } => c.state_outside_memory = true,
            _ => {}
        }
    }
    let cost = locals.max(1).saturating_mul(blocks);
    c.cost = cost;
    c.total_cost = cost;
    c.most_ops = n_ops;
    c.ops_squared = n_ops.saturating_mul(n_ops);
    Ok(c)
}
