//! The network capability's name resolution: an asynchronous resolver (hickory's, with the
//! system's `/etc/resolv.conf` and hosts file), and names that reach a restricted address refused.
//!
//! The system resolver (`getaddrinfo`) cannot be interrupted: a lookup that hangs holds its thread
//! until the resolver's own timeouts end it, whatever became of its call. Unbounded, a guest
//! allowed `*.domain` that asked for fresh names under a hung resolver filled the runtime's 512
//! blocking threads, which compiles and store I/O share (review AK). Bounded (8 lookups per
//! executor, 32 per process), a burst of 8 calls to hung names froze every other lookup of the
//! executor for the resolver's timeout, and four executors froze the process's (review AKF1: 9 s
//! with glibc's defaults, for good under a sustained attack). A lookup here is a future: it holds
//! no thread and no turn, and it ends, its socket closed, when its call ends. The thread-bound
//! lookups with their turns stay only where the system's configuration cannot be read.
//!
//! What an attacker controlling an allowed domain's DNS could make of hickory's defaults (review
//! AL1), and what bounds it here: answers of 4,000 records, forced over TCP and cached for a day,
//! held 1.2 MB each (314 MB per executor): name servers are asked over UDP only (an answer fits
//! a datagram), answers are kept at most `MAX_TTL`, and the cache holds `CACHED_ANSWERS`.
//! Lookups in flight are bounded, so the shared system resolver is not flooded: at most
//! `LOOKUPS_PER_EXECUTOR` per executor and `LOOKUPS_PER_DOMAIN` of those under one domain, their
//! turns ending with their calls. The hosts file is read
//! once per process (and again when it changes), not once per executor on the JS thread (a 6 MB
//! ad-block file took 124 MB and 376 ms per constructor). As glibc, A and AAAA are asked at
//! once (every address must be allowed) and `attempts` counts tries, not retries.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use hickory_resolver::TokioResolver;
use tokio::sync::Semaphore;

use crate::network::{restricted, Refused};

/// Lookups one executor's network runs at once on threads (without the asynchronous resolver).
pub const LOOKUPS_PER_NETWORK: usize = 8;

/// Lookups the process runs at once on threads, all executors together.
pub const LOOKUPS_PER_PROCESS: usize = 32;

/// Answers the asynchronous resolver keeps (hickory's default).
const CACHED_ANSWERS: usize = 32;

/// The longest an answer is kept, whatever its TTL.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Asynchronous lookups one executor's network has in flight at once: the shared system
/// resolver is not flooded (500 calls had 500 queries out), and a tenant's hung lookups hold only
/// its own executor's turns (turns shared by domain, or by the process, let one executor's calls
/// to hung names under `evil.co.uk` hold another's under `bank.co.uk` past its deadline: review
/// AL1F). Each turn ends with its call.
pub const LOOKUPS_PER_EXECUTOR: usize = 64;

/// Of those, lookups under one domain (its last two labels): one definition's hung names under
/// `*.evil.test` held all 64, and every other definition of the executor waited (review AL3).
pub const LOOKUPS_PER_DOMAIN: usize = 16;

/// The turns of one executor's asynchronous lookups: its own, and each domain's within them.
pub struct Turns {
    all: Arc<Semaphore>,
    /// Each domain with lookups in flight (an entry goes once its last turn is given back).
    domains: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Semaphore>>>,
}

impl Turns {
    fn new() -> Arc<Turns> {
        Arc::new(Turns { all: Arc::new(Semaphore::new(LOOKUPS_PER_EXECUTOR)), domains: Default::default() })
    }

    /// Waits for a turn of `host`'s domain, then one of the executor's.
    async fn take(&self, host: &str) -> Result<(tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit), BoxError> {
        let domain = {
            let mut domains = self.domains.lock().unwrap_or_else(|p| p.into_inner());
            let key = domain_of(host);
            match domains.get(&key).and_then(std::sync::Weak::upgrade) {
                Some(d) => d,
                None => {
                    // At most as many entries as lookups waiting or in flight.
                    domains.retain(|_, d| d.strong_count() > 0);
                    let d = Arc::new(Semaphore::new(LOOKUPS_PER_DOMAIN));
                    domains.insert(key, Arc::downgrade(&d));
                    d
                }
            }
        };
        let domain = domain.acquire_owned().await?;
        let all = self.all.clone().acquire_owned().await?;
        Ok((domain, all))
    }
}

