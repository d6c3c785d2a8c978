//! The network's HTTP client with its connection pool bounded. reqwest keeps idle connections
//! per host (30 s) with no limit on how many hosts: a guest granted many hosts (`*.domain`, an IP
//! literal with any port) held one open connection, a file descriptor of this process, for every
//! host it had reached in the last 30 s (300 ports of `127.0.0.1` reached in three calls: 300
//! descriptors held), so a hostile guest could run the whole process out of them.
//!
//! Here a client's pool serves at most `MAX_POOLED_HOSTS` hosts at a time (a host unused for
//! `FORGET` has no idle connection left and stops counting). A request to one host more starts a
//! fresh client, its pool empty; the old client's idle connections close as soon as the requests
//! still using it end. Each host keeps at most `MAX_IDLE_PER_HOST` idle connections. So the
//! connections a network holds are at most those in flight (one per running call) plus
//! `MAX_POOLED_HOSTS * MAX_IDLE_PER_HOST` idle, and a guest that reaches few hosts keeps its
//! connections warm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::error::ExecError;

/// Hosts (scheme, host and port) one client's pool may hold connections to.
pub const MAX_POOLED_HOSTS: usize = 64;
/// Idle connections a pool keeps per host.
pub const MAX_IDLE_PER_HOST: usize = 32;
/// How long a pooled connection stays idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A host unused for this long holds no idle connection any more: the idle timeout, and as much
/// again for the pool's sweep that closes them.
const FORGET: Duration = Duration::from_secs(60);

/// The hosts one client's pool may hold connections to, with when each was last used.
#[derive(Default)]
pub struct Hosts(Mutex<HashMap<String, Instant>>);

impl Hosts {
    /// Records a use of the URL's host (when its request starts, each redirect hop, and when it
    /// ends); how many hosts the pool may hold connections to now.
    pub fn touch(&self, url: &Url) -> usize {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        let mut hosts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        hosts.insert(key, now);
        if hosts.len() > MAX_POOLED_HOSTS {
            hosts.retain(|_, used| now.duration_since(*used) < FORGET);
        }
        hosts.len()
    }
}

/// Builds a client whose redirect policy records each hop in the `Hosts` it is given.
pub type MakeClient = Box<dyn Fn(Arc<Hosts>) -> Result<reqwest::Client, ExecError> + Send + Sync>;

struct Generation {
    client: reqwest::Client,
    hosts: Arc<Hosts>,
}

/// The current client (none once closed), replaced by a fresh one past `MAX_POOLED_HOSTS`.
pub struct Pool {
    make: MakeClient,
    current: Mutex<Option<Generation>>,
    /// Clients made after the first.
    renewed: AtomicU64,
}

impl Pool {
    pub fn new(make: MakeClient) -> Result<Pool, ExecError> {
        let hosts = Arc::new(Hosts::default());
        let client = make(hosts.clone())?;
        Ok(Pool {
            make,
            current: Mutex::new(Some(Generation { client, hosts })),
            renewed: AtomicU64::new(0),
        })
    }

    fn current(&self) -> MutexGuard<'_, Option<Generation>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client to send a request to `url` with, and the hosts of its pool (touch the URL again
    /// when the request ends). `CLOSED` once closed.
    pub fn client_for(&self, url: &Url) -> Result<(reqwest::Client, Arc<Hosts>), ExecError> {
        let mut current = self.current();
        let generation = current.as_mut().ok_or(ExecError::Closed)?;
        if generation.hosts.touch(url) > MAX_POOLED_HOSTS {
            let hosts = Arc::new(Hosts::default());
            hosts.touch(url);
            *generation = Generation {
                client: (self.make)(hosts.clone())?,
                hosts,
            };
            self.renewed.fetch_add(1, Ordering::Relaxed);
        }
        Ok((generation.client.clone(), generation.hosts.clone()))
    }

    /// Drops the client: its idle connections close now, not when idle; later requests are `CLOSED`.
    pub fn close(&self) {
        self.current().take();
    }

    /// Clients made after the first (each past `MAX_POOLED_HOSTS` hosts).
    pub fn renewed(&self) -> u64 {
        self.renewed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new(Box::new(|_| {
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| ExecError::InvalidArgument(e.to_string()))
        }))
        .expect("pool")
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn few_hosts_keep_one_client_and_many_start_fresh_ones() {
        let p = pool();
        // One host over and over, under its scheme's default port written or not: one host.
        for _ in 0..1000 {
            p.client_for(&url("http://a.example/x")).expect("client");
            p.client_for(&url("http://a.example:80/y")).expect("client");
        }
        let (_, hosts) = p.client_for(&url("https://a.example/")).expect("client");
        assert_eq!(hosts.0.lock().expect("lock").len(), 2, "http and https of a.example");
        for i in 0..MAX_POOLED_HOSTS - 2 {
            p.client_for(&url(&format!("http://10.0.0.1:{}/", 1000 + i))).expect("client");
        }
        assert_eq!(p.renewed(), 0, "{MAX_POOLED_HOSTS} hosts share one pool");
        // One more host, recent as all the others: a fresh client, its pool holding that host alone.
        let (_, hosts) = p.client_for(&url("http://b.example/")).expect("client");
        assert_eq!(p.renewed(), 1);
        assert_eq!(hosts.0.lock().expect("lock").len(), 1);
        // Hosts long unused stop counting: the pool goes on with the recent ones.
        let Some(old) = Instant::now().checked_sub(FORGET + Duration::from_secs(1)) else {
            return;
        };
        for i in 0..MAX_POOLED_HOSTS - 1 {
            hosts.0.lock().expect("lock").insert(format!("http://old:{i}"), old);
        }
        let (_, kept) = p.client_for(&url("http://c.example/")).expect("client");
        assert!(Arc::ptr_eq(&kept, &hosts) && p.renewed() == 1, "the same client");
        assert_eq!(kept.0.lock().expect("lock").len(), 2, "b and c; the old ones forgotten");
        p.close();
        assert_eq!(p.client_for(&url("http://c.example/")).err().map(|e| e.code()), Some("CLOSED"));
    }
}
