//! The client side of the mesh: a verifier that pins the server's SPIFFE ID, and channels.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{BoundTo, SpiffeId, Thumbprint, spiffe_id_of};
use crate::material::{Reloadable, TrustBundle};
use crate::{TlsError, provider};

/// The client config for a mesh hop: TLS 1.3 only, our certificate presented from `identity`,
/// and the server accepted only if it chains to `roots` *and* carries the SPIFFE ID `expected`.
///
/// In the mesh the SPIFFE ID replaces the host name: services are reached by whatever address
/// the environment gives them (an IP in tests, a compose host name), but must prove they are
/// the workload we meant to call.
pub fn mesh_client_config(
    identity: Arc<Reloadable>,
    roots: TrustBundle,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    spiffe_client_config(roots, expected, Some(identity))
}

fn spiffe_client_config(
    roots: TrustBundle,
    expected: SpiffeId,
    identity: Option<Arc<dyn ResolvesClientCert>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = SpiffeServerVerifier {
        roots,
        expected,
        algorithms: provider().signature_verification_algorithms,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Presents one certificate, whatever the workload serves now: the client side of a connection
/// that must keep presenting the certificate its calls' tokens are bound to.
#[derive(Debug)]
struct Pinned(Arc<CertifiedKey>);

impl ResolvesClientCert for Pinned {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The client config for HTTPS to the auth service's public listener (discovery, JWKS, token
/// endpoint): ordinary WebPKI verification of the host name against the bundle in `roots` as it
/// stands at each handshake, no client certificate, HTTP/1.1.
pub fn https_client_config(roots: TrustBundle) -> Result<ClientConfig, TlsError> {
    let mut config = https_config(roots)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client config that trusts no server at all: for an HTTP client that only ever speaks plain
/// HTTP (a metrics scrape) but whose library wants a TLS config to be built.
pub fn no_tls_client_config() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// Like [`https_client_config`] for gRPC (ALPN `h2`): what a workload uses to reach the CA on
/// the public listener before it has a certificate of its own.
pub fn https_grpc_client_config(roots: TrustBundle) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = https_config(roots)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn https_config(roots: TrustBundle) -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(HostNameOnCurrentBundle(roots)))
        .with_no_client_auth())
}

/// WebPKI verification of the host name, against the bundle as it stands at each handshake.
#[derive(Debug)]
struct HostNameOnCurrentBundle(TrustBundle);

impl ServerCertVerifier for HostNameOnCurrentBundle {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.anchors().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .anchors()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .anchors()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.anchors().server_verifier.supported_verify_schemes()
    }
}

/// Opens mTLS channels to one kind of workload: our certificate, their expected SPIFFE ID.
#[derive(Debug, Clone)]
pub struct MeshConnector {
    config: Arc<ClientConfig>,
    identity: Option<Arc<Reloadable>>,
    roots: TrustBundle,
    expected: SpiffeId,
}

impl MeshConnector {
    /// A connector presenting `identity` and accepting only servers with SPIFFE ID `expected`.
    pub fn new(
        identity: Arc<Reloadable>,
        roots: TrustBundle,
        expected: SpiffeId,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            config: mesh_client_config(identity.clone(), roots.clone(), expected.clone())?,
            identity: Some(identity),
            roots,
            expected,
        })
    }

    /// A connector that verifies the server like [`MeshConnector::new`] but presents no
    /// certificate of its own. Mesh servers refuse its handshake: it exists for probes and for
    /// the tests that prove they do.
    pub fn without_client_certificate(
        roots: TrustBundle,
        expected: SpiffeId,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            config: spiffe_client_config(roots.clone(), expected.clone(), None)?,
            identity: None,
            roots,
            expected,
        })
    }

    /// A lazily connecting channel to `addr`; see [`channel`]. Each connection it makes
    /// presents the certificate served at its handshake.
    pub fn channel(&self, addr: &str) -> Result<Channel, TlsError> {
        channel(addr, self.config.clone())
    }

    /// The channels of a mesh client to the server at `addr`, one per certificate of ours a
    /// call must be sent with; see [`CertChannel`].
    pub fn cert_channel(&self, addr: &str) -> Result<CertChannel, TlsError> {
        let first = self.pinned_channel(addr, self.identity.as_ref().map(|i| i.thumbprint()))?;
        Ok(CertChannel {
            addr: addr.to_owned(),
            connector: self.clone(),
            channels: Arc::new(std::sync::Mutex::new(vec![first.clone()])),
            ready: first,
        })
    }

    /// A channel whose every connection presents the certificate with `thumbprint` (none
    /// without an identity), if we still hold it.
    fn pinned_channel(
        &self,
        addr: &str,
        thumbprint: Option<Thumbprint>,
    ) -> Result<Presenting, TlsError> {
        let resolver: Option<Arc<dyn ResolvesClientCert>> =
            match (self.identity.as_ref(), thumbprint) {
                (Some(identity), Some(thumbprint)) => {
                    let key = identity.held(thumbprint).ok_or(TlsError::Invalid {
                        what: "certificate",
                        value: format!("{thumbprint:?} is no longer held"),
                    })?;
                    Some(Arc::new(Pinned(key)))
                }
                _ => None,
            };
        let config = spiffe_client_config(self.roots.clone(), self.expected.clone(), resolver)?;
        Ok((thumbprint, channel(addr, config)?))
    }
}

