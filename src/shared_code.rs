//! Compiled code shared by the executors of one process (`shareCode`, default on): a module some
//! executor holds is what another one gets for the same bytes, engine and compile limits, without
//! compiling it or loading its artifact again. V8 does the same for `WebAssembly.Module`s; without
//! it, a test suite that makes an executor per test compiled every module once per test.
//!
//! Weak: it holds nothing alive. Code is offered when it takes a cache slot: final code for the
//! very engine the slot is for, or the baseline code of a tier-up in progress, until its final code
//! replaces it (never the other way round). A taker of baseline code joins that tier-up; one
//! without tier-up takes only final code. Only a taker that downloaded the bytes itself takes
//! anything (`modules::load`): a digest alone (a pin) is no proof of holding the module. Never
//! offered: code loaded from an artifact (trusted under the key that authenticated it, which the
//! taker may not hold, and would seal with its own), and the unpooled copy of one loaded before the
//! pool was built. What is shared is code checked against the host and pre-linked by process-wide
//! engines and linkers; the module's initial images (`durable::initial_image`) are kept per set of
//! grants, so no executor sees one made under another's environment or files. Executors sharing a
//! module share its inline back-off too (`inline::Gate`): performance only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::digest::Digest;
use crate::engine::EngineKind;
use crate::modules::CompiledModule;
use crate::shape::CompileLimits;

/// Code is found by the sha256 of its bytes, the engine, and the compile limits it was checked
/// against: an executor takes only code its own limits allowed (review S: a `maxFunctions: 1`
/// executor ran another's 33-function module).
type Key = (Digest, EngineKind, CompileLimits);
type Held = HashMap<Key, Weak<CompiledModule>>;

fn held() -> &'static Mutex<Held> {
    static HELD: OnceLock<Mutex<Held>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Held> {
    // Each change is one insert or removal: the map stays consistent; recover from poisoning.
    held().lock().unwrap_or_else(|p| p.into_inner())
}

/// The code some executor of the process holds for these bytes, this engine and these compile
/// limits, if any.
pub fn find(digest: &Digest, kind: EngineKind, limits: &CompileLimits) -> Option<Arc<CompiledModule>> {
    let mut map = lock();
    let key = (*digest, kind, *limits);
    let found = map.get(&key)?.upgrade();
    if found.is_none() {
        map.remove(&key);
    }
    found
}

