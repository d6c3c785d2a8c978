//! Tests of `cache_dir_bound`.

use super::*;

/// A fresh directory of this test's own (removed with it).
struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("loom-cache-dir-bound-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("dir");
        Dir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn only_names_of_ours_are_ours() {
    assert_eq!(kind_of(&format!("{A}-0123456789abcdef.cwasm")), Some(Kind::Artifact));
    assert_eq!(kind_of(&format!("{A}.hint")), Some(Kind::Hint));
    assert_eq!(kind_of(&format!(".{A}-0123456789abcdef.cwasm.4242.7.tmp")), Some(Kind::Temporary));
    assert_eq!(kind_of(&format!(".{A}.hint.1.0.tmp")), Some(Kind::Temporary));
    for other in [
        ".loom-artifact-key".to_string(),
        ".loom-artifact-key.12.00ff00ff00ff00ff.tmp".to_string(),
        format!("{}-0123456789abcdef.cwasm", A.to_uppercase()),
        format!("{A}-0123456789abcde.cwasm"),
        format!("{A}0-0123456789abcdef.cwasm"),
        format!("{A}.hint.bak"),
        format!(".{A}.hint.x.0.tmp"),
        format!(".{A}.hint.1..tmp"),
        format!(".notes.txt.1.2.tmp"),
        "notes.txt".to_string(),
        String::new(),
    ] {
        assert_eq!(kind_of(&other), None, "{other}");
    }
}

fn file(dir: &Path, name: &str, bytes: usize, age_s: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![1u8; bytes]).expect("write");
    let when = SystemTime::now() - Duration::from_secs(age_s);
    std::fs::File::options().write(true).open(&path).expect("open").set_modified(when).expect("mtime");
    path
}

fn artifact(i: u8) -> String {
    format!("{}-0123456789abcdef.cwasm", hex_digest(i))
}

fn hex_digest(i: u8) -> String {
    format!("{i:02x}").repeat(32)
}

#[test]
fn the_least_recently_used_go_first_and_nothing_else_is_touched() {
    let dir = Dir::new("lru");
    let d = dir.path();
    // Five artifacts of 100 KiB, artifact(0) the oldest; a hint older than all of them.
    for i in 0..5u8 {
        file(d, &artifact(i), 100 << 10, 100 - u64::from(i) * 10);
    }
    file(d, &format!("{}.hint", hex_digest(9)), 64, 500);
    // Not ours, however old or large: a user's file, the key file, a subdirectory and a
    // link under artifacts' names, the link's target outside the directory.
    let notes = file(d, "notes.txt", 300 << 10, 10_000);
    let key = file(d, ".loom-artifact-key", 32, 10_000);
    std::fs::create_dir(d.join(artifact(7))).expect("subdir");
    let outside = Dir::new("lru-outside");
    let target = file(outside.path(), "precious", 300 << 10, 10_000);
    std::os::unix::fs::symlink(&target, d.join(artifact(8))).expect("link");
    // A write that died two hours ago, and one under way.
    let dead = file(d, &format!(".{}.4242.0.tmp", artifact(5)), 50 << 10, 7200);
    let fresh = file(d, &format!(".{}.4242.1.tmp", artifact(6)), 50 << 10, 5);

    let done = prune(d, 360 << 10, None);
    // The dead write, the hint and the two oldest artifacts; left: three artifacts and the fresh
    // write (350 KiB, and what blocks round up to).
    for gone in [dead.clone(), d.join(format!("{}.hint", hex_digest(9))), d.join(artifact(0)), d.join(artifact(1))] {
        assert!(!gone.exists(), "{} still there", gone.display());
    }
    for kept in [d.join(artifact(2)), d.join(artifact(3)), d.join(artifact(4)), fresh, notes, key, target, d.join(artifact(7))] {
        assert!(kept.exists(), "{} removed", kept.display());
    }
    assert!(std::fs::symlink_metadata(d.join(artifact(8))).is_ok(), "the link was removed");
    assert_eq!(done.files, 4);
    assert!(done.left <= 360 << 10 && done.left >= 350 << 10, "{done:?}");
    // Under the bound: nothing more goes.
    assert_eq!(prune(d, 360 << 10, None).files, 0);
}

