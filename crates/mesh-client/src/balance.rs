//! Client-side load balancing: one logical client over every replica behind an address.
//!
//! A target is `host:port` (a DNS name, re-resolved every few seconds: what a Kubernetes
//! headless Service or a compose service with replicas gives) or a comma-separated list of them.
//! Each resolved address gets its own lazily connecting mTLS channel from the same connector, so
//! every replica must still present the SPIFFE ID the connector pins. Each call goes to the less
//! loaded (fewer calls in flight) of two replicas picked at random, the power-of-two-choices rule.
//! Replicas that appear are used from the next call on; replicas that leave are dropped once
//! their calls finish.
//!
//! The resilience a sidecar would add, in process, in this order (outermost first, as
//! `Runtime::client` stacks them): the deadline ([`crate::deadline`]), then here
//! **retries** and **outlier ejection**:
//! - a replica whose connection fails, or that answers "overloaded" (its load shedding, see
//!   the server's shedder) to 5 calls in a row, is *ejected*: passed over for 250 ms, twice as long
//!   at each ejection in a row (at most 4 s), and probed by the first call after that; a
//!   success clears it. An UNAVAILABLE the handler returned (its own dependency is down) does
//!   not count: the replica still answers its reads, and ejecting it would lose them. The name is resolved again at once (the replica may have moved). When every
//!   replica is ejected, a call fails at once with UNAVAILABLE instead of waiting on them;
//! - a call of an idempotent method ([`crate::retry::idempotent`]) that failed with a connection error or
//!   UNAVAILABLE is retried, at most twice, on another replica when there is one, after a
//!   jittered backoff, only while its deadline allows, and only while the **retry budget** has
//!   room: retries may be at most 20 % of the calls of the last 10 s plus 1 a second, so a
//!   struggling dependency never sees a retry storm. Never on any other status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use mesh_tls::client::MeshConnector;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

use crate::TaskGuard;
use crate::discovery::{FIRST_RESOLUTION, Resolve, entries};
use crate::replica::{InFlight, Replica};
use crate::retry::{Answer, MAX_ATTEMPTS, RETRY_BACKOFF, idempotent, retryable};
use crate::stats::BalanceStats;

/// The replicas as last resolved; `None` until the first answer.
type Replicas = Option<Arc<Vec<Arc<Replica>>>>;

struct Shared {
    replicas: watch::Receiver<Replicas>,
    /// Asks the resolver to look again now (a replica's connection failed: it may have moved).
    resolve_now: Arc<tokio::sync::Notify>,
    /// The target as given, for calls made before any address is known: its error is the
    /// caller's answer.
    fallback: Channel,
    target: String,
    budget: TpsBudget,
    stats: Arc<BalanceStats>,
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

/// A random index below `n` (n > 0).
fn random_below(n: usize) -> usize {
    rand::random_range(0..n)
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
        let name = target.to_owned();
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
                                known.insert(*addr, Arc::new(Replica::new(*addr, channel)));
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
                target: name,
                // 20 % of the calls of the last 10 s, and 1 a second, may be retried.
                budget: TpsBudget::new(Duration::from_secs(10), 1, 0.2),
                stats: Arc::new(BalanceStats::default()),
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

    /// What this client has done.
    pub fn stats(&self) -> Arc<BalanceStats> {
        self.shared.stats.clone()
    }

    /// Power of two choices among the replicas that are not ejected, preferring those this
    /// call has not tried yet. `Err(())` when every replica is ejected; `Ok(None)` when none is
    /// known (the target as given answers).
    async fn pick(shared: &Shared, tried: &[SocketAddr]) -> Result<Option<Arc<Replica>>, ()> {
        let mut replicas = shared.replicas.clone();
        if replicas.borrow().is_none() {
            let _ =
                tokio::time::timeout(FIRST_RESOLUTION, replicas.wait_for(Option::is_some)).await;
        }
        // No answer yet, or no replica there: the target as given answers (and fails fast).
        let Some(set) = replicas.borrow().clone() else {
            return Ok(None);
        };
        if set.is_empty() {
            return Ok(None);
        }
        let available: Vec<&Arc<Replica>> = set.iter().filter(|r| r.available()).collect();
        if available.is_empty() {
            return Err(());
        }
        let untried: Vec<&Arc<Replica>> = available
            .iter()
            .copied()
            .filter(|r| !tried.contains(&r.addr))
            .collect();
        let candidates = if untried.is_empty() {
            available
        } else {
            untried
        };
        Ok(Some(match candidates.len() {
            1 => candidates[0].clone(),
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
                lighter.clone()
            }
        }))
    }

