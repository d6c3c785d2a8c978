//! The shape read as modules compile: a compile bomb goes to the baseline compiler, and state kept outside memory is noticed.
use super::tests::compile_bomb;
use crate::engine::EngineKind;
use crate::modules::compile;
use crate::shape::CompileLimits;

#[test]
fn a_compile_bomb_goes_to_the_baseline_compiler() {
    let bomb = compile_bomb(10_000, 10_000);
    let t0 = std::time::Instant::now();
    let m = compile(&bomb, EngineKind::Plain, &CompileLimits::default()).expect("compiles");
    eprintln!("bomb of {} bytes: compiled by {:?} in {:?}", bomb.len(), m.kind, t0.elapsed());
    assert_eq!(m.kind, EngineKind::Baseline);
    let m = compile(&bomb, EngineKind::Metered, &CompileLimits::default()).expect("compiles");
    assert_eq!(m.kind, EngineKind::BaselineMetered);
}

#[test]
fn instructions_that_keep_state_outside_memory_are_noticed() {
    let shape = |body: &str| crate::shape::check(&crate::test_guests::with_prelude(body), &CompileLimits::default()).expect("valid");
    assert!(!shape(r#"(func (export "execute") (param i32) (result i32) (local.get 0))"#).state_outside_memory);
    let table = r#"(table 1 funcref) (elem declare func $f) (func $f)
        (func (export "execute") (param i32) (result i32) (table.set (i32.const 0) (ref.func $f)) (local.get 0))"#;
    assert!(shape(table).state_outside_memory);
    let segment = r#"(data $d "x") (func (export "execute") (param i32) (result i32) (data.drop $d) (local.get 0))"#;
    assert!(shape(segment).state_outside_memory);
}
