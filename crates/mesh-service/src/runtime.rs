//! What a service holds once its flags are loaded, before it serves: the shell every service
//! shares, so that a service's own `build` is its state, its clients and its policy.

use std::net::SocketAddr;
use std::sync::Arc;

use auth_interceptor::audit::AuditLog;
use auth_interceptor::revocation::{self, FeedStatus};
use auth_interceptor::{AuthLayer, TokenVerifier};
use mesh_client::Transport;
use mesh_telemetry::metrics::KnownMethods;
use mesh_telemetry::trace::{ClientTraceLayer, Telemetry, TelemetryFlags};
use mesh_tls::SpiffeId;
use mesh_tls::client::MeshConnector;
use mesh_tls::server::{ServerLimits, TlsListener};
use tokio::net::TcpListener;
use tower::Layer as _;

use mesh_client::balance::Balanced;

use mesh_tls::watch::WatchStatus;

use crate::config::{AuditFlags, CertSource, ServerFlags, ServiceFlags, Workload};
use crate::error::StartError;
use crate::identity::{RenewalStatus, Renewed, TaskGuard, TokenFile};
use crate::server::MeshServer;

/// A mesh channel with the client trace layer, as a [`Transport`]: every call it carries starts
/// a client span and passes the W3C trace context on.
pub fn traced(channel: tonic::transport::Channel, layer: &ClientTraceLayer) -> Transport {
    Transport::new(layer.layer(channel))
}

/// A service's identity, listener, verifier, audit log and tracer, loaded from its flags.
#[derive(Debug)]
pub struct Runtime {
    name: &'static str,
    workload: Workload,
    listener: TlsListener,
    addr: SocketAddr,
    verifier: Arc<TokenVerifier>,
    audit: Option<Arc<AuditLog>>,
    telemetry: Telemetry,
    revocation_feed: Option<Arc<FeedStatus>>,
    renewal: Option<Arc<RenewalStatus>>,
    file_watch: Option<Arc<WatchStatus>>,
    tasks: Vec<TaskGuard>,
    health_listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    shutdown_grace: std::time::Duration,
    max_in_flight: usize,
}

pub use crate::config::DEFAULT_SHUTDOWN_GRACE;

/// Makes a certificate for a service that is its own CA, each time its renewal asks.
pub type RenewOwn = Box<
    dyn FnMut() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Renewed, String>> + Send>,
        > + Send,
>;

/// Where a service's certificate comes from, and what keeps it current.
pub enum IdentitySource {
    /// Certificate files (`--tls-*`), watched for changes when `--tls-watch` asks.
    Files(Workload),
    /// A certificate the mesh CA gave for a join token, renewed there over mTLS (or by joining
    /// again with the rejoin token when it expired); the rejoin token is kept in `token_file`.
    Joined {
        /// The certificate and trust the join gave.
        workload: Workload,
        /// Where the rejoin token is kept.
        token_file: TokenFile,
        /// The rejoin token the join returned.
        rejoin: String,
        /// The issuer's public URL (to join again with an expired certificate).
        issuer: String,
        /// The issuer's mesh listener (`--auth-url`), where renewals go.
        auth_url: String,
    },
    /// The service is the mesh CA: `renew` makes its next certificate, also whenever `nudge`
    /// changes (the CA rotated).
    OwnCa {
        /// The certificate it starts with.
        workload: Workload,
        /// Makes the next one.
        renew: RenewOwn,
        /// Changes when the CA does.
        nudge: tokio::sync::watch::Receiver<u64>,
    },
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, workload) = match self {
            Self::Files(workload) => ("files", workload),
            Self::Joined { workload, .. } => ("joined", workload),
            Self::OwnCa { workload, .. } => ("own CA", workload),
        };
        f.debug_struct("IdentitySource")
            .field("source", &kind)
            .field("spiffe_id", &workload.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl IdentitySource {
    /// What orders and inventory run with: certificate files, or a join token
    /// (`--join-token-file`) redeemed at the issuer.
    pub async fn from_flags(flags: &ServiceFlags) -> Result<Self, StartError> {
        let Some(path) = &flags.join_token_file else {
            return Ok(Self::Files(flags.tls.load()?));
        };
        let token_file = TokenFile::new(path);
        let (workload, rejoin) =
            crate::identity::join(&flags.tls, &token_file, &flags.issuer).await?;
        Ok(Self::Joined {
            workload,
            token_file,
            rejoin,
            issuer: flags.issuer.clone(),
            auth_url: flags.auth_url.clone(),
        })
    }

    fn workload(&self) -> &Workload {
        match self {
            Self::Files(workload)
            | Self::Joined { workload, .. }
            | Self::OwnCa { workload, .. } => workload,
        }
    }
}

/// Where a service's token verifier comes from.
#[derive(Debug)]
pub enum VerifierSource {
    /// The issuer's keys, discovered at `issuer` for tokens meant for `audience`; revocations
    /// streamed from the issuer's mesh listener at `auth_url`.
    Discovered {
        /// The issuer's URL (`--issuer`).
        issuer: String,
        /// The audience tokens must name.
        audience: String,
        /// The issuer's mesh listener (`--auth-url`).
        auth_url: String,
    },
    /// A verifier the service made itself (the issuer verifies with its own keys and reads its
    /// own revocation log).
    Local(Arc<TokenVerifier>),
}

/// Everything a [`Runtime`] is built from.
#[derive(Debug)]
pub struct Parts<'a> {
    /// The service's name (its SPIFFE path, traces, metrics, audit records).
    pub name: &'static str,
    /// Where the mesh listener binds.
    pub listen: SocketAddr,
    /// Its certificate.
    pub identity: IdentitySource,
    /// Its token verifier.
    pub verifier: VerifierSource,
    /// Its audit log.
    pub audit: &'a AuditFlags,
    /// Its traces and metrics.
    pub telemetry: &'a TelemetryFlags,
    /// The server-wide flags.
    pub server: &'a ServerFlags,
}

