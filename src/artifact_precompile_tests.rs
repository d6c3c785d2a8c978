//! Tests of `precompile`'s save (`save_missing_now`) and of shared code's
//! (`save_missing`): what each tier counts as holding the artifact, and what is written over.
use super::test_stores::*;
use super::*;

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
    // Joined late, as a seal that took a while on a loaded machine joins it: the wait was counted
    // from the join, so the write seemed to fail sooner than its timeout, and was made again
    // (seen once under load: three requests).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let now = tokio::time::timeout(std::time::Duration::from_secs(20), cache.save_missing_now(&digest, e, &module.code, module.facts())).await;
    let refused = now.expect("bounded").expect_err("the store did not take it");
    assert_eq!(refused.code(), "BLOB_UNAVAILABLE");
    // The store's own words, not only that it failed.
    assert!(refused.to_string().contains("timed out after 500 ms"), "{refused}");
    assert_eq!(count(&accepted), 1, "one write, nothing asked or written after it");
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
    // One request asks (review AQ1: a `HEAD`, then the range, took two round trips within the
    // time one answer may take), then the write.
    let methods: Vec<&str> = seen.iter().filter_map(|r| r.split(' ').next()).collect();
    assert_eq!(methods, ["GET", "PUT"], "asked once, then written: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_code_writes_over_a_cache_dir_file_of_another_key_told_by_its_trailer() {
    // Review AQ1: code taken from another executor asked the directory only whether a file was
    // there; after a key rotation, the previous key's artifact stayed, and the next process
    // compiled again.
    let (dir, cache, e, module) = echo_and_a_fresh_disk_tier("shared-rotated");
    let digest = [97u8; 32];
    let name = cache.name(&digest, e);
    let store = Arc::new(ObjectSource::open("memory://artifacts-shared-rotated", &[]).expect("store"));
    let (_, _, _, other_key) = saved_remotely(&store, vec![98u8; 32].into(), &digest, false).await;
    std::fs::write(dir.join(&name), &other_key).expect("the previous key's artifact");
    // This key's artifact of the module is known to the process (another executor sealed it).
    let elsewhere = ArtifactCache { remote: Some(store.clone()), key: cache.key.clone(), ..Default::default() };
    elsewhere.save_now(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert_eq!(std::fs::metadata(dir.join(&name)).expect("there").len(), other_key.len() as u64, "the same length");
    assert!(cache.load_sealed(&digest, e).await.is_none(), "not this key's");
    std::fs::write(dir.join(&name), &other_key).expect("the previous key's artifact again");
    cache.save_missing(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(matches!(cache.load_sealed(&digest, e).await, Some((_, Checked::Sealed(_)))), "written over with this key's");
    // This key's artifact there: kept (the same file).
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join(&name)).expect("there"));
    let written = inode();
    cache.save_missing(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert_eq!(inode(), written, "not written again");
    // Another name for it (lookups refuse a file of more than one): written over.
    std::fs::hard_link(dir.join(&name), dir.join("other-name")).expect("linked");
    cache.save_missing(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert_ne!(inode(), written, "a hard link is written over");
    let written = inode();
    // A key the process has noted nothing for: the module is sealed to learn its trailer, and
    // the previous key's file is written over (review AQ1F).
    let fresh_key = ArtifactCache { key: Some(vec![61u8; 32].into()), ..cache.clone() };
    std::fs::write(dir.join(&name), &other_key).expect("the previous key's artifact");
    fresh_key.save_missing(&digest, e, &module.code, module.facts()).await.expect("saved");
    assert!(matches!(fresh_key.load_sealed(&digest, e).await, Some((_, Checked::Sealed(_)))), "written over with the fresh key's");
    assert_ne!(inode(), written);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn executors_writing_one_artifact_to_one_store_at_once_write_it_once() {
    // Review AQ1F: executors taking one module at once each found the store without its artifact
    // and each wrote it (four 50 MB uploads of the 12 MB component's).
    let e = engine(EngineKind::Plain).expect("engine");
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    let sealed_len = module.code.serialize().expect("serializes").len() + TRAILER;
    let (port, seen) = sizes_but_no_bytes_server_putting_in(sealed_len, std::time::Duration::from_millis(300));
    let puts = || seen.lock().expect("log").iter().filter(|r| r.starts_with("PUT")).count();
    let digest = [93u8; 32];
    // Each its own store, opened from the same URL and options: one store.
    let on = |key: u8| ArtifactCache { key: Some(vec![key; 32].into()), ..cache_on(s3_at(port)) };
    for c in [on(4), on(4), on(4)] {
        c.save(&digest, e, &module.code, module.facts()).await.expect("saved");
    }
    // Precompile's write waits for theirs, as it did for its own executor's (review AMF2).
    on(4).save_missing_now(&digest, e, &module.code, module.facts()).await.expect("written");
    assert_eq!(puts(), 1, "one write for four executors: {:?}", seen.lock().expect("log"));
    // Another key's artifact (other bytes) is a write of its own.
    on(5).save_now(&digest, e, &module.code, module.facts()).await.expect("written");
    assert_eq!(puts(), 2);
    // A write that failed is made again by the next that wants it.
    let (failing, _) = server(Serve::Fails);
    let (c1, c2) = (cache_on(s3_at(failing)), cache_on(s3_at(failing)));
    let failed = c1.save_now(&digest, e, &module.code, module.facts()).await;
    assert_eq!(failed.map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
    assert!(c2.save_now(&digest, e, &module.code, module.facts()).await.is_err(), "written (and failed) again, not taken from the failure");
    // Another executor's write that failed before this store's timeoutMs (closed midway, other
    // credentials): this one writes (review AR1F: it failed with the other's error).
    let (port2, seen2) = sizes_but_no_bytes_server(sealed_len);
    let (other, mine) = (s3_at(port2), ArtifactCache { key: Some(vec![4u8; 32].into()), ..cache_on(s3_at(port2)) });
    let name = mine.name(&digest, e);
    let sealed = seal(mine.key.as_deref().expect("key"), &name, module.code.serialize().expect("serializes"), flags_of(module.facts(), false));
    let trailer: crate::artifact_trailers::Trailer = trailer_of(&sealed).try_into().expect("a trailer");
    let crate::artifact_puts::Turn::Write(theirs) = crate::artifact_puts::turn(&other, &name, &trailer) else { panic!("nothing under way") };
    let precompile = tokio::spawn(async move { mine.save_missing_now(&digest, e, &module.code, module.facts()).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!precompile.is_finished(), "waits for the write under way");
    drop(theirs);
    precompile.await.expect("not cancelled").expect("written by this one");
    assert_eq!(seen2.lock().expect("log").iter().filter(|r| r.starts_with("PUT")).count(), 1);
    let module = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    // Another executor's write that stalls holds this one's precompile for this store's
    // timeoutMs at most, not for the other's.
    let (stalls, _) = server(Serve::StallsPuts);
    let (patient, hasty) = (cache_on(s3_timing_out(stalls, Some("20000"))), cache_on(s3_timing_out(stalls, Some("300"))));
    patient.save(&digest, e, &module.code, module.facts()).await.expect("its write goes on in the background");
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), hasty.save_missing_now(&digest, e, &module.code, module.facts())).await;
    assert_eq!(waited.expect("within its own timeoutMs").map_err(|e| e.code()), Err("BLOB_UNAVAILABLE"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}
