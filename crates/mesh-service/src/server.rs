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
use mesh_tls::watch::WatchStatus;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;

use crate::identity::{RenewalStatus, TaskGuard};

use crate::error::StartError;

/// Sets the health of `service` (and of the server as a whole) to NOT_SERVING while the
/// certificate renewal reports a problem, and back to SERVING once it is solved.
fn report_renewal(
    health: tonic_health::server::HealthReporter,
    service: &'static str,
    mut problems: tokio::sync::watch::Receiver<Option<String>>,
) -> TaskGuard {
    TaskGuard::new(tokio::spawn(async move {
        loop {
            let status = match problems.borrow_and_update().as_ref() {
                Some(_) => tonic_health::ServingStatus::NotServing,
                None => tonic_health::ServingStatus::Serving,
            };
            health.set_service_status(service, status).await;
            health.set_service_status("", status).await;
            if problems.changed().await.is_err() {
                return;
            }
        }
    }))
}

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
    pub(crate) renewal: Option<Arc<RenewalStatus>>,
    pub(crate) file_watch: Option<Arc<WatchStatus>>,
    /// Background tasks (renewal, file watch) that end with the server.
    pub(crate) tasks: Vec<TaskGuard>,
    pub(crate) extra: ExtraServices,
    /// The plaintext health listener, when one was asked for.
    pub(crate) health_listener: Option<tokio::net::TcpListener>,
    /// How long the calls in flight may run on after shutdown begins.
    pub(crate) shutdown_grace: Duration,
    /// The server-wide bound on calls in flight.
    pub(crate) shed: crate::shed::ShedLayer,
    /// The methods served: the only ones named in metric labels.
    pub(crate) known: mesh_telemetry::metrics::KnownMethods,
    /// The admin listener (`/metrics`), when one was asked for.
    pub(crate) admin_listener: Option<tokio::net::TcpListener>,
}

/// More gRPC services on the same listener, behind the same layers.
#[derive(Default)]
pub(crate) struct ExtraServices(Vec<Box<dyn FnOnce(Routes) -> Routes + Send>>);

impl std::fmt::Debug for ExtraServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExtraServices({})", self.0.len())
    }
}

impl MeshServer {
    /// Serves `service` too, on the same listener and behind the same layers (its rows must be
    /// in the policy).
    pub fn with_service<S>(mut self, service: S) -> Self
    where
        S: GrpcApi,
        S::Future: Send + 'static,
    {
        self.extra
            .0
            .push(Box::new(move |routes: Routes| routes.add_service(service)));
        self
    }

    /// Keeps `task` running as long as the server.
    pub fn with_task(mut self, task: TaskGuard) -> Self {
        self.tasks.push(task);
        self
    }

    /// Reports NOT_SERVING while `renewal` has a problem (a certificate about to expire).
    pub fn with_renewal(mut self, renewal: Arc<RenewalStatus>) -> Self {
        self.renewal = Some(renewal);
        self
    }

    /// The admin listener's address (`/metrics`), when one was asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The plaintext health listener's address, when there is one.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// What the server exposes to whoever watches it.
    pub fn observed(&self) -> crate::Observed {
        crate::Observed {
            renewal: self.renewal(),
            admin_addr: self.admin_addr(),
            telemetry: self.telemetry().clone(),
        }
    }

    /// The certificate renewal's state, when the certificate is renewed in process.
    pub fn renewal(&self) -> Option<Arc<RenewalStatus>> {
        self.renewal.clone()
    }

    /// The file watch's state, when the certificate files are watched.
    pub fn file_watch(&self) -> Option<Arc<WatchStatus>> {
        self.file_watch.clone()
    }

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
        let reporting = self
            .renewal
            .as_ref()
            .map(|renewal| report_renewal(health.clone(), S::NAME, renewal.subscribe()));
        // Shutdown drains: NOT_SERVING first (probes and balancers stop sending), then no new
        // connections, then the calls in flight finish, for at most the grace.
        let (draining, mut drain_started) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            drop(reporting);
            for service in [S::NAME, ""] {
                health
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            tracing::info!("draining: NOT_SERVING, accepting no new connections");
            let _ = draining.send(true);
        };
        let grace = self.shutdown_grace;
        let grace_over = async move {
            let _ = drain_started.wait_for(|started| *started).await;
            tokio::time::sleep(grace).await;
        };
        let reflection =
            mesh_proto::reflection(S::NAME).map_err(|e| StartError::runtime("reflection", e))?;
        // The same health answers in plaintext, for probes without a client certificate.
        let _plain_health = self.health_listener.map(|listener| {
            let health = health_service.clone();
            TaskGuard::new(tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if let Err(error) = tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(incoming)
                    .await
                {
                    tracing::error!(%error, "the plaintext health listener stopped");
                }
            }))
        });
        let _admin = self
            .admin_listener
            .map(|listener| crate::admin::serve(listener, self.telemetry.metrics().clone()));
        let mut routes = Routes::new(health_service)
            .add_service(reflection)
            .add_service(api);
        for add in self.extra.0 {
            routes = add(routes);
        }
        let _tasks = self.tasks;
        let served = grpc_server(&self.limits)
            // Continue the caller's trace first, so every decision below belongs to it.
            .layer(self.telemetry.server_layer(self.known))
            // Refuse what is over the server's capacity before any work is done for it: a flood
            // must not buy signature checks or database calls.
            .layer(self.shed)
            // The caller's deadline, for everything below (key discovery included) and every
            // call the handler makes; DEADLINE_EXCEEDED when it passes.
            .layer(mesh_client::deadline::ServerDeadlineLayer::new(
                self.limits.request_timeout,
            ))
            // Authenticate, then authorize against the full method path; deny by default.
            .layer(self.auth)
            .add_routes(routes)
            .serve_with_incoming_shutdown(self.listener.incoming(), shutdown);
        tokio::select! {
            served = served => {
                served.map_err(|e| StartError::runtime(format!("serve {}", self.addr), e))
            }
            () = grace_over => {
                tracing::warn!(grace = ?grace, "shutdown grace over: closing the calls still in flight");
                Ok(())
            }
        }
    }
}
