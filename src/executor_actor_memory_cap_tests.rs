//! Review CA1: `maxActorMemoryMB` against actors kept busy by calls waiting in their lines. Such
//! actors are never evicted, so a call's growth is refused when it would take the actors past the
//! cap even with every idle actor evicted.
use super::*;
use crate::actors::ActorKey;
use crate::store::MemorySource;
use crate::test_guests as g;

/// A counter whose input `[` first grows its memory to 10 MiB.
fn big_counter() -> Vec<u8> {
    g::with_prelude(
        r#"(global $count (mut i32) (i32.const 0))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (if (i32.eq (i32.load16_u (local.get $in)) (i32.const 0x5b))
            (then (if (i32.lt_u (memory.size) (i32.const 160))
              (then (drop (memory.grow (i32.sub (i32.const 160) (memory.size))))))))
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

fn setup(cap_mib: u64) -> (Arc<Executor>, Definition) {
    let source = Arc::new(MemorySource::new());
    source.put("big.wasm", big_counter());
    let options = ExecutorOptions { max_actor_memory_bytes: cap_mib << 20, ..Default::default() };
    let ex = Arc::new(Executor::new(source, options).expect("executor"));
    let d = Definition { name: "big".into(), version: "1".into(), wasm_blob_path: "big.wasm".into(), ..Default::default() };
    (ex, d)
}

async fn grow(ex: &Arc<Executor>, d: &Definition, actor: &str) -> Result<String, &'static str> {
    let options = CallOptions { actor_id: Some(actor.into()), ..Default::default() };
    ex.execute(d, "[".into(), options).await.map(|o| o.output).map_err(|e| e.code())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_cannot_grow_the_actors_past_their_cap_while_busy_ones_hold_it() {
    let (ex, d) = setup(24);
    assert_eq!(grow(&ex, &d, "a").await, Ok("1".into()));
    assert_eq!(grow(&ex, &d, "b").await, Ok("1".into()));
    // a and b busy (a call of each in line, as one waiting for a concurrency slot is): 20 MiB
    // they keep, and c's 10 MiB would take the actors to 30.
    let key = |id: &str| ActorKey { def: d.key(), actor_id: id.into() };
    let (held_a, held_b) = (ex.actors.ticket(key("a")).await, ex.actors.ticket(key("b")).await);
    assert_eq!(grow(&ex, &d, "c").await, Err("BUSY"));
    assert!(ex.actors.held_memory() <= 24 << 20, "held {}", ex.actors.held_memory());
    // Idle again, a and b may be evicted for c: its call grows, and the least recently used goes
    // as it ends.
    drop((held_a, held_b));
    assert_eq!(grow(&ex, &d, "c").await, Ok("1".into()));
    assert!(ex.actors.held_memory() <= 24 << 20, "held {}", ex.actors.held_memory());
    assert_eq!(ex.stats().actors, 2);
    // b stayed, and its state with it.
    assert_eq!(grow(&ex, &d, "b").await, Ok("2".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actor_alone_may_pass_the_cap() {
    // As before: an actor over the cap by itself stays, with every other idle actor evicted.
    let (ex, d) = setup(8);
    assert_eq!(grow(&ex, &d, "first").await.map(|_| ()), Ok(()));
    let options = CallOptions { actor_id: Some("idle".into()), ..Default::default() };
    assert_eq!(ex.execute(&d, "1".into(), options).await.expect("counts").output, "1");
    assert_eq!(grow(&ex, &d, "solo").await, Ok("1".into()));
    assert_eq!(grow(&ex, &d, "solo").await, Ok("2".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_cannot_take_the_actors_past_their_cap_while_busy_ones_hold_it() {
    // Review CB1: restoreActor made its instance unchecked; 40 restores of 60 MiB, each actor
    // with a call waiting behind it, held 2.5 GB under a cap of 128 MiB.
    let (ex, d) = setup(24);
    assert_eq!(grow(&ex, &d, "a").await, Ok("1".into()));
    assert_eq!(grow(&ex, &d, "b").await, Ok("1".into()));
    let snapshot = ex.snapshot_actor(&d, "a").await.expect("snapshot");
    let key = |id: &str| ActorKey { def: d.key(), actor_id: id.into() };
    let (held_a, held_b) = (ex.actors.ticket(key("a")).await, ex.actors.ticket(key("b")).await);
    assert_eq!(ex.restore_actor(&d, "c", &snapshot).await.map_err(|e| e.code()), Err("BUSY"));
    drop((held_a, held_b));
    ex.restore_actor(&d, "c", &snapshot).await.expect("restores once a and b are idle");
    let options = CallOptions { actor_id: Some("c".into()), ..Default::default() };
    let out = ex.execute(&d, "1".into(), options).await.expect("counts");
    assert_eq!((out.output.as_str(), out.actor_created), ("2", false));
}

#[tokio::test(flavor = "multi_thread")]
async fn restores_made_at_once_hold_at_most_the_cap_in_snapshots() {
    // Review CB1: each restore copied its snapshot as it was made and held it in the actor's line;
    // 40 of a 63 MB snapshot made at once held 2.5 GB under a cap of 128 MiB.
    let (ex, d) = setup(24);
    assert_eq!(grow(&ex, &d, "a").await, Ok("1".into()));
    let snapshot = ex.snapshot_actor(&d, "a").await.expect("snapshot");
    // Each takes room for the 10 MiB its snapshot decodes to when it is made.
    let restores: Vec<_> = (0..3).map(|i| ex.restore_actor(&d, &format!("r{i}"), &snapshot)).collect();
    let mut codes = Vec::new();
    for r in restores {
        codes.push(r.await.map_err(|e| e.code()));
    }
    assert_eq!(codes, vec![Ok(()), Ok(()), Err("BUSY")]);
    // Their room is given back as they end.
    ex.restore_actor(&d, "r2", &snapshot).await.expect("restores now");
}
