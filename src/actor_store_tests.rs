//! Tests of actor stores: loads within their room, conditional writes and their ids, keys (`actor_store`).
use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_object_stores_load_reads_its_body_only_once_there_is_room_for_it() {
    // Review BF2 (see `Loading`), for an object store.
    let store = open(Arc::new(ObjectSource::open("memory://actors-loading", &[]).expect("memory"))).expect("store");
    let key = "actors/t/l.snap";
    store.save(key, vec![7u8; 600 << 10], None).await.expect("saved");
    let loading = Loading::new(1 << 20);
    let held = loading.admit(600 << 10).await;
    assert!(tokio::time::timeout(std::time::Duration::from_millis(300), store.load_gated(key, 1 << 20, &loading)).await.is_err(), "read while the room was held");
    drop(held);
    assert_eq!(store.load_gated(key, 1 << 20, &loading).await.expect("load").map(|(b, _, _)| b.len()), Some(600 << 10));
    assert_eq!(loading.free(), 1 << 20, "the room is given back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_for_room_is_not_the_stores_timeout() {
    // Review BH1: the wait counted against timeoutMs, and a healthy store's load failed
    // BLOB_UNAVAILABLE while other loads held the room.
    let source = ObjectSource::open("memory://actors-room-wait", &[("timeoutMs".into(), "100".into())]).expect("memory");
    let store = open(Arc::new(source)).expect("store");
    let key = "actors/t/w.snap";
    store.save(key, vec![7u8; 600 << 10], None).await.expect("saved");
    let loading = Loading::new(1 << 20);
    let held = loading.admit(600 << 10).await;
    let load = store.load_gated(key, 1 << 20, &loading);
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        drop(held);
    };
    let (loaded, ()) = tokio::join!(load, release);
    assert_eq!(loaded.expect("not timed out").map(|(b, _, _)| b.len()), Some(600 << 10));
}

async fn exercise(store: &dyn ActorStore) {
    let key = "actors/t/abc.snap";
    assert_eq!(store.load(key, 1 << 20).await.expect("load"), None);
    let v1 = store.save(key, b"one".to_vec(), None).await.expect("created").current().expect("current");
    assert_eq!(store.save(key, b"again".to_vec(), None).await.map_err(|e| e.code()), Err("ACTOR_CONFLICT"));
    let (bytes, loaded) = store.load(key, 1 << 20).await.expect("load").expect("stored");
    assert_eq!((bytes.as_slice(), &loaded), (&b"one"[..], &v1));
    let v2 = store.save(key, b"two".to_vec(), Some(&v1)).await.expect("updated").current().expect("current");
    // A second worker still holding v1 loses.
    assert_eq!(store.save(key, b"stale".to_vec(), Some(&v1)).await.map_err(|e| e.code()), Err("ACTOR_CONFLICT"));
    assert_eq!(store.load(key, 1 << 20).await.expect("load").expect("stored"), (b"two".to_vec(), v2));
    store.delete(key).await.expect("deleted");
    assert_eq!(store.load(key, 1 << 20).await.expect("load"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_and_file_stores_write_conditionally() {
    let mem = open(Arc::new(ObjectSource::open("memory://actors", &[]).expect("memory"))).expect("conditional");
    exercise(mem.as_ref()).await;
    let dir = std::env::temp_dir().join(format!("loom-actor-store-{}", std::process::id()));
    let url = url::Url::from_directory_path(&dir).expect("absolute").to_string();
    let file = open(Arc::new(ObjectSource::open(&url, &[]).expect("file"))).expect("conditional");
    exercise(file.as_ref()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn object_writes_carry_their_ids_newest_first_and_a_bounded_history() {
    let store = open(Arc::new(ObjectSource::open("memory://actors", &[]).expect("memory"))).expect("conditional");
    let key = "actors/t/ids.snap";
    let mut v = store.save(key, b"0".to_vec(), None).await.expect("created").current().expect("current");
    assert_eq!(v.writes.len(), 1);
    for i in 1..40 {
        let next = store.save(key, vec![i], Some(&v)).await.expect("updated").current().expect("current");
        assert_eq!(next.writes.len(), (i as usize + 1).min(KEPT_WRITES));
        assert_eq!(next.writes[1..], v.writes[..next.writes.len() - 1], "the write before it comes next");
        assert_ne!(next.writes[0], v.writes[0]);
        v = next;
    }
    let (_, loaded) = store.load(key, 1 << 20).await.expect("load").expect("stored");
    assert_eq!(loaded.writes, v.writes, "read back with the object");
    assert_eq!(store.version(key).await.expect("version").expect("stored").writes, v.writes);
}

#[test]
fn write_ids_from_a_store_are_only_taken_well_formed() {
    let mut a = Attributes::new();
    a.insert(Attribute::Metadata(WRITES.into()), format!("0123456789abcdef,x,{},,0123456789ABCDEF", "f".repeat(17)).into());
    assert_eq!(writes_of(&a), ["0123456789abcdef", "0123456789ABCDEF"]);
    a.insert(Attribute::Metadata(WRITES.into()), vec!["0123456789abcdef"; 100].join(",").into());
    assert_eq!(writes_of(&a).len(), KEPT_WRITES);
    assert!(writes_of(&Attributes::new()).is_empty());
}

#[test]
fn stores_without_conditional_writes_are_refused() {
    let http = Arc::new(ObjectSource::open("http://127.0.0.1:9/x", &[]).expect("http"));
    assert_eq!(open(http).map(|_| ()).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
    let s3 = Arc::new(ObjectSource::open("s3://bucket/x", &[("region".into(), "us-east-1".into())]).expect("s3"));
    assert_eq!(open(s3).map(|_| ()).map_err(|e| e.code()), Err("INVALID_ARGUMENT"));
}

#[test]
fn keys_are_store_safe_and_distinct() {
    let d = DefKey::new("my activity/ü".into(), "1".into(), "a.wasm".into());
    let a = actor_key(&d, "user-1");
    assert!(a.starts_with("actors/my_activity__/"), "{a}");
    assert_ne!(a, actor_key(&d, "user-2"));
    assert_ne!(actor_key(&d, "ab"), actor_key(&DefKey::new("my activity/ü".into(), "1a".into(), "a.wasm".into()), "b"));
    assert!(actor_key(&d, &"x".repeat(10_000)).len() < 200);
}
