//! One mesh server: every service's API behind the same stack, in the same order.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use auth_interceptor::revocation::FeedStatus;
use auth_interceptor::{AuthLayer, TokenVerifier};
use mesh_telemetry::trace::Telemetry;
use mesh_tls::server::{ServerLimits, TlsListener, grpc_server};
use tonic::body::Body;
use tonic::server::NamedService;

use crate::error::StartError;

/// How long shutdown waits for queued spans to reach the collector.
const FLUSH_GRACE: Duration = Duration::from_secs(3);

/// A tonic-generated service server (`OrdersServiceServer<…>` and the like), as tonic's router
/// takes it: named, cloneable, infallible.
pub trait GrpcApi:
    tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcApi for S where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves one gRPC API on the mesh listener with what every mesh service needs around it:
/// `grpc.health.v1` (a public row), gRPC reflection that describes this API only (a
/// certificate-only row), the W3C trace layer, the auth layer with its policy and audit log,
/// and the explicit HTTP/2 limits of [`ServerLimits`].
#[derive(Debug)]
pub struct MeshServer {
    pub(crate) listener: TlsListener,
    pub(crate) addr: SocketAddr,
    pub(crate) telemetry: Telemetry,
    pub(crate) auth: AuthLayer,
    pub(crate) limits: ServerLimits,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) revocation_feed: Option<Arc<FeedStatus>>,
}

impl MeshServer {
    /// The token verifier the auth layer uses (tests read its key fetches and revocations).
    pub fn verifier(&self) -> &Arc<TokenVerifier> {
        &self.verifier
    }

    /// The state of the revocation stream (`None` on the issuer, which reads its own log).
    pub fn revocation_feed(&self) -> Option<Arc<FeedStatus>> {
        self.revocation_feed.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tracer (the demo flushes it before drawing traces).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The limits, for the API's own `max_decoding_message_size`.
    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Serves `api` until `shutdown` resolves, then flushes queued spans (bounded: an
    /// unreachable collector cannot hold shutdown up).
    pub async fn serve<S>(
        self,
        api: S,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError>
    where
        S: GrpcApi,
        S::Future: Send + 'static,
    {
        let telemetry = self.telemetry.clone();
        let served = self.serving(api, shutdown).await;
        telemetry.shutdown(FLUSH_GRACE).await;
        served
    }

    /// Like [`MeshServer::serve`], without the final flush: for a process that serves other
    /// listeners with the same tracer and flushes once they have all stopped.
    pub async fn serving<S>(
        self,
        api: S,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError>
    where
        S: GrpcApi,
        S::Future: Send + 'static,
    {
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(S::NAME, tonic_health::ServingStatus::Serving)
            .await;
        let reflection =
            mesh_proto::reflection(S::NAME).map_err(|e| StartError::runtime("reflection", e))?;
        grpc_server(&self.limits)
            // Continue the caller's trace first, so every decision below belongs to it.
            .layer(self.telemetry.server_layer())
            // Authenticate, then authorize against the full method path; deny by default.
            .layer(self.auth)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api)
            .serve_with_incoming_shutdown(self.listener.incoming(), shutdown)
            .await
            .map_err(|e| StartError::runtime(format!("serve {}", self.addr), e))
    }
}
