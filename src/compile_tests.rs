//! Tests of compiling: refused tier-ups, hurried compiles raced, background priorities (`compile`).
use super::*;

/// A module that stands for the running (background) compile's result.
fn theirs() -> Arc<CompiledModule> {
    Arc::new(compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles"))
}

/// `unless_hurried` hurried from the start, racing `running` with a real compile of `bytes`.
async fn race(running: impl std::future::Future<Output = Loaded>, bytes: Vec<u8>) -> Loaded {
    let hurried = Hurried::default();
    hurried.yes.store(true, Ordering::SeqCst);
    let digest = sha256(&bytes);
    unless_hurried(running, Arc::new(bytes), digest, EngineKind::Plain, Default::default(), 0, &hurried).await
}

#[test]
fn a_tier_up_of_a_shape_that_needs_the_baseline_compiler_is_refused() {
    // 2001 locals × 2002 blocks: past CRANELIFT_COST.
    let body = format!(
        "(func $heavy (param i32) (local {}) {}) (func (export \"execute\") (param i32) (result i32) (local.get 0))",
        "i32 ".repeat(2000),
        "(if (local.get 0) (then (nop)))".repeat(2001)
    );
    let bytes = crate::test_guests::with_prelude(&body);
    let digest = sha256(&bytes);
    let tier_up = compile_digested(&bytes, digest, EngineKind::Plain, &Default::default(), true);
    assert_eq!(tier_up.map(|_| ()).map_err(|e| e.code()), Err("COMPILE_LIMIT"));
    // Not a tier-up: the baseline compiler takes it.
    let m = compile_digested(&bytes, digest, EngineKind::Plain, &Default::default(), false).expect("compiles");
    assert!(m.kind.baseline());
    assert_eq!(m.digest, digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hurried_compile_is_raced_and_the_first_success_is_the_result() {
    let echo = crate::test_guests::echo();
    let garbage = b"\0asm\x01\0\0\0 not a module".to_vec();
    let failed = || Err::<Arc<CompiledModule>, _>(ExecError::internal("the running compile failed"));
    // The running compile never ends (a busy core's quarter): the call's compile is the result.
    let won = race(std::future::pending(), echo.clone()).await.expect("the call's compile");
    assert_eq!(won.digest, sha256(&echo));
    // The running compile is done first: its module, not a second one.
    let mine = theirs();
    let first = race(std::future::ready(Ok(mine.clone())), echo.clone()).await.expect("theirs");
    assert!(Arc::ptr_eq(&first, &mine));
    // The call's compile fails first: an error only once the running one failed too, and the
    // running one's success is the result when it comes (later).
    let later = theirs();
    let slow = {
        let later = later.clone();
        async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            Ok(later)
        }
    };
    let kept = race(slow, garbage.clone()).await.expect("theirs, later");
    assert!(Arc::ptr_eq(&kept, &later));
    let slow_failure = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        failed()
    };
    assert!(race(slow_failure, garbage).await.is_err());
}

#[test]
fn background_compiles_run_below_the_calls_compiles_and_guests() {
    let pool = background_pool().expect("a background pool");
    let (nice, name) = pool.install(|| (crate::threads::this_threads_nice(), std::thread::current().name().map(String::from)));
    // Whatever thread built the pool (its threads would inherit that thread's nice value).
    assert!(nice >= BACKGROUND_NICE && nice > crate::threads::NICE, "nice {nice} on {name:?}");
    assert!(name.is_some_and(|n| n.starts_with("loom-wasm-tier-up-")));
}