/// How many certificates of ours a [`CertChannel`] keeps a channel for: the one served and the
/// one it replaced, as [`Reloadable::held`] keeps them.
const CHANNELS_PER_SERVER: usize = 2;

/// A mesh client's channels to one server, one per certificate of ours: the certificate served
/// now, and the one it replaced while calls bound to it finish.
///
/// A call goes over the channel presenting the certificate its token is bound to, named by the
/// [`BoundTo`] in its extensions (RFC 8705: the server compares the two), or over the current
/// one when it names none. When the workload's certificate is renewed, the next call opens a
/// channel presenting the new one, so new calls and the tokens fetched for them move to the new
/// certificate together; the channel of the certificate before the replaced one is dropped, and
/// its connection closes once its calls are done. Each channel reconnects with the certificate it
/// was made for. Clones share the channels.
#[derive(Debug, Clone)]
pub struct CertChannel {
    addr: String,
    connector: MeshConnector,
    /// Newest first, at most [`CHANNELS_PER_SERVER`].
    channels: Arc<std::sync::Mutex<Vec<Presenting>>>,
    /// The channel `poll_ready` readied, for the next call that goes to the current certificate.
    ready: Presenting,
}

/// A channel, and the certificate of ours it presents (none for a connector without one).
type Presenting = (Option<Thumbprint>, Channel);

impl CertChannel {
    /// The channel presenting `thumbprint`, opened if we still hold that certificate.
    fn presenting(&self, thumbprint: Option<Thumbprint>) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, channel)) = channels.iter().find(|(t, _)| *t == thumbprint) {
            return Some(channel.clone());
        }
        let current = self.connector.identity.as_ref().map(|i| i.thumbprint());
        match self.connector.pinned_channel(&self.addr, thumbprint) {
            Ok(opened) => {
                let channel = opened.1.clone();
                // The current certificate's channel goes first; a late call's older one last.
                if thumbprint == current {
                    channels.insert(0, opened);
                } else {
                    channels.push(opened);
                }
                channels.truncate(CHANNELS_PER_SERVER);
                Some(channel)
            }
            Err(error) => {
                tracing::debug!(addr = %self.addr, %error, "no channel for a bound call");
                None
            }
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for CertChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let current = self.connector.identity.as_ref().map(|i| i.thumbprint());
        if self.ready.0 != current
            && let Some(channel) = self.presenting(current)
        {
            self.ready = (current, channel);
        }
        self.ready.1.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let bound = request.extensions().get::<BoundTo>().map(|bound| bound.0);
        match bound {
            None => Box::pin(self.ready.1.call(request)),
            Some(thumbprint) if Some(thumbprint) == self.ready.0 => {
                Box::pin(self.ready.1.call(request))
            }
            Some(thumbprint) => match self.presenting(Some(thumbprint)) {
                Some(channel) => Box::pin(tower::ServiceExt::oneshot(channel, request)),
                // Two renewals happened while the call was on its way: its token must be
                // fetched again, which the caller's token source does for the next call.
                None => Box::pin(std::future::ready(Ok(tonic::Status::unauthenticated(
                    "the call's token is bound to a certificate this workload no longer holds",
                )
                .into_http()))),
            },
        }
    }
}

/// A lazily connecting gRPC channel to `addr` (`host:port`, optionally with an `https://`
/// prefix) over mutual TLS with `config`. The channel reconnects by itself after the server
/// comes back, and reuses its connection across calls.
pub fn channel(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let authority = addr
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| TlsError::Invalid {
            what: "address",
            value: addr.to_owned(),
        })?
        // A peer on the same network accepts in milliseconds; one that vanished (a stopped
        // container's address) would hold a call for the kernel's ARP timeout.
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let connector = TlsConnector::from(config);
    let connect = tower::service_fn(move |uri: Uri| {
        let connector = connector.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// Verifies a mesh server: chain to our trust bundle as it stands at the handshake, then the
/// exact SPIFFE ID we expect.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: TrustBundle,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots.roots(),
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match spiffe_id_of(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config allows TLS 1.3 only, so a TLS 1.2 signature is never legitimate here.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Connects to `addr` with `config` and completes the TLS handshake: a raw stream for speaking
/// HTTP/2 by hand (tests of the server's protocol limits).
pub async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config)
        .connect(ServerName::from(addr.ip()), tcp)
        .await
}

/// Connects to `addr` with `config`, completes the handshake and returns the certificate the
/// server presented (its leaf, DER): what an operator or a test reads to see which certificate
/// a workload serves right now.
pub async fn peer_certificate(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<Vec<u8>> {
    let tls = connect(addr, config).await?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.to_vec())
        .ok_or_else(|| io::Error::other("the server presented no certificate"))
}
