//! The server side of the mesh: rustls configs, the TLS accept loop, and a hardened tonic builder.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ServerConfig;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::{PeerIdentity, spiffe_id_of};
use crate::material::{Reloadable, TrustBundle};
use crate::{TlsError, provider};

/// The server config of a mesh listener: TLS 1.3 only, a client certificate chaining to the
/// bundle in `roots` *as it stands at the handshake* required, the own certificate served from
/// `identity`, ALPN `h2`. Both slots can be swapped while the listener runs.
pub fn mesh_server_config(
    identity: Arc<Reloadable>,
    roots: TrustBundle,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(CurrentBundle(roots)))
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Verifies client certificates against the trust bundle as it stands at each handshake, with
/// the WebPKI verifier built when that version of the bundle was installed.
#[derive(Debug)]
struct CurrentBundle(TrustBundle);

impl ClientCertVerifier for CurrentBundle {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; mesh clients have one certificate and send it regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .anchors()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .anchors()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .anchors()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.anchors().client_verifier.supported_verify_schemes()
    }
}

/// The server config of a public HTTPS listener (the auth service's OAuth2 endpoints): TLS 1.3
/// only, no client certificate (clients authenticate at the OAuth2 layer), ALPN `h2` and
/// `http/1.1`.
pub fn public_server_config(identity: Arc<Reloadable>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How the accept loop treats connections before they are handed to the HTTP/2 server.
///
/// A connection goes through two stages. Until its first byte (the TLS ClientHello) it costs a
/// socket and a parked task, nothing a real client needs: it waits at most
/// `first_byte_timeout`, and at most `max_silent` such connections are held (more are closed at
/// once). Only then does it take one of the `max_pending_handshakes` handshake slots, of which
/// one source address may hold `max_handshakes_per_source`, for at most `handshake_timeout`.
/// So a flood of silent sockets, the cheapest attack there is, never takes a handshake slot,
/// and one slow sender cannot take them all.
#[derive(Debug, Clone, Copy)]
pub struct AcceptOptions {
    /// A peer that has sent nothing by then is dropped.
    pub first_byte_timeout: Duration,
    /// Accepted connections that have sent nothing yet, held at once; beyond it new ones are
    /// closed at once.
    pub max_silent: usize,
    /// A peer that has not finished its TLS handshake by then (counted from its first byte) is
    /// dropped, so slow senders cannot pin server resources.
    pub handshake_timeout: Duration,
    /// Handshakes in flight at once; further peers wait (with their first byte sent).
    pub max_pending_handshakes: usize,
    /// Handshakes in flight at once from one source address; beyond it its connections are
    /// closed.
    pub max_handshakes_per_source: usize,
    /// Connections past their first byte (handshaking or established) held at once; beyond it
    /// new ones are closed before their handshake.
    pub max_connections: usize,
    /// The same, per source address: one client (or a flood from one address) cannot take the
    /// whole allowance.
    pub max_connections_per_source: usize,
}

impl Default for AcceptOptions {
    fn default() -> Self {
        Self {
            first_byte_timeout: Duration::from_secs(2),
            max_silent: 16 * 1024,
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 1024,
            max_handshakes_per_source: 64,
            max_connections: 8192,
            max_connections_per_source: 512,
        }
    }
}

/// Handshakes in flight per source address.
#[derive(Debug, Default)]
struct PerSource(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// A handshake counted against its source until dropped.
struct SourceSlot {
    sources: Arc<PerSource>,
    ip: std::net::IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, cap: usize) -> Option<SourceSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.sources.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts TCP connections, runs each TLS handshake in its own task under the limits of
/// [`AcceptOptions`], and yields the established streams, ready for
/// `tonic::transport::Server::serve_with_incoming`.
///
/// Failed handshakes (plaintext, no client certificate, a foreign CA, a timeout, a source over
/// its cap) are logged at debug level and never reach the server. The loop stops when the
/// returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    options: AcceptOptions,
) -> ReceiverStream<Result<MeshStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(options.max_pending_handshakes));
    let silent = Arc::new(Semaphore::new(options.max_silent));
    let sources = Arc::new(PerSource::default());
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let connected_sources = Arc::new(PerSource::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(waiting) = silent.clone().try_acquire_owned() else {
                tracing::debug!(%remote_addr, "too many silent connections: closed");
                continue;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            let (handshakes, sources) = (handshakes.clone(), sources.clone());
            let (connections, connected_sources) = (connections.clone(), connected_sources.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let mut first = [0u8; 1];
                match tokio::time::timeout(options.first_byte_timeout, tcp.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        tracing::debug!(%remote_addr, "no handshake started in time: closed");
                        return;
                    }
                }
                drop(waiting);
                // Counted from here to the connection's end, before any handshake work.
                let Some(source_held) =
                    connected_sources.take(remote_addr.ip(), options.max_connections_per_source)
                else {
                    tracing::debug!(%remote_addr, "too many connections from one source: closed");
                    return;
                };
                let Ok(total_held) = connections.try_acquire_owned() else {
                    tracing::debug!(%remote_addr, "too many connections: closed");
                    return;
                };
                let Some(_source) =
                    sources.take(remote_addr.ip(), options.max_handshakes_per_source)
                else {
                    tracing::debug!(%remote_addr, "too many handshakes from one source: closed");
                    return;
                };
                let Ok(_permit) = handshakes.acquire_owned().await else {
                    return;
                };
                let handshake =
                    tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await;
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%remote_addr, %error, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote_addr, "tls handshake timed out");
                        return;
                    }
                };
                let leaf = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first());
                let held = ConnectionSlot {
                    _source: source_held,
                    _total: total_held,
                };
                let peer = PeerIdentity {
                    remote_addr: Some(remote_addr),
                    spiffe_id: leaf.and_then(|leaf| spiffe_id_of(leaf)),
                    certificate_serial: leaf.map(|leaf| crate::identity::serial_of(leaf)),
                    certificate: leaf.map(|leaf| crate::identity::Thumbprint::of(leaf)),
                };
                let _ = tx
                    .send(Ok(MeshStream {
                        inner: tls,
                        peer,
                        _held: held,
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A connection's place in the listener's connection limits, given back when it closes.
struct ConnectionSlot {
    _source: SourceSlot,
    _total: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSlot")
    }
}

/// An established server-side TLS connection and the identity its handshake proved.
#[derive(Debug)]
pub struct MeshStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
    _held: ConnectionSlot,
}

impl MeshStream {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
}

impl tonic::transport::server::Connected for MeshStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The HTTP/2 and gRPC limits every mesh server runs with. tonic leaves most of them unset
/// (unlimited); each one here closes a known resource-exhaustion route.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Streams one connection may have open at once (tonic's default is unlimited).
    pub max_concurrent_streams: u32,
    /// Streams a peer may make the server reset before the connection is closed: the mitigation
    /// for the HTTP/2 reset-flood attacks, which tonic switches off when this is unset.
    pub max_local_error_reset_streams: usize,
    /// Streams a peer may reset before the server accepted them (Rapid Reset); past it the
    /// connection ends with GOAWAY ENHANCE_YOUR_CALM. 10: stricter than h2's own 20.
    pub max_pending_accept_reset_streams: usize,
    /// Total size of one request's headers, in bytes; past it the answer is 431. 12 KiB:
    /// stricter than hyper's 16 KiB, room for a token and the 8 KiB of baggage W3C allows.
    pub max_header_list_size: u32,
    /// Requests in flight per connection; beyond it the server sheds load with UNAVAILABLE
    /// instead of queueing without bound.
    pub concurrency_limit_per_connection: usize,
    /// The longest a request may run on the server.
    pub request_timeout: Duration,
    /// The largest request message a service decodes; services pass it to
    /// `max_decoding_message_size`.
    pub max_message_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 128,
            max_local_error_reset_streams: 1024,
            max_pending_accept_reset_streams: 10,
            max_header_list_size: 12 * 1024,
            concurrency_limit_per_connection: 256,
            request_timeout: Duration::from_secs(30),
            max_message_bytes: 1024 * 1024,
        }
    }
}

