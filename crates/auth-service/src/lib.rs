//! The mesh's OAuth2/OIDC issuer and token API.
//!
//! Two listeners, one process:
//! - **public HTTPS** (`MESH_PUBLIC_LISTEN`, default 8443): OIDC discovery, the JWKS, the login
//!   page of the authorization-code flow (PKCE S256 only), and the OAuth2 token (client
//!   credentials, authorization code, rotating refresh tokens), revocation and introspection
//!   endpoints. Errors follow RFC 6749 §5.2 exactly.
//! - **mesh gRPC** (`MESH_LISTEN`, default 50051, mTLS required): `mesh.auth.v1.AuthService`,
//!   where a workload authenticates by its certificate alone and gets its own token
//!   (`IssueServiceToken`) or exchanges a user's token (`ExchangeToken`, RFC 8693).
//!
//! Tokens are EdDSA JWTs (`typ: at+jwt`) signed with keys kept in SQLite, so they survive
//! restarts; the JWKS publishes the current and the previous key.
//!
//! # Layout
//! - [`settings`]: flags with env twins, and the `MESH_AUTH_CONFIG` clients file.
//! - [`clients`]: the client registry, secret checks (Argon2id), scope and audience grants.
//! - [`users`]: users, password checks and the scopes their roles grant.
//! - [`grants`]: authorization codes, refresh-token families and issued access tokens (SQLite).
//! - [`local`]: the issuer verifying its own tokens (exchange, revocation, introspection).
//! - [`keys`]: signing keys in SQLite, rotation, the JWKS.
//! - [`issuer`]: minting tokens.
//! - [`http`]: the public OAuth2/OIDC endpoints.
//! - [`ratelimit`]: the failed-client-authentication limiter.
//! - [`grpc`]: the mesh API.
//! - [`Application`]: binds both listeners and runs them until shutdown.

#![forbid(unsafe_code)]

pub mod clients;
pub mod grants;
pub mod grpc;
pub mod http;
pub mod issuer;
pub mod keys;
pub mod local;
pub mod ratelimit;
pub mod settings;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_interceptor::{AuthLayer, Policy, Rule, TokenVerifier, VerifierConfig};
use mesh_proto::auth::v1::auth_service_server::AuthServiceServer;
use mesh_tls::Reloadable;
use mesh_tls::server::{ServerLimits, TlsListener, grpc_server};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::net::TcpListener;

pub use settings::{Args, AuthConfig, Settings};

use crate::clients::Registry;
use crate::grpc::MeshApi;
use crate::issuer::Issuer;
use crate::keys::KeyStore;
use crate::local::LocalVerifiers;
use crate::ratelimit::FailureLimiter;

pub use mesh_telemetry::StartError;

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The mesh API's policy for the workloads of `trust_domain`: health is public; both token
/// methods authenticate the caller by its certificate, which the handlers then map to a
/// registered client.
pub fn mesh_policy(trust_domain: &str) -> Policy {
    Policy::new(trust_domain)
        .with_health()
        .with_reflection()
        .allow(
            "/mesh.auth.v1.AuthService/IssueServiceToken",
            Rule::certificate(),
        )
        .allow(
            "/mesh.auth.v1.AuthService/ExchangeToken",
            Rule::certificate(),
        )
}

/// A built, bound auth service, ready to run.
#[derive(Debug)]
pub struct Application {
    mesh: TlsListener,
    public: TlsListener,
    mesh_addr: SocketAddr,
    public_addr: SocketAddr,
    issuer: Arc<Issuer>,
    api: Arc<MeshApi>,
    http: http::HttpState,
    verifiers: Arc<LocalVerifiers>,
    mesh_verifier: Arc<TokenVerifier>,
    audit: Option<Arc<auth_interceptor::audit::AuditLog>>,
    telemetry: mesh_telemetry::trace::Telemetry,
    limits: ServerLimits,
    trust_domain: String,
}

