//! Client-side load balancing: one logical client over every replica behind an address.
//!
//! A target is `host:port` (a DNS name, re-resolved every few seconds: what a Kubernetes
//! headless Service or a compose service with replicas gives) or a comma-separated list of them.
//! Each resolved address gets its own lazily connecting mTLS channel from the same connector, so
//! every replica must still present the SPIFFE ID the connector pins. Each call goes to the less
//! loaded (fewer calls in flight) of two replicas picked at random, the power-of-two-choices rule;
//! a replica whose connection failed is passed over for a second, and the name is resolved again
//! at once (the replica may have moved). Replicas that appear are used from the next call on;
//! replicas that leave are dropped once their calls finish.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_tls::client::MeshConnector;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::identity::TaskGuard;

/// How often a DNS name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(2);

/// How long a replica whose connection failed is passed over.
const PASS_OVER: Duration = Duration::from_secs(1);

/// How long a call waits for the first resolution before it tries the target as given.
const FIRST_RESOLUTION: Duration = Duration::from_secs(3);

/// Where a target's addresses come from: DNS in production, a fixed answer in tests.
pub trait Resolve: Send + Sync + 'static {
    /// Every address behind `target` now: `Some` when the answer is authoritative (an empty list
    /// means no replica is there, e.g. every pod of a headless Service is gone), `None` when
    /// the resolver could not tell (the replicas known so far are kept).
    fn resolve(
        &self,
        target: &str,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<Vec<SocketAddr>>> + Send + '_>>;
}

/// Whether a lookup error says the name does not exist (as opposed to a resolver that could
/// not answer): getaddrinfo's EAI_NONAME and EAI_NODATA.
fn no_such_name(error: &std::io::Error) -> bool {
    let text = error.to_string();
    text.contains("not known") || text.contains("No address associated")
}

/// The system resolver: each comma-separated entry looked up, the answers joined.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dns;

impl Resolve for Dns {
    fn resolve(
        &self,
        target: &str,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<Vec<SocketAddr>>> + Send + '_>> {
        let entries: Vec<String> = entries(target).map(str::to_owned).collect();
        Box::pin(async move {
            let mut found = Vec::new();
            let mut authoritative = true;
            for entry in entries {
                match tokio::net::lookup_host(entry.as_str()).await {
                    Ok(addrs) => found.extend(addrs),
                    Err(error) => {
                        authoritative &= no_such_name(&error);
                        tracing::debug!(%entry, %error, "no address for a replica entry");
                    }
                }
            }
            found.sort();
            found.dedup();
            (authoritative || !found.is_empty()).then_some(found)
        })
    }
}

/// The entries of a target, without scheme or trailing slash.
fn entries(target: &str) -> impl Iterator<Item = &str> {
    target
        .split(',')
        .map(|entry| {
            entry
                .trim()
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
        })
        .filter(|entry| !entry.is_empty())
}

/// One replica: its channel and what the balancer knows of it.
#[derive(Debug)]
struct Replica {
    addr: SocketAddr,
    channel: Channel,
    in_flight: AtomicUsize,
    passed_over_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn available(&self) -> bool {
        self.passed_over_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| Instant::now() >= until)
    }

    fn pass_over(&self) {
        *self
            .passed_over_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + PASS_OVER);
    }
}

/// Counts a call in flight on a replica until dropped.
struct InFlight(Arc<Replica>);

impl InFlight {
    fn new(replica: Arc<Replica>) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(replica)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The replicas as last resolved; `None` until the first answer.
type Replicas = Option<Arc<Vec<Arc<Replica>>>>;

struct Shared {
    replicas: watch::Receiver<Replicas>,
    /// Asks the resolver to look again now (a replica's connection failed: it may have moved).
    resolve_now: Arc<tokio::sync::Notify>,
    /// The target as given, for calls made before any address is known: its error is the
    /// caller's answer.
    fallback: Channel,
    _resolver: TaskGuard,
}

/// A balanced client over the replicas of one target; cheap to clone, every clone shares the
/// replicas and their load.
#[derive(Clone)]
pub struct Balanced {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("replicas", &self.replicas())
            .finish()
    }
}

/// A random index below `n` (n > 0), from the standard library's randomly keyed hasher.
fn random_below(n: usize) -> usize {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(n);
    (hasher.finish() % n as u64) as usize
}

