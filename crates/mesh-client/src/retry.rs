//! Which calls are sent again, and when, as a [`tower::retry::Policy`]: a call of an idempotent
//! method (what its proto declares) that failed with a connection error or UNAVAILABLE is sent
//! again, at most twice, to another replica when there is one, after a jittered backoff, only
//! while its deadline allows and only while the **retry budget** has room: retries may be at most
//! 20 % of the calls of the last 10 s plus 1 a second, so a struggling dependency never sees a
//! retry storm. Never on any other status.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use crate::replica::{ReplicaError, Served};
use crate::stats::BalanceStats;

/// Attempts of one call, the first included.
const MAX_ATTEMPTS: u32 = 3;

/// The first retry's backoff; doubled for the next, each jittered down to half.
const RETRY_BACKOFF: Duration = Duration::from_millis(10);

/// Whether a call to `path` may be sent again: what its proto says (`idempotency_level`
/// `IDEMPOTENT` or `NO_SIDE_EFFECTS` on a unary method, see [`mesh_proto::rpc`]). Only these are
/// retried.
pub fn idempotent(path: &str) -> bool {
    mesh_proto::rpc::by_path(path).is_some_and(mesh_proto::rpc::Rpc::is_retryable)
}

/// A request body as the retry layer holds it: read into memory when the call may be sent again
/// (unary calls: one message, bounded by the server's message limit), passed through otherwise.
#[derive(Debug)]
pub enum Payload {
    /// Sent once, as it comes.
    Once(Body),
    /// Read whole, so that it can be sent again.
    Whole(Bytes),
}

impl From<Payload> for Body {
    fn from(payload: Payload) -> Self {
        match payload {
            Payload::Once(body) => body,
            Payload::Whole(bytes) => Body::new(http_body_util::Full::new(bytes)),
        }
    }
}

/// The replicas a call was already sent to, in its request's extensions: the balancer picks
/// another one when there is one.
#[derive(Debug, Clone, Default)]
pub struct Tried(pub Vec<SocketAddr>);

/// Reads the body of a call that may be retried, so that the retry layer can send it again.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayLayer;

impl<S> Layer<S> for ReplayLayer {
    type Service = Replay<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Replay { inner }
    }
}

/// See [`ReplayLayer`].
#[derive(Debug, Clone)]
pub struct Replay<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for Replay<S>
where
    S: Service<http::Request<Payload>, Error = tower::BoxError> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !idempotent(request.uri().path()) {
            return Box::pin(self.inner.call(request.map(Payload::Once)));
        }
        // The body is awaited before the call goes down, so the service made ready above is
        // left for another caller and a clone is made ready again once the body is in.
        let inner = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await?.to_bytes();
            let request = http::Request::from_parts(parts, Payload::Whole(bytes));
            inner.oneshot(request).await
        })
    }
}

/// The retry decision for one call (a clone per call, as tower's retry layer makes it); the
/// budget and the counts are shared by every call of a client.
#[derive(Clone)]
pub struct RetryPolicy {
    budget: Arc<TpsBudget>,
    stats: Arc<BalanceStats>,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// A policy whose budget and counts every clone shares: calls deposit into the budget,
    /// retries withdraw from it.
    pub fn new(stats: Arc<BalanceStats>) -> Self {
        Self {
            // 20 % of the calls of the last 10 s, and 1 a second, may be retried.
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.2)),
            stats,
            attempts: 1,
            backoff: RETRY_BACKOFF,
        }
    }

    /// A call was made: it adds to what retries may spend.
    pub fn deposit(&self) {
        self.budget.deposit();
    }
}

/// Whether an answer may be retried: a connection failure, or UNAVAILABLE from the server
/// (load shed, draining, or its own dependency down). Any other status is the answer.
fn retryable<B>(answer: &Result<http::Response<B>, tower::BoxError>) -> bool {
    match answer {
        Err(_) => true,
        Ok(response) => {
            mesh_telemetry::trace::status_in_headers(response.headers())
                == Some(tonic::Code::Unavailable)
        }
    }
}

/// The replica an answer came from, if one did.
fn served_by<B>(answer: &Result<http::Response<B>, tower::BoxError>) -> Option<SocketAddr> {
    match answer {
        Ok(response) => response.extensions().get::<Served>().map(|served| served.0),
        Err(error) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
            while let Some(error) = source {
                if let Some(failed) = error.downcast_ref::<ReplicaError>() {
                    return Some(failed.addr);
                }
                source = error.source();
            }
            None
        }
    }
}

impl<B> tower::retry::Policy<http::Request<Payload>, http::Response<B>, tower::BoxError>
    for RetryPolicy
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut http::Request<Payload>,
        answer: &mut Result<http::Response<B>, tower::BoxError>,
    ) -> Option<Self::Future> {
        if !retryable(answer) || self.attempts >= MAX_ATTEMPTS {
            return None;
        }
        if let Some(addr) = served_by(answer) {
            let tried = request.extensions_mut().get_or_insert_default::<Tried>();
            tried.0.push(addr);
        }
        // Half to all of the backoff, so that callers that failed together do not return
        // together.
        let wait = self.backoff / 2 + self.backoff.mul_f64(rand::random_range(0.0..0.5));
        let out_of_time =
            crate::deadline::current().is_some_and(|deadline| Instant::now() + wait >= deadline);
        if out_of_time {
            return None;
        }
        if !self.budget.withdraw() {
            self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("retry budget exhausted: not retried");
            return None;
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        self.attempts += 1;
        self.backoff *= 2;
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(
        &mut self,
        request: &http::Request<Payload>,
    ) -> Option<http::Request<Payload>> {
        let Payload::Whole(bytes) = request.body() else {
            return None;
        };
        let mut copy = http::Request::new(Payload::Whole(bytes.clone()));
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use tower::retry::Policy;

    use super::*;

    fn answer(code: tonic::Code, from: SocketAddr) -> Result<http::Response<()>, tower::BoxError> {
        let mut response = tonic::Status::new(code, "x").into_http::<()>();
        response.extensions_mut().insert(Served(from));
        Ok(response)
    }

    #[tokio::test]
    async fn only_unavailable_is_retried_at_most_twice_and_each_replica_tried_is_remembered() {
        let stats = Arc::new(BalanceStats::default());
        let mut policy = RetryPolicy::new(stats.clone());
        for _ in 0..100 {
            policy.deposit();
        }
        let mut request = http::Request::new(Payload::Whole(Bytes::from_static(b"m")));
        let (a, b) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mut refused = answer(tonic::Code::PermissionDenied, a);
        assert!(policy.retry(&mut request, &mut refused).is_none());
        let mut down = answer(tonic::Code::Unavailable, a);
        assert!(policy.retry(&mut request, &mut down).is_some());
        let mut down = answer(tonic::Code::Unavailable, b);
        assert!(policy.retry(&mut request, &mut down).is_some());
        let tried = request
            .extensions()
            .get::<Tried>()
            .expect("tried")
            .0
            .clone();
        assert_eq!(tried, [a, b]);
        let mut down = answer(tonic::Code::Unavailable, a);
        assert!(
            policy.retry(&mut request, &mut down).is_none(),
            "3 attempts"
        );
        assert_eq!(BalanceStats::get(&stats.retries), 2);
        let streamed = http::Request::new(Payload::Once(Body::empty()));
        assert!(
            Policy::<_, http::Response<()>, tower::BoxError>::clone_request(&mut policy, &streamed)
                .is_none(),
            "a stream is sent once"
        );
    }
}
