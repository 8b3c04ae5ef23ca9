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
//! - [`audit`]: the issuer's own decisions, in the same HMAC chain as the mesh layer's.
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
#![warn(missing_docs)]

pub mod audit;
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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_interceptor::{Policy, Rule, TokenVerifier, VerifierConfig};
use mesh_proto::auth::v1::auth_service_server::AuthServiceServer;
use mesh_service::runtime::bind;
use mesh_service::{MeshServer, Runtime, ServiceBinary};
use mesh_tls::server::{TlsListener, grpc_server};

pub use mesh_service::StartError;
pub use settings::{Args, AuthConfig, Settings};

use crate::clients::Registry;
use crate::grpc::MeshApi;
use crate::issuer::Issuer;
use crate::keys::KeyStore;
use crate::local::LocalVerifiers;
use crate::ratelimit::FailureLimiter;

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
    server: MeshServer,
    public: TlsListener,
    public_addr: SocketAddr,
    issuer: Arc<Issuer>,
    api: Arc<MeshApi>,
    http: http::HttpState,
    verifiers: Arc<LocalVerifiers>,
    mesh_verifier: Arc<TokenVerifier>,
}

impl Application {
    /// Loads certificates, opens the database, binds both listeners.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let workload = settings.tls.load()?;
        let public = TlsListener::public(
            bind(settings.public_listen).await?,
            workload.identity.clone(),
        )
        .map_err(|e| StartError::config("--tls-cert", e))?;
        let public_addr = public
            .local_addr()
            .map_err(|e| StartError::runtime("public listener address", e))?;
        let issuer_url = match settings.issuer {
            Some(url) => url,
            None => format!("https://localhost:{}", public_addr.port()),
        };
        settings::check_issuer(&issuer_url)?;

        let pool = mesh_service::open_sqlite(&settings.db, &MIGRATIONS).await?;
        let grants = grants::Grants::new(pool.clone());
        let keys = Arc::new(KeyStore::open(pool).await?);
        let issuer = Arc::new(Issuer::new(issuer_url, keys.clone()));
        // The mesh side verifies tokens for audience `auth` with the issuer's own keys: no
        // discovery round trip to itself.
        let mesh_verifier =
            TokenVerifier::with_keys(VerifierConfig::new(issuer.url(), "auth"), keys.key_set());
        let runtime = Runtime::with_verifier(
            "auth",
            settings.listen,
            workload,
            mesh_verifier.clone(),
            &settings.audit,
            &settings.telemetry,
        )
        .await?;
        let audit = audit::IssuerAudit::new(runtime.audit_log());
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
            audit.clone(),
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
            audit,
        };
        let policy = mesh_policy(runtime.trust_domain());
        Ok(Self {
            server: runtime.into_server(policy),
            public,
            public_addr,
            issuer,
            api,
            http,
            verifiers,
            mesh_verifier,
        })
    }

    /// The mesh gRPC address actually bound.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.server.addr()
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
        self.server.telemetry().clone()
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

        let telemetry = self.server.telemetry().clone();
        let api = AuthServiceServer::from_arc(self.api)
            .max_decoding_message_size(self.server.limits().max_message_bytes);
        let limits = *self.server.limits();
        let mesh = self.server.serving(api, stopped(stop_rx.clone()));
        let public = grpc_server(&limits)
            .accept_http1(true)
            .layer(telemetry.http_server_layer())
            .add_routes(tonic::service::Routes::from(http::router(self.http)))
            .serve_with_incoming_shutdown(self.public.incoming(), stopped(stop_rx));

        let (mesh, public) = tokio::join!(mesh, public);
        // Flush what is queued; an unreachable collector cannot hold shutdown up.
        telemetry.shutdown(Duration::from_secs(3)).await;
        mesh?;
        public.map_err(|e| StartError::runtime(format!("serve {}", self.public_addr), e))?;
        Ok(())
    }
}

impl ServiceBinary for Application {
    type Args = Args;

    async fn build(args: Args) -> Result<Self, StartError> {
        Self::build(args.into_settings()?).await
    }

    fn describe(&self) -> String {
        format!(
            "auth service listening: mesh {}, public {}, issuer {}",
            self.mesh_addr(),
            self.public_addr,
            self.issuer()
        )
    }

    async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        Self::run_until_stopped(self, shutdown).await
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
    pub async fn rotate(&self) -> Result<String, keys::KeyError> {
        let kid = self.keys.rotate().await?;
        self.verifiers.refresh_keys();
        self.mesh_verifier.replace_keys(self.keys.key_set());
        Ok(kid)
    }
}

/// The auth service's schema, applied in order when it opens its database.
pub static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
