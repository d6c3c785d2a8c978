//! Tests of the engines: thread priorities, pool sizing, freed slots, trap names, proposals (`engine`).
use super::*;

#[test]
fn compile_threads_run_at_the_calls_priority_whoever_compiles_first() {
    // The engine is built, and a module compiled, from a thread at the process's priority (a
    // test thread's, the event loop's): the compile threads it may be the first to start must
    // not inherit it. (Only a privileged thread may raise a priority back: started from a
    // thread below the calls' priority, they stay there.)
    let (creator, nices) = std::thread::spawn(|| {
        let e = engine(EngineKind::Baseline).expect("engine");
        let wat = r#"(module (import "env" "f" (func (param i32) (result i32)))
            (func (export "g") (param i32) (result i32) (call 0 (local.get 0))))"#;
        wasmtime::Module::new(e, wat::parse_str(wat).expect("parses")).expect("compiles");
        (crate::threads::this_threads_nice(), rayon::broadcast(|_| crate::threads::this_threads_nice()))
    })
    .join()
    .expect("the compiling thread ran");
    assert!(!nices.is_empty());
    let want = crate::threads::NICE.max(creator);
    assert!(nices.iter().all(|n| *n == want), "compile threads' nice values: {nices:?}, want {want}");
}

#[test]
fn a_pool_sized_for_an_executor_fits_its_actors_under_the_reserve_for_fresh_calls() {
    for (actors, concurrency) in [(1, 1), (1000, 4), (3000, 8), (7000, 2), (7000, 64), (100_000, 4)] {
        let pool = pool_for(actors, concurrency);
        // What `call::instantiate` allows actors, with every call running beside them.
        assert!(actors + 4 * concurrency + pool / 8 < pool, "{actors} actors, {concurrency} calls: pool {pool}");
    }
    // The default executor's pool is as before (no larger pool to build on a cold start).
    assert_eq!(pool_for(1000, 4), 1000 + 16 + 256);
}

/// Hostile: a guest leaves bytes in its data image, in the part of its slot kept resident,
/// past it, and in memory it grew; the next instance in the same slot sees none of them, and
/// the slot keeps the part it may keep resident.
#[tokio::test(flavor = "multi_thread")]
async fn a_freed_slot_keeps_pages_resident_but_none_of_its_last_instances_bytes() {
    let e = engine(EngineKind::Plain).expect("engine");
    assert!(e.pooling_allocator_metrics().is_some(), "the pooled engine, not its unpooled fallback");
    let kept = KEEP_RESIDENT_BYTES as i32;
    let wat = format!(
        r#"(module (memory (export "memory") 64) (data (i32.const 1024) "image")
             (func (export "dirty")
               (i32.store (i32.const 1024) (i32.const 0x41414141))
               (i32.store (i32.const 8192) (i32.const 1))
               (i32.store (i32.const {last_kept}) (i32.const 2))
               (i32.store (i32.const {past}) (i32.const 3))
               (i32.store (i32.const {grown}) (i32.const 4)))
             (func (export "peek") (param i32) (result i32) (i32.load (local.get 0))))"#,
        last_kept = kept - 4,
        past = kept + 4096,
        grown = 64 * 65536 + 4096,
    );
    let module = wasmtime::Module::new(e, wat::parse_str(&wat).expect("parses")).expect("compiles");
    let linker = wasmtime::Linker::<()>::new(e);
    let pre = linker.instantiate_pre(&module).expect("no imports");
    let mut bases = Vec::new();
    for round in 0..6 {
        let mut store = wasmtime::Store::new(e, ());
        store.set_epoch_deadline(1_000_000);
        let instance = pre.instantiate_async(&mut store).await.expect("instantiates");
        let memory = instance.get_memory(&mut store, "memory").expect("memory");
        bases.push(memory.data_ptr(&store) as usize);
        assert_eq!(memory.data_size(&store), 64 * 65536, "round {round}: the memory is back to its initial size");
        let peek = instance.get_typed_func::<i32, i32>(&mut store, "peek").expect("peek");
        assert_eq!(peek.call_async(&mut store, 1024).await.expect("peek"), i32::from_le_bytes(*b"imag"), "round {round}: the data image");
        for at in [8192, kept - 4, kept + 4096] {
            assert_eq!(peek.call_async(&mut store, at).await.expect("peek"), 0, "round {round}: byte {at} is zero");
        }
        // The memory the last round grew, grown again: zero too.
        memory.grow_async(&mut store, 16).await.expect("grows");
        assert_eq!(peek.call_async(&mut store, 64 * 65536 + 4096).await.expect("peek"), 0, "round {round}: grown memory is zero");
        let dirty = instance.get_typed_func::<(), ()>(&mut store, "dirty").expect("dirty");
        dirty.call_async(&mut store, ()).await.expect("dirty");
        assert_eq!(peek.call_async(&mut store, 64 * 65536 + 4096).await.expect("peek"), 4);
    }
    // Other tests share the pool, so a round may get another slot; most reuse the last one's.
    assert!(bases.windows(2).any(|w| w[0] == w[1]), "some round reused the slot the last one freed: {bases:x?}");
    // This module's freed slot keeps its first KEEP_RESIDENT_BYTES (all of them were reset).
    assert!(pool_idle_resident_bytes() >= KEEP_RESIDENT_BYTES as u64, "{}", pool_idle_resident_bytes());
}

