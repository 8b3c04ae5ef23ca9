//! The client side of the mesh: a verifier that pins the server's SPIFFE ID, and channels.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{SpiffeId, spiffe_id_of};
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
    identity: Option<Arc<Reloadable>>,
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
}

impl MeshConnector {
    /// A connector presenting `identity` and accepting only servers with SPIFFE ID `expected`.
    pub fn new(
        identity: Arc<Reloadable>,
        roots: TrustBundle,
        expected: SpiffeId,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            config: mesh_client_config(identity, roots, expected)?,
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
            config: spiffe_client_config(roots, expected, None)?,
        })
    }

    /// A lazily connecting channel to `addr`; see [`channel`].
    pub fn channel(&self, addr: &str) -> Result<Channel, TlsError> {
        channel(addr, self.config.clone())
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
