//! What a function's instructions cost to compile, weighed one instruction at a time as the
//! shape walk reads them (`shape`): the machine code the baseline compiler (Winch) makes of each,
//! and its weight in the optimizing compiler's time.
//!
//! Winch's code is linear in the instructions, but not in their bytes: `i32.const 0;
//! call_indirect` is 5 bytes of wasm and 185 bytes of machine code, so a 17 MB module of them
//! compiled to 626 MB of code and took 2.7 GB at its peak (review AD; the default
//! `maxModuleBytes` of 256 MiB would have been about 9 GB of code). The compile cannot be stopped
//! midway, so the bound is checked before it starts, on this estimate (`maxCodeBytes`).
//!
//! The bytes below are upper bounds measured on x86-64 (wasmtime 48's Winch), each instruction
//! repeated over 256 KB of functions and the code divided by the repetitions, the whole pattern
//! counted against its costly instruction (`i32.const 0; call_indirect` as the `call_indirect`),
//! then rounded up (review AD's follow-up measured 50 patterns against it: calls with many
//! arguments, large memory offsets and branches carrying many values came out above it, and
//! are weighed for that now). Common code is overestimated about four times over (the 12 MB
//! JavaScript component); the patterns that expand most, within two.

use wasmparser::Operator;

use crate::body_walk::Signatures;

/// What a function weighs before its instructions: its compile holds about 6 KB at the peak
/// however small it is (review AD: 200,000 empty functions, an 800 KB module, held 1.2 GB), a
/// quarter of which is counted, so that a compile's peak stays about four times the estimate;
/// an empty function's code is about 200 bytes of it.
pub const FUNCTION_BYTES: u64 = 1536;
/// What a function that escapes (exported, in a table) weighs more: wasmtime compiles it a
/// trampoline with the optimizing compiler (review AD's second follow-up: 20,000 such functions
/// peaked at 7.6-9.4 times their estimate, against 3.8 for the same not escaping).
pub const ESCAPING_FUNCTION_BYTES: u64 = 2048;
/// Per 8-byte stack word of its locals and parameters: the baseline compiler zeroes each local's
/// word at the function's start, an instruction apiece, with no bound (review AD: a function
/// of 50,000 `v128` locals is 7 bytes of wasm and about 800 KB of code).
pub const LOCAL_WORD_BYTES: u64 = 12;
/// Per parameter and result of a call: each value is spilled and moved to its place (about 36
/// bytes measured with 16 `v128` or `f64` arguments).
pub const CALL_SLOT_BYTES: u64 = 40;

/// A function's own weight, before its instructions (`local_words`: of its locals and parameters).
pub fn function_bytes(local_words: u64) -> u64 {
    FUNCTION_BYTES.saturating_add(LOCAL_WORD_BYTES.saturating_mul(local_words))
}

/// A call's weight per value passed and returned.
fn call_slots((params, results): (u64, u64)) -> u64 {
    CALL_SLOT_BYTES.saturating_mul(params.saturating_add(results))
}

/// Per value a branch carries to its label (and a block's end, a `return`): Winch copies each
/// where the stack does not line up with the label's, unrolled (review AD's second follow-up:
/// `br_if`s carrying 24 `i64`s each, a 170 KB module estimated at 2.35 MB, made 383 MB of code).
pub const CARRIED_VALUE_BYTES: u64 = 24;