/// The domain `host` is under, for its turns: its last two labels.
fn domain_of(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let mut dots = host.rmatch_indices('.').map(|(i, _)| i);
    match (dots.next(), dots.next()) {
        (Some(_), Some(i)) => host[i + 1..].to_string(),
        _ => host,
    }
}

static PROCESS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(LOOKUPS_PER_PROCESS)));

/// How one executor's network looks names up.
#[derive(Clone)]
pub enum Lookups {
    /// As futures, with the system's configuration, in turn.
    Async(TokioResolver, Arc<Turns>),
    /// With `getaddrinfo` on blocking threads, taking turns: at most `LOOKUPS_PER_NETWORK` here.
    Threads(Arc<Semaphore>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Lookups {
    /// The asynchronous resolver with the system's configuration, else lookups on threads.
    pub fn system() -> Lookups {
        let Ok((config, options)) = hickory_resolver::system_conf::read_system_conf() else { return Lookups::threads() };
        let udp: Vec<_> =
            config.name_servers().iter().filter(|n| n.protocol == hickory_resolver::proto::xfer::Protocol::Udp).cloned().collect();
        if udp.is_empty() {
            return Lookups::threads();
        }
        let config = hickory_resolver::config::ResolverConfig::from_parts(config.domain().cloned(), config.search().to_vec(), udp);
        Lookups::Async(Self::resolver(config, options), Turns::new())
    }

    /// The asynchronous resolver with `config` and the system's `options`, bounded as above.
    fn resolver(config: hickory_resolver::config::ResolverConfig, mut options: hickory_resolver::config::ResolverOpts) -> TokioResolver {
        use hickory_resolver::config::{LookupIpStrategy, ResolveHosts};
        options.cache_size = CACHED_ANSWERS;
        options.positive_max_ttl = Some(MAX_TTL);
        options.negative_max_ttl = Some(MAX_TTL);
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // resolv.conf's `attempts` counts tries; hickory's, retries after the first.
        options.attempts = options.attempts.saturating_sub(1);
        options.use_hosts_file = ResolveHosts::Never;
        let mut b = TokioResolver::builder_with_config(config, hickory_resolver::name_server::TokioConnectionProvider::default());
        *b.options_mut() = options;
        b.build()
    }

    /// Lookups on threads, in turn.
    pub fn threads() -> Lookups {
        Lookups::Threads(Arc::new(Semaphore::new(LOOKUPS_PER_NETWORK)))
    }

    /// Runs `lookup` on a blocking thread in its turn; the turn is held until `lookup` returns,
    /// even past the end of the caller's future.
    async fn on_thread<T: Send + 'static>(network: &Arc<Semaphore>, lookup: impl FnOnce() -> T + Send + 'static) -> Result<T, BoxError> {
        let network = network.clone().acquire_owned().await?;
        let process = PROCESS.clone().acquire_owned().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _turns = (network, process);
            lookup()
        })
        .await?)
    }

    /// The addresses of `host` (no trailing dot), port 0.
    pub async fn addresses(&self, host: &str) -> Result<Vec<SocketAddr>, BoxError> {
        match self {
            Lookups::Async(resolver, turns) => match hosts::lookup(host).await {
                Some(found) => Ok(found.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect()),
                None => {
                    let _turn = turns.take(host).await?;
                    Self::ask(resolver, host).await
                }
            },
            Lookups::Threads(network) => {
                let name = host.to_string();
                Ok(Self::on_thread(network, move || std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0)).map(Iterator::collect::<Vec<_>>))
                    .await??)
            }
        }
    }

    /// Asks the name servers.
    async fn ask(resolver: &TokioResolver, host: &str) -> Result<Vec<SocketAddr>, BoxError> {
        match resolver.lookup_ip(host).await {
                Ok(found) => Ok(found.iter().map(|ip| SocketAddr::new(ip, 0)).collect()),
                // Said plainly (hickory's own text is its query's Debug form).
                Err(e) if e.is_nx_domain() => Err(format!("{host} does not exist (NXDOMAIN)").into()),
                // Name servers are asked over UDP only: an answer too large for a datagram comes
                // back truncated, and empty.
                Err(e) if e.is_no_records_found() => {
                    Err(format!("{host} has no address (or more than fit in one UDP answer, about 70: TCP is not used)").into())
                }
                Err(e) => Err(e.into()),
        }
    }
}

