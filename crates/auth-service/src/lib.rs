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
//! restarts; keys rotate on a schedule (`MESH_SIGNING_KEY_ROTATION`) or on an administrator's
//! request, and the JWKS publishes the next key before it signs and retired keys until their
//! tokens have expired. Revocations are streamed to every verifier of the mesh.
//!
//! # Layout
//! - [`settings`]: flags with env twins, and the `MESH_AUTH_CONFIG` clients file.
//! - [`audit`]: the issuer's own decisions, in the same HMAC chain as the mesh layer's.
//! - [`clients`]: the client registry, secret checks (Argon2id), scope and audience grants.
//! - [`users`]: users, password checks and the scopes their roles grant.
//! - [`grants`]: authorization codes, refresh-token families and issued access tokens (SQLite).
//! - [`local`]: the issuer verifying its own tokens (exchange, revocation, introspection).
//! - [`keys`]: signing keys in SQLite, rotation, the JWKS.
//! - [`sealing`]: envelope encryption of the keys at rest under a key-encryption key.
//! - [`authority`]: the mesh CA in the database, its trust bundle and its rotation.
//! - [`join`]: join tokens, a workload's proof of identity before it has a certificate.
//! - [`identity`]: `mesh.identity.v1`, the CA's API (certify, join tokens, CA rotation).
//! - [`issuer`]: minting tokens.
//! - [`http`]: the public OAuth2/OIDC endpoints.
//! - [`ratelimit`]: the failed-authentication limiter (per address and account, reserved first).
//! - [`passwords`]: Argon2 checks in a few slots, each with its own reused memory.
//! - [`revocations`]: the revocation log followed, for the verifiers' stream and the issuer's own
//!   verifiers.
//! - [`grpc`]: the mesh API.
//! - [`Application`]: binds both listeners and runs them until shutdown.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod authority;
pub mod backchannel;
pub mod clients;
pub mod exchange;
pub mod grants;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod issuer;
pub mod join;
pub mod keys;
pub mod local;
pub mod oidc;
pub mod passwords;
pub mod ratelimit;
pub mod revocations;
pub mod sealing;
pub mod sessions;
pub mod settings;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth_interceptor::{Policy, RevocationList, TokenVerifier, VerifierConfig};
use mesh_proto::auth::v1::auth_service_server::AuthServiceServer;
use mesh_proto::identity::v1::identity_admin_server::IdentityAdminServer;
use mesh_proto::identity::v1::identity_server::IdentityServer;
use mesh_service::config::CertSource;
use mesh_service::runtime::bind;
use mesh_service::{IdentitySource, MeshServer, Parts, Runtime, ServiceBinary, VerifierSource};
use mesh_tls::server::{ServerLimits, TlsListener, grpc_server};
use mesh_tls::{SpiffeId, Trust};

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

/// The mesh API's policy shipped with the service (config/policy/auth.toml): health is public;
/// the token methods and the CA's renewal authenticate the caller by its certificate, which the
/// handlers then map to a registered client; the administrative methods need
/// [`KEYS_ADMIN_SCOPE`] through meshctl's certificate.
pub const SHIPPED_POLICY: &str = include_str!("../../../config/policy/auth.toml");

/// The shipped mesh API policy for the workloads of `trust_domain`, checked against the protos.
pub fn mesh_policy(trust_domain: &str) -> Result<Policy, auth_interceptor::PolicyFileError> {
    auth_interceptor::parse_policy(SHIPPED_POLICY, POLICY_NAME, trust_domain, SERVED)
}

const POLICY_NAME: &str = "config/policy/auth.toml";
const SERVED: &[&[mesh_proto::rpc::Rpc]] = mesh_proto::rpc::servers::AUTH;

/// The scope an administrator's token needs to rotate the signing key or the CA, or to create
/// join tokens.
pub const KEYS_ADMIN_SCOPE: &str = "auth:keys";

/// A built, bound auth service, ready to run.
#[derive(Debug)]
pub struct Application {
    server: MeshServer,
    public: TlsListener,
    public_addr: SocketAddr,
    issuer: Arc<Issuer>,
    api: Arc<MeshApi>,
    http: http::HttpState,
    rotator: KeyRotator,
    rotation_interval: Duration,
    stop: tokio::sync::watch::Sender<()>,
    identity: Arc<identity::IdentityApi>,
}