impl Runtime {
    /// What orders and inventory start with: [`Runtime::build`] from their flags, with the
    /// issuer's keys discovered for `audience`.
    pub async fn start(
        name: &'static str,
        listen: SocketAddr,
        flags: &ServiceFlags,
        audience: &str,
    ) -> Result<Self, StartError> {
        Self::build(Parts {
            name,
            listen,
            identity: IdentitySource::from_flags(flags).await?,
            verifier: VerifierSource::Discovered {
                issuer: flags.issuer.clone(),
                audience: audience.to_owned(),
                auth_url: flags.auth_url.clone(),
            },
            audit: &flags.audit,
            telemetry: &flags.telemetry,
            server: &flags.server,
        })
        .await
    }

    /// Builds the shell of service `parts.name`: binds the mesh listener (and the probe and
    /// admin listeners the server flags ask for), makes or takes the verifier, opens the audit
    /// log, starts the tracer, and keeps the certificate current as its source says.
    pub async fn build(parts: Parts<'_>) -> Result<Self, StartError> {
        let workload = parts.identity.workload().clone();
        let verifier = match &parts.verifier {
            VerifierSource::Discovered {
                issuer, audience, ..
            } => TokenVerifier::for_issuer(issuer, audience, workload.roots.clone())
                .await
                .map_err(|e| StartError::runtime(format!("--issuer {issuer}"), e))?,
            VerifierSource::Local(verifier) => verifier.clone(),
        };
        let mut runtime = Self::open(
            parts.name,
            parts.listen,
            workload,
            verifier,
            parts.audit,
            parts.telemetry,
        )
        .await?;
        if let VerifierSource::Discovered { auth_url, .. } = &parts.verifier {
            // Not traced: one stream for the life of the process is no request to draw.
            let auth = runtime.transport("auth", auth_url, "--auth-url")?;
            let (task, feed) = revocation::spawn_feed(auth, runtime.verifier.revocations().clone());
            // Stopped with the service, not left reconnecting to an issuer it no longer serves.
            runtime.tasks.push(TaskGuard::new(task));
            crate::observe::revocation_feed(runtime.meter(), &feed);
            runtime.revocation_feed = Some(feed);
        }
        match parts.identity {
            IdentitySource::Files(_) => {}
            IdentitySource::Joined {
                token_file,
                rejoin,
                issuer,
                auth_url,
                ..
            } => {
                let auth = runtime.transport("auth", &auth_url, "--auth-url")?;
                runtime.renew_from_mesh_ca(auth, token_file, rejoin, &issuer)?;
            }
            IdentitySource::OwnCa { renew, nudge, .. } => runtime.renew_own(renew, nudge),
        }
        runtime.serve_with(parts.server).await?;
        Ok(runtime)
    }

    /// Applies the server-wide flags: binds the probe and admin listeners they ask for, and
    /// sets the drain and the bound on calls in flight. The one place they are read.
    async fn serve_with(&mut self, server: &ServerFlags) -> Result<(), StartError> {
        self.listen_health(server.health_listen).await?;
        self.listen_admin(server.admin_listen).await?;
        self.shutdown_grace = server.shutdown_grace;
        self.max_in_flight = server.max_in_flight;
        Ok(())
    }

