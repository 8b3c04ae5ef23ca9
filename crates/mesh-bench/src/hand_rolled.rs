//! Configuration 9, the hand-rolled peer: what a team writes from the tonic examples. A tonic
//! interceptor that calls `jsonwebtoken::decode` on every call (no cache) and checks the scope,
//! the `tracing-opentelemetry` layer with its default settings under a `trace_fn` span per
//! request, the SDK's batch exporter with its defaults, and each decision logged by a `tracing`
//! fmt layer writing synchronously to a file. The same mTLS listener as the mesh, so the
//! difference is what sits above TLS.

use std::net::SocketAddr;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh_tls::Reloadable;
use mesh_tls::server::TlsListener;
use opentelemetry::trace::TracerProvider as _;
use tokio::net::TcpListener;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::material::{AUDIENCE, ISSUER, Material, SCOPE};

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
}

/// Serves the hand-rolled peer on `tcp` until `shutdown`, spans exported to `otlp`.
pub async fn serve(
    material: &Material,
    tcp: TcpListener,
    otlp: Option<String>,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = tcp.local_addr()?;
    let mut provider = opentelemetry_sdk::trace::SdkTracerProvider::builder();
    if let Some(endpoint) = otlp {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let decisions = std::fs::File::create(material.dir().join("decisions.log"))?;
    // `info`, the level `tracing_subscriber::fmt()` defaults to (without a filter every h2 and
    // hyper trace event would be logged and become a span event).
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("hand-rolled")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(decisions)),
        );
    tracing::subscriber::set_global_default(subscriber)?;

    let key = DecodingKey::from_ed_der(&material.public_key()?);
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let check = move |request: tonic::Request<()>| {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| tonic::Status::unauthenticated("missing token"))?;
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) if data.claims.scope.split(' ').any(|s| s == SCOPE) => {
                tracing::info!(sub = %data.claims.sub, "allowed");
                Ok(request)
            }
            Ok(data) => {
                tracing::warn!(sub = %data.claims.sub, "denied: scope");
                Err(tonic::Status::permission_denied("scope"))
            }
            Err(error) => {
                tracing::warn!(%error, "denied: token");
                Err(tonic::Status::unauthenticated("invalid token"))
            }
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let files = material.server_files();
    let roots = files.trust_bundle()?;
    let listener = TlsListener::mesh(tcp, Reloadable::load(files)?, roots)?;
    ready(addr);
    tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("grpc", rpc.method = %request.uri().path()))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            health_service,
            check,
        ))
        .serve_with_incoming_shutdown(listener.incoming(), shutdown)
        .await?;
    let _ = provider.shutdown();
    Ok(())
}