/// Offers code that takes a cache slot for `kind` in an executor with these compile limits: kept
/// (weakly) if it is final code for that very engine, or baseline code (of a tier-up) where no
/// final code is held; never code loaded from an artifact (`CompiledModule::from_artifact`).
pub fn offer(kind: EngineKind, limits: &CompileLimits, module: &Arc<CompiledModule>) {
    let baseline = module.kind == kind.with_baseline(true) && module.kind != kind;
    if (module.kind != kind && !baseline) || module.from_artifact {
        return;
    }
    let mut map = lock();
    let key = (module.digest, kind, *limits);
    if baseline && map.get(&key).and_then(Weak::upgrade).is_some_and(|held| held.kind == kind) {
        return;
    }
    map.insert(key, Arc::downgrade(module));
    // Entries of code nobody holds any more go now and then: at most twice the live ones.
    if map.len() >= 64 && map.len().is_power_of_two() {
        map.retain(|_, m| m.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiled_module::Facts;
    use crate::modules::{prepare, Compiled};


    fn module(wat: &str, kind: EngineKind) -> Arc<CompiledModule> {
        let bytes = wat::parse_str(wat).unwrap();
        let engine = crate::engine::engine(kind).unwrap();
        let code = wasmtime::Module::new(engine, &bytes).unwrap();
        let digest = crate::digest::sha256(&bytes);
        Arc::new(prepare(Compiled::Core(code), digest, kind, Facts { has_start: false, state_in_memory: true, instance_bytes: 0 }).unwrap())
    }

    #[test]
    fn final_code_is_found_while_held_and_not_after() {
        let m = module(r#"(module (func (export "shared_code_a")))"#, EngineKind::Plain);
        assert!(find(&m.digest, EngineKind::Plain, &CompileLimits::default()).is_none());
        offer(EngineKind::Plain, &CompileLimits::default(), &m);
        let found = find(&m.digest, EngineKind::Plain, &CompileLimits::default()).expect("held code is found");
        assert!(Arc::ptr_eq(&found, &m));
        // Another engine's slot never gets it: metered code counts fuel, this does not.
        assert!(find(&m.digest, EngineKind::Metered, &CompileLimits::default()).is_none());
        drop((found, m));
        assert!(find(&crate::digest::sha256(&wat::parse_str(r#"(module (func (export "shared_code_a")))"#).unwrap()), EngineKind::Plain, &CompileLimits::default()).is_none());
    }

    #[test]
    fn baseline_code_is_offered_until_final_code_replaces_it_never_the_other_way() {
        let wat = r#"(module (func (export "shared_code_b")))"#;
        let baseline = module(wat, EngineKind::Baseline);
        offer(EngineKind::Plain, &CompileLimits::default(), &baseline);
        assert!(Arc::ptr_eq(&find(&baseline.digest, EngineKind::Plain, &CompileLimits::default()).expect("baseline offered"), &baseline));
        // Not under the baseline engine's own key, nor a metered one.
        assert!(find(&baseline.digest, EngineKind::Baseline, &CompileLimits::default()).is_none());
        assert!(find(&baseline.digest, EngineKind::Metered, &CompileLimits::default()).is_none());
        let optimized = module(wat, EngineKind::Plain);
        offer(EngineKind::Plain, &CompileLimits::default(), &optimized);
        offer(EngineKind::Plain, &CompileLimits::default(), &baseline);
        assert!(Arc::ptr_eq(&find(&baseline.digest, EngineKind::Plain, &CompileLimits::default()).expect("held"), &optimized));
        // Unpooled code (an artifact loaded before the pool) is never offered.
        let unpooled = module(r#"(module (func (export "shared_code_c")))"#, EngineKind::PlainUnpooled);
        offer(EngineKind::Plain, &CompileLimits::default(), &unpooled);
        assert!(find(&unpooled.digest, EngineKind::Plain, &CompileLimits::default()).is_none());
    }

    mod executors {
        use std::sync::Arc;

        use crate::digest::{hex, sha256};
        use crate::executor::Executor;
        use crate::options::{CallOptions, Definition, ExecutorOptions};
        use crate::store::MemorySource;
        use crate::test_guests as g;

        /// Waits (5 s at most) until no executor holds `bytes`' code. A call's instance, which
        /// holds its module, is dropped on its thread just after the call's result is sent, so
        /// the code of an executor closed right after a call can outlive `close()` by a moment
        /// (on a loaded machine, long enough for a new executor's call to take it).
        async fn forgotten(bytes: &[u8]) {
            let digest = sha256(bytes);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while super::find(&digest, crate::engine::EngineKind::Plain, &crate::shape::CompileLimits::default()).is_some() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }

        fn executor(blobs: &[(&str, Vec<u8>)], share_code: bool) -> Arc<Executor> {
            let source = Arc::new(MemorySource::new());
            for (path, bytes) in blobs {
                source.put(path, bytes.clone());
            }
            // No tier-up: the first call's code is the final code, offered at once.
            let opts = ExecutorOptions { share_code, tier_up: false, ..Default::default() };
            Arc::new(Executor::new(source, opts).expect("executor"))
        }

        fn def(name: &str, path: &str) -> Definition {
            Definition { name: name.into(), version: "1".into(), wasm_blob_path: path.into(), ..Default::default() }
        }

        async fn echo(ex: &Arc<Executor>, d: &Definition) -> String {
            let out = ex.execute(d, r#"{"message":"hi","times":2}"#.into(), CallOptions::default()).await.expect("echo runs");
            out.output
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_new_executor_takes_the_code_another_one_holds_and_only_while_it_is_held() {
            // Bytes no other test compiles.
            let bytes = g::unique(g::echo(), b"shared-code-1");
            let blobs = [("e.wasm", bytes.clone())];
            let first = executor(&blobs, true);
            let expected = echo(&first, &def("e", "e.wasm")).await;
            assert_eq!(first.stats().cache.compiles, 1);

            // Another executor, another name for the same bytes: the code is shared, not compiled.
            let second = executor(&[("other.wasm", bytes.clone())], true);
            assert_eq!(echo(&second, &def("other", "other.wasm")).await, expected);
            let s = second.stats().cache;
            assert_eq!((s.compiles, s.shared_hits, s.misses, s.modules), (0, 1, 1, 1));
            // Its own from now on: later calls are hits.
            echo(&second, &def("other", "other.wasm")).await;
            assert_eq!(second.stats().cache.hits, 1);

            // `shareCode: false` neither takes nor offers.
            let apart = executor(&blobs, false);
            echo(&apart, &def("e", "e.wasm")).await;
            assert_eq!((apart.stats().cache.compiles, apart.stats().cache.shared_hits), (1, 0));

            // A pin alone is not enough: code is shared only with an executor that downloaded the
            // bytes itself (review S: knowing a digest ran another tenant's private module, and
            // told whether the process held it).
            let pinned = executor(&[], true);
            let mut d = def("p", "missing.wasm");
            d.sha256 = Some(hex(&sha256(&bytes)));
            let err = pinned.execute(&d, "{}".into(), CallOptions::default()).await.expect_err("no blob");
            assert_eq!((err.code(), pinned.stats().cache.shared_hits), ("BLOB_NOT_FOUND", 0));

            // `clearCache` drops this executor's hold only: the next call downloads again, and
            // takes the code again from those that hold it.
            second.clear_cache(None);
            echo(&second, &def("other", "other.wasm")).await;
            let s = second.stats().cache;
            assert_eq!((s.compiles, s.shared_hits, s.misses), (0, 2, 2));

            // Held weakly: once every executor holding it is gone, a new one compiles.
            for ex in [first, second, pinned] {
                ex.close();
            }
            forgotten(&blobs[0].1).await;
            let last = executor(&blobs, true);
            echo(&last, &def("e", "e.wasm")).await;
            assert_eq!((last.stats().cache.compiles, last.stats().cache.shared_hits), (1, 0));
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn code_taken_from_another_executor_is_written_to_this_ones_cache_dir() {
            let bytes = g::unique(g::echo(), b"shared-code-3");
            let blobs = [("e.wasm", bytes)];
            let holder = executor(&blobs, true);
            echo(&holder, &def("e", "e.wasm")).await;
            let dir = std::env::temp_dir().join(format!("loom-shared-code-{}", std::process::id()));
            let with_dir = |share_code| {
                let source = Arc::new(MemorySource::new());
                source.put("e.wasm", blobs[0].1.clone());
                let artifacts = crate::artifacts::ArtifactCache { dir: Some(dir.clone()), ..Default::default() };
                let opts = ExecutorOptions { share_code, tier_up: false, artifacts, ..Default::default() };
                Arc::new(Executor::new(source, opts).expect("executor"))
            };
            // Takes the holder's code, and writes its artifact as a compile would have: off the
            // call's path (sealing the 12 MB component held a call 0.1 s), its seal waiting here
            // for a slot; `close()` resolves once it is written (review AR1: a process that took
            // shared code and exited after `await close()` lost it).
            let slots = crate::artifact_sealing::all_slots().await;
            let taker = with_dir(true);
            echo(&taker, &def("e", "e.wasm")).await;
            assert_eq!((taker.stats().cache.compiles, taker.stats().cache.shared_hits), (0, 1));
            let artifacts = || std::fs::read_dir(&dir).into_iter().flatten().filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "cwasm")).count();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(artifacts(), 0, "its seal waits for a slot");
            // Closing hurries it (review AR1F: close() waited behind 32 executors' seals).
            taker.close();
            tokio::time::timeout(std::time::Duration::from_secs(10), taker.drained()).await.expect("drained, the slots still held");
            assert_eq!(artifacts(), 1, "written when close resolves");
            drop(slots);
            // So an executor that does not share loads it from there.
            let reader = with_dir(false);
            echo(&reader, &def("e", "e.wasm")).await;
            let s = reader.stats().cache;
            assert_eq!((s.compiles, s.artifact_hits, s.shared_hits), (0, 1, 0));
            let _ = std::fs::remove_dir_all(&dir);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn baseline_code_of_a_tier_up_in_progress_is_taken_and_the_taker_joins_the_tier_up() {
            let bytes = g::unique(g::echo(), b"shared-code-4");
            let digest = sha256(&bytes);
            let blobs = [("e.wasm", bytes.clone())];
            let tiered = |share_code| {
                let source = Arc::new(MemorySource::new());
                source.put("e.wasm", bytes.clone());
                Arc::new(Executor::new(source, ExecutorOptions { share_code, ..Default::default() }).expect("executor"))
            };
            // The optimized compile stops once running, until released: the tier-up is in progress.
            crate::compile::running_held::hold(digest);
            let first = tiered(true);
            let expected = echo(&first, &def("e", "e.wasm")).await;
            let second = tiered(true);
            assert_eq!(echo(&second, &def("e", "e.wasm")).await, expected);
            let s = second.stats().cache;
            assert_eq!((s.compiles, s.shared_hits, s.tier_ups), (0, 1, 0));
            // Without tier-up, or without the bytes (a pin, nothing downloaded): no baseline code.
            let plain = executor(&blobs, true);
            let mut pinned = def("e", "missing.wasm");
            pinned.sha256 = Some(hex(&digest));
            let pinned_ex = tiered(true);
            let _ = pinned_ex.execute(&pinned, "{}".into(), CallOptions::default()).await;
            assert_eq!(pinned_ex.stats().cache.shared_hits, 0);
            crate::compile::running_held::release(&digest);
            echo(&plain, &def("e", "e.wasm")).await;
            assert_eq!(plain.stats().cache.shared_hits, 0);
            // The one optimized compile lands in both slots.
            for _ in 0..2000 {
                if first.stats().cache.tier_ups == 1 && second.stats().cache.tier_ups == 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            assert_eq!((first.stats().cache.tier_ups, second.stats().cache.tier_ups), (1, 1));
            // Now final code is held: a new executor takes it, with no tier-up of its own to make.
            let third = tiered(true);
            echo(&third, &def("e", "e.wasm")).await;
            let s = third.stats().cache;
            assert_eq!((s.compiles, s.shared_hits, s.tier_ups), (0, 1, 0));
        }

        /// Echo (its ABI's functions and `execute`): over `maxFunctions: 1`.
        fn two_functions(tag: &[u8]) -> Vec<u8> {
            g::unique(g::echo(), tag)
        }

        fn with_limits(bytes: &[u8], max_functions: u64, share_code: bool) -> Arc<Executor> {
            let source = Arc::new(MemorySource::new());
            source.put("e.wasm", bytes.to_vec());
            let mut opts = ExecutorOptions { share_code, tier_up: false, ..Default::default() };
            opts.load.compile.max_functions = max_functions;
            Arc::new(Executor::new(source, opts).expect("executor"))
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn compile_limits_are_each_executors_own_in_shared_code_and_in_joined_compiles() {
            let d = def("e", "e.wasm");
            // Shared code: a strict executor does not take what a lenient one holds.
            let bytes = two_functions(b"shared-code-5");
            let lenient = with_limits(&bytes, 1_000_000, true);
            echo(&lenient, &d).await;
            let strict = with_limits(&bytes, 1, true);
            let err = strict.execute(&d, "{}".into(), CallOptions::default()).await.expect_err("over maxFunctions");
            assert_eq!((err.code(), strict.stats().cache.shared_hits), ("COMPILE_LIMIT", 0));
            // Concurrent first loads (no sharing at all): each executor's limits decide for it,
            // whichever compile started first.
            for (round, strict_first) in [(6u8, true), (7, false), (8, true), (9, false)] {
                let bytes = two_functions(format!("shared-code-{round}").as_bytes());
                let (strict, lenient) = (with_limits(&bytes, 1, false), with_limits(&bytes, 1_000_000, false));
                let (s, l) = if strict_first {
                    let s = strict.execute(&d, "{}".into(), CallOptions::default());
                    let l = lenient.execute(&d, "{}".into(), CallOptions::default());
                    tokio::join!(s, l)
                } else {
                    let l = lenient.execute(&d, "{}".into(), CallOptions::default());
                    let s = strict.execute(&d, "{}".into(), CallOptions::default());
                    let (l, s) = tokio::join!(l, s);
                    (s, l)
                };
                assert_eq!(s.expect_err("strict refuses it").code(), "COMPILE_LIMIT", "round {round}");
                l.expect("the lenient executor runs it");
            }
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn code_loaded_from_an_artifact_is_not_shared() {
            let bytes = g::unique(g::echo(), b"shared-code-10");
            let dir = std::env::temp_dir().join(format!("loom-shared-artifact-{}", std::process::id()));
            let with_dir = || {
                let source = Arc::new(MemorySource::new());
                source.put("e.wasm", bytes.clone());
                let artifacts = crate::artifacts::ArtifactCache { dir: Some(dir.clone()), ..Default::default() };
                Arc::new(Executor::new(source, ExecutorOptions { share_code: true, tier_up: false, artifacts, ..Default::default() }).expect("executor"))
            };
            // The first compiles and writes the artifact; it closes, so it holds nothing.
            let writer = with_dir();
            echo(&writer, &def("e", "e.wasm")).await;
            writer.close();
            forgotten(&bytes).await;
            let loader = with_dir();
            echo(&loader, &def("e", "e.wasm")).await;
            assert_eq!(loader.stats().cache.artifact_hits, 1);
            // Code trusted under that directory's key is not handed to an executor without it.
            let other = executor(&[("e.wasm", bytes.clone())], true);
            echo(&other, &def("e", "e.wasm")).await;
            let s = other.stats().cache;
            assert_eq!((s.compiles, s.shared_hits), (1, 0));
            let _ = std::fs::remove_dir_all(&dir);
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn code_is_shared_per_engine_a_metered_call_compiles_its_own() {
            let bytes = g::unique(g::echo(), b"shared-code-2");
            let blobs = [("e.wasm", bytes)];
            let first = executor(&blobs, true);
            echo(&first, &def("e", "e.wasm")).await;
            let second = executor(&blobs, true);
            let mut metered = def("e", "e.wasm");
            metered.limits.max_fuel = Some(10_000_000.0);
            echo(&second, &metered).await;
            let s = second.stats().cache;
            assert_eq!((s.compiles, s.shared_hits), (1, 0));
            // Its plain calls take the plain code the first holds.
            echo(&second, &def("e", "e.wasm")).await;
            let s = second.stats().cache;
            assert_eq!((s.compiles, s.shared_hits), (1, 1));
        }
    }
}
