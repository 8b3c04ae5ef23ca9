//! The benchmark server: `grpc.health.v1.Health/Check`, a small unary RPC, served in the
//! configurations of [`Config`], each adding one layer to the one before. It runs as its own process
//! (`mesh-bench serve`), so its CPU time and memory can be read from /proc apart from the load
//! generator's.

use std::net::SocketAddr;
use std::sync::Arc;

use auth_interceptor::audit::AuditLog;
use auth_interceptor::{AuthLayer, Policy, Rule, TokenVerifier, VerifierConfig};
use mesh_telemetry::metrics::KnownMethods;
use mesh_telemetry::trace::{Telemetry, TelemetryFlags};
use mesh_tls::Reloadable;
use mesh_tls::server::{ServerLimits, TlsListener, grpc_server};
use tokio::net::TcpListener;

use crate::material::{AUDIENCE, ISSUER, Material, SCOPE};

/// The method every configuration serves.
pub const METHOD: &str = mesh_proto::rpc::health::CHECK.path;

/// One server configuration; each includes everything of the ones before it (except `Plain`,
/// which is the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Config {
    /// Plain h2c tonic, default settings, no layers: the baseline.
    Plain,
    /// + mutual TLS 1.3 (rustls, aws-lc-rs) and the HTTP/2 limits the services set.
    Mtls,
    /// + the auth layer verifying the JWT on every call (verified-token cache off) and the policy.
    JwtNoCache,
    /// + the verified-token cache.
    Jwt,
    /// + OpenTelemetry server spans, 100 % sampled, batch-exported over OTLP/gRPC.
    Otel,
    /// + the audit log and the server deadline layer: the server stack the services run.
    Full,
    /// The full server, called through the client stack every service call goes through
    /// (`Runtime::client`: trace, deadline, balancer with retries and ejection).
    Client,
    /// The sidecar mesh we compare with: plain tonic behind a pair of HAProxy proxies speaking
    /// mTLS 1.3 to each other (`crate::sidecar`).
    Sidecar,
    /// The hand-rolled peer (`crate::hand_rolled`): the same mTLS, a tonic interceptor calling
    /// `jsonwebtoken::decode` per call, `tracing-opentelemetry` with defaults, a synchronous
    /// file log of each decision.
    HandRolled,
}

impl Config {
    /// Every configuration, in order.
    pub const ALL: [Config; 9] = [
        Config::Plain,
        Config::Mtls,
        Config::JwtNoCache,
        Config::Jwt,
        Config::Otel,
        Config::Full,
        Config::Client,
        Config::Sidecar,
        Config::HandRolled,
    ];

    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Config::Plain => "1. plain h2c tonic",
            Config::Mtls => "2. + mTLS",
            Config::JwtNoCache => "3. + JWT verify, cache off",
            Config::Jwt => "4. + verified-token cache",
            Config::Otel => "5. + OpenTelemetry (100 %, batch)",
            Config::Full => "6. full stack (+ audit log, deadline)",
            Config::Client => "7. + client layers (deadline, balancer)",
            Config::Sidecar => "8. sidecar pair (2 × HAProxy, mTLS) + plain",
            Config::HandRolled => {
                "9. hand-rolled (interceptor + jsonwebtoken, tracing-opentelemetry, file log)"
            }
        }
    }

    /// Whether clients speak mTLS to it (to the sidecar pair they speak h2c, as an application
    /// does to its own sidecar).
    pub fn tls(self) -> bool {
        !matches!(self, Config::Plain | Config::Sidecar)
    }

    /// The value clap knows it by.
    pub fn arg(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// Serves `config` on `listen` until `shutdown`, announcing the bound address through `ready`.
pub async fn serve(
    config: Config,
    material: &Material,
    listen: SocketAddr,
    otlp_endpoint: Option<String>,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let tcp = TcpListener::bind(listen).await?;
    let addr = tcp.local_addr()?;

    if matches!(config, Config::Plain | Config::Sidecar) {
        ready(addr);
        // TCP_NODELAY on every accepted socket, as every mesh listener sets it: without it the
        // baseline stalls on Nagle and delayed ACKs and every ratio against it flatters us.
        let accepted = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(tcp),
            |socket| socket.and_then(|socket| socket.set_nodelay(true).map(|()| socket)),
        );
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming_shutdown(accepted, shutdown)
            .await?;
        return Ok(());
    }

    if config == Config::HandRolled {
        return crate::hand_rolled::serve(material, tcp, otlp_endpoint, ready, shutdown).await;
    }
    let files = material.server_files();
    let roots = files.trust_bundle()?;
    let listener = TlsListener::mesh(tcp, Reloadable::load(files)?, roots)?;
    let limits = ServerLimits::default();
    let mut server = grpc_server(&limits);
    if config == Config::Mtls {
        ready(addr);
        server
            .add_service(health_service)
            .serve_with_incoming_shutdown(listener.incoming(), shutdown)
            .await?;
        return Ok(());
    }

    let mut verifier_config = VerifierConfig::new(ISSUER, AUDIENCE);
    if config == Config::JwtNoCache {
        verifier_config.cache_capacity = 0;
    }
    let verifier: Arc<TokenVerifier> =
        TokenVerifier::with_keys(verifier_config, material.key_set()?);
    let policy = Policy::new(crate::material::TRUST_DOMAIN)
        .allow(mesh_proto::rpc::health::CHECK, Rule::token().scope(SCOPE));
    let audit = match config {
        Config::Full | Config::Client => Some(Arc::new(AuditLog::open(
            "bench",
            &material.dir().join("audit.log"),
            &material.audit_key(),
        )?)),
        _ => None,
    };
    let telemetry = match config {
        Config::Otel | Config::Full | Config::Client => Some(Telemetry::new(
            &TelemetryFlags {
                otlp_endpoint,
                service_name: Some("bench".into()),
                metrics_exporter: mesh_telemetry::trace::MetricsExporter::None,
            },
            "bench",
        )?),
        _ => None,
    };
    // With telemetry, the auth layer counts its decisions too, as a mesh server's does.
    let auth = match &telemetry {
        Some(telemetry) => AuthLayer::new(verifier, policy)
            .with_audit(audit)
            .with_metrics(telemetry.metrics().meter()),
        None => AuthLayer::new(verifier, policy).with_audit(audit),
    };
    ready(addr);
    match &telemetry {
        Some(telemetry) if config == Config::Otel => {
            server
                .layer(telemetry.server_layer(KnownMethods::new([METHOD])))
                .layer(auth)
                .add_service(health_service)
                .serve_with_incoming_shutdown(listener.incoming(), shutdown)
                .await?;
            telemetry.shutdown(std::time::Duration::from_secs(3)).await;
        }
        // The layers in MeshServer's order. (Its load shedding never applies to health checks,
        // the method measured here, so it is left out.)
        Some(telemetry) => {
            server
                .layer(telemetry.server_layer(KnownMethods::new([METHOD])))
                .layer(mesh_client::deadline::ServerDeadlineLayer::new(
                    limits.request_timeout,
                ))
                .layer(auth)
                .add_service(health_service)
                .serve_with_incoming_shutdown(listener.incoming(), shutdown)
                .await?;
            telemetry.shutdown(std::time::Duration::from_secs(3)).await;
        }
        None => {
            server
                .layer(auth)
                .add_service(health_service)
                .serve_with_incoming_shutdown(listener.incoming(), shutdown)
                .await?;
        }
    }
    Ok(())
}