/// Estimated machine code, in bytes, of one instruction compiled by Winch. `simd`: the
/// instruction is one of the 0xfd prefix (vector instructions). `sigs`: its module's function
/// signatures (a call's code grows with what it passes). `carried`: the values a branch, `end`,
/// `else` or `return` carries (see `body_walk`).
pub fn winch_bytes(op: &Operator, simd: bool, sigs: &Signatures, carried: u64) -> u64 {
    use Operator::*;
    let moved = CARRIED_VALUE_BYTES.saturating_mul(carried);
    match op {
        // A jump table, an entry per target, each of which may move what the label carries.
        BrTable { targets } => 48u64.saturating_add((8 + moved).saturating_mul(u64::from(targets.len()) + 1)),
        Br { .. } | BrIf { .. } | Return | End | Else => 24 + moved,
        // Table bounds, signature check, lazy table initialisation: 185 bytes measured.
        CallIndirect { type_index, .. } | ReturnCallIndirect { type_index, .. } => 200 + call_slots(sigs.of_type(*type_index)),
        CallRef { type_index } | ReturnCallRef { type_index } => 200 + call_slots(sigs.of_type(*type_index)),
        Call { function_index } | ReturnCall { function_index } => 32 + call_slots(sigs.of_function(*function_index as usize)),
        // 127.5 (table.get, with its lazy initialisation) and 65.5 (table.set) measured; the
        // other table and bulk-memory instructions call into the host: 110-134 measured.
        TableGet { .. } | TableGrow { .. } | TableFill { .. } | TableCopy { .. } | TableInit { .. } | ElemDrop { .. } => 140,
        MemoryCopy { .. } | MemoryFill { .. } | MemoryInit { .. } | DataDrop { .. } => 140,
        TableSet { .. } => 80,
        // Trapping float-to-int conversions: 87.6-104.5; saturating ones: 121.5.
        I32TruncF32S | I32TruncF32U | I32TruncF64S | I32TruncF64U | I64TruncF32S | I64TruncF32U | I64TruncF64S | I64TruncF64U => 112,
        I32TruncSatF32S | I32TruncSatF32U | I32TruncSatF64S | I32TruncSatF64U | I64TruncSatF32S | I64TruncSatF32U
        | I64TruncSatF64S | I64TruncSatF64U => 128,
        // 51.3-54.5 measured.
        F32Min | F32Max | F64Min | F64Max | F32ConvertI64U | F64ConvertI64U => 64,
        I32DivS | I32DivU | I32RemS | I32RemU | I64DivS | I64DivU | I64RemS | I64RemU => 48,
        MemoryGrow { .. } | RefFunc { .. } => 32,
        // An offset past 2^31 takes an addition more (35 measured).
        I32Load { memarg } | I64Load { memarg } | F32Load { memarg } | F64Load { memarg } | I32Load8S { memarg }
        | I32Load8U { memarg } | I32Load16S { memarg } | I32Load16U { memarg } | I64Load8S { memarg } | I64Load8U { memarg }
        | I64Load16S { memarg } | I64Load16U { memarg } | I64Load32S { memarg } | I64Load32U { memarg } | I32Store { memarg }
        | I64Store { memarg } | F32Store { memarg } | F64Store { memarg } | I32Store8 { memarg } | I32Store16 { memarg }
        | I64Store8 { memarg } | I64Store16 { memarg } | I64Store32 { memarg }
            if memarg.offset >= 1 << 31 =>
        {
            48
        }
        // The vector instructions: 10-58 measured (`i32x4.trunc_sat_f32x4_u`), most under 40.
        _ if simd => 64,
        LocalGet { .. } | LocalSet { .. } | LocalTee { .. } | GlobalGet { .. } | GlobalSet { .. } | I32Const { .. }
        | I64Const { .. } | F32Const { .. } | F64Const { .. } | Drop | Nop | Block { .. } | Loop { .. } | If { .. }
        | Unreachable | MemorySize { .. } => 24,
        _ => 32,
    }
}

