//! Tests of the compile-cost bound of components' canonical functions (`component_types`).
use super::*;

fn units(wat: &str) -> u64 {
    let bytes = wat::parse_str(wat).expect("parses");
    let mut types = ComponentTypes::default();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        types.read(&payload.expect("payload"), &bytes).expect("reads");
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

#[test]
fn a_nested_components_adapters_count_once_for_each_instance_of_it() {
    let fields = (0..99).map(|i| format!("(field \"f{i}\" u32)")).collect::<String>();
    // One lift of a function of a record of 99 fields: 101.
    let leaf = format!(
        r#"(component $leaf (type $r (record {fields})) (type $f (func (param "x" $r))) {CORE}
           (func (type $f) (canon lift (core func $i "f") (memory (core memory $i "memory")) (realloc (core func $i "realloc")))))"#
    );
    let instances = |of: &str, n: usize| (0..n).map(|_| format!("(instance (instantiate ${of}))")).collect::<String>();
    assert_eq!(units(&format!("(component {leaf})")), 101);
    assert_eq!(units(&format!("(component {leaf} {})", instances("leaf", 3))), 303);
    // Through every level: 3 instances of a component that makes 3 of the leaf.
    let middle = format!("(component $middle {leaf} {})", instances("leaf", 3));
    assert_eq!(units(&format!("(component {middle} {})", instances("middle", 3))), 909);
    // And the instances themselves: 3 of the middle, each with 3 of the leaf.
    let bytes = wat::parse_str(format!("(component {middle} {})", instances("middle", 3))).expect("parses");
    let mut types = ComponentTypes::default();
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        types.read(&payload.expect("payload"), &bytes).expect("reads");
    }
    assert_eq!(types.component_instances, 3 * (1 + 3));
}

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n == 0 { byte } else { byte | 0x80 });
        if n == 0 {
            break;
        }
    }
}

fn section(id: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![id];
    leb(content.len(), &mut out);
    out.extend_from_slice(content);
    out
}

const HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A component with one type: `depth` component types (or instance types, `kind` 0x42)
/// nested in one another.
fn nested_types(depth: usize, kind: u8) -> Vec<u8> {
    let mut ty = vec![0x01];
    for _ in 1..depth {
        ty.extend_from_slice(&[kind, 0x01, 0x01]);
    }
    ty.extend_from_slice(&[kind, 0x00]);
    let mut bytes = HEADER.to_vec();
    bytes.extend(section(7, &ty));
    bytes
}

/// `depth` components, each defined in the one around it.
fn nested_components(depth: usize) -> Vec<u8> {
    let mut bytes = HEADER.to_vec();
    for _ in 1..depth {
        let mut outer = HEADER.to_vec();
        outer.extend(section(4, &bytes));
        bytes = outer;
    }
    bytes
}

/// `n` component types (or instance types, `kind` 0x42), each importing (exporting) a
/// component of the one before: one level each in the bytes, `n` through the types they name.
fn named_chain(n: usize, kind: u8) -> Vec<u8> {
    let mut types = vec![kind, 0x00];
    for k in 1..n {
        // (alias outer 1 k-1 (type)), then (import "a" (component (type 0))) or the export.
        types.extend_from_slice(&[kind, 0x02, 0x02, 0x03, 0x02, 0x01]);
        leb(k - 1, &mut types);
        // A component (0x04) of a component type, an instance (0x05) of an instance type.
        types.extend_from_slice(&[if kind == 0x41 { 0x03 } else { 0x04 }, 0x00, 0x01, b'a', if kind == 0x41 { 0x04 } else { 0x05 }, 0x00]);
    }
    let mut content = Vec::new();
    leb(n, &mut content);
    content.extend(types);
    let mut bytes = HEADER.to_vec();
    bytes.extend(section(7, &content));
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn types_that_reach_past_wasmparsers_depth_through_the_types_they_name_are_a_compile_limit() {
    // Review BA1: wasmparser 0.254's validator asserts such depth is at most 127; the panic
    // ended every call in INTERNAL.
    use crate::executor::{CallOptions, Executor};
    let source = std::sync::Arc::new(crate::store::MemorySource::new());
    for kind in [0x41, 0x42] {
        source.put(&format!("chain-{kind}.wasm"), named_chain(200, kind));
    }
    let ex = std::sync::Arc::new(Executor::new(source, Default::default()).expect("executor"));
    for kind in [0x41, 0x42] {
        let def = crate::options::Definition {
            name: format!("chain-{kind}"),
            version: "1".into(),
            wasm_blob_path: format!("chain-{kind}.wasm"),
            ..Default::default()
        };
        let e = ex.execute(&def, "{}".into(), CallOptions::default()).await.expect_err("refused");
        assert_eq!(e.code(), "COMPILE_LIMIT", "{e}");
        assert!(e.to_string().contains("127 levels"), "{e}");
    }
}

#[test]
fn nesting_past_a_hundred_levels_is_refused_before_it_is_read() {
    // Review AZ2: 1,200 levels of component types (3 KB) overflowed a compile thread's stack
    // in wasmparser's reader and killed the process; 10,000 nested components (118 KB) took
    // 2 GB. This test's own thread would overflow the same way.
    let limits = crate::shape::CompileLimits::default();
    for kind in [0x41, 0x42] {
        let fits = crate::shape::check(&nested_types(MAX_NESTING, kind), &limits);
        assert!(!fits.as_ref().is_err_and(|e| e.to_string().contains("nest")), "{fits:?}");
        for depth in [MAX_NESTING + 1, 2_000, 100_000] {
            let refused = crate::shape::check(&nested_types(depth, kind), &limits).expect_err("too deep");
            assert_eq!(refused.code(), "COMPILE_LIMIT");
            assert!(refused.to_string().contains(&format!("types nest {} levels deep", MAX_NESTING + 1)), "{refused}");
        }
    }
    assert!(crate::shape::check(&nested_components(MAX_NESTING), &limits).is_ok());
    for depth in [MAX_NESTING + 1, 30_000] {
        let refused = crate::shape::check(&nested_components(depth), &limits).expect_err("too deep");
        assert!(refused.to_string().contains(&format!("component definitions nest {} levels deep", MAX_NESTING + 1)), "{refused}");
    }
}

#[test]
fn aliases_that_are_no_types_leave_a_declarations_type_indices_alone() {
    // An alias of a core type first: counted as a type, it shifted $g's parameter onto itself
    // (size 0 then), and the lowered function counted 1 instead of the record's 4 (review I).
    let wat = r#"(component $c (core type $ct (module))
        (type $i (instance (alias outer $c $ct (core type $m))
            (type $r (record (field "a" u32) (field "b" u32))) (type $g (func (param "x" $r)))
            (export "g" (func (type $g)))))
        (import "i" (instance $inst (type $i)))
        (alias export $inst "g" (func $g))
        (core func (canon lower (func $g))))"#;
    assert_eq!(units(wat), 4);
}
