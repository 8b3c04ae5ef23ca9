//! Client-side load balancing: one logical client over every replica behind an address.
//!
//! A target is `host:port` (a DNS name, re-resolved every few seconds: what a Kubernetes headless
//! Service or a compose service with replicas gives) or a comma-separated list of them
//! ([`crate::discovery`]). Each call goes to the less loaded (fewer calls pending) of two ready
//! replicas picked at random, the power-of-two-choices rule, over tower's ready cache and
//! pending-requests load. Replicas that appear are used from the next call on; replicas that
//! leave are dropped once their calls finish. An ejected replica ([`crate::replica`]) is not
//! ready, so it is not picked; when every replica is ejected a call fails at once with
//! UNAVAILABLE instead of waiting on them.
//!
//! Why not `tower::balance::p2c::Balance` itself: it picks the replica in `poll_ready`, before it
//! sees the request, so a retry could not be steered away from the replica that just refused it
//! ([`crate::retry::Tried`]). This is the same rule over the same tower parts, picked in `call`.
//!
//! [`Balanced`] is the whole stack below the deadline, outermost first:
//! failures as gRPC statuses → replayable bodies → retries ([`crate::retry`]) → a buffer (every
//! clone shares one balancer) → the balancer → per replica: pending-request count → ejection
//! gate → the replica's mTLS channels (`mesh_tls::client::CertChannel`: one per certificate of
//! ours, so a call whose token is bound to a certificate goes out with that certificate).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_tls::client::CertChannel;
use mesh_tls::client::MeshConnector;
use tonic::body::Body;
use tower::buffer::Buffer;
use tower::discover::{Change, Discover};
use tower::load::{CompleteOnResponse, Load, PendingRequests};
use tower::ready_cache::ReadyCache;
use tower::retry::RetryLayer;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use crate::discovery::{Discovered, FIRST_RESOLUTION, Resolve, Resolver, discover, entries};
use crate::replica::{Gate, Record};
use crate::retry::{Payload, ReplayLayer, RetryPolicy, Tried};
use crate::stats::BalanceStats;

/// Calls that may wait for the balancer at once, per client (every clone shares them).
const BUFFER: usize = 1024;

/// One replica as the balancer holds it.
type Replica = PendingRequests<Gate<CertChannel>>;

/// What the next call goes to, as decided by the last `poll_ready`.
#[derive(Debug, Clone, Copy)]
enum Next {
    /// A ready replica.
    Replica,
    /// Every replica is ejected: UNAVAILABLE now.
    NoneAvailable,
    /// No replica is known (no answer yet, or none there): the target as given answers, and
    /// its error is the caller's.
    AsGiven,
}

/// Power of two choices over the ready replicas of one target.
struct Balance {
    discovered: Discovered,
    replicas: ReadyCache<SocketAddr, Replica, http::Request<Body>>,
    records: HashMap<SocketAddr, Arc<Record>>,
    /// The target as given, for calls made before any address is known.
    as_given: CertChannel,
    /// Until when a call waits for the first resolution.
    first_resolution: Pin<Box<tokio::time::Sleep>>,
    resolved: crate::discovery::Replicas,
    next: Option<Next>,
    target: String,
    stats: Arc<BalanceStats>,
    resolve_now: Arc<tokio::sync::Notify>,
}

