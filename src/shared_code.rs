//! Compiled code shared by the executors of one process (`shareCode`, default on): a module some
//! executor holds is what another one gets for the same bytes and engine, without compiling it
//! or loading its artifact again. V8 does the same for `WebAssembly.Module`s; without it, a test
//! suite that makes an executor per test compiled every module once per test.
//!
//! Weak: it holds nothing alive. Code is offered when it takes a cache slot, and only final code:
//! for the very engine the slot is for (not the baseline code of a tier-up in progress, nor the
//! unpooled copy of an artifact loaded before the pool was built), so whoever takes it has no
//! tier-up or pooled copy left to make. What is shared is immutable code checked against the
//! host and pre-linked by process-wide engines and linkers, identified by the sha256 of its bytes.
//! Like an artifact, it is used as it is, whatever compile limits the taker has (those bound
//! compile work); `maxModuleBytes` still bounds every download.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::digest::Digest;
use crate::engine::EngineKind;
use crate::modules::CompiledModule;

type Held = HashMap<(Digest, EngineKind), Weak<CompiledModule>>;

fn held() -> &'static Mutex<Held> {
    static HELD: OnceLock<Mutex<Held>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Held> {
    // Each change is one insert or removal: the map stays consistent; recover from poisoning.
    held().lock().unwrap_or_else(|p| p.into_inner())
}

/// The code some executor of the process holds for these bytes and this engine, if any.
pub fn find(digest: &Digest, kind: EngineKind) -> Option<Arc<CompiledModule>> {
    let mut map = lock();
    let key = (*digest, kind);
    let found = map.get(&key)?.upgrade();
    if found.is_none() {
        map.remove(&key);
    }
    found
}

/// Offers code that takes a cache slot for `kind`: kept (weakly) if it is final code for that
/// very engine.
pub fn offer(kind: EngineKind, module: &Arc<CompiledModule>) {
    if module.kind != kind {
        return;
    }
    let mut map = lock();
    map.insert((module.digest, kind), Arc::downgrade(module));
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
        Arc::new(prepare(Compiled::Core(code), digest, kind, Facts { has_start: false, state_in_memory: true }).unwrap())
    }

    #[test]
    fn final_code_is_found_while_held_and_not_after() {
        let m = module(r#"(module (func (export "shared_code_a")))"#, EngineKind::Plain);
        assert!(find(&m.digest, EngineKind::Plain).is_none());
        offer(EngineKind::Plain, &m);
        let found = find(&m.digest, EngineKind::Plain).expect("held code is found");
        assert!(Arc::ptr_eq(&found, &m));
        // Another engine's slot never gets it: metered code counts fuel, this does not.
        assert!(find(&m.digest, EngineKind::Metered).is_none());
        drop((found, m));
        assert!(find(&crate::digest::sha256(&wat::parse_str(r#"(module (func (export "shared_code_a")))"#).unwrap()), EngineKind::Plain).is_none());
    }

    #[test]
    fn code_of_another_engine_than_the_slot_is_not_offered() {
        // Baseline code in a Plain slot is a tier-up in progress: whoever took it would run
        // baseline code with no tier-up coming.
        let m = module(r#"(module (func (export "shared_code_b")))"#, EngineKind::Baseline);
        offer(EngineKind::Plain, &m);
        assert!(find(&m.digest, EngineKind::Plain).is_none());
        assert!(find(&m.digest, EngineKind::Baseline).is_none());
    }

    mod executors {
        use std::sync::Arc;

        use crate::digest::{hex, sha256};
        use crate::executor::Executor;
        use crate::options::{CallOptions, Definition, ExecutorOptions};
        use crate::store::MemorySource;
        use crate::test_guests as g;

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

            // A pin names the code: an executor with a pin needs no download for code the process
            // holds (this one's store has no such blob).
            let pinned = executor(&[], true);
            let mut d = def("p", "missing.wasm");
            d.sha256 = Some(hex(&sha256(&bytes)));
            assert_eq!(echo(&pinned, &d).await, expected);
            assert_eq!((pinned.stats().cache.compiles, pinned.stats().cache.shared_hits), (0, 1));

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
            // Takes the holder's code, and writes its artifact as a compile would have.
            let taker = with_dir(true);
            echo(&taker, &def("e", "e.wasm")).await;
            assert_eq!((taker.stats().cache.compiles, taker.stats().cache.shared_hits), (0, 1));
            let artifacts = std::fs::read_dir(&dir).expect("cache dir").filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "cwasm")).count();
            assert_eq!(artifacts, 1);
            // So an executor that does not share loads it from there.
            let reader = with_dir(false);
            echo(&reader, &def("e", "e.wasm")).await;
            let s = reader.stats().cache;
            assert_eq!((s.compiles, s.artifact_hits, s.shared_hits), (0, 1, 0));
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
