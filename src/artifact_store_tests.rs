//! Tests of `artifacts`' artifact store tier: lookups against stores that stall, trickle, fail
//! or plant what they like, the budgets of what lookups read, and writes (servers in
//! `artifact_test_stores.rs`; precompile's and shared code's saves in `artifact_precompile_tests.rs`).
use super::test_stores::*;
use super::*;

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
