//! Which threads calls' compiles run on (`compile::large_pool`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use super::*;
use crate::compile_slots::{call_turns, LARGE_FUNCTIONS, LARGE_SLOT_BYTES};

/// A valid module of `data` bytes of data: little code, many bytes.
fn with_data(data: usize) -> Vec<u8> {
    let text: String = std::iter::repeat_n("\\00", data).collect();
    wat::parse_str(format!(r#"(module (memory 32) (data (i32.const 0) "{text}") (func (export "f")))"#)).expect("parses")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_modules_compile_does_not_wait_behind_a_large_ones() {
    // Every thread of the large modules' pool held, as a 12 MB component's hundreds of
    // functions hold them (review AD: another tenant's 2 KB module waited for the whole compile).
    let gate = Arc::new(RwLock::new(()));
    let held = gate.write().expect("gate");
    let pool = large_pool().expect("the pool starts");
    let g = gate.clone();
    pool.spawn_broadcast(move |_| drop(g.read()));
    let large = Arc::new(with_data(LARGE_MODULE_BYTES + 4096));
    let digest = sha256(&large);
    let pending = tokio::spawn(run_compile(large, digest, EngineKind::Baseline, CompileLimits::default(), None, false));
    let small = Arc::new(crate::test_guests::echo());
    let digest = sha256(&small);
    let done = tokio::time::timeout(Duration::from_secs(120), run_compile(small, digest, EngineKind::Baseline, CompileLimits::default(), None, false))
        .await
        .expect("the small module compiles while the large pool is held");
    assert!(done.is_ok(), "{:?}", done.err());
    // Small in bytes, large in work (review AD's follow-up: 100,000 tiny functions in 800 KB
    // held a small module for seconds): 12,000 empty functions, 36 KB, estimated at 18 MB.
    let busy = Arc::new(wat::parse_str(format!("(module {})", "(func)".repeat(12_000))).expect("parses"));
    assert!(busy.len() < LARGE_MODULE_BYTES);
    let digest = sha256(&busy);
    let busy = tokio::spawn(run_compile(busy, digest, EngineKind::Baseline, CompileLimits::default(), None, false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "the large module compiles on the held pool");
    assert!(!busy.is_finished(), "so does the small module of much work");
    drop(held);
    pending.await.expect("joins").expect("compiles once the pool is free");
    busy.await.expect("joins").expect("compiles once the pool is free");
}

/// Compiles run, by module.
fn runs() -> &'static Mutex<HashMap<Digest, usize>> {
    static RUNS: OnceLock<Mutex<HashMap<Digest, usize>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

/// Compiles run, in the order they started.
fn started() -> &'static Mutex<Vec<Digest>> {
    static STARTED: OnceLock<Mutex<Vec<Digest>>> = OnceLock::new();
    STARTED.get_or_init(Default::default)
}

pub(super) fn count_run(digest: &Digest) {
    *runs().lock().expect("runs").entry(*digest).or_default() += 1;
    started().lock().expect("started").push(*digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executor_with_many_compiles_waiting_holds_another_ones_for_one_turn_at_most() {
    // Review AT2: first come, first served, one tenant's 20 compiles held another's first call
    // 28.7 s.
    let module = |tag: &str| wat::parse_str(format!(r#"(module (func (export "turns-{tag}")))"#)).expect("parses");
    let held = hold_call_slots().await;
    // Owners of their own: the test binary's executors take owners from 1 up, and a fixed 1001
    // came to be another test's executor.
    let (owner_a, owner_b) = (crate::compile_turns::new_owner(), crate::compile_turns::new_owner());
    let mut jobs = Vec::new();
    let mut a = Vec::new();
    for i in 0..5 {
        let bytes = module(&format!("a{i}"));
        a.push(sha256(&bytes));
        jobs.push(compile_job(bytes.clone(), sha256(&bytes), EngineKind::Baseline, CompileLimits::default(), Urgency::Now, owner_a, None));
    }
    // Counted by owner: other tests' compiles wait beside these while every slot is held.
    while call_turns().waiting_of(owner_a) < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let bytes = module("b");
    let b = sha256(&bytes);
    jobs.push(compile_job(bytes.clone(), b, EngineKind::Baseline, CompileLimits::default(), Urgency::Now, owner_b, None));
    while call_turns().waiting_of(owner_b) < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(held);
    for mut rx in jobs {
        rx.wait_for(|r| r.is_some()).await.expect("a result").clone().expect("sent").expect("compiles");
    }
    let order: Vec<Digest> = started().lock().expect("started").iter().filter(|d| **d == b || a.contains(d)).copied().collect();
    let at = order.iter().position(|d| *d == b).expect("b ran");
    assert!(at <= 1, "b started after {at} of the other executor's compiles: {order:?}");
}

async fn compiled_now(bytes: &[u8], kind: EngineKind) -> Loaded {
    let mut rx = compile_job(bytes.to_vec(), sha256(bytes), kind, CompileLimits::default(), Urgency::Now, 0, None);
    let loaded = rx.wait_for(|r| r.is_some()).await.expect("a result").clone().expect("sent");
    loaded
}

#[tokio::test(flavor = "multi_thread")]
async fn a_module_the_host_refused_is_refused_again_without_a_compile() {
    // Compiles, and cannot be linked (review AD: each call compiled it again).
    let unlinkable = wat::parse_str(r#"(module (import "nowhere" "m" (memory 1)) (func (export "g")))"#).expect("parses");
    let digest = sha256(&unlinkable);
    let first = compiled_now(&unlinkable, EngineKind::Baseline).await.err().expect("refused");
    assert_eq!(first.code(), "INVALID_MODULE", "{first}");
    for _ in 0..3 {
        assert_eq!(compiled_now(&unlinkable, EngineKind::Baseline).await.err(), Some(first.clone()));
    }
    assert_eq!(runs().lock().expect("runs").get(&digest), Some(&1));
    // Another engine compiles it (and is refused) on its own.
    assert!(compiled_now(&unlinkable, EngineKind::BaselineMetered).await.is_err());
    assert_eq!(runs().lock().expect("runs").get(&digest), Some(&2));
    // A module that compiles is compiled again (its code is the caches' to keep, not this list's).
    let fine = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "refused-compiles-test")))"#).expect("parses");
    for _ in 0..2 {
        compiled_now(&fine, EngineKind::Baseline).await.expect("compiles");
    }
    assert_eq!(runs().lock().expect("runs").get(&sha256(&fine)), Some(&2));
}

#[tokio::test(flavor = "multi_thread")]
async fn large_modules_compiles_leave_a_call_slot_to_small_ones() {
    // Review BG2: a precompile and a call of one 2.5 MB module held both cores' call slots, and
    // another executor's 16 KB first call waited 0.5-1.0 s behind them.
    let cpus = crate::threads::cpus();
    if cpus < 2 {
        return; // One slot: large and small modules share it.
    }
    // The large modules' threads held, as long compiles hold them.
    let gate = Arc::new(RwLock::new(()));
    let held = gate.write().expect("gate");
    let g = gate.clone();
    large_pool().expect("the pool starts").spawn_broadcast(move |_| drop(g.read()));
    // As many large compiles as there are call slots, of distinct modules and executors.
    let mut large = Vec::new();
    for i in 0..cpus {
        let mut bytes = with_data(LARGE_MODULE_BYTES + 4096 + i);
        bytes.extend_from_slice(&[0, 4, 1, b'x', 0, 0]); // a custom section: distinct bytes
        let digest = sha256(&bytes);
        large.push(compile_job(bytes, digest, EngineKind::Baseline, CompileLimits::default(), Urgency::Now, 3000 + i as Owner, None));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let small = wat::parse_str(r#"(module (func (export "bg2-small")))"#).expect("parses");
    let mut rx = compile_job(small.clone(), sha256(&small), EngineKind::Baseline, CompileLimits::default(), Urgency::Now, 3999, None);
    let done = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|r| r.is_some())).await;
    let small_done = done.is_ok();
    drop(held);
    for mut rx in large {
        rx.wait_for(|r| r.is_some()).await.expect("a result").clone().expect("sent").expect("compiles");
    }
    assert!(small_done, "the small module waited for a call slot the large ones held");
}

#[test]
fn a_module_of_many_functions_takes_a_large_modules_slot_whatever_its_size() {
    // Review BL1: two 600 KB modules of 150,000 empty functions held both call slots (the slot
    // went by bytes only), and a 1 KB module's first call waited 4.3-5.6 s.
    let many = wat::parse_str(format!("(module {})", "(func)".repeat(LARGE_FUNCTIONS as usize + 1))).expect("parses");
    assert!(many.len() < LARGE_MODULE_BYTES);
    assert!(takes_large_slot(&many));
    assert!(!takes_large_slot(&crate::test_guests::echo()));
    assert!(takes_large_slot(&with_data(LARGE_MODULE_BYTES + 1)));
    // Review BM1: 981 KB of 10,900 small functions took Cranelift 3.5 s.
    assert!(takes_large_slot(&with_data(LARGE_SLOT_BYTES + 1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_optimizing_compile_in_a_calls_slot_leaves_one_to_baseline_compiles() {
    // Review BN1: an 84 KB module whose one function keeps 12,000 values live across 4,000 blocks
    // took Cranelift 9 s; compiled for deterministic definitions, two held both call slots.
    let held = hold_large_slots().await;
    let module = |tag: &str| wat::parse_str(format!(r#"(module (func (export "bn1-{tag}")))"#)).expect("parses");
    let optimized = module("optimized");
    let mut waiting = compile_job(optimized.clone(), sha256(&optimized), EngineKind::Plain, CompileLimits::default(), Urgency::Now, 4001, None);
    let baseline = module("baseline");
    let mut done = compile_job(baseline.clone(), sha256(&baseline), EngineKind::Baseline, CompileLimits::default(), Urgency::Now, 4002, None);
    tokio::time::timeout(Duration::from_secs(60), done.wait_for(|r| r.is_some())).await.expect("the baseline compile has its slot").expect("a result");
    assert!(waiting.borrow().is_none(), "the optimizing compile waits for a large module's slot");
    drop(held);
    waiting.wait_for(|r| r.is_some()).await.expect("a result").clone().expect("sent").expect("compiles");
}

/// A component composed of two parts that each own a memory, the outer lowering the inner's
/// `f: func(s: string) -> u32` against its own memory (as `wasm-tools compose` makes them).
fn composed_of_two_memories() -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (component $A
    (core module $am (memory (export "memory") 1)
      (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 1024))
      (func (export "f") (param i32 i32) (result i32) (i32.const 7)))
    (core instance $ai (instantiate $am))
    (func (export "f") (param "s" string) (result u32) (canon lift (core func $ai "f") (memory (core memory $ai "memory")) (realloc (core func $ai "realloc")))))
  (instance $a (instantiate $A))
  (core module $memm (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 2048)))
  (core instance $memi (instantiate $memm))
  (core func $f (canon lower (func $a "f") (memory (core memory $memi "memory"))))
  (core module $main
    (import "m" "memory" (memory 1))
    (import "h" "f" (func $f (param i32 i32) (result i32)))
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      (drop (call $f (i32.const 0) (i32.const 4)))
      (i32.store8 (i32.const 1039) (i32.const 49))
      (i32.store (i32.const 64) (i32.const 0)) (i32.store (i32.const 68) (i32.const 1039)) (i32.store (i32.const 72) (i32.const 1)) (i32.const 64)))
  (core instance $m (instantiate $main (with "m" (instance $memi)) (with "h" (instance (export "f" (func $f))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $memi "memory")) (realloc (core func $memi "realloc")))))"#,
    )
    .expect("parses")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_composed_component_whose_parts_each_own_a_memory_is_refused_as_invalid() {
    // Review BQ3: wasmtime panics on the adapter between the two memories (multi-memory, which
    // the engine refuses): every call was INTERNAL, compiled again, two panics on stderr.
    quiet_known_panics();
    let bytes = Arc::new(composed_of_two_memories());
    let digest = sha256(&bytes);
    for kind in [EngineKind::Baseline, EngineKind::Plain] {
        let e = run_compile(bytes.clone(), digest, kind, CompileLimits::default(), None, false).await.err().expect("refused");
        assert_eq!(e.code(), "INVALID_MODULE", "{e}");
        assert!(e.to_string().contains("multi-memory"), "{e}");
    }
}