impl Application {
    /// Loads certificates, opens the database, binds both listeners.
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let trust_domain = settings.tls.trust_domain.clone();
        // Checked first: a bad policy file stops the start before anything is opened.
        let policy =
            settings
                .server
                .load_policy(POLICY_NAME, SHIPPED_POLICY, &trust_domain, SERVED)?;
        let db = mesh_service::Db::open(&settings.db, &MIGRATIONS).await?;
        let sealer = sealing::Sealer::new(settings.kek.clone());
        let authority = authority::AuthorityStore::open(
            db.clone(),
            sealer.clone(),
            &trust_domain,
            settings
                .ca_import
                .clone()
                .map(|ca| (ca.cert_pem, ca.key_pem)),
            settings.cert_ttl,
        )
        .await
        .map_err(|e| match e {
            authority::AuthorityError::Sealed(sealed) => {
                StartError::config("--kek-file/MESH_KEK", sealed)
            }
            authority::AuthorityError::Tls(tls) => StartError::config("--ca-cert/--ca-key", tls),
            other => StartError::runtime("CA", other),
        })?
        .map(Arc::new);
        let tokens = join::JoinTokens::new(db.clone());
        if let Some(path) = &settings.join_tokens {
            let added = tokens.import(path, &trust_domain).await.map_err(|e| {
                StartError::config("--join-tokens", format!("{}: {e}", path.display()))
            })?;
            tracing::info!(added, "join tokens imported");
        }
        let workload = match &authority {
            Some(ca) => own_workload(ca, &settings.tls)?,
            None => settings.tls.load()?,
        };
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

