//! The network capability's name resolution: the system resolver, with a bound on the lookups
//! running at once, and names that reach a restricted address refused.
//!
//! `getaddrinfo` cannot be interrupted: a lookup that hangs holds its thread until the resolver's
//! own timeouts end it, whatever became of its call. Unbounded, a guest allowed `*.domain` that
//! asked for fresh names under a hung resolver filled the runtime's 512 blocking threads, which
//! compiles and store I/O share: another executor's first compile waited 14-20 s, also after the
//! attack and `close()` (review AK). Now an executor's network runs at most
//! `LOOKUPS_PER_NETWORK` lookups at once and the process `LOOKUPS_PER_PROCESS`; a call waiting
//! for its turn holds no thread and leaves the queue when it ends.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use tokio::sync::Semaphore;

use crate::network::{restricted, Refused};

/// Lookups one executor's network runs at once.
pub const LOOKUPS_PER_NETWORK: usize = 8;

/// Lookups the process runs at once, all executors together.
pub const LOOKUPS_PER_PROCESS: usize = 32;

static PROCESS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(LOOKUPS_PER_PROCESS)));

/// The turns of one executor's lookups.
#[derive(Clone)]
pub struct Lookups {
    network: Arc<Semaphore>,
}

impl Default for Lookups {
    fn default() -> Self {
        Lookups { network: Arc::new(Semaphore::new(LOOKUPS_PER_NETWORK)) }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Lookups {
    /// Runs `lookup` on a blocking thread in its turn; the turn is held until `lookup` returns,
    /// even past the end of the caller's future.
    pub async fn run<T: Send + 'static>(&self, lookup: impl FnOnce() -> T + Send + 'static) -> Result<T, BoxError> {
        let network = self.network.clone().acquire_owned().await?;
        let process = PROCESS.clone().acquire_owned().await?;
        Ok(tokio::task::spawn_blocking(move || {
            let _turns = (network, process);
            lookup()
        })
        .await?)
    }
}

/// Resolves names with the system resolver, in turn, and refuses any that reaches a restricted
/// address.
pub struct GuardedResolver {
    pub lookups: Lookups,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_string();
        let lookups = self.lookups.clone();
        Box::pin(async move {
            let name = host.clone();
            let addrs: Vec<SocketAddr> = lookups
                .run(move || std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0)).map(Iterator::collect::<Vec<_>>))
                .await??;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn hung_lookups_hold_at_most_their_turns_and_waiting_calls_hold_nothing() {
        let lookups = Lookups::default();
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
                let (l, f) = (lookups.clone(), hang(running.clone(), most.clone(), started.clone()));
                tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(50), l.run(f)).await.is_err() })
            })
            .collect();
        for c in calls {
            assert!(c.await.expect("joins"), "every call ended by its deadline");
        }
        // Only the first turns' lookups started; the calls that waited left the queue.
        assert_eq!(started.load(Ordering::SeqCst), LOOKUPS_PER_NETWORK);
        assert_eq!(most.load(Ordering::SeqCst), LOOKUPS_PER_NETWORK);
        // Their turns come back when they return, not when their calls ended.
        assert_eq!(lookups.network.available_permits(), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(lookups.network.available_permits(), LOOKUPS_PER_NETWORK);
        assert_eq!(lookups.run(|| 7).await.expect("runs"), 7);
    }
}