/// A tonic server builder with every limit of `limits` applied and HTTP/1 refused.
pub fn grpc_server(limits: &ServerLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(limits.max_local_error_reset_streams))
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_accept_reset_streams))
        .http2_max_header_list_size(limits.max_header_list_size)
        .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
        .load_shed(true)
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// A bound TCP listener and the TLS config its connections must complete.
#[derive(Debug)]
pub struct TlsListener {
    listener: TcpListener,
    config: Arc<ServerConfig>,
    options: AcceptOptions,
}

impl TlsListener {
    /// A mesh listener: client certificates required (see [`mesh_server_config`]).
    pub fn mesh(
        listener: TcpListener,
        identity: Arc<Reloadable>,
        roots: TrustBundle,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            listener,
            config: mesh_server_config(identity, roots)?,
            options: AcceptOptions::default(),
        })
    }

    /// A public HTTPS listener: no client certificate (see [`public_server_config`]).
    pub fn public(listener: TcpListener, identity: Arc<Reloadable>) -> Result<Self, TlsError> {
        Ok(Self {
            listener,
            config: public_server_config(identity)?,
            options: AcceptOptions::default(),
        })
    }

    /// Replaces the accept options.
    pub fn with_options(mut self, options: AcceptOptions) -> Self {
        self.options = options;
        self
    }

    /// The address actually bound (tests bind port 0).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts accepting; see [`incoming`].
    pub fn incoming(self) -> ReceiverStream<Result<MeshStream, io::Error>> {
        incoming(self.listener, self.config, self.options)
    }
}
