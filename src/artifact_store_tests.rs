//! Tests of `artifacts`' artifact store tier: lookups against stores that stall, trickle, fail
//! or plant what they like, the budgets of what lookups read, and writes.
use super::*;

/// What a test server does with each connection.
#[derive(Clone, Copy)]
enum Serve {
    /// Never answers.
    Silent,
    /// Answers the request's head with `HEAD_100K`, then sends nothing.
    HeadOnly,
    /// Answers with `HEAD_100K`, then a byte every 20 ms.
    Trickle,
    /// Answers with a 100 MB head, then sends 64 KiB every 2 ms (32 MB/s: a large artifact).
    Large,
    /// Answers with a 1.2 MB head, sends 1 MiB at once, then a byte every 20 ms.
    FastThenTrickle,
    /// Answers with a 100 MB head, then sends this many bytes every 50 ms.
    Paced(usize),
    /// Answers 500.
    Fails,
    /// Answers with a head of this many bytes, then sends them, 20,000 every 50 ms (junk, not an
    /// artifact).
    Junk(usize),
    /// Answers 404 to all but PUTs, which it never answers.
    StallsPuts,
}

const HEAD_1200K: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 1200000\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n";

const HEAD_100M: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n";

const HEAD_100K: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n";

/// A server on loopback serving each connection as `serve` says; counts them.
fn server(serve: Serve) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = listener.local_addr().expect("address").port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                if !matches!(serve, Serve::Silent) {
                    // After the request's head.
                    let mut seen = Vec::new();
                    let mut byte = [0u8; 1];
                    while !seen.ends_with(b"\r\n\r\n") && std::io::Read::read(&mut conn, &mut byte).is_ok_and(|n| n == 1) {
                        seen.push(byte[0]);
                    }
                    let stalls = matches!(serve, Serve::StallsPuts) && seen.starts_with(b"PUT");
                    let junk_head;
                    let head = match serve {
                        Serve::Fails => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        Serve::StallsPuts => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        Serve::Large | Serve::Paced(_) => HEAD_100M,
                        Serve::FastThenTrickle => HEAD_1200K,
                        Serve::Junk(len) => {
                            junk_head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n");
                            &junk_head
                        }
                        _ => HEAD_100K,
                    };
                    if !stalls {
                        let _ = std::io::Write::write_all(&mut conn, head.as_bytes());
                        if matches!(serve, Serve::Fails | Serve::StallsPuts) {
                            return;
                        }
                    }
                }
                if matches!(serve, Serve::Large) {
                    let part = vec![b'x'; 64 * 1024];
                    while std::io::Write::write_all(&mut conn, &part).is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
                if let Serve::Paced(n) = serve {
                    let part = vec![b'x'; n];
                    while std::io::Write::write_all(&mut conn, &part).is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
                if let Serve::Junk(mut left) = serve {
                    while left > 0 && std::io::Write::write_all(&mut conn, &vec![b'x'; left.min(20_000)]).is_ok() {
                        left = left.saturating_sub(20_000);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
                if matches!(serve, Serve::FastThenTrickle) && std::io::Write::write_all(&mut conn, &vec![b'x'; 1 << 20]).is_err() {
                    return;
                }
                if matches!(serve, Serve::Trickle | Serve::FastThenTrickle) {
                    while std::io::Write::write_all(&mut conn, b"x").is_ok() {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
                // Held open until the client lets go.
                let mut sink = [0u8; 64];
                while std::io::Read::read(&mut conn, &mut sink).is_ok_and(|n| n > 0) {}
            });
        }
    });
    (port, accepted)
}

fn silent_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    server(Serve::Silent)
}

/// An S3 store over plain http at `port` (`open` refuses it for artifacts: caches here are made
/// without `open`).
fn s3_at(port: u16) -> Arc<ObjectSource> {
    s3_timing_out(port, None)
}