#[test]
fn a_name_just_written_is_kept_and_a_used_one_counts_as_new() {
    let dir = Dir::new("keep");
    let d = dir.path();
    for i in 0..3u8 {
        file(d, &artifact(i), 100 << 10, 100 - u64::from(i) * 10);
    }
    // artifact(0) is the oldest, but just loaded: it counts as used now.
    touch(&d.join(artifact(0)));
    // Room for one: artifact(1) is named as just written, so it stays though older than (2).
    let done = prune(d, 100 << 10, Some(&artifact(1)));
    assert_eq!(done.files, 2, "{done:?}");
    assert!(d.join(artifact(1)).exists());
    assert!(!d.join(artifact(0)).exists() && !d.join(artifact(2)).exists());
}

#[test]
fn writes_prune_once_they_add_up_to_a_sixteenth_of_the_bound() {
    let dir = Dir::new("wrote");
    let d = dir.path();
    // Four artifacts of 60 KiB and a hint: over a bound of 160 KiB by two; a sixteenth is 10 KiB.
    for i in 0..4u8 {
        file(d, &artifact(i), 60 << 10, 100 - u64::from(i));
    }
    let left = || (0..4u8).filter(|i| d.join(artifact(*i)).exists()).count();
    // Two hints' writes (a block each): 8 KiB, under a sixteenth. Nothing is scanned.
    file(d, &format!("{}.hint", hex_digest(9)), 64, 0);
    wrote(d, 160 << 10, &format!("{}.hint", hex_digest(9)), 64);
    wrote(d, 160 << 10, &format!("{}.hint", hex_digest(9)), 64);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(left(), 4);
    // A third: 12 KiB written since the last scan. The two oldest go, the hint stays.
    wrote(d, 160 << 10, &format!("{}.hint", hex_digest(9)), 64);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while left() > 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(left(), 2);
    assert!(!d.join(artifact(0)).exists() && !d.join(artifact(1)).exists());
    assert!(d.join(format!("{}.hint", hex_digest(9))).exists());
}

#[test]
fn an_mtime_far_ahead_counts_as_the_oldest() {
    let dir = Dir::new("future");
    let d = dir.path();
    file(d, &artifact(0), 100 << 10, 100);
    file(d, &artifact(1), 100 << 10, 50);
    // A day ahead: planted, or a clock that jumped. It goes first, not last.
    let ahead = d.join(artifact(2));
    std::fs::write(&ahead, vec![1u8; 100 << 10]).expect("write");
    std::fs::File::options().write(true).open(&ahead).expect("open").set_modified(SystemTime::now() + Duration::from_secs(86_400)).expect("mtime");
    // And a temporary file as far ahead is a dead write.
    let tmp = d.join(format!(".{}.1.0.tmp", artifact(3)));
    std::fs::write(&tmp, b"x").expect("write");
    std::fs::File::options().write(true).open(&tmp).expect("open").set_modified(SystemTime::now() + Duration::from_secs(86_400)).expect("mtime");
    let done = prune(d, 200 << 10, None);
    assert_eq!(done.files, 2, "{done:?}");
    assert!(!ahead.exists() && !tmp.exists());
    assert!(d.join(artifact(0)).exists() && d.join(artifact(1)).exists());
}

#[test]
fn a_directory_reached_through_a_link_is_pruned_itself() {
    let dir = Dir::new("through");
    let d = dir.path();
    for i in 0..3u8 {
        file(d, &artifact(i), 100 << 10, 100 - u64::from(i) * 10);
    }
    let outside = Dir::new("through-link");
    let link = outside.path().join("cache");
    std::os::unix::fs::symlink(d, &link).expect("link");
    let done = prune(&link, 100 << 10, None);
    assert_eq!(done.files, 2, "{done:?}");
    assert!(!d.join(artifact(0)).exists() && !d.join(artifact(1)).exists() && d.join(artifact(2)).exists());
    assert!(std::fs::symlink_metadata(&link).is_ok(), "the link itself was removed");
}

