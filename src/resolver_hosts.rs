//! The hosts file for the asynchronous resolver: read once per process, and again when it changes
//! (its size, modification time or inode), on a blocking thread, not the JS thread, one reading
//! at a time. hickory's own
//! reading made every executor parse and keep a copy as it was built (a 6 MB ad-block file took
//! 124 MB and 376 ms per constructor, review AL1), and never saw later edits, which glibc sees.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

/// What tells one version of the file from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    ino: u64,
}

fn stamp(path: &str) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { len: m.len(), modified: m.modified().ok(), ino: std::os::unix::fs::MetadataExt::ino(&m) })
}

type Names = Arc<HashMap<String, Vec<IpAddr>>>;

/// One reading of the file: its names once read (`None` while it runs).
type Reading = tokio::sync::watch::Receiver<Option<Names>>;

/// A hosts file and its names as last read.
pub struct HostsFile {
    path: String,
    /// The stamp of the last reading, and the reading (a failed read is read again next time).
    read: std::sync::Mutex<Option<(Option<Stamp>, Reading, Arc<std::sync::atomic::AtomicBool>)>>,
    /// Readings started.
    readings: std::sync::atomic::AtomicUsize,
}

static SYSTEM: LazyLock<HostsFile> = LazyLock::new(|| HostsFile::new("/etc/hosts"));

/// The addresses the system's hosts file gives `host`, if it names it.
pub async fn lookup(host: &str) -> Option<Vec<IpAddr>> {
    SYSTEM.lookup(host).await
}

impl HostsFile {
    pub fn new(path: &str) -> HostsFile {
        HostsFile { path: path.to_string(), read: std::sync::Mutex::new(None), readings: Default::default() }
    }

    /// The addresses the file gives `host` (any case, no trailing dot), if it names it.
    pub async fn lookup(&self, host: &str) -> Option<Vec<IpAddr>> {
        self.names().await.get(&host.to_ascii_lowercase()).cloned()
    }

    /// The names of the file as it is now. A reading runs on its own, one at a time per stamp: a
    /// lookup that ends while it runs does not end it, and the lookups after wait for it (with
    /// each call ending a reading that then started again, 60 calls cut short re-read a 6 MB
    /// file at once: 1 GB and 8 s of CPU, review AL1F).
    async fn names(&self) -> Names {
        let now = stamp(&self.path);
        let mut reading = {
            let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
            match read.as_ref() {
                Some((at, reading, failed)) if *at == now && !failed.load(std::sync::atomic::Ordering::Acquire) => reading.clone(),
                _ => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    self.readings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let (path, failure) = (self.path.clone(), failed.clone());
                    tokio::task::spawn_blocking(move || {
                        let names = match std::fs::read(&path) {
                            Ok(bytes) => parse(&bytes),
                            Err(e) => {
                                // Gone is nothing named; any other failure is read again next time.
                                if e.kind() != std::io::ErrorKind::NotFound {
                                    failure.store(true, std::sync::atomic::Ordering::Release);
                                }
                                HashMap::new()
                            }
                        };
                        let _ = tx.send(Some(Arc::new(names)));
                    });
                    *read = Some((now, rx.clone(), failed));
                    rx
                }
            }
        };
        let names = match reading.wait_for(Option::is_some).await {
            Ok(names) => names.clone().unwrap_or_default(),
            Err(_) => Names::default(),
        };
        names
    }
}

/// A hosts file's names: each line an address, then its names; `#` starts a comment.
fn parse(text: &[u8]) -> HashMap<String, Vec<IpAddr>> {
    let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.split(|b| *b == b'\n') {
        let line = line.split(|b| *b == b'#').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_ascii_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else { continue };
        for name in words {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let ips = names.entry(name).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_names_their_addresses() {
        let names = parse(
            b"# a comment\n127.0.0.1 localhost\n10.0.0.5  Internal.Example.  db # the database\n::1 localhost\n\
              not-an-ip name\n10.0.0.6\tdb\n\n",
        );
        assert_eq!(names["localhost"], vec!["127.0.0.1".parse::<IpAddr>().expect("ip"), "::1".parse().expect("ip")]);
        assert_eq!(names["internal.example"], vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]);
        assert_eq!(names["db"].len(), 2);
        assert!(!names.contains_key("name") && !names.contains_key("the"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("loom-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("hosts");
        std::fs::write(&path, "44.1.1.1 api.example\n").expect("writes");
        let file = HostsFile::new(path.to_str().expect("utf-8"));
        assert_eq!(file.lookup("API.example").await, Some(vec!["44.1.1.1".parse().expect("ip")]));
        assert_eq!(file.lookup("other.example").await, None);
        // An edit (here a new file renamed over it, as editors do) is seen by the next lookup.
        let next = dir.join("hosts.new");
        std::fs::write(&next, "44.1.1.2 api.example other.example\n").expect("writes");
        std::fs::rename(&next, &path).expect("renames");
        assert_eq!(file.lookup("api.example").await, Some(vec!["44.1.1.2".parse().expect("ip")]));
        assert_eq!(file.lookup("other.example").await, Some(vec!["44.1.1.2".parse().expect("ip")]));
        // A file that went names nothing.
        std::fs::remove_file(&path).expect("removes");
        assert_eq!(file.lookup("api.example").await, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lookups_that_end_while_the_file_is_read_leave_one_reading() {
        let dir = std::env::temp_dir().join(format!("loom-hosts-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("hosts");
        let text: String = (0..200_000).map(|i| format!("0.0.0.0 ads-{i}.example.com\n")).collect();
        std::fs::write(&path, text + "44.1.1.1 api.example\n").expect("writes");
        let file = Arc::new(HostsFile::new(path.to_str().expect("utf-8")));
        // 20 lookups, each ended by its call a moment after it started.
        for _ in 0..20 {
            let f = file.clone();
            let _ = tokio::time::timeout(std::time::Duration::from_micros(200), async move { f.lookup("api.example").await }).await;
        }
        assert_eq!(file.lookup("api.example").await, Some(vec!["44.1.1.1".parse().expect("ip")]));
        assert_eq!(file.readings.load(std::sync::atomic::Ordering::Relaxed), 1, "one reading, whatever became of the lookups");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