/// An instruction's weight in the optimizing compiler's time (`shape::CRANELIFT_OPS` and its
/// sum of squares count weighted instructions): each indirect call is several blocks (the
/// table's bounds, the lazy initialisation, the signature), and a function of them cost
/// Cranelift about 19 times what one of as many plain instructions did (review AD: 1.0 MB of
/// them, four functions within both bounds, took 105 s of CPU and 1.9 GB in the background;
/// 128 KB in one function 10.4 s).
pub fn cranelift_weight(op: &Operator) -> u64 {
    match op {
        Operator::CallIndirect { .. } | Operator::ReturnCallIndirect { .. } | Operator::CallRef { .. } | Operator::ReturnCallRef { .. } => 5,
        Operator::TableGet { .. } => 3,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::{ESCAPING_FUNCTION_BYTES, FUNCTION_BYTES};
    use crate::engine::{engine, EngineKind};
    use crate::shape::{check, CompileLimits, CRANELIFT_OPS};

    /// A module of 8 functions, each `pattern` (WAT instructions) repeated `n` times.
    fn repeated(pattern: &str, n: usize) -> Vec<u8> {
        let body = pattern.repeat(n);
        let funcs: String = (0..8).map(|_| format!("(func (local v128 i64 f64 i32) {body})\n")).collect();
        let wat = format!(
            "(module (type $t (func)) (table 1 funcref) (elem (i32.const 0) $target) (memory 1) (func $target) {funcs})"
        );
        wat::parse_str(wat).expect("parses")
    }

    /// The machine code Winch makes of `bytes` (the compiled image: code, its tables, data).
    fn winch_code(bytes: &[u8]) -> u64 {
        let module = wasmtime::Module::new(engine(EngineKind::Baseline).expect("engine"), bytes).expect("compiles");
        (module.image_range().end as u64) - (module.image_range().start as u64)
    }

    #[test]
    fn the_estimate_bounds_what_winch_makes_and_is_close_where_code_expands_most() {
        for (pattern, close) in [
            ("(call_indirect (type $t) (i32.const 0))", true),
            ("(drop (table.get 0 (i32.const 0)))", true),
            ("(memory.copy (i32.const 0) (i32.const 0) (i32.const 0))", true),
            ("(local.set 1 (i64.trunc_f64_u (local.get 2)))", true),
            ("(local.set 1 (i64.trunc_sat_f64_u (local.get 2)))", true),
            ("(local.set 2 (f64.min (local.get 2) (local.get 2)))", false),
            ("(local.set 0 (i8x16.popcnt (local.get 0)))", false),
            ("(local.set 3 (i32.add (local.get 3) (i32.load (i32.const 0))))", false),
            ("(call $target)", false),
        ] {
            let bytes = repeated(pattern, 4000);
            let estimate = check(&bytes, &CompileLimits::default()).expect("fits").code_estimate;
            let real = winch_code(&bytes);
            assert!(estimate >= real, "{pattern}: estimated {estimate}, made {real}");
            if close {
                assert!(estimate <= real * 2, "{pattern}: estimated {estimate}, made {real}");
            }
        }
    }

    #[test]
    fn locals_functions_and_call_arguments_are_weighed_too() {
        // Review AD's follow-up: each local's stack word is zeroed at the function's start (50,000
        // v128 locals, 7 bytes of wasm, made ~800 KB of code), every function costs its compile
        // ~6 KB however small, and each value a call passes is spilled and moved.
        let locals = "(func (local".to_string() + &" v128".repeat(2_000) + "))\n";
        let empty = "(func)\n".repeat(1_000);
        let v128s = " v128".repeat(16);
        let args = "(local.get 0)".repeat(16);
        let calls = format!("(func $callee (param{v128s}) (result{v128s}) {args}) (func (local v128) {})", format!("(call $callee {args})").repeat(100) + &"(drop)".repeat(1_600));
        // Review AD's second follow-up: a `br_if` carrying 24 values copies each where the stack
        // does not line up with its label's (one more value under them), 383 MB from 170 KB.
        let i64s = " i64".repeat(24);
        let values = "(i64.const 0)".repeat(24);
        let branches = "(br_if $b (local.get 0))".repeat(300);
        let carried = format!("(type $r (func (result{i64s}))) (func (result{i64s}) (local i32) (block $b (type $r) (i64.const 1) {values} {branches} (br $b)))");
        // Functions that escape (in a table) are compiled a trampoline each.
        let escaping = format!("(table 1000 funcref) (elem (i32.const 0) func {}) {}", (0..1000).map(|i| format!("$f{i} ")).collect::<String>(), (0..1000).map(|i| format!("(func $f{i})")).collect::<String>());
        for (what, wat) in [
            ("locals", locals.repeat(10)),
            ("empty functions", empty),
            ("calls of 16 v128 each way", calls),
            ("branches carrying 24 values", carried),
            ("escaping functions", escaping.clone()),
        ] {
            let bytes = wat::parse_str(format!("(module {wat})")).expect("parses");
            let estimate = check(&bytes, &CompileLimits::default()).expect("fits").code_estimate;
            let real = winch_code(&bytes);
            assert!(estimate >= real, "{what}: estimated {estimate}, made {real}");
        }
        let table = check(&wat::parse_str(format!("(module {escaping})")).expect("parses"), &CompileLimits::default()).expect("fits");
        assert!(table.code_estimate >= 1000 * (FUNCTION_BYTES + ESCAPING_FUNCTION_BYTES), "{}", table.code_estimate);
        // 400 functions of 50,000 v128 locals, 3.4 KB: 305 MiB of code, 972 MiB at the peak.
        // (Written in binary: as text it is 100 MB.) Each body: 1 local group of 50,000 v128, end.
        let body = [6u8, 1, 0xd0, 0x86, 0x03, 0x7b, 0x0b];
        let mut bomb = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0".to_vec();
        let functions: Vec<u8> = [&[0x90u8, 0x03][..], &[0u8; 400]].concat();
        let code: Vec<u8> = [&[0x90u8, 0x03][..], &body.repeat(400)].concat();
        for (id, content) in [(3u8, functions), (10u8, code)] {
            bomb.push(id);
            let mut n = content.len();
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                bomb.push(if n > 0 { b | 0x80 } else { b });
                if n == 0 {
                    break;
                }
            }
            bomb.extend_from_slice(&content);
        }
        let e = check(&bomb, &CompileLimits::default()).expect_err("over the default");
        assert!(e.to_string().contains("maxCodeBytes"), "{e}");
    }

    #[test]
    fn a_module_past_max_code_bytes_is_refused_before_compiling_a_component_too() {
        let ci = "(call_indirect (type $t) (i32.const 0))";
        let bytes = repeated(ci, 20_000);
        let tight = CompileLimits { max_code_bytes: 16 << 20, ..Default::default() };
        let e = check(&bytes, &tight).expect_err("over");
        assert_eq!(e.code(), "COMPILE_LIMIT");
        assert!(e.to_string().contains("maxCodeBytes"), "{e}");
        assert!(check(&bytes, &CompileLimits::default()).is_ok(), "1 MB of indirect calls fits the default");
        // Inside a component, on the baseline compiler: its core modules' instructions are
        // weighed too (a component's were not walked before its first compile).
        let body = ci.repeat(20_000);
        let funcs: String = (0..8).map(|_| format!("(func {body})\n")).collect();
        let component = wat::parse_str(format!(
            "(component (core module (type $t (func)) (table 1 funcref) (elem (i32.const 0) $target) (func $target) {funcs}))"
        ))
        .expect("parses");
        let e = crate::compile::compile(&component, EngineKind::Baseline, &tight).err().expect("refused");
        assert!(e.to_string().contains("maxCodeBytes"), "{e}");
    }

    #[test]
    fn indirect_calls_weigh_more_for_the_optimizing_compiler() {
        // 26,000 indirect calls in one function (52,000 instructions): 10.4 s of Cranelift.
        let body = "(call_indirect (type $t) (i32.const 0))".repeat(26_000);
        let bytes = wat::parse_str(format!("(module (type $t (func)) (table 1 funcref) (func {body}))")).expect("parses");
        let shape = check(&bytes, &CompileLimits::default()).expect("fits");
        assert!(shape.most_ops > CRANELIFT_OPS && shape.needs_baseline(), "{shape:?}");
    }
}