    /// Renews the certificate at the mesh CA over `auth` (mTLS with the current certificate),
    /// keeping the rejoin token (`rejoin`, the one joining returned) current in `token_file`.
    ///
    /// A certificate that expired (the CA was down for longer than its life) cannot prove
    /// anything over mTLS any more: the workload then joins again with its rejoin token on the
    /// issuer's public listener, as a restart would.
    fn renew_from_mesh_ca(
        &mut self,
        auth: Transport,
        token_file: TokenFile,
        rejoin: String,
        issuer: &str,
    ) -> Result<(), StartError> {
        let current_token = Arc::new(std::sync::Mutex::new(rejoin));
        let config = mesh_tls::client::https_grpc_client_config(self.workload.roots.clone())
            .map_err(|e| StartError::config("--tls-ca", e))?;
        let public = mesh_tls::client::channel(issuer, config)
            .map(mesh_client::transport)
            .map_err(|e| StartError::config("--issuer", e))?;
        let identity = self.workload.identity.clone();
        let renew = move || {
            let (auth, public, token_file, current_token) = (
                auth.clone(),
                public.clone(),
                token_file.clone(),
                current_token.clone(),
            );
            let expired = identity.remaining().is_zero();
            async move {
                let held = current_token
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let certified = if expired {
                    crate::identity::certify(public, &held, "").await
                } else {
                    crate::identity::certify(auth, "", &held).await
                };
                let (renewed, response) =
                    certified.map_err(|status| format!("the mesh CA: {}", status.message()))?;
                token_file.replace(&response.rejoin_token);
                *current_token.lock().unwrap_or_else(|p| p.into_inner()) = response.rejoin_token;
                Ok(renewed)
            }
        };
        let (task, status) = crate::identity::spawn_renewal(
            self.workload.identity.clone(),
            self.workload.roots.clone(),
            renew,
            None,
        );
        self.tasks.push(task);
        self.renewal = Some(status);
        Ok(())
    }

    /// Renews the certificate with `renew` (a service that is its own CA), also whenever
    /// `nudge` changes.
    fn renew_own(&mut self, renew: RenewOwn, nudge: tokio::sync::watch::Receiver<u64>) {
        let (task, status) = crate::identity::spawn_renewal(
            self.workload.identity.clone(),
            self.workload.roots.clone(),
            renew,
            Some(nudge),
        );
        self.tasks.push(task);
        self.renewal = Some(status);
    }

