//! Load shedding: a server takes at most `--max-in-flight` calls at once, across all its
//! connections, and answers the next one UNAVAILABLE at once instead of queueing it.
//!
//! tonic's own limit is per connection, and HTTP/2's stream limit stops a connection below it,
//! so neither bounds the work of a server with many callers. A shed call costs no signature
//! check and no database work; the caller's balancer takes UNAVAILABLE as "try another replica"
//! (for idempotent methods) and its ejection as "this replica is struggling". Health checks are
//! never shed: an overloaded replica is still alive, and a probe that failed under load would
//! have it restarted when it most needs to finish its work.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};

/// Calls in flight when `--max-in-flight` is not set.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// The header a shed answer carries (the client's balancer reads it; defined beside it).
pub use mesh_client::replica::OVERLOADED_HEADER;

/// The path prefix that is never shed.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Bounds the calls a server runs at once; see the module docs.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    shed: Arc<AtomicU64>,
}

impl ShedLayer {
    /// At most `limit` calls at once (at least 1).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Calls refused so far.
    pub fn shed_count(&self) -> Arc<AtomicU64> {
        self.shed.clone()
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ShedLayer`] produces.
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    layer: ShedLayer,
}

impl<S, B> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Take the service that was made ready; leave a fresh clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if request.uri().path().starts_with(HEALTH) {
            return Box::pin(inner.call(request));
        }
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            self.layer.shed.fetch_add(1, Ordering::Relaxed);
            let limit = self.layer.limit;
            tracing::debug!(limit, path = request.uri().path(), "call shed");
            let status = tonic::Status::unavailable(format!(
                "overloaded: {limit} calls in flight; retry later or at another replica"
            ));
            let mut answer = status.into_http();
            answer
                .headers_mut()
                .insert(OVERLOADED_HEADER, http::HeaderValue::from_static("1"));
            return Box::pin(std::future::ready(Ok(answer)));
        };
        Box::pin(async move {
            let answer = inner.call(request).await;
            drop(permit);
            answer
        })
    }
}