impl Application {
    /// Loads certificates, opens the database, binds both listeners.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let config_error = |flag: &str| {
            let flag = flag.to_owned();
            move |e: mesh_tls::TlsError| StartError::Config(format!("{flag}: {e}"))
        };
        let identity =
            Reloadable::load(settings.tls.clone()).map_err(config_error("--tls-cert/--tls-key"))?;
        let roots = settings
            .tls
            .trust_bundle()
            .map_err(config_error("--tls-ca"))?;
        match identity.spiffe_id() {
            Some(id) if id.trust_domain() == settings.trust_domain => {}
            Some(id) => {
                return Err(StartError::Config(format!(
                    "--tls-cert: the certificate's SPIFFE ID {id} is outside the trust domain {} \
                     (--trust-domain / MESH_TRUST_DOMAIN)",
                    settings.trust_domain
                )));
            }
            None => {
                return Err(StartError::Config(
                    "--tls-cert: the certificate has no SPIFFE ID".into(),
                ));
            }
        }
        let mesh = TlsListener::mesh(bind(settings.listen).await?, identity.clone(), roots)
            .map_err(config_error("--tls-ca"))?;
        let public = TlsListener::public(bind(settings.public_listen).await?, identity)
            .map_err(config_error("--tls-cert"))?;
        let mesh_addr = mesh
            .local_addr()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let public_addr = public
            .local_addr()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let issuer_url = match settings.issuer {
            Some(url) => url,
            None => format!("https://localhost:{}", public_addr.port()),
        };
        settings::check_issuer(&issuer_url)?;

        let pool = open_db(&settings.db).await?;
        let grants = grants::Grants::new(pool.clone());
        let keys = Arc::new(KeyStore::open(pool).await?);
        let issuer = Arc::new(Issuer::new(issuer_url, keys.clone()));
        let config = &settings.config;
        let registry = Arc::new(Registry::new(&config.clients));
        let ttl = settings::ttl(config.access_token_ttl_secs);
        let verifiers = Arc::new(LocalVerifiers::new(
            issuer.url(),
            keys.clone(),
            registry.audiences(),
        ));
        let api = Arc::new(MeshApi::new(
            issuer.clone(),
            registry.clone(),
            ttl,
            settings::ttl(config.exchanged_token_ttl_secs),
            verifiers.clone(),
            grants.clone(),
        ));
        let http = http::HttpState {
            issuer: issuer.clone(),
            registry,
            users: Arc::new(users::Users::new(config)),
            grants,
            verifiers: verifiers.clone(),
            limiter: Arc::new(FailureLimiter::new(
                config.rate_limit.max_failures,
                Duration::from_secs(config.rate_limit.window_secs),
            )),
            ttl,
            refresh_ttl: settings::ttl(config.refresh_token_ttl_secs),
        };
        let mesh_verifier =
            TokenVerifier::with_keys(VerifierConfig::new(issuer.url(), "auth"), keys.key_set());
        Ok(Self {
            mesh,
            public,
            mesh_addr,
            public_addr,
            issuer,
            api,
            http,
            verifiers,
            mesh_verifier,
            audit: settings.audit.open("auth")?,
            telemetry: mesh_telemetry::trace::Telemetry::new(&settings.telemetry, "auth")?,
            limits: ServerLimits::default(),
            trust_domain: settings.trust_domain.clone(),
        })
    }

    /// The mesh gRPC address actually bound.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.mesh_addr
    }

    /// The public HTTPS address actually bound.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The issuer URL tokens carry.
    pub fn issuer(&self) -> &str {
        self.issuer.url()
    }

    /// The service's tracer.
    pub fn telemetry(&self) -> mesh_telemetry::trace::Telemetry {
        self.telemetry.clone()
    }

    /// A handle that rotates the signing key while the service runs.
    pub fn key_rotator(&self) -> KeyRotator {
        KeyRotator {
            keys: self.issuer.keys().clone(),
            verifiers: self.verifiers.clone(),
            mesh_verifier: self.mesh_verifier.clone(),
        }
    }

    /// Serves both listeners until `shutdown` resolves, then drains them.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(());
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = mesh_proto::reflection("mesh.auth.v1.AuthService")
            .map_err(|e| StartError::Runtime(format!("reflection: {e}")))?;
        health.set_serving::<AuthServiceServer<MeshApi>>().await;
        let api = AuthServiceServer::from_arc(self.api)
            .max_decoding_message_size(self.limits.max_message_bytes);
        let mesh = grpc_server(&self.limits)
            // Continue the caller's trace first, so every decision below belongs to it.
            .layer(self.telemetry.server_layer())
            .layer(
                AuthLayer::new(self.mesh_verifier, mesh_policy(&self.trust_domain))
                    .with_audit(self.audit),
            )
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api)
            .serve_with_incoming_shutdown(self.mesh.incoming(), stopped(stop_rx.clone()));

        let public = grpc_server(&self.limits)
            .accept_http1(true)
            .layer(self.telemetry.http_server_layer())
            .add_routes(tonic::service::Routes::from(http::router(self.http)))
            .serve_with_incoming_shutdown(self.public.incoming(), stopped(stop_rx));

        let (mesh, public) = tokio::join!(mesh, public);
        // Flush what is queued; an unreachable collector cannot hold shutdown up.
        self.telemetry.shutdown(Duration::from_secs(3)).await;
        mesh.map_err(|e| StartError::Runtime(format!("mesh listener: {e}")))?;
        public.map_err(|e| StartError::Runtime(format!("public listener: {e}")))?;
        Ok(())
    }
}

/// Rotates the signing key of a running auth service.
#[derive(Debug, Clone)]
pub struct KeyRotator {
    keys: Arc<KeyStore>,
    verifiers: Arc<LocalVerifiers>,
    mesh_verifier: Arc<TokenVerifier>,
}

impl KeyRotator {
    /// Retires the current key and signs with a new one from now on; returns the new `kid`.
    pub async fn rotate(&self) -> Result<String, StartError> {
        let kid = self.keys.rotate().await?;
        self.verifiers.refresh_keys();
        self.mesh_verifier.replace_keys(self.keys.key_set());
        Ok(kid)
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Runtime(format!("bind {addr}: {e}")))
}

/// Opens (creating if needed) and migrates the SQLite file, in WAL mode.
async fn open_db(path: &Path) -> Result<SqlitePool, StartError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| StartError::Config(format!("--db {}: {e}", path.display())))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .map_err(|e| StartError::Runtime(format!("migrate {}: {e}", path.display())))?;
    Ok(pool)
}