impl Balanced {
    /// Balances over `target`'s replicas, resolved by `resolver` every `every`, each reached with
    /// `connector` (which pins the SPIFFE ID every replica must present).
    pub fn new(
        connector: MeshConnector,
        target: &str,
        resolver: Arc<dyn Resolve>,
        every: Duration,
    ) -> Result<Self, mesh_tls::TlsError> {
        let first = entries(target).next().unwrap_or(target).to_owned();
        let fallback = connector.channel(&first)?;
        let (publish, replicas) = watch::channel(Replicas::default());
        let resolve_now = Arc::new(tokio::sync::Notify::new());
        let nudged = resolve_now.clone();
        let target = target.to_owned();
        let resolver = TaskGuard::new(tokio::spawn(async move {
            let mut known: BTreeMap<SocketAddr, Arc<Replica>> = BTreeMap::new();
            loop {
                // A resolver that could not answer keeps the replicas we have.
                if let Some(addrs) = resolver.resolve(&target).await {
                    let before: Vec<SocketAddr> = known.keys().copied().collect();
                    let first_answer = publish.borrow().is_none();
                    known.retain(|addr, _| addrs.contains(addr));
                    for addr in &addrs {
                        if known.contains_key(addr) {
                            continue;
                        }
                        match connector.channel(&addr.to_string()) {
                            Ok(channel) => {
                                known.insert(
                                    *addr,
                                    Arc::new(Replica {
                                        addr: *addr,
                                        channel,
                                        in_flight: AtomicUsize::new(0),
                                        passed_over_until: Mutex::new(None),
                                    }),
                                );
                            }
                            Err(error) => tracing::warn!(%addr, %error, "replica not usable"),
                        }
                    }
                    let now: Vec<SocketAddr> = known.keys().copied().collect();
                    if now != before || first_answer {
                        tracing::info!(%target, replicas = ?now, "replicas changed");
                        publish.send_replace(Some(Arc::new(known.values().cloned().collect())));
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = nudged.notified() => {
                        // At most a few lookups a second, however many calls fail.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
        Ok(Self {
            shared: Arc::new(Shared {
                replicas,
                resolve_now,
                fallback,
                _resolver: resolver,
            }),
        })
    }

    /// The addresses balanced over now.
    pub fn replicas(&self) -> Vec<SocketAddr> {
        self.shared
            .replicas
            .borrow()
            .iter()
            .flat_map(|set| set.iter().map(|r| r.addr))
            .collect()
    }

    /// Power of two choices among the replicas not passed over (all of them if every one is).
    async fn pick(shared: &Shared) -> Option<Arc<Replica>> {
        let mut replicas = shared.replicas.clone();
        if replicas.borrow().is_none() {
            let _ =
                tokio::time::timeout(FIRST_RESOLUTION, replicas.wait_for(Option::is_some)).await;
        }
        // No answer yet, or no replica there: the target as given answers (and fails fast).
        let set = replicas.borrow().clone()?;
        let available: Vec<&Arc<Replica>> = set.iter().filter(|r| r.available()).collect();
        let candidates: Vec<&Arc<Replica>> = if available.is_empty() {
            set.iter().collect()
        } else {
            available
        };
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let a = random_below(n);
                let b = (a + 1 + random_below(n - 1)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                let lighter =
                    if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                        b
                    } else {
                        a
                    };
                Some(lighter.clone())
            }
        }
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for its replica's channel to be ready inside its future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some(replica) = Self::pick(&shared).await else {
                return shared.fallback.clone().oneshot(request).await;
            };
            let _counted = InFlight::new(replica.clone());
            let answer = replica.channel.clone().oneshot(request).await;
            if answer.is_err() {
                replica.pass_over();
                shared.resolve_now.notify_one();
            }
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_lists_of_entries_with_or_without_a_scheme() {
        let found: Vec<&str> = entries("https://a:1, b:2,,http://c:3/").collect();
        assert_eq!(found, ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn only_a_name_that_does_not_exist_empties_the_replica_set() {
        let gone = std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        );
        let flaky = std::io::Error::other(
            "failed to lookup address information: Temporary failure in name resolution",
        );
        assert!(no_such_name(&gone));
        assert!(!no_such_name(&flaky));
    }

    #[test]
    fn random_picks_cover_the_range() {
        let seen: std::collections::BTreeSet<usize> = (0..200).map(|_| random_below(3)).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }
}
