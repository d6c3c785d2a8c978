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

/// What one reading found: the stamp it read at, the names, whether the read failed.
type Found = (Option<Stamp>, Names, bool);

/// A hosts file and its names as last read.
pub struct HostsFile {
    path: String,
    /// At least this long between the starts of two readings, while one is complete.
    interval: std::time::Duration,
    state: std::sync::Mutex<State>,
    /// Readings started.
    readings: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct State {
    /// The last complete reading.
    done: Option<Found>,
    /// The reading under way (at most one), and when it started.
    reading: Option<tokio::sync::watch::Receiver<Option<Found>>>,
    started: Option<std::time::Instant>,
}

static SYSTEM: LazyLock<HostsFile> = LazyLock::new(|| HostsFile::new("/etc/hosts", std::time::Duration::from_secs(1)));

/// The addresses the system's hosts file gives `host`, if it names it.
pub async fn lookup(host: &str) -> Option<Vec<IpAddr>> {
    SYSTEM.lookup(host).await
}

impl HostsFile {
    pub fn new(path: &str, interval: std::time::Duration) -> HostsFile {
        HostsFile { path: path.to_string(), interval, state: Default::default(), readings: Default::default() }
    }

    /// The addresses the file gives `host` (any case, no trailing dot), if it names it.
    pub async fn lookup(&self, host: &str) -> Option<Vec<IpAddr>> {
        self.names().await.get(&host.to_ascii_lowercase()).cloned()
    }

    /// The names of the file. A reading runs on its own, one at a time: a lookup that ends while
    /// it runs does not end it (60 calls cut short re-read a 6 MB file at once: 1 GB and 8 s of
    /// CPU, review AL1F), and a file that keeps changing is read again at most once per
    /// `interval`, the last complete reading answering meanwhile (a reading per change piled up
    /// 1.2 GB and 72 threads, review AL3). A lookup waits only for the first reading, or for one
    /// it started because the file changed.
    async fn names(&self) -> Names {
        let now = stamp(&self.path);
        let mut reading = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            // A reading that finished while no lookup waited becomes the complete one.
            let finished = st.reading.as_ref().and_then(|r| r.borrow().clone());
            if finished.is_some() {
                st.done = finished;
                st.reading = None;
            }
            let recent = st.started.is_some_and(|t| t.elapsed() < self.interval);
            match (&st.done, &st.reading) {
                (Some((at, names, false)), _) if *at == now => return names.clone(),
                (Some((_, names, _)), Some(_)) => return names.clone(),
                (Some((_, names, _)), None) if recent => return names.clone(),
                (None, Some(r)) => r.clone(),
                (_, None) => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    self.readings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let path = self.path.clone();
                    tokio::task::spawn_blocking(move || {
                        let found = match std::fs::read(&path) {
                            Ok(bytes) => (now, Arc::new(parse(&bytes)), false),
                            // Gone is nothing named; any other failure is read again next time.
                            Err(e) => (now, Names::default(), e.kind() != std::io::ErrorKind::NotFound),
                        };
                        let _ = tx.send(Some(found));
                    });
                    st.reading = Some(rx.clone());
                    st.started = Some(std::time::Instant::now());
                    rx
                }
            }
        };
        let names = match reading.wait_for(Option::is_some).await {
            Ok(found) => found.as_ref().map(|f| f.1.clone()).unwrap_or_default(),
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
        let file = HostsFile::new(path.to_str().expect("utf-8"), std::time::Duration::ZERO);
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
        let file = Arc::new(HostsFile::new(path.to_str().expect("utf-8"), std::time::Duration::ZERO));
        // 20 lookups, each ended by its call a moment after it started.
        for _ in 0..20 {
            let f = file.clone();
            let _ = tokio::time::timeout(std::time::Duration::from_micros(200), async move { f.lookup("api.example").await }).await;
        }
        assert_eq!(file.lookup("api.example").await, Some(vec!["44.1.1.1".parse().expect("ip")]));
        assert_eq!(file.readings.load(std::sync::atomic::Ordering::Relaxed), 1, "one reading, whatever became of the lookups");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_that_keeps_changing_is_read_at_most_once_per_interval() {
        let dir = std::env::temp_dir().join(format!("loom-hosts-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("hosts");
        let file = HostsFile::new(path.to_str().expect("utf-8"), std::time::Duration::from_secs(3600));
        for n in 0..20u8 {
            std::fs::write(&path, format!("44.1.1.{} api.example\n{}", n + 1, "#".repeat(n as usize))).expect("writes");
            // The first reading answers until the interval has passed.
            assert_eq!(file.lookup("api.example").await, Some(vec!["44.1.1.1".parse().expect("ip")]));
        }
        assert_eq!(file.readings.load(std::sync::atomic::Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