    /// The runtime's listener, tracer, audit log and metrics around `workload` and `verifier`.
    async fn open(
        name: &'static str,
        listen: SocketAddr,
        workload: Workload,
        verifier: Arc<TokenVerifier>,
        audit: &AuditFlags,
        telemetry: &TelemetryFlags,
    ) -> Result<Self, StartError> {
        let tcp = bind(listen).await?;
        let listener = TlsListener::mesh(tcp, workload.identity.clone(), workload.roots.clone())
            .map_err(|e| StartError::config("--tls-ca", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::runtime("local address", e))?;
        let mut tasks = Vec::new();
        let mut file_watch = None;
        if let CertSource::Files(Some(every)) = workload.source {
            let (task, status) = mesh_tls::watch::spawn_file_watch(
                workload.identity.clone(),
                workload.roots.clone(),
                every,
            )
            .map_err(|e| StartError::config("--tls-watch", e))?;
            tasks.push(TaskGuard::new(task));
            file_watch = Some(status);
        }
        let telemetry = Telemetry::new(telemetry, name)
            .map_err(|e| StartError::config("--otlp-endpoint", e))?;
        let audit = audit.open(name)?;
        let meter = telemetry.metrics().meter();
        crate::observe::certificate(meter, workload.identity.clone());
        crate::observe::verifier(meter, &verifier);
        if let Some(log) = &audit {
            crate::observe::audit(meter, log);
        }
        Ok(Self {
            name,
            workload,
            listener,
            addr,
            verifier,
            audit,
            telemetry,
            revocation_feed: None,
            renewal: None,
            file_watch,
            tasks,
            health_listener: None,
            admin_listener: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_in_flight: crate::shed::DEFAULT_MAX_IN_FLIGHT,
        })
    }

    /// The meter of this service's metrics.
    pub fn meter(&self) -> &opentelemetry::metrics::Meter {
        self.telemetry.metrics().meter()
    }

    /// Binds the admin listener (`/metrics`) on `addr`, when one is asked for.
    async fn listen_admin(&mut self, addr: Option<std::net::SocketAddr>) -> Result<(), StartError> {
        if let Some(addr) = addr {
            self.admin_listener = Some(bind(addr).await?);
        }
        Ok(())
    }

    /// The certificate renewal's state, when the certificate is renewed in process.
    pub fn renewal(&self) -> Option<Arc<RenewalStatus>> {
        self.renewal.clone()
    }

    /// Binds the plaintext health listener on `addr`, when one is asked for.
    async fn listen_health(
        &mut self,
        addr: Option<std::net::SocketAddr>,
    ) -> Result<(), StartError> {
        if let Some(addr) = addr {
            self.health_listener = Some(bind(addr).await?);
        }
        Ok(())
    }

    /// The workload's identity.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// The trust domain of the workload and of every caller it admits.
    pub fn trust_domain(&self) -> &str {
        self.workload.trust_domain()
    }

    /// The address the mesh listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The tracer.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The audit chain, when one is configured: for decisions a service makes outside the
    /// layer (the issuer's logins and grants), so they land in the same chain.
    pub fn audit_log(&self) -> Option<Arc<AuditLog>> {
        self.audit.clone()
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Arc<TokenVerifier> {
        &self.verifier
    }

    /// The state of the revocation stream from the issuer (`None` for the issuer itself, which
    /// reads its own revocation log).
    pub fn revocation_feed(&self) -> Option<Arc<FeedStatus>> {
        self.revocation_feed.clone()
    }

    /// A traced, lazily connecting mTLS transport to the mesh workload `peer` at `url` (the
    /// value of `flag`), which must present `spiffe://<trust domain>/sa/<peer>`, for the calls
    /// a handler makes: each carries the remaining deadline of the request being served
    /// ([`mesh_client::deadline`]).
    pub fn client(
        &self,
        peer: &str,
        url: &str,
        flag: &'static str,
    ) -> Result<Transport, StartError> {
        let balanced = self.balanced(peer, url, flag)?;
        crate::observe::balanced(self.meter(), url, balanced.stats());
        Ok(Transport::new(
            tower::ServiceBuilder::new()
                // A client span per call; its context travels in `traceparent`.
                .layer(self.telemetry.client_layer(url))
                // What is left of the caller's deadline, as `grpc-timeout`.
                .layer(mesh_client::deadline::ClientDeadlineLayer)
                // Retries, then power of two choices over the replicas that are not ejected
                // (`Balanced::new` lists its layers).
                .service(balanced),
        ))
    }

    /// An untraced mTLS transport to the mesh workload `peer` at `url`: balanced over every
    /// replica the address resolves to (or the comma-separated list names), each of which must
    /// present `spiffe://<trust domain>/sa/<peer>`.
    fn transport(
        &self,
        peer: &str,
        url: &str,
        flag: &'static str,
    ) -> Result<Transport, StartError> {
        self.balanced(peer, url, flag).map(Transport::new)
    }

    /// The balanced client under [`Runtime::transport`].
    fn balanced(&self, peer: &str, url: &str, flag: &'static str) -> Result<Balanced, StartError> {
        SpiffeId::workload(self.trust_domain(), peer)
            .and_then(|id| {
                MeshConnector::new(
                    self.workload.identity.clone(),
                    self.workload.roots.clone(),
                    id,
                )
            })
            .and_then(|connector| {
                Balanced::new(
                    connector,
                    url,
                    Arc::new(mesh_client::Dns),
                    mesh_client::RESOLVE_EVERY,
                )
            })
            .map_err(|e| StartError::config(flag, e))
    }

    /// The server that enforces `policy` on this runtime's listener.
    pub fn into_server(self, policy: impl Into<crate::policy::ServerPolicy>) -> MeshServer {
        let crate::policy::ServerPolicy { policy, file } = policy.into();
        tracing::debug!(
            service = self.name,
            rows = policy.methods().len(),
            version = policy.version(),
            "policy loaded"
        );
        let meter = self.telemetry.metrics().meter().clone();
        let shed = crate::shed::ShedLayer::new(self.max_in_flight);
        crate::observe::shed(&meter, shed.shed_count());
        let known = KnownMethods::new(policy.methods().iter().map(|rpc| rpc.path));
        let auth = AuthLayer::new(self.verifier.clone(), policy)
            .with_audit(self.audit.clone())
            .with_metrics(&meter);
        let mut tasks = self.tasks;
        if let Some(file) = file {
            let reporting = crate::policy::Reporting::new(&meter, self.audit);
            tasks.push(TaskGuard::new(crate::policy::spawn_reload(
                file,
                auth.policy_slot(),
                reporting,
            )));
        }
        MeshServer {
            known,
            auth: auth.clone(),
            listener: self.listener,
            addr: self.addr,
            telemetry: self.telemetry,
            limits: ServerLimits::default(),
            verifier: self.verifier,
            revocation_feed: self.revocation_feed,
            renewal: self.renewal,
            file_watch: self.file_watch,
            tasks,
            extra: Default::default(),
            health_listener: self.health_listener,
            shutdown_grace: self.shutdown_grace,
            shed,
            admin_listener: self.admin_listener,
        }
    }
}

/// Binds a TCP listener; a port in use is a runtime failure (exit 1), not a flag error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::runtime(format!("bind {addr}"), e))
}
