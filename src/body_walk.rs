//! The walk of every instruction of a module's functions (`shape::check`): what the compilers'
//! costs grow with, the machine code estimate (`code_estimate`), and the instructions that keep
//! state outside memory. Large modules are walked in parallel: the 12 MB JavaScript component's
//! 4.3 million instructions took 85 ms on one thread, on the way to its first result.

use rayon::prelude::*;
use wasmparser::{BinaryReaderError, FunctionBody, Operator};

use crate::code_estimate::{cranelift_weight, winch_bytes};

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

/// Walks `bodies` (each with its number of locals) of the module `bytes`.
pub fn walk_all(bytes: &[u8], bodies: &[(FunctionBody<'_>, u64)]) -> Result<Costs, BinaryReaderError> {
    let size: usize = bodies.iter().map(|(b, _)| b.range().len()).sum();
    if size < PARALLEL_FROM_BYTES {
        return bodies.iter().try_fold(Costs::default(), |all, (b, locals)| Ok(all.join(walk(bytes, b, *locals)?)));
    }
    bodies.par_iter().map(|(b, locals)| walk(bytes, b, *locals)).try_reduce(Costs::default, |a, b| Ok(a.join(b)))
}

fn walk(bytes: &[u8], body: &FunctionBody<'_>, locals: u64) -> Result<Costs, BinaryReaderError> {
    let mut c = Costs::default();
    let mut blocks: u64 = 1;
    let mut n_ops: u64 = 0;
    let mut ops = body.get_operators_reader()?;
    while !ops.eof() {
        let (op, at) = ops.read_with_offset()?;
        n_ops += cranelift_weight(&op);
        c.code_estimate = c.code_estimate.saturating_add(winch_bytes(&op, bytes.get(at) == Some(&0xfd)));
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