/// `s3_at`, its operations bounded by `timeout_ms` (the store's `timeoutMs`).
fn s3_timing_out(port: u16, timeout_ms: Option<&str>) -> Arc<ObjectSource> {
    let mut options: Vec<(String, String)> = [
        ("endpoint", format!("http://127.0.0.1:{port}")),
        ("allow_http", "true".into()),
        ("access_key_id", "k".into()),
        ("secret_access_key", "s".into()),
        ("region", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(ms) = timeout_ms {
        options.push(("timeoutMs".into(), ms.into()));
    }
    Arc::new(ObjectSource::open("s3://bucket/artifacts", &options).expect("store"))
}

fn cache_on(store: Arc<ObjectSource>) -> ArtifactCache {
    ArtifactCache { remote: Some(store), key: Some(vec![3u8; 32].into()), fetch_timeout: Some(std::time::Duration::from_millis(300)), ..Default::default() }
}

fn count(n: &std::sync::atomic::AtomicUsize) -> usize {
    n.load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits (at most 10 s) until a budget holds something.
async fn until_holding(budget: &crate::unchecked_artifacts::UncheckedBytes) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while budget.held() == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn until_more_than(n: &std::sync::atomic::AtomicUsize, was: usize) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count(n) == was && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    count(n) > was
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_artifact_store_holds_a_lookup_loadtimeoutms_once_and_a_save_not_at_all() {
    // Review AM1: a store whose GETs stalled held a cold call 60 s (its timeoutMs, twice) under a
    // loadTimeoutMs of 1 s, and one whose PUTs stalled held the call that compiled 5 s.
    let (port, accepted) = silent_server();
    let cache = cache_on(s3_at(port));
    let e = engine(EngineKind::Plain).expect("engine");
    let digest = [17u8; 32];
    let looked = tokio::time::timeout(std::time::Duration::from_secs(10), cache.load_sealed(&digest, e)).await;
    assert!(matches!(looked, Ok(None)), "given up after loadTimeoutMs, not the store's 30 s");
    let asked = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(asked >= 1, "the store was asked");
    // The next lookups skip the store for a while.
    for _ in 0..3 {
        assert!(cache.load_sealed(&digest, e).await.is_none());
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), asked, "not asked again");
    // A compile's save leaves the store's write in the background.
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let saved = tokio::time::timeout(std::time::Duration::from_secs(10), cache.save(&digest, e, &module.code, module.facts())).await;
    assert!(matches!(saved, Ok(Ok(()))), "not held by the stalled write");
    assert!(until_more_than(&accepted, asked).await, "the write went to the store");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_sending_a_large_artifact_is_not_skipped_and_one_whose_body_stops_or_trickles_is() {
    // Review AM1F: any lookup past loadTimeoutMs turned the store off for a minute, so a tenant's
    // large module on a slow store cost everyone's artifacts. Review AMF2: a store that answered
    // at once and then sent no body held every cold call twice loadTimeoutMs (120 s by default).
    // Review AN1: one that sent a byte every few seconds was never skipped, and every new
    // module's cold call waited loadTimeoutMs.
    let e = engine(EngineKind::Plain).expect("engine");
    let (port, accepted) = server(Serve::Large);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none(), "its body is not done by loadTimeoutMs");
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert!(count(&accepted) > asked, "the store is asked again");
    // For another module: the one that ran out of time is not looked up again for a while.
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "that module's lookups skip the store");
    let (port, accepted) = server(Serve::Trickle);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none(), "50 bytes a second: all but stopped");
    let asked = count(&accepted);
    assert!(asked >= 1);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since, for every module");
    // Judged as it goes, not on average (review AN1F: a store that sent fast, then a byte every
    // few seconds, held every new module's cold call loadTimeoutMs): here the artifact could have
    // come in time at its first pace.
    let (port, accepted) = server(Serve::FastThenTrickle);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none());
    let asked = count(&accepted);
    assert!(asked >= 1);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since, for every module");
    let (port, accepted) = server(Serve::HeadOnly);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none(), "its body never comes");
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since");
    // A store that fails (500) is skipped as one that stalls (each lookup was retried by the
    // client: a second of every cold call).
    let (port, accepted) = server(Serve::Fails);
    let cache = cache_on(s3_at(port));
    assert!(cache.load_sealed(&[18u8; 32], e).await.is_none());
    let asked = count(&accepted);
    assert!(asked >= 1);
    assert!(cache.load_sealed(&[19u8; 32], e).await.is_none());
    assert_eq!(count(&accepted), asked, "skipped since");
}

