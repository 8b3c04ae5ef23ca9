//! Mutual TLS for the mesh: the only crate that touches rustls.
//!
//! Every mesh hop is TLS 1.3 with a client certificate on both sides. A workload's identity is the
//! SPIFFE ID in its certificate's URI SAN (`spiffe://mesh.local/sa/orders`); rustls checks the
//! chain, and this crate reads *which* workload the peer is so that policy can decide what it may
//! do. Servers put the peer's identity into every request's extensions as a [`PeerIdentity`];
//! clients pin the SPIFFE ID they expect the server to have.
//!
//! Certificates are served through resolvers that read a [`Reloadable`] slot, and peers are
//! verified against a [`Trust`] bundle read at each handshake, so a renewed certificate or a
//! changed set of CAs takes effect for new connections without restarting the process.
//!
//! # Layout
//! - [`identity`]: [`SpiffeId`], [`PeerIdentity`], certificate [`Thumbprint`]s, and reading them
//!   from a certificate.
//! - [`material`]: loading PEM files; the reloadable own certificate and the trust bundle.
//! - [`server`]: rustls server configs, the TLS accept loop with its handshake timeout, and a
//!   tonic server builder with every HTTP/2 limit set on purpose.
//! - [`client`]: the client config that verifies the server's SPIFFE ID, and mesh channels (one
//!   per certificate of ours, for calls whose tokens are bound to one).
//! - [`certs`]: the mesh CA: signs certificate requests for an identity it decided, makes the
//!   first set of files (`meshctl certs init`).
//! - [`watch`]: file-watch mode for certificates managed outside the mesh.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod certs;
pub mod client;
pub mod identity;
pub mod material;
pub mod server;
pub mod watch;

use std::sync::{Arc, OnceLock};

pub use identity::{BoundTo, PeerIdentity, SpiffeId, Thumbprint};
pub use material::{Reloadable, TlsFiles, Trust, TrustBundle};
/// A private key in DER, as a workload holds the one it made for its certificate.
pub use rustls_pki_types::PrivateKeyDer;

/// What can go wrong while loading TLS material or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{what} {path}: {detail}")]
    Pem {
        /// Which kind of file it was (certificate chain, private key, trust bundle).
        what: &'static str,
        /// The path as given.
        path: String,
        /// What was wrong with it.
        detail: String,
    },
    /// rustls refused the material or configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built from the trust bundle.
    #[error("trust bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A SPIFFE ID or certificate name was malformed.
    #[error("invalid {what}: {value:?}")]
    Invalid {
        /// What was being parsed.
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// The one crypto provider of the mesh: aws-lc-rs, shared with jsonwebtoken.
///
/// Every rustls config is built with this provider explicitly, so nothing depends on a
/// process-wide default having been installed first.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}