        let config = &settings.config;
        let longest_token = settings::ttl(
            config
                .access_token_ttl_secs
                .max(config.exchanged_token_ttl_secs),
        );
        let grants = grants::Grants::new(db.clone(), longest_token);
        // A retired key stays published while a token it signed can still verify.
        let keys =
            Arc::new(KeyStore::open(db, sealer, longest_token + Duration::from_secs(30)).await?);
        let issuer = Arc::new(Issuer::new(issuer_url, keys.clone()));
        // Every verifier of the issuer reads one revocation list, fed from its own log.
        let revoked = RevocationList::new();
        let hub = revocations::RevocationHub::new();
        revocations::spawn_feed(grants.clone(), revoked.clone(), hub.clone());
        // The mesh side verifies tokens for audience `auth` with the issuer's own keys: no
        // discovery round trip to itself.
        let mesh_verifier = TokenVerifier::with_keys_and_revocations(
            VerifierConfig::new(issuer.url(), "auth"),
            keys.key_set(),
            revoked.clone(),
        );
        let identity = match &authority {
            Some(ca) => {
                authority::spawn_refresh(Arc::downgrade(ca));
                let (ca, id) = (ca.clone(), workload.spiffe_id.clone());
                let nudge = ca.changes();
                let renew: mesh_service::RenewOwn = Box::new(move || {
                    let issued = ca.issue_own(&id).and_then(|issued| issued.into_parts());
                    let bundle_pem = ca.bundle_pem();
                    Box::pin(async move {
                        let (chain_pem, key) = issued.map_err(|e| e.to_string())?;
                        Ok(mesh_service::identity::Renewed {
                            chain_pem,
                            key,
                            bundle_pem,
                        })
                    })
                });
                IdentitySource::OwnCa {
                    workload,
                    renew,
                    nudge,
                }
            }
            None => IdentitySource::Files(workload),
        };
        let runtime = Runtime::build(Parts {
            name: "auth",
            listen: settings.listen,
            identity,
            verifier: VerifierSource::Local(mesh_verifier.clone()),
            audit: &settings.audit,
            telemetry: &settings.telemetry,
            server: &settings.server,
        })
        .await?;
        let signing = Arc::downgrade(&keys);
        runtime
            .meter()
            .u64_observable_gauge("mesh.signing_key.age")
            .with_description("Seconds since the key that signs tokens now started signing")
            .with_unit("s")
            .with_callback(move |gauge| {
                if let Some(keys) = signing.upgrade() {
                    gauge.observe(unix_now().saturating_sub(keys.activated_at()), &[]);
                }
            })
            .build();
        let audit = audit::IssuerAudit::new(runtime.audit_log());
        // One limiter for every door where a stranger can present a guess: the login form, the
        // token endpoint and the CA's join-token door.
        let limiter = FailureLimiter::new(config.rate_limit.settings());
        let identity = Arc::new(identity::IdentityApi {
            limiter: limiter.clone(),
            authority: authority.clone(),
            tokens,
            audit: audit.clone(),
            trust_domain: trust_domain.clone(),
            rejoin_ttl: settings.rejoin_token_ttl,
        });
        let registry = Arc::new(Registry::new(&config.clients));
        let ttl = settings::ttl(config.access_token_ttl_secs);
        let verifiers = Arc::new(LocalVerifiers::new(
            issuer.url(),
            keys.clone(),
            registry.audiences(),
            revoked,
        ));
        // Told when the service stops: revocation streams end then, or a drain would wait on
        // them for ever.
        let (stop, stop_rx) = tokio::sync::watch::channel(());
        let rotator = KeyRotator {
            keys: keys.clone(),
            verifiers: verifiers.clone(),
            mesh_verifier,
        };
        let exchange = Arc::new(exchange::TokenExchange {
            issuer: issuer.clone(),
            verifiers: verifiers.clone(),
            grants: grants.clone(),
            ttl: settings::ttl(config.exchanged_token_ttl_secs),
            audit: audit.clone(),
        });
        let api = Arc::new(MeshApi {
            issuer: issuer.clone(),
            registry: registry.clone(),
            ttl,
            exchange: exchange.clone(),
            audit: audit.clone(),
            rotator: rotator.clone(),
            hub,
            stopping: stop_rx,
        });
        let http = http::HttpState {
            issuer: issuer.clone(),
            registry: registry.clone(),
            users: Arc::new(users::Users::new(config)),
            sessions: sessions::Sessions::new(
                grants.clone(),
                settings::ttl(config.session_idle_secs),
                settings::ttl(config.session_lifetime_secs),
            ),
            backchannel: backchannel::BackChannel {
                http: backchannel::BackChannel::http_client(runtime.workload().roots.clone())
                    .map_err(|e| StartError::runtime("back-channel logout client", e))?,
                issuer: issuer.clone(),
                registry: registry.clone(),
                deliveries: runtime
                    .meter()
                    .u64_counter("mesh.logout.backchannel")
                    .with_description("Back-channel logout deliveries to clients, by outcome")
                    .build(),
            },
            grants,
            verifiers: verifiers.clone(),
            exchange,
            limiter: limiter.clone(),
            ttl,
            refresh_ttl: settings::ttl(config.refresh_token_ttl_secs),
            audit,
            tokens: runtime
                .meter()
                .u64_counter("mesh.tokens.issued")
                .with_description("Token endpoint answers, by grant type and outcome")
                .build(),
        };
        let limits = ServerLimits::default();
        let server = runtime
            .into_server(policy)
            .with_service(
                IdentityServer::from_arc(identity.clone())
                    .max_decoding_message_size(limits.max_message_bytes),
            )
            .with_service(
                IdentityAdminServer::from_arc(identity.clone())
                    .max_decoding_message_size(limits.max_message_bytes),
            );
        Ok(Self {
            server,
            identity,
            public,
            public_addr,
            issuer,
            api,
            http,
            rotator,
            rotation_interval: settings.signing_key_rotation,
            stop,
        })
    }

    /// The mesh gRPC address actually bound.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The admin listener's address (`/metrics`), when one was asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.server.admin_addr()
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

    /// The join tokens of the CA (what `meshctl identity join-token` creates).
    pub fn join_tokens(&self) -> join::JoinTokens {
        self.identity.tokens.clone()
    }

    /// The renewal of the service's own certificate, when it holds the CA.
    pub fn renewal(&self) -> Option<Arc<mesh_service::identity::RenewalStatus>> {
        self.server.renewal()
    }

    /// A handle that rotates the signing key while the service runs.
    pub fn key_rotator(&self) -> KeyRotator {
        self.rotator.clone()
    }

    /// Serves both listeners until `shutdown` resolves, then drains them.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (stop_tx, stop_rx) = (self.stop, self.api.stopping.clone());
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(());
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
            let _ = rx.changed().await;
        };

        let schedule = self.rotator.clone().run_schedule(self.rotation_interval);
        let schedule = tokio::spawn(schedule);
        let telemetry = self.server.telemetry().clone();
        let api = AuthServiceServer::from_arc(self.api)
            .max_decoding_message_size(self.server.limits().max_message_bytes);
        let limits = *self.server.limits();
        let mesh = self.server.serving(api, stopped(stop_rx.clone()));
        let public = grpc_server(&limits)
            .accept_http1(true)
            .layer(telemetry.http_server_layer())
            .add_routes(
                tonic::service::Routes::from(http::router(self.http)).add_service(
                    IdentityServer::from_arc(self.identity)
                        .max_decoding_message_size(limits.max_message_bytes),
                ),
            )
            .serve_with_incoming_shutdown(self.public.incoming(), stopped(stop_rx));

        let (mesh, public) = tokio::join!(mesh, public);
        schedule.abort();
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

    fn observed(&self) -> mesh_service::Observed {
        mesh_service::Observed {
            renewal: self.renewal(),
            admin_addr: self.admin_addr(),
            telemetry: self.telemetry(),
        }
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

/// The auth service's own identity when it holds the CA: a certificate it signs for itself, in
/// memory, and the CA's bundle.
fn own_workload(
    ca: &authority::AuthorityStore,
    tls: &mesh_service::TlsFlags,
) -> Result<mesh_service::Workload, StartError> {
    if tls.tls_cert.is_some() || tls.tls_key.is_some() {
        return Err(StartError::config(
            "--tls-cert",
            "this auth service holds the mesh CA and certifies itself: drop --tls-cert and \
             --tls-key (MESH_TLS_CERT, MESH_TLS_KEY)",
        ));
    }
    let spiffe_id = SpiffeId::workload(&tls.trust_domain, "auth")
        .map_err(|e| StartError::config("--trust-domain", e))?;
    let (chain_pem, key) = ca
        .issue_own(&spiffe_id)
        .and_then(|issued| issued.into_parts())
        .map_err(|e| StartError::runtime("own certificate", e))?;
    let chain = mesh_tls::material::parse_pem_certs(&chain_pem)
        .map_err(|e| StartError::runtime("own certificate", e))?;
    let identity = mesh_tls::Reloadable::in_memory(chain, key)
        .map_err(|e| StartError::runtime("own certificate", e))?;
    let roots =
        Trust::from_pem(&ca.bundle_pem()).map_err(|e| StartError::runtime("CA bundle", e))?;
    Ok(mesh_service::Workload {
        identity,
        roots,
        spiffe_id,
        source: CertSource::OwnCa,
    })
}

/// Rotates the signing key of a running auth service.
#[derive(Debug, Clone)]
pub struct KeyRotator {
    keys: Arc<KeyStore>,
    verifiers: Arc<LocalVerifiers>,
    mesh_verifier: Arc<TokenVerifier>,
}

impl KeyRotator {
    /// Promotes the published next key to signing, retires the current one, publishes a new
    /// next key, and hands the new key set to the issuer's own verifiers.
    pub async fn rotate(&self) -> Result<keys::Rotation, keys::KeyError> {
        let rotation = self.keys.rotate().await?;
        self.refresh_verifiers();
        Ok(rotation)
    }

    /// The key ids as they stand.
    pub fn current(&self) -> keys::Rotation {
        self.keys.rotation()
    }

    fn refresh_verifiers(&self) {
        self.verifiers.refresh_keys();
        self.mesh_verifier.replace_keys(self.keys.key_set());
    }

    /// Rotates every `interval` (counted from when the current key started signing, so a
    /// restart does not reset the clock), and drops retired keys from the JWKS once their tokens
    /// have expired. Runs until aborted; a failed rotation is logged and retried.
    pub async fn run_schedule(self, interval: Duration) {
        // Also how soon this replica sees a key another replica on the same database made:
        // every replica's JWKS holds a new key within 2 s of its creation.
        let check_every = (interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(2));
        loop {
            match self.keys.rotate_if_due(interval).await {
                Ok(_) => self.refresh_verifiers(),
                Err(error) => tracing::error!(%error, "scheduled signing-key rotation failed"),
            }
            tokio::time::sleep(check_every).await;
        }
    }
}

/// The auth service's schema, applied in order when it opens its database.
pub const MIGRATIONS: mesh_service::Migrations = mesh_service::migrations![
    "0001_signing_keys.sql",
    "0002_grants.sql",
    "0003_revocations.sql",
    "0004_key_schedule.sql",
    "0005_identity.sql",
    "0006_family_grant.sql",
    "0007_rejoin_lineage.sql",
    "0008_openid_login.sql",
    "0009_browser_sessions.sql",
];