#[test]
fn the_largest_pool_full_leaves_room_for_instances_outside_it_inside_the_mappings_budget() {
    use crate::unpooled_slots::{mappings_of, mappings_room_for, MAX_UNPOOLED};
    for n in [DEFAULT_POOL_INSTANCES, 1264, 4096, MAX_POOL_INSTANCES] {
        // Room outside the pool for hundreds of calls, even beside the largest pool, full.
        assert!(mappings_room_for(n) >= 6_000, "{n}: {}", mappings_room_for(n));
        assert_eq!(pool_mappings(n) + mappings_room_for(n), MAPPINGS_BUDGET);
    }
    // Beside the default executor's pool (2 CPUs), the 2,000 one-memory instances it allowed.
    assert!(mappings_room_for(1264) >= MAX_UNPOOLED * mappings_of(1, 1));
    // A Store's most memories and tables count for what they map.
    assert!(mappings_of(16, 64) > 16 * 4);
    // With the compiled modules the process may hold (3 mappings each at most, measured
    // 2.02-2.05) and what Node, V8 and the rest map (a thousand or two), under
    // vm.max_map_count's default.
    assert!(MAPPINGS_BUDGET + 3 * crate::compiled_module::MAX_LIVE_MODULES + 2_000 < 65_530);
}

/// Baseline code has no address map (its first compile is shorter): a trap's backtrace
/// names the function there, and optimized code gives its byte offset too.
#[tokio::test(flavor = "multi_thread")]
async fn a_trap_names_its_function_on_both_tiers_and_its_offset_on_optimized_code() {
    let bytes = wat::parse_str(r#"(module (func $boom (export "boom") unreachable))"#).expect("parses");
    for (kind, offset) in [(EngineKind::Baseline, false), (EngineKind::Plain, true)] {
        let e = engine(kind).expect("engine");
        let module = wasmtime::Module::new(e, &bytes).expect("compiles");
        let mut store = wasmtime::Store::new(e, ());
        store.set_epoch_deadline(1_000_000);
        let instance = wasmtime::Linker::<()>::new(e).instantiate_async(&mut store, &module).await.expect("instantiates");
        let boom = instance.get_typed_func::<(), ()>(&mut store, "boom").expect("boom");
        let message = format!("{:#}", boom.call_async(&mut store, ()).await.expect_err("traps"));
        assert!(message.contains("!boom"), "{kind:?}: {message}");
        assert_eq!(message.contains("0x"), offset, "{kind:?}: {message}");
    }
}

#[test]
fn engines_are_shared_and_distinct_by_kind() {
    let a = engine(EngineKind::Plain).expect("plain engine");
    let b = engine(EngineKind::Plain).expect("plain engine");
    assert!(Engine::same(a, b));
    for k in &EngineKind::ALL[1..] {
        assert!(!Engine::same(a, engine(*k).expect("engine")), "{k:?}");
    }
    assert_eq!(EngineKind::new(true, true), EngineKind::BaselineMetered);
    for (i, k) in EngineKind::ALL.iter().enumerate() {
        assert_eq!(k.index(), i, "{k:?}");
    }
    let twin = engine(EngineKind::PlainUnpooled).expect("twin");
    assert!(a.pooling_allocator_metrics().is_some() && twin.pooling_allocator_metrics().is_none());
    assert_eq!(EngineKind::Metered.with_baseline(true), EngineKind::BaselineMetered);
}

#[test]
fn only_the_allowed_proposals_validate() {
    let refused = [
        ("multi-memory", "(module (memory 1) (memory 1))"),
        ("memory64", "(module (memory i64 1))"),
        ("shared memory", "(module (memory 1 1 shared))"),
        ("tail calls", "(module (func $f return_call $f))"),
    ];
    for kind in EngineKind::ALL {
        let e = engine(kind).expect("engine");
        for (what, wat) in refused {
            let bytes = wat::parse_str(wat).expect("parses");
            assert!(wasmtime::Module::new(e, &bytes).is_err(), "{what} must be refused on {kind:?}");
        }
        let ok = wat::parse_str(
            "(module (memory 1) (func (param i32) (result i32 i32) (memory.fill (i32.const 0) (i32.const 0) (i32.const 1)) (local.get 0) (i32.extend8_s (local.get 0))))",
        )
        .expect("parses");
        wasmtime::Module::new(e, &ok).unwrap_or_else(|err| panic!("bulk memory, multi-value, sign-ext on {kind:?}: {err:#}"));
    }
}
