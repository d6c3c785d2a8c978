//! The network's HTTP clients with their connection pool bounded. reqwest keeps idle connections
//! per host (30 s) with no limit on how many hosts: a guest granted many hosts (`*.domain`, an IP
//! literal with any port) held one open connection, a file descriptor of this process, for every
//! host it had reached in the last 30 s (300 ports of `127.0.0.1` reached in three calls: 300
//! descriptors held), so a hostile guest could run the whole process out of them.
//!
//! Here one client pools connections, for at most `MAX_POOLED_HOSTS` hosts (scheme, host and
//! port) at a time, each keeping at most `MAX_IDLE_PER_HOST` idle; a request to any other host
//! goes through a second client that keeps no idle connection (it closes when its request ends).
//! A pooled host leaves the pool, its place free for another, once it has no request under way
//! and has not been used for `FORGET` (by then its idle connections are closed). Redirects are
//! followed hop by hop by the caller, each hop through the client its host gets. So the idle
//! connections of a network are at most `MAX_POOLED_HOSTS * MAX_IDLE_PER_HOST` (256), beside one
//! per request under way, and a guest that reaches few hosts keeps its connections warm.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::error::ExecError;

/// Hosts (scheme, host and port) whose connections are pooled at a time.
pub const MAX_POOLED_HOSTS: usize = 32;
/// Idle connections the pool keeps per host.
pub const MAX_IDLE_PER_HOST: usize = 8;
/// How long a pooled connection stays idle before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled host unused for this long (and with no request under way) holds no idle connection
/// any more, and leaves the pool: the idle timeout, and as much again for the pool's sweep.
const FORGET: Duration = Duration::from_secs(60);

/// A pooled host: when it was last used, and its requests under way.
struct Pooled {
    used: Instant,
    under_way: usize,
}

struct Clients {
    pooled: reqwest::Client,
    unpooled: reqwest::Client,
}

/// The pooling client and the other (none once closed), and the hosts pooled now.
pub struct Pool {
    clients: Mutex<Option<Clients>>,
    hosts: Mutex<HashMap<String, Pooled>>,
}

/// The client for one request (or one redirect hop); dropped when its response has been read,
/// which starts its host's idle time.
pub struct Lease<'a> {
    pub client: reqwest::Client,
    pool: &'a Pool,
    /// The pooled host's key; none through the client that keeps no connection.
    host: Option<String>,
}

impl Lease<'_> {
    pub fn pooled(&self) -> bool {
        self.host.is_some()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(key) = &self.host else { return };
        if let Some(h) = self.pool.hosts().get_mut(key) {
            h.under_way -= 1;
            h.used = Instant::now();
        }
    }
}

fn host_key(url: &Url) -> String {
    format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0))
}

impl Pool {
    /// `make` builds a client keeping at most so many idle connections per host.
    pub fn new(make: impl Fn(usize) -> Result<reqwest::Client, ExecError>) -> Result<Pool, ExecError> {
        let clients = Clients { pooled: make(MAX_IDLE_PER_HOST)?, unpooled: make(0)? };
        Ok(Pool { clients: Mutex::new(Some(clients)), hosts: Mutex::new(HashMap::new()) })
    }

    fn hosts(&self) -> MutexGuard<'_, HashMap<String, Pooled>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client to send a request to `url` with: the pooling one if its host is pooled, or can
    /// be; `CLOSED` once closed.
    pub fn client_for(&self, url: &Url) -> Result<Lease<'_>, ExecError> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let clients = clients.as_ref().ok_or(ExecError::Closed)?;
        let key = host_key(url);
        let mut hosts = self.hosts();
        let now = Instant::now();
        if !hosts.contains_key(&key) && hosts.len() >= MAX_POOLED_HOSTS {
            hosts.retain(|_, h| h.under_way > 0 || now.duration_since(h.used) < FORGET);
        }
        if !hosts.contains_key(&key) && hosts.len() >= MAX_POOLED_HOSTS {
            return Ok(Lease { client: clients.unpooled.clone(), pool: self, host: None });
        }
        let h = hosts.entry(key.clone()).or_insert(Pooled { used: now, under_way: 0 });
        h.under_way += 1;
        h.used = now;
        Ok(Lease { client: clients.pooled.clone(), pool: self, host: Some(key) })
    }

    /// Drops the clients: their idle connections close now, not when idle; later requests are `CLOSED`.
    pub fn close(&self) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new(|idle| {
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(idle)
                .build()
                .map_err(|e| ExecError::InvalidArgument(e.to_string()))
        })
        .expect("pool")
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn a_bounded_number_of_hosts_is_pooled_and_the_rest_keep_no_connection() {
        let p = pool();
        // One host over and over, under its scheme's default port written or not: one host.
        for _ in 0..1000 {
            assert!(p.client_for(&url("http://a.example/x")).expect("client").pooled());
            assert!(p.client_for(&url("http://a.example:80/y")).expect("client").pooled());
        }
        assert!(p.client_for(&url("https://a.example/")).expect("client").pooled());
        assert_eq!(p.hosts().len(), 2, "http and https of a.example");
        // Requests under way to the rest of the pooled hosts.
        let under_way: Vec<Lease> =
            (0..MAX_POOLED_HOSTS - 2).map(|i| p.client_for(&url(&format!("http://10.0.0.1:{}/", 1000 + i))).expect("client")).collect();
        assert!(under_way.iter().all(|l| l.pooled()));
        // One host more: not pooled, while the others are recent; a pooled one still is.
        assert!(!p.client_for(&url("http://b.example/")).expect("client").pooled());
        assert!(p.client_for(&url("http://a.example/")).expect("client").pooled());
        assert_eq!(p.hosts().len(), MAX_POOLED_HOSTS);
        // Hosts long unused leave the pool; those with a request under way stay, however old.
        let Some(old) = Instant::now().checked_sub(FORGET + Duration::from_secs(1)) else {
            return;
        };
        p.hosts().values_mut().for_each(|h| h.used = old);
        let b = p.client_for(&url("http://b.example/")).expect("client");
        assert!(b.pooled());
        assert_eq!(p.hosts().len(), MAX_POOLED_HOSTS - 1, "a.example's two left; b came");
        drop(under_way);
        assert!(p.hosts().values().filter(|h| h.under_way > 0).count() == 1, "b's request alone is under way");
        p.close();
        assert_eq!(p.client_for(&url("http://c.example/")).err().map(|e| e.code()), Some("CLOSED"));
    }
}