#[tokio::test(flavor = "multi_thread")]
async fn asking_a_stalled_store_for_shared_code_holds_nothing_and_precompiles_write_is_an_error() {
    // Review AM1F: code taken from another executor asked the store whether it had it, and a
    // store that stalled held that call 30 s; precompile resolved though nothing was stored.
    let (port, _) = silent_server();
    let cache = cache_on(s3_at(port));
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let digest = [20u8; 32];
    let asked = tokio::time::timeout(std::time::Duration::from_secs(10), cache.save_missing(&digest, e, &module.code, module.facts())).await;
    assert!(matches!(asked, Ok(Ok(()))), "given up on after the store's answer wait");
    assert!(cache.remote_state.skipping(), "and the store skipped since");
    let now = tokio::time::timeout(std::time::Duration::from_secs(10), cache.save_missing_now(&digest, e, &module.code, module.facts())).await;
    assert_eq!(now.expect("bounded").map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_is_judged_on_what_all_lookups_receive_and_a_lookup_that_cannot_finish_in_time_stops_early() {
    // Review AN2: six lookups sharing a link, each under the bound alone, turned a working store
    // off; and a store sending just over the bound held each new module's lookup to its deadline.
    let e = engine(EngineKind::Plain).expect("engine");
    // 40 KiB/s a lookup, under the bound alone; six together well over it.
    let (port, accepted) = server(Serve::Paced(2048));
    let cache = Arc::new(cache_on(s3_at(port)));
    let lookups: Vec<_> = (0..6u8)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.load_sealed(&[50 + i; 32], engine(EngineKind::Plain).expect("engine")).await.is_none() })
        })
        .collect();
    for l in lookups {
        assert!(l.await.expect("ran"), "none done by loadTimeoutMs");
    }
    let asked = count(&accepted);
    assert!(cache.load_sealed(&[60u8; 32], e).await.is_none());
    assert!(count(&accepted) > asked, "the store is still asked");
    // 100 KiB/s, over the bound, 100 MB to send: given up on after the first answer wait (half
    // of loadTimeoutMs here), not at loadTimeoutMs.
    let (port, _) = server(Serve::Paced(5120));
    let cache = ArtifactCache { fetch_timeout: Some(std::time::Duration::from_secs(4)), ..cache_on(s3_at(port)) };
    let started = std::time::Instant::now();
    assert!(cache.load_sealed(&[61u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(3500), "{:?}", started.elapsed());
    assert!(!cache.remote_state.skipping(), "a store that sends is not skipped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_precompile_whose_write_is_under_way_and_fails_is_refused_without_a_second_write() {
    // Review AN1: the write of the compile (in the background) ran out of the store's timeoutMs,
    // then precompile asked the store and wrote again: twice timeoutMs, two PUTs.
    let (port, accepted) = server(Serve::StallsPuts);
    let cache = cache_on(s3_timing_out(port, Some("500")));
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let digest = [21u8; 32];
    cache.save(&digest, e, &module.code, module.facts()).await.expect("its write goes on in the background");
    let now = tokio::time::timeout(std::time::Duration::from_secs(20), cache.save_missing_now(&digest, e, &module.code, module.facts())).await;
    let refused = now.expect("bounded").expect_err("the store did not take it");
    assert_eq!(refused.code(), "BLOB_UNAVAILABLE");
    // The store's own words, not only that it failed.
    assert!(refused.to_string().contains("timed out after 500 ms"), "{refused}");
    assert_eq!(count(&accepted), 1, "one write, nothing asked or written after it");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_dir_that_cannot_be_written_fails_the_save_coded_and_the_store_still_gets_the_artifact() {
    // Review AN1F: with its cacheDir removed, precompile failed INTERNAL and nothing reached the
    // store: the worker stopped sharing with its fleet.
    let dir = temp("removed-dir");
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(ObjectSource::open("memory://artifacts-removed-dir", &[]).expect("store"));
    let cache = ArtifactCache { dir: Some(dir.clone()), remote: Some(store.clone()), key: Some(vec![6u8; 32].into()), ..Default::default() }
        .open()
        .expect("opens");
    std::fs::remove_dir_all(&dir).expect("removed under it");
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let digest = [22u8; 32];
    let saved = cache.save_now(&digest, e, &module.code, module.facts()).await;
    assert_eq!(saved.map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
    assert!(store.exists(&cache.name(&digest, e)).await.expect("asks"), "the store has it");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_executors_stalled_writes_leave_anothers_alone() {
    // Review AM1F: four writes to one executor's stalled store took the process's every place,
    // and 20 of another executor's artifacts were never written.
    let (stalled, _) = silent_server();
    let (healthy, written) = silent_server();
    let (x, y) = (cache_on(s3_at(stalled)), cache_on(s3_at(healthy)));
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    for i in 0..6u8 {
        x.save(&[30 + i; 32], e, &module.code, module.facts()).await.expect("saved");
    }
    y.save(&[40u8; 32], e, &module.code, module.facts()).await.expect("saved");
    assert!(until_more_than(&written, 0).await, "the other executor's write went to its store");
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_reads_hold_at_most_the_unchecked_budget_and_one_without_room_is_not_made() {
    // Whoever writes the artifact store can plant a large object under an artifact's name: each
    // lookup read it whole before its tag refused it (up to 2 GiB for each module loading at
    // once). A 100 MB answer, 1.3 MB/s, under a budget of 150 MB.
    let e = engine(EngineKind::Plain).expect("engine");
    let (port, _) = server(Serve::Paced(64 * 1024));
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(150_000_000);
    let cache = Arc::new(ArtifactCache {
        fetch_timeout: Some(std::time::Duration::from_secs(2)),
        remote_state: RemoteState { unchecked: budget.clone(), ..Default::default() },
        ..cache_on(s3_at(port))
    });
    let first = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.load_sealed(&[70u8; 32], engine(EngineKind::Plain).expect("engine")).await.is_none() })
    };
    until_holding(&budget).await;
    assert_eq!(budget.held(), 100_000_000, "the first read holds its size from the answer's head");
    // A second module's lookup meanwhile: no room, so its body is not read (it would take the
    // lookup's 2 s), and the store is not judged for it.
    let started = std::time::Instant::now();
    assert!(cache.load_sealed(&[71u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(900), "{:?}", started.elapsed());
    assert!(!cache.remote_state.skipping() && !cache.remote_state.skipping_module(&[71u8; 32]));
    assert!(first.await.expect("ran"));
    assert_eq!((budget.held(), budget.peak()), (0, 100_000_000));
    // An object larger than the whole budget is never read.
    let (port, _) = server(Serve::Large);
    let small = crate::unchecked_artifacts::UncheckedBytes::with_max(64 << 20);
    let cache = ArtifactCache { remote_state: RemoteState { unchecked: small.clone(), ..Default::default() }, ..cache_on(s3_at(port)) };
    assert!(cache.load_sealed(&[72u8; 32], e).await.is_none());
    assert_eq!(small.peak(), 0);
    assert!(!cache.remote_state.skipping());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tier_reads_an_artifact_only_with_room_for_it_and_gives_the_room_back() {
    let e = engine(EngineKind::Plain).expect("engine");
    let key: Arc<[u8]> = vec![12u8; 32].into();
    let digest = [73u8; 32];
    let name = ArtifactCache::name_for(&digest, e, &Default::default());
    let tight = |size: u64| crate::unchecked_artifacts::UncheckedBytes::with_max(size - 1);
    // A file:// store: an honest artifact needs room for its size; a planted sparse giant (4 KiB
    // of disk) is not read, where it was read whole.
    let root = temp("unchecked-store");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("store dir");
    let store = Arc::new(ObjectSource::open(&format!("file://{}", root.display()), &[]).expect("store"));
    let (_, module, _, stored) = saved_remotely(&store, key.clone(), &digest, false).await;
    let size = stored.len() as u64;
    let on_store = |unchecked| ArtifactCache {
        remote: Some(store.clone()),
        key: Some(key.clone()),
        remote_state: RemoteState { unchecked, ..Default::default() },
        ..Default::default()
    };
    let budget = tight(size);
    assert!(on_store(budget.clone()).load_sealed(&digest, e).await.is_none(), "no room");
    assert_eq!(budget.peak(), 0);
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(size);
    assert!(on_store(budget.clone()).load_sealed(&digest, e).await.is_some());
    assert_eq!((budget.held(), budget.peak()), (0, size));
    let giant = std::fs::OpenOptions::new().write(true).open(root.join(&name)).expect("the artifact's file");
    giant.set_len(1 << 30).expect("sparse");
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(2 << 30);
    assert!(on_store(budget.clone()).load_sealed(&digest, e).await.is_none());
    assert_eq!(budget.peak(), 0, "not read: mostly holes");
    // cacheDir, through a sealed copy and the plain read alike.
    let (dir, cache, e, _) = echo_and_a_fresh_disk_tier("unchecked-dir");
    cache.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    let size = std::fs::metadata(dir.join(&name)).expect("written").len();
    let budget = tight(size);
    let on_dir = ArtifactCache { unchecked: budget.clone(), ..cache.clone() };
    assert!(on_dir.load_sealed(&digest, e).await.is_none(), "no room");
    assert!(dir.join(&name).exists(), "an artifact without room is not taken for a forged one");
    assert!(on_dir.load_guess(&digest, e, Arc::new(Flag(Default::default()))).await.is_none());
    let path = dir.join(&name);
    assert!(read_bounded(path.clone(), budget.clone()).await.is_none());
    assert_eq!(budget.peak(), 0);
    let budget = crate::unchecked_artifacts::UncheckedBytes::with_max(size);
    let on_dir = ArtifactCache { unchecked: budget.clone(), ..cache.clone() };
    assert!(matches!(on_dir.load_sealed(&digest, e).await, Some((_, Checked::Sealed(_)))));
    assert!(read_bounded(path, budget.clone()).await.is_some_and(|(bytes, _)| bytes.len() as u64 == size));
    assert_eq!((budget.held(), budget.peak()), (0, size));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread")]
async fn precompiles_save_fails_when_no_tier_holds_the_artifact() {
    // Noticed in review AN2: with no artifact store, precompile resolved though its cacheDir had
    // been removed, or its artifact was over maxCacheDirBytes: nothing was written anywhere.
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("precompile-dir-alone");
    let digest = [23u8; 32];
    let name = cache.name(&digest, e);
    std::fs::remove_dir_all(&dir).expect("removed under it");
    let saved = cache.save_missing_now(&digest, e, &module.code, module.facts()).await;
    assert_eq!(saved.map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
    std::fs::create_dir_all(&dir).expect("back");
    let tight = ArtifactCache { max_dir_bytes: Some(4096), ..cache.clone() };
    let refused = tight.save_missing_now(&digest, e, &module.code, module.facts()).await.expect_err("over the bound");
    assert_eq!(refused.code(), "INVALID_ARGUMENT");
    assert!(refused.to_string().contains("was not written") && refused.to_string().contains("4096"), "{refused}");
    assert!(!dir.join(&name).exists());
    // A store that takes it is a tier that holds it.
    let store = Arc::new(ObjectSource::open("memory://artifacts-over-dir-bound", &[]).expect("store"));
    let both = ArtifactCache { remote: Some(store.clone()), ..tight.clone() };
    both.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("the store holds it");
    assert!(store.exists(&name).await.expect("asks"));
    // Within the bound, the directory does.
    cache.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written");
    assert!(dir.join(&name).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stores_lookups_take_no_room_from_cache_dir_reads_and_an_artifact_left_unread_is_not_written_again() {
    // Review AO1: with one budget for the process, a store answering a 1 GiB head made every
    // executor's cacheDir loads compile while its lookup ran; and each read refused for want of
    // room was followed by a second upload of what the store held.
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("unchecked-apart");
    let digest = [74u8; 32];
    cache.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    let size = std::fs::metadata(dir.join(cache.name(&digest, e))).expect("written").len();
    // Room for the store's 100 MB answer or the artifact, not both.
    let dir_budget = crate::unchecked_artifacts::UncheckedBytes::with_max(100_000_000 + size - 1);
    let on_dir = ArtifactCache { unchecked: dir_budget.clone(), ..cache.clone() };
    let (port, _) = server(Serve::Paced(64 * 1024));
    let on_store = Arc::new(ArtifactCache {
        fetch_timeout: Some(std::time::Duration::from_secs(2)),
        unchecked: dir_budget.clone(),
        ..cache_on(s3_at(port))
    });
    let held = {
        let on_store = on_store.clone();
        tokio::spawn(async move { on_store.load_sealed(&[75u8; 32], engine(EngineKind::Plain).expect("engine")).await })
    };
    until_holding(&on_store.remote_state.unchecked).await;
    assert_eq!(on_store.remote_state.unchecked.held(), 100_000_000);
    assert!(on_dir.load_sealed(&digest, e).await.is_some(), "the directory's read has its room");
    assert!(held.await.expect("ran").is_none());
    // Read refused for want of room (its budget has room for it, not now): the store has it, and
    // the compile after does not write it.
    let store = Arc::new(ObjectSource::open("memory://artifacts-unread", &[]).expect("store"));
    let key: Arc<[u8]> = vec![14u8; 32].into();
    let (_, _, name, stored) = saved_remotely(&store, key.clone(), &digest, false).await;
    let on = |max: u64| ArtifactCache {
        remote: Some(store.clone()),
        key: Some(key.clone()),
        remote_state: RemoteState { unchecked: crate::unchecked_artifacts::UncheckedBytes::with_max(max), ..Default::default() },
        ..Default::default()
    };
    let tight = on(stored.len() as u64);
    let taken = tight.remote_state.unchecked.take(1).expect("a byte");
    assert!(tight.load_sealed(&digest, e).await.is_none());
    drop(taken);
    let planted = || async { store.put(&name, Bytes::from_static(b"as the store had it")).await.expect("planted") };
    let kept = || async { &store.get(&name).await.expect("there")[..] == b"as the store had it" };
    planted().await;
    tight.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(kept().await, "not written again");
    // Once: a later compile's save writes it.
    tight.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(!kept().await);
    // Review AO1F: an object larger than the whole budget (planted once: it can never be read)
    // is written over by the compile after, as a forged one is.
    // (The budget has room for the artifact itself: one larger than it is written nowhere.)
    let fits = on(stored.len() as u64);
    store.put(&name, Bytes::from(vec![0u8; stored.len() + 1])).await.expect("planted giant");
    assert!(fits.load_sealed(&digest, e).await.is_none());
    planted().await;
    fits.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(!kept().await, "written over");
    // So with a `file://` store, whose reads tell no size on the way (review AO2).
    let root = temp("unread-file-store");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("store dir");
    let files = Arc::new(ObjectSource::open(&format!("file://{}", root.display()), &[]).expect("store"));
    let (_, _, _, stored) = saved_remotely(&files, key.clone(), &digest, false).await;
    let fits = ArtifactCache { remote: Some(files.clone()), ..on(stored.len() as u64) };
    files.put(&name, Bytes::from(vec![0u8; stored.len() + 1])).await.expect("planted giant");
    assert!(fits.load_sealed(&digest, e).await.is_none());
    files.put(&name, Bytes::from_static(b"as the store had it")).await.expect("planted");
    fits.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert_eq!(files.get(&name).await.expect("there").len(), stored.len(), "written over");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread")]
async fn all_executors_store_lookups_together_hold_at_most_the_process_budget() {
    // Review AO1F: with a budget per executor only, three executors on a store sending 1 GiB
    // bodies took the process to 3 GiB.
    let e = engine(EngineKind::Plain).expect("engine");
    let (port, _) = server(Serve::Paced(64 * 1024));
    let all = crate::unchecked_artifacts::UncheckedBytes::with_max(150_000_000);
    let executor = || {
        Arc::new(ArtifactCache {
            fetch_timeout: Some(std::time::Duration::from_secs(2)),
            remote_state: RemoteState { all_stores: all.clone(), ..Default::default() },
            ..cache_on(s3_at(port))
        })
    };
    let (first, second) = (executor(), executor());
    let held = {
        let first = first.clone();
        tokio::spawn(async move { first.load_sealed(&[76u8; 32], engine(EngineKind::Plain).expect("engine")).await.is_none() })
    };
    until_holding(&all).await;
    assert_eq!((all.held(), first.remote_state.unchecked.held()), (100_000_000, 100_000_000));
    let started = std::time::Instant::now();
    assert!(second.load_sealed(&[77u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(900), "not read: {:?}", started.elapsed());
    assert_eq!(second.remote_state.unchecked.held(), 0, "its own budget given back");
    assert!(held.await.expect("ran"));
    assert_eq!((all.held(), all.peak()), (0, 100_000_000));
    // Review AO2: two executors whose stores held 1 GiB each of the process's 2 GiB kept every
    // other executor's lookups from loading. Each holds at most its share now: with two sharing
    // 150 MB, a 100 MB answer is not read though all of it is free.
    let users = (all.register(), all.register());
    let started = std::time::Instant::now();
    assert!(first.load_sealed(&[78u8; 32], e).await.is_none());
    assert!(started.elapsed() < std::time::Duration::from_millis(900), "not read: {:?}", started.elapsed());
    assert_eq!((all.peak(), first.remote_state.unchecked.held()), (100_000_000, 0));
    drop(users);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_calls_lookups_of_an_artifact_and_its_baseline_twin_take_at_most_loadtimeoutms_together() {
    // Review AO1: a cold call looks up its engine's artifact, then the baseline twin's, each
    // within loadTimeoutMs; a store holding junk under both names, sent at a pace that comes in
    // just in time, held the call twice that. Here each takes 3.25 s (1.3 MB at 400 KB/s) under a
    // loadTimeoutMs of 4 s: the twin's lookup gets the 0.75 s left, not another 3.25 s.
    let (port, accepted) = server(Serve::Junk(1_300_000));
    let cache = ArtifactCache { fetch_timeout: Some(std::time::Duration::from_secs(4)), ..cache_on(s3_at(port)) };
    let digest = [90u8; 32];
    let mut left = cache.lookup_time();
    let started = std::time::Instant::now();
    let found = crate::module_artifacts::from_artifact(&cache, || true, digest, EngineKind::Plain, false, None, &mut left).await;
    let took = started.elapsed();
    assert!(found.is_none(), "junk is no artifact");
    assert_eq!(count(&accepted), 2, "both names were looked up");
    assert!(took < std::time::Duration::from_millis(5200), "{took:?}");
    assert!(left < std::time::Duration::from_millis(1500), "what the lookups took is counted: {left:?}");
    // Nothing left: the store is not asked.
    let mut none = std::time::Duration::ZERO;
    assert!(cache.load_sealed_within(&[91u8; 32], engine(EngineKind::Plain).expect("engine"), &mut none).await.is_none());
    assert_eq!(count(&accepted), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn precompile_writes_over_what_is_not_the_artifact_and_no_tier_takes_an_artifact_no_lookup_could_read() {
    // Review AO1F: a directory planted under the artifact's name made precompile resolve (the
    // tier "had" it), and the next process compiled again; junk planted in the store did too.
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("precompile-planted");
    let store = Arc::new(ObjectSource::open("memory://artifacts-precompile-planted", &[]).expect("store"));
    let both = ArtifactCache { remote: Some(store.clone()), ..cache.clone() };
    let digest = [92u8; 32];
    let name = cache.name(&digest, e);
    std::fs::create_dir_all(dir.join(&name)).expect("planted directory");
    store.put(&name, Bytes::from_static(b"planted")).await.expect("planted object");
    let refused = both.save_missing_now(&digest, e, &module.code, module.facts()).await.expect_err("a directory is no artifact");
    assert_eq!(refused.code(), "BLOB_UNAVAILABLE", "{refused}");
    assert!(store.size(&name).await.expect("asks").is_some_and(|n| n > 7), "the store's junk was written over all the same");
    std::fs::remove_dir(dir.join(&name)).expect("directory removed");
    std::fs::write(dir.join(&name), b"planted").expect("planted file");
    both.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written over");
    assert!(matches!(cache.load_sealed(&digest, e).await, Some((_, Checked::Sealed(_)))), "the directory's copy loads");
    let on_store = ArtifactCache { remote: Some(store.clone()), key: cache.key.clone(), ..Default::default() };
    assert!(on_store.load_sealed(&digest, e).await.is_some(), "the store's copy loads");
    // What both tiers hold is the artifact: nothing is written again.
    // Each write renames a new file into place: the same inode is the same write.
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join(&name)).expect("there"));
    let written = inode();
    both.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("held already");
    assert_eq!(inode(), written);
    // A module loaded from the directory's artifact is saved as the same bytes (review AP1: the
    // artifact's trailer came along, 41 bytes more each time, and every precompile rewrote it).
    let Some((loaded, Checked::Sealed(copy))) = cache.load_sealed(&digest, e).await else { panic!("loads from the directory") };
    let loaded = crate::compiled_module::prepare(loaded, digest, EngineKind::Plain, copy.facts()).expect("links");
    assert_eq!(loaded.code.serialize().expect("serializes"), module.code.serialize().expect("serializes"));
    both.save_missing_now(&digest, e, &loaded.code, loaded.facts()).await.expect("held already");
    assert_eq!(inode(), written, "not written again");
    // Junk of the artifact's very size (an artifact of another key, after a rotation) is no
    // artifact either (review AP1).
    let junk = vec![7u8; std::fs::metadata(dir.join(&name)).expect("there").len() as usize];
    std::fs::write(dir.join(&name), &junk).expect("same-size junk");
    both.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written over");
    assert!(matches!(cache.load_sealed(&digest, e).await, Some((_, Checked::Sealed(_)))), "the directory's copy loads");
    // The directory holds it, the store junk: the store's is written over.
    store.put(&name, Bytes::from_static(b"planted again")).await.expect("planted object");
    both.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written over");
    assert!(on_store.load_sealed(&digest, e).await.is_some(), "the store's copy loads");
    // An artifact of another key (after a rotation), of the same size: once a lookup found it
    // forged, precompile, and code taken from another executor, write the store over (review
    // AP1: they took it for the artifact, and the next workers compiled again).
    let (_, _, _, other_key) = saved_remotely(&store, vec![99u8; 32].into(), &digest, false).await;
    assert_eq!(store.size(&name).await.expect("asks"), Some(other_key.len() as u64));
    assert!(on_store.load_sealed(&digest, e).await.is_none(), "another key's");
    on_store.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written");
    assert!(on_store.load_sealed(&digest, e).await.is_some(), "the store's copy loads");
    store.put(&name, Bytes::from(other_key)).await.expect("planted again");
    assert!(on_store.load_sealed(&digest, e).await.is_none(), "another key's");
    on_store.save_missing(&digest, e, &module.code, module.facts()).await.expect("saved");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while on_store.load_sealed(&digest, e).await.is_none() && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(on_store.load_sealed(&digest, e).await.is_some(), "the store's copy loads: written in the background");
    // Junk there too large to read now marks the name unread (the compile after does not write
    // it again); precompile writes it all the same (review AP1: the mark made its write a no-op).
    let tight = ArtifactCache { remote_state: RemoteState { unchecked: crate::unchecked_artifacts::UncheckedBytes::with_max(1 << 20), ..Default::default() }, ..on_store.clone() };
    let taken = tight.remote_state.unchecked.take(1).expect("a byte");
    store.put(&name, Bytes::from(vec![0u8; 1 << 20])).await.expect("planted");
    assert!(tight.load_sealed(&digest, e).await.is_none(), "no room");
    drop(taken);
    tight.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written");
    assert!(on_store.load_sealed(&digest, e).await.is_some(), "the store's copy loads");
    let _ = std::fs::remove_dir_all(&dir);

    // Review AO1: an artifact larger than a tier's lookups may read unchecked can never load
    // from it, and every compile wrote it there again.
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("precompile-unreadable");
    let store = Arc::new(ObjectSource::open("memory://artifacts-precompile-unreadable", &[]).expect("store"));
    let tiny = || crate::unchecked_artifacts::UncheckedBytes::with_max(4096);
    let small = ArtifactCache { remote: Some(store.clone()), unchecked: tiny(), remote_state: RemoteState { unchecked: tiny(), ..Default::default() }, ..cache.clone() };
    let digest = [93u8; 32];
    let name = cache.name(&digest, e);
    small.save_now(&digest, e, &module.code, module.facts()).await.expect("nothing to write is no error");
    assert!(!dir.join(&name).exists() && !store.exists(&name).await.expect("asks"), "written where it cannot be read");
    let refused = small.save_missing_now(&digest, e, &module.code, module.facts()).await.expect_err("no tier can hold it");
    assert_eq!(refused.code(), "INVALID_ARGUMENT");
    assert!(refused.to_string().contains("4096 bytes a lookup may read"), "{refused}");
    // One tier that can read it holds it.
    let dir_reads = ArtifactCache { unchecked: crate::unchecked_artifacts::UncheckedBytes::default(), ..small.clone() };
    dir_reads.save_missing_now(&digest, e, &module.code, module.facts()).await.expect("the directory holds it");
    assert!(dir.join(&name).exists() && !store.exists(&name).await.expect("asks"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server on loopback that tells every object's size as `len` (`HEAD`) and has none of them
/// (`GET`: 404), and takes every `PUT`; the request lines it saw.
fn sizes_but_no_bytes_server(len: usize) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = listener.local_addr().expect("address").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn);
                loop {
                    let mut head = Vec::new();
                    let mut line = String::new();
                    while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                        head.push(std::mem::take(&mut line));
                    }
                    let Some(request) = head.first().cloned() else { return };
                    log.lock().expect("log").push(request.trim().to_string());
                    let body_len = head
                        .iter()
                        .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<u64>().unwrap_or(0)))
                        .unwrap_or(0);
                    let _ = std::io::copy(&mut std::io::Read::take(&mut reader, body_len), &mut std::io::sink());
                    let answer = if request.starts_with("HEAD") {
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nLast-Modified: Sun, 06 Dec 2026 00:00:00 GMT\r\nETag: \"x\"\r\n\r\n")
                    } else if request.starts_with("PUT") {
                        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: \"y\"\r\n\r\n".to_string()
                    } else {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                    };
                    if std::io::Write::write_all(reader.get_mut(), answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_holds_an_artifact_for_precompile_and_shared_code_only_if_its_object_ends_in_the_artifacts_trailer() {
    // Review AP1F: the store was judged by the object's size. An artifact of the previous key
    // (after a rotation) has the artifact's size: in a store this executor never looked it up
    // in, precompile resolved with nothing written and the next process compiled again, and
    // code taken from another executor was not written either (only "is something there?").
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let key: Arc<[u8]> = vec![3u8; 32].into();
    let root = temp("rotated-file-store");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("store's directory");
    for url in ["memory://artifacts-rotated".to_string(), format!("file://{}", root.display())] {
        let store = Arc::new(ObjectSource::open(&url, &[]).expect("store"));
        let digest = [95u8; 32];
        let (_, _, name, other_key) = saved_remotely(&store, vec![99u8; 32].into(), &digest, false).await;
        let fresh = || ArtifactCache { remote: Some(store.clone()), key: Some(key.clone()), ..Default::default() };
        let version = || async { object_store::ObjectStoreExt::head(store.object_store().as_ref(), &store.path(&name).expect("path")).await.expect("there").e_tag };
        fresh().save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written");
        assert_eq!(store.size(&name).await.expect("asks"), Some(other_key.len() as u64), "{url}: the same size");
        assert!(fresh().load_sealed(&digest, e).await.is_some(), "{url}: precompile wrote the artifact over another key's");
        // Held now: not written again, by precompile or by shared code.
        let written = version().await;
        fresh().save_missing_now(&digest, e, &module.code, module.facts()).await.expect("held");
        fresh().save_missing(&digest, e, &module.code, module.facts()).await.expect("held");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(version().await, written, "{url}: written again");
        // Code taken from another executor, another key's artifact under its name.
        store.put(&name, Bytes::from(other_key.clone())).await.expect("planted");
        fresh().save_missing(&digest, e, &module.code, module.facts()).await.expect("saved");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fresh().load_sealed(&digest, e).await.is_none() && std::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(fresh().load_sealed(&digest, e).await.is_some(), "{url}: shared code wrote the artifact over another key's");
    }
    let _ = std::fs::remove_dir_all(&root);

    // A store that tells the artifact's size and then has no such object (`HEAD` 200, `GET` 404).
    let sealed_len = module.code.serialize().expect("serializes").len() + TRAILER;
    let (port, seen) = sizes_but_no_bytes_server(sealed_len);
    let cache = ArtifactCache { key: Some(key.clone()), ..cache_on(s3_at(port)) };
    cache.save_missing_now(&[96u8; 32], e, &module.code, module.facts()).await.expect("written");
    let seen = seen.lock().expect("log").clone();
    assert!(seen.iter().any(|r| r.starts_with("HEAD")) && seen.iter().any(|r| r.starts_with("PUT")), "asked, then written: {seen:?}");
}
