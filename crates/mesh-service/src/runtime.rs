//! What a service holds once its flags are loaded, before it serves: the shell every service
//! shares, so that a service's own `build` is its state, its clients and its policy.

use std::net::SocketAddr;
use std::sync::Arc;

use auth_interceptor::audit::AuditLog;
use auth_interceptor::client::Transport;
use auth_interceptor::revocation::{self, FeedStatus};
use auth_interceptor::{AuthLayer, Policy, TokenVerifier};
use mesh_telemetry::trace::{ClientTraceLayer, Telemetry, TelemetryFlags};
use mesh_tls::SpiffeId;
use mesh_tls::client::MeshConnector;
use mesh_tls::server::{ServerLimits, TlsListener};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tower::Layer as _;

use crate::config::{AuditFlags, ServiceFlags, TlsFlags, Workload};
use crate::error::StartError;
use crate::server::MeshServer;

/// A mesh channel with the client trace layer, as a [`Transport`]: every call it carries starts
/// a client span and passes the W3C trace context on.
pub fn traced(channel: Channel, layer: &ClientTraceLayer) -> Transport {
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
}

impl Runtime {
    /// Loads the workload's certificates, discovers the issuer's keys for `audience`, binds the
    /// mesh listener on `listen`, opens the audit log and starts the tracer of service `name`.
    pub async fn start(
        name: &'static str,
        listen: SocketAddr,
        flags: &ServiceFlags,
        audience: &str,
    ) -> Result<Self, StartError> {
        let workload = flags.tls.load()?;
        let verifier = TokenVerifier::for_issuer(&flags.issuer, audience, workload.roots.clone())
            .await
            .map_err(|e| StartError::runtime(format!("--issuer {}", flags.issuer), e))?;
        let mut runtime = Self::with_verifier(
            name,
            listen,
            workload,
            verifier,
            &flags.audit,
            &flags.telemetry,
        )
        .await?;
        // Not traced: one stream for the life of the process is no request to draw.
        let auth = runtime.channel("auth", &flags.auth_url, "--auth-url")?;
        runtime.revocation_feed = Some(revocation::spawn_feed(
            auth_interceptor::client::transport(auth),
            runtime.verifier.revocations().clone(),
        ));
        Ok(runtime)
    }

    /// Like [`Runtime::start`], with a verifier the service made itself (the auth service
    /// verifies with its own keys, without discovery) and flags it holds in its own form.
    pub async fn with_verifier(
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
        Ok(Self {
            name,
            workload,
            listener,
            addr,
            verifier,
            audit: audit.open(name)?,
            telemetry: Telemetry::new(telemetry, name)
                .map_err(|e| StartError::config("--otlp-endpoint", e))?,
            revocation_feed: None,
        })
    }

    /// Loads `tls` alone (for a service that builds its verifier from what the workload holds).
    pub fn load_workload(tls: &TlsFlags) -> Result<Workload, StartError> {
        tls.load()
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
    /// value of `flag`), which must present `spiffe://<trust domain>/sa/<peer>`.
    pub fn client(
        &self,
        peer: &str,
        url: &str,
        flag: &'static str,
    ) -> Result<Transport, StartError> {
        let channel = self.channel(peer, url, flag)?;
        Ok(traced(channel, &self.telemetry.client_layer(url)))
    }

    /// A lazily connecting mTLS channel to the mesh workload `peer` at `url`, untraced.
    fn channel(&self, peer: &str, url: &str, flag: &'static str) -> Result<Channel, StartError> {
        SpiffeId::workload(self.trust_domain(), peer)
            .and_then(|id| {
                MeshConnector::new(
                    self.workload.identity.clone(),
                    self.workload.roots.clone(),
                    id,
                )
            })
            .and_then(|connector| connector.channel(url))
            .map_err(|e| StartError::config(flag, e))
    }

    /// The server that enforces `policy` on this runtime's listener.
    pub fn into_server(self, policy: Policy) -> MeshServer {
        tracing::debug!(
            service = self.name,
            rows = policy.methods().len(),
            "policy loaded"
        );
        MeshServer {
            auth: AuthLayer::new(self.verifier.clone(), policy).with_audit(self.audit),
            listener: self.listener,
            addr: self.addr,
            telemetry: self.telemetry,
            limits: ServerLimits::default(),
            verifier: self.verifier,
            revocation_feed: self.revocation_feed,
        }
    }
}

/// Binds a TCP listener; a port in use is a runtime failure (exit 1), not a flag error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::runtime(format!("bind {addr}"), e))
}