#[test]
fn touch_does_not_follow_a_link() {
    let outside = Dir::new("touch-outside");
    let target = file(outside.path(), "precious", 10, 10_000);
    let before = std::fs::metadata(&target).expect("meta").modified().expect("mtime");
    let dir = Dir::new("touch");
    let link = dir.path().join(artifact(1));
    std::os::unix::fs::symlink(&target, &link).expect("link");
    touch(&link);
    assert_eq!(std::fs::metadata(&target).expect("meta").modified().expect("mtime"), before);
}

#[test]
fn settle_prunes_only_what_was_added_since_the_last_scan_and_keeps_the_name_given() {
    let dir = Dir::new("settle");
    let d = dir.path();
    for i in 0..3u8 {
        file(d, &artifact(i), 100 << 10, 100 - u64::from(i) * 10);
    }
    let handle = crate::runtime::handle().expect("runtime");
    // Nothing written or scanned here since this process began: nothing to settle.
    handle.block_on(settle(d.to_path_buf(), 100 << 10, None));
    assert_eq!((0..3u8).filter(|i| d.join(artifact(*i)).exists()).count(), 3);
    // A write (under a sixteenth: no scan of its own); then settle, keeping the oldest, which
    // was just loaded (review: with nothing kept, the module precompile had just made went).
    wrote(d, 100 << 10, &artifact(2), 4096);
    handle.block_on(settle(d.to_path_buf(), 100 << 10, Some(artifact(0))));
    assert!(d.join(artifact(0)).exists(), "the name given was pruned");
    assert!(!d.join(artifact(1)).exists() && !d.join(artifact(2)).exists());
}

#[test]
fn writes_that_reach_a_sixteenth_do_not_wait_out_an_open_scan_s_delay() {
    let dir = Dir::new("wrote-hurry");
    let d = dir.path();
    for i in 0..2u8 {
        file(d, &artifact(i), 100 << 10, 100 - u64::from(i) * 10);
    }
    // An open's scan, waiting an hour; then writes adding up to a sixteenth of the bound.
    request(d.to_path_buf(), 100 << 10, None, Duration::from_secs(3600));
    wrote(d, 100 << 10, &artifact(1), 100 << 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.join(artifact(0)).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!d.join(artifact(0)).exists() && d.join(artifact(1)).exists());
}

#[test]
fn settle_does_not_wait_out_an_open_scan_s_delay() {
    let dir = Dir::new("settle-hurry");
    let d = dir.path();
    for i in 0..2u8 {
        file(d, &artifact(i), 100 << 10, 100 - u64::from(i) * 10);
    }
    let handle = crate::runtime::handle().expect("runtime");
    // An open's scan, waiting an hour: settle starts it now (else it would give up after
    // SETTLE_WAIT with nothing pruned).
    request(d.to_path_buf(), 100 << 10, None, Duration::from_secs(3600));
    handle.block_on(settle(d.to_path_buf(), 100 << 10, None));
    assert!(!d.join(artifact(0)).exists() && d.join(artifact(1)).exists());
}

#[test]
fn hints_past_their_share_go_before_any_artifact() {
    // Review AM1: 600 definitions named for one module left hints that pushed every artifact out.
    let dir = Dir::new("hints");
    let d = dir.path();
    for i in 0..3u8 {
        file(d, &artifact(i), 100 << 10, 1000 + u64::from(i));
    }
    // 200 hints (a block each on disk), all used after every artifact; hint(i) older for lower i.
    let hint = |i: u8| format!("{}.hint", format!("{i:02x}").repeat(32));
    for i in 0..200u8 {
        file(d, &hint(i), 64, 500 - u64::from(i));
    }
    let bound = 512 << 10;
    prune(d, bound, None);
    for i in 0..3u8 {
        assert!(d.join(artifact(i)).exists(), "artifact {i} went");
    }
    let left: Vec<u8> = (0..200u8).filter(|i| d.join(hint(*i)).exists()).collect();
    let block = std::fs::metadata(d.join(hint(199))).map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512).expect("kept");
    assert!(!left.is_empty() && left.len() as u64 * block <= bound / 16, "{} hints of {block} bytes left", left.len());
    assert!(left.iter().all(|i| *i >= 200 - left.len() as u8), "the most recently used stay: {left:?}");
}