/// Resolves names, and refuses any that reaches a restricted address.
pub struct GuardedResolver {
    pub lookups: Lookups,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_string();
        let lookups = self.lookups.clone();
        Box::pin(async move {
            let addrs = lookups.addresses(&host).await?;
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            if let Some((ip, why)) = addrs.iter().find_map(|a| restricted(a.ip()).map(|w| (a.ip(), w))) {
                let refused = Refused {
                    host: host.clone(),
                    message: format!(
                        "{host} resolves to {ip}, a {why} address; only an allowedHosts entry naming that IP literally reaches it"
                    ),
                };
                return Err(Box::new(refused) as BoxError);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[path = "resolver_hosts.rs"]
mod hosts;

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn hung_lookups_hold_at_most_their_turns_and_waiting_calls_hold_nothing() {
        let network = Arc::new(Semaphore::new(LOOKUPS_PER_NETWORK));
        let (running, most, started) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let hang = |running: Arc<AtomicUsize>, most: Arc<AtomicUsize>, started: Arc<AtomicUsize>| {
            move || {
                started.fetch_add(1, Ordering::SeqCst);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                running.fetch_sub(1, Ordering::SeqCst);
            }
        };
        // 100 calls whose lookups hang, each given up by its call after 50 ms.
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let (n, f) = (network.clone(), hang(running.clone(), most.clone(), started.clone()));
                tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(50), Lookups::on_thread(&n, f)).await.is_err() })
            })
            .collect();
        for c in calls {
            assert!(c.await.expect("joins"), "every call ended by its deadline");
        }
        // Only the first turns' lookups started; the calls that waited left the queue.
        assert_eq!(started.load(Ordering::SeqCst), LOOKUPS_PER_NETWORK);
        assert_eq!(most.load(Ordering::SeqCst), LOOKUPS_PER_NETWORK);
        // Their turns come back when they return, not when their calls ended.
        assert_eq!(network.available_permits(), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(network.available_permits(), LOOKUPS_PER_NETWORK);
        assert_eq!(Lookups::on_thread(&network, || 7).await.expect("runs"), 7);
    }

    /// A DNS server on loopback for `lookups`: names starting with "hang" are never answered,
    /// "noaddr" ones have no records, "loop" ones are 127.0.0.1, others 44.1.1.1 (A; no AAAA
    /// records). Counts the queries.
    async fn fake_dns() -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("binds");
        let (addr, queries) = (socket.local_addr().expect("addr"), Arc::new(AtomicUsize::new(0)));
        let counted = queries.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                counted.fetch_add(1, Ordering::SeqCst);
                let q = &buf[..n];
                let (mut i, mut first) = (12, String::new());
                while i < n && q[i] != 0 {
                    if first.is_empty() {
                        first = String::from_utf8_lossy(&q[i + 1..i + 1 + q[i] as usize]).to_lowercase();
                    }
                    i += 1 + q[i] as usize;
                }
                if first.starts_with("hang") || i + 5 > n {
                    continue;
                }
                let a = u16::from_be_bytes([q[i + 1], q[i + 2]]) == 1 && !first.starts_with("noaddr");
                let mut r = q[..2].to_vec();
                r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
                r.extend_from_slice(&q[12..i + 5]);
                if a {
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                    r.extend_from_slice(if first.starts_with("loop") { &[127, 0, 0, 1] } else { &[44, 1, 1, 1] });
                }
                let _ = socket.send_to(&r, from).await;
            }
        });
        (addr, queries)
    }

    /// The asynchronous resolver asking only `server`, with a long timeout (30 s, 5 attempts: a
    /// lookup of a hung name lasts minutes unless its caller ends it).
    fn resolver_at(server: SocketAddr) -> Lookups {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        let mut config = ResolverConfig::new();
        config.add_name_server(NameServerConfig::new(server, hickory_resolver::proto::xfer::Protocol::Udp));
        let mut options = hickory_resolver::config::ResolverOpts::default();
        options.timeout = Duration::from_secs(30);
        options.attempts = 5;
        Lookups::Async(Lookups::resolver(config, options), Turns::new())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lookups_of_hung_names_hold_nothing_other_lookups_wait_for() {
        let (server, queries) = fake_dns().await;
        let lookups = resolver_at(server);
        // 40 lookups of names never answered, past the 8 turns lookups on threads had.
        let hung: Vec<_> = (0..40)
            .map(|i| {
                let l = lookups.clone();
                tokio::spawn(async move { l.addresses(&format!("hang-{i}.test")).await.is_ok() })
            })
            .collect();
        while queries.load(Ordering::SeqCst) < 80 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Other names are answered meanwhile, while every hung lookup is still waiting.
        for i in 0..20 {
            let got = lookups.addresses(&format!("pub-{i}.test")).await.expect("answered");
            assert_eq!(got, vec![SocketAddr::from(([44, 1, 1, 1], 0))]);
        }
        assert!(hung.iter().all(|h| !h.is_finished()), "the hung lookups were still waiting");
        // Their calls end: so do they, at once (a lookup on a thread ran on to the resolver's timeout).
        for h in &hung {
            h.abort();
        }
        for h in hung {
            assert!(h.await.expect_err("ended by its caller").is_cancelled());
        }
        // A name without an address is said plainly.
        let e = lookups.addresses("noaddr-1.test").await.expect_err("no address");
        assert!(e.to_string().starts_with("noaddr-1.test has no address"), "{e}");
        // A name reaching a restricted address is refused through this resolver too.
        let resolver = GuardedResolver { lookups };
        let name: reqwest::dns::Name = "loop-1.test".parse().expect("a name");
        let e = reqwest::dns::Resolve::resolve(&resolver, name).await.err().expect("refused");
        assert!(e.downcast_ref::<Refused>().is_some_and(|r| r.message.contains("127.0.0.1")), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_system_resolver_is_asynchronous_and_knows_localhost() {
        let lookups = Lookups::system();
        // Where the configuration cannot be read, lookups run on threads, as `getaddrinfo` does.
        let readable = std::fs::read_to_string("/etc/resolv.conf").is_ok();
        assert_eq!(matches!(lookups, Lookups::Async(..)), readable);
        let got = lookups.addresses("localhost").await.expect("localhost resolves");
        assert!(!got.is_empty() && got.iter().all(|a| a.ip().is_loopback()), "{got:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hung_lookups_hold_only_their_executors_turns_until_their_calls_end() {
        let (server, queries) = fake_dns().await;
        let (attacked, other) = (resolver_at(server), resolver_at(server));
        assert_eq!(domain_of("hang-1.Evil.test."), "evil.test");
        assert_eq!(domain_of("localhost"), "localhost");
        // 100 lookups of hung names under 10 domains: only the executor's turns reach the server.
        let hung: Vec<_> = (0..100)
            .map(|i| {
                let l = attacked.clone();
                tokio::spawn(async move { l.addresses(&format!("hang-{i}.evil{}.test", i % 10)).await.is_ok() })
            })
            .collect();
        while queries.load(Ordering::SeqCst) < 2 * LOOKUPS_PER_EXECUTOR {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another executor's names are answered meanwhile.
        let got = other.addresses("api.bank.co.uk").await.expect("answered");
        assert_eq!(got, vec![SocketAddr::from(([44, 1, 1, 1], 0))]);
        // A and AAAA are asked at once: each hung lookup sent two queries, and no more went out.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(queries.load(Ordering::SeqCst), 2 * LOOKUPS_PER_EXECUTOR + 2);
        // This executor's next lookup waits for a turn, which the hung lookups give back as their
        // calls end.
        let waiting = {
            let l = attacked.clone();
            tokio::spawn(async move { l.addresses("ok.example.test").await.map_err(|e| e.to_string()) })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "it waits for one of the executor's turns");
        for h in &hung {
            h.abort();
        }
        assert_eq!(waiting.await.expect("joins").expect("answered"), vec![SocketAddr::from(([44, 1, 1, 1], 0))]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hung_names_under_one_domain_hold_only_that_domains_turns_of_the_executor() {
        let (server, queries) = fake_dns().await;
        let lookups = resolver_at(server);
        let hung: Vec<_> = (0..100)
            .map(|i| {
                let l = lookups.clone();
                tokio::spawn(async move { l.addresses(&format!("hang-{i}.evil.test")).await.is_ok() })
            })
            .collect();
        while queries.load(Ordering::SeqCst) < 2 * LOOKUPS_PER_DOMAIN {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The executor's other names are answered meanwhile; no more of evil.test's went out.
        let got = lookups.addresses("api.good.test").await.expect("answered");
        assert_eq!(got, vec![SocketAddr::from(([44, 1, 1, 1], 0))]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(queries.load(Ordering::SeqCst), 2 * LOOKUPS_PER_DOMAIN + 2);
        for h in &hung {
            h.abort();
        }
    }
}