    /// One attempt: a replica picked (not one of `tried` when another is there), the request
    /// sent, the replica ejected on a connection failure. Returns the answer and the replica.
    async fn attempt(
        shared: &Shared,
        request: http::Request<Body>,
        tried: &[SocketAddr],
    ) -> (Answer, Option<SocketAddr>) {
        let replica = match Self::pick(shared, tried).await {
            Ok(Some(replica)) => replica,
            Ok(None) => return (shared.fallback.clone().oneshot(request).await, None),
            Err(()) => {
                shared.stats.fast_failures.fetch_add(1, Ordering::Relaxed);
                shared.resolve_now.notify_one();
                let status = tonic::Status::unavailable(format!(
                    "no replica of {} is available: each one failed just now",
                    shared.target
                ));
                return (Ok(status.into_http()), None);
            }
        };
        shared.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let _counted = InFlight::new(replica.clone());
        let answer = replica.channel.clone().oneshot(request).await;
        let overloaded = answer.as_ref().is_ok_and(|response| {
            response
                .headers()
                .contains_key(crate::replica::OVERLOADED_HEADER)
        });
        if answer.is_err() {
            replica.eject();
            shared.stats.ejections.fetch_add(1, Ordering::Relaxed);
            shared.resolve_now.notify_one();
        } else if overloaded {
            if replica.overloaded() {
                replica.eject();
                shared.stats.ejections.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            replica.succeeded();
        }
        (answer, Some(replica.addr))
    }

    /// A call, retried as the module says.
    async fn call_with_retries(shared: Arc<Shared>, request: http::Request<Body>) -> Answer {
        shared.stats.calls.fetch_add(1, Ordering::Relaxed);
        shared.budget.deposit();
        if !idempotent(request.uri().path()) {
            return Self::attempt(&shared, request, &[]).await.0;
        }
        // The body is sent again on a retry, so it is read once into memory (unary calls: one
        // message, bounded by the server's message limit).
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return Ok(
                    tonic::Status::internal(format!("reading the request: {error}")).into_http(),
                );
            }
        };
        let rebuild = || {
            let mut request =
                http::Request::new(Body::new(http_body_util::Full::new(body.clone())));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = parts.uri.clone();
            *request.version_mut() = parts.version;
            *request.headers_mut() = parts.headers.clone();
            request
        };
        let mut tried = Vec::new();
        let mut backoff = RETRY_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let (answer, replica) = Self::attempt(&shared, rebuild(), &tried).await;
            if !retryable(&answer) || attempt == MAX_ATTEMPTS {
                return answer;
            }
            tried.extend(replica);
            // Half to all of the backoff, so that callers that failed together do not return
            // together.
            let wait = backoff / 2 + backoff.mul_f64(random_below(1000) as f64 / 2000.0);
            let out_of_time = crate::deadline::current()
                .is_some_and(|deadline| Instant::now() + wait >= deadline);
            if out_of_time {
                return answer;
            }
            if !shared.budget.withdraw() {
                shared
                    .stats
                    .budget_exhausted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target = %shared.target, "retry budget exhausted: not retried");
                return answer;
            }
            shared.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            backoff *= 2;
        }
        unreachable!("the last attempt returns")
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
        Box::pin(Self::call_with_retries(self.shared.clone(), request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_picks_cover_the_range() {
        let seen: std::collections::BTreeSet<usize> = (0..200).map(|_| random_below(3)).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }
}