impl Balance {
    /// Takes in what discovery found since the last call.
    fn take_changes(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(Ok(change))) = Pin::new(&mut self.discovered).poll_discover(cx) {
            match change {
                Change::Insert(addr, channel) => {
                    let record = Arc::new(Record::default());
                    self.records.insert(addr, record.clone());
                    let gate = Gate::new(
                        addr,
                        channel,
                        record,
                        self.stats.clone(),
                        self.resolve_now.clone(),
                    );
                    self.replicas.push(
                        addr,
                        PendingRequests::new(gate, CompleteOnResponse::default()),
                    );
                }
                Change::Remove(addr) => {
                    self.records.remove(&addr);
                    self.replicas.evict(&addr);
                }
            }
        }
    }

    /// Moves replicas that became ready to the ready set, and those no longer ready (ejected
    /// since) out of it.
    fn sort_ready(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Err(failed)) = self.replicas.poll_pending(cx) {
            // A channel's readiness fails only when its worker is gone.
            tracing::warn!(error = %failed, target = %self.target, "replica dropped");
            self.records.remove(&failed.0);
        }
        let mut index = 0;
        while index < self.replicas.ready_len() {
            match self.replicas.check_ready_index(cx, index) {
                Ok(true) => index += 1,
                // Moved out of the ready set: the same index now holds another replica.
                Ok(false) => {}
                Err(failed) => {
                    tracing::warn!(error = %failed, target = %self.target, "replica dropped");
                    self.records.remove(&failed.0);
                }
            }
        }
    }

    /// Two ready replicas at random, the less loaded of them; replicas in `tried` only when
    /// no other is ready.
    fn pick(&self, tried: &[SocketAddr]) -> usize {
        let untried: Vec<usize> = (0..self.replicas.ready_len())
            .filter(|&index| {
                self.replicas
                    .get_ready_index(index)
                    .is_some_and(|(addr, _)| !tried.contains(addr))
            })
            .collect();
        let candidates = if untried.is_empty() {
            (0..self.replicas.ready_len()).collect()
        } else {
            untried
        };
        let load = |index: usize| {
            self.replicas
                .get_ready_index(index)
                .map(|(_, replica)| replica.load())
        };
        match candidates.len() {
            1 => candidates[0],
            n => {
                let a = rand::random_range(0..n);
                let b = (a + 1 + rand::random_range(0..n - 1)) % n;
                let (a, b) = (candidates[a], candidates[b]);
                if load(b) < load(a) { b } else { a }
            }
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

impl Service<http::Request<Payload>> for Balance {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.take_changes(cx);
        self.sort_ready(cx);
        if self.replicas.ready_len() > 0 {
            self.next = Some(Next::Replica);
            return Poll::Ready(Ok(()));
        }
        if self.records.is_empty() {
            // Nothing known: wait for the first answer a while, then try the target as given.
            let answered = self.resolved.borrow().is_some();
            if answered || self.first_resolution.as_mut().poll(cx).is_ready() {
                self.next = Some(Next::AsGiven);
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
        if self.records.values().all(|record| !record.available()) {
            self.next = Some(Next::NoneAvailable);
            return Poll::Ready(Ok(()));
        }
        // Known and not ejected, but not ready yet (connecting): the cache wakes us.
        Poll::Pending
    }

    fn call(&mut self, request: http::Request<Payload>) -> Answer {
        match self.next.take().expect("called before ready") {
            Next::Replica => {
                let tried = request.extensions().get::<Tried>();
                let index = self.pick(tried.map_or(&[], |tried| tried.0.as_slice()));
                let answer = self
                    .replicas
                    .call_ready_index(index, request.map(Body::from));
                Box::pin(async move { answer.await.map_err(BoxError::from) })
            }
            Next::NoneAvailable => {
                self.stats.fast_failures.fetch_add(1, Ordering::Relaxed);
                self.resolve_now.notify_one();
                let status = tonic::Status::unavailable(format!(
                    "no replica of {} is available: each one failed just now",
                    self.target
                ));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
            Next::AsGiven => {
                let answer = self.as_given.clone().oneshot(request.map(Body::from));
                Box::pin(async move { answer.await.map_err(BoxError::from) })
            }
        }
    }
}

/// The retries, buffer and balancer of [`Balanced`], as one service.
type Stack = tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// A balanced client over the replicas of one target, with retries; cheap to clone, every clone
/// shares the replicas, their load, the retry budget and the counts.
#[derive(Clone)]
pub struct Balanced {
    stack: Stack,
    resolver: Arc<Resolver>,
    policy: RetryPolicy,
    stats: Arc<BalanceStats>,
}

impl std::fmt::Debug for Balanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balanced")
            .field("replicas", &self.replicas())
            .finish()
    }
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
        let as_given = connector.cert_channel(&first)?;
        let (discovered, resolver) = discover(connector, target, resolver, every);
        let stats = Arc::new(BalanceStats::default());
        let policy = RetryPolicy::new(stats.clone());
        let balance = Balance {
            discovered,
            replicas: ReadyCache::default(),
            records: HashMap::new(),
            as_given,
            first_resolution: Box::pin(tokio::time::sleep(FIRST_RESOLUTION)),
            resolved: resolver.replicas.clone(),
            next: None,
            target: target.to_owned(),
            stats: stats.clone(),
            resolve_now: resolver.resolve_now.clone(),
        };
        let stack = ServiceBuilder::new()
            .layer(ReplayLayer)
            .layer(RetryLayer::new(policy.clone()))
            .layer_fn(|balance| Buffer::new(balance, BUFFER))
            .service(balance);
        Ok(Self {
            stack: Stack::new(stack),
            resolver: Arc::new(resolver),
            policy,
            stats,
        })
    }

    /// The addresses balanced over now.
    pub fn replicas(&self) -> Vec<SocketAddr> {
        self.resolver.replicas.borrow().clone().unwrap_or_default()
    }

    /// What this client has done.
    pub fn stats(&self) -> Arc<BalanceStats> {
        self.stats.clone()
    }
}

impl Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for the stack inside its future, so that a failure there is answered
        // as a status (below) instead of failing the client.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.policy.deposit();
        let answer = self.stack.clone().oneshot(request);
        Box::pin(async move {
            // What a gRPC client would make of the failure, as its answer: a connection that
            // failed is UNAVAILABLE, as tonic and the other gRPC libraries say.
            Ok(answer
                .await
                .unwrap_or_else(|error| tonic::Status::from_error(error).into_http()))
        })
    }
}
