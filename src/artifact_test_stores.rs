//! Artifact stores for `artifacts`' tests: servers on loopback that stall, trickle, fail or
//! plant what they like, and S3 stores and caches on them.
use super::*;

/// What a test server does with each connection.
#[derive(Clone, Copy)]
pub(super) enum Serve {
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
pub(super) fn server(serve: Serve) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
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

pub(super) fn silent_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    server(Serve::Silent)
}

/// An S3 store over plain http at `port` (`open` refuses it for artifacts: caches here are made
/// without `open`).
pub(super) fn s3_at(port: u16) -> Arc<ObjectSource> {
    s3_timing_out(port, None)
}

/// `s3_at`, its operations bounded by `timeout_ms` (the store's `timeoutMs`).
pub(super) fn s3_timing_out(port: u16, timeout_ms: Option<&str>) -> Arc<ObjectSource> {
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

pub(super) fn cache_on(store: Arc<ObjectSource>) -> ArtifactCache {
    ArtifactCache { remote: Some(store), key: Some(vec![3u8; 32].into()), fetch_timeout: Some(std::time::Duration::from_millis(300)), ..Default::default() }
}

pub(super) fn count(n: &std::sync::atomic::AtomicUsize) -> usize {
    n.load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits (at most 10 s) until a budget holds something.
pub(super) async fn until_holding(budget: &crate::unchecked_artifacts::UncheckedBytes) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while budget.held() == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub(super) async fn until_more_than(n: &std::sync::atomic::AtomicUsize, was: usize) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count(n) == was && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    count(n) > was
}

/// A server on loopback that tells every object's size as `len` (`HEAD`) and has none of them
/// (`GET`: 404), and takes every `PUT`; the request lines it saw.
pub(super) fn sizes_but_no_bytes_server(len: usize) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    sizes_but_no_bytes_server_putting_in(len, std::time::Duration::ZERO)
}

/// `sizes_but_no_bytes_server`, each `PUT` answered after `put_takes`.
pub(super) fn sizes_but_no_bytes_server_putting_in(len: usize, put_takes: std::time::Duration) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
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
                        std::thread::sleep(put_takes);
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
