//! Workload identities: SPIFFE IDs and thumbprints read from certificates.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TlsError;

/// A SPIFFE ID, `spiffe://<trust-domain>/<path>`, as found in a certificate's URI SAN.
///
/// Cheap to clone: a request carries one per hop.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(Arc<str>);

impl SpiffeId {
    /// The ID as a shared string (a reference count, no copy): for labels and attributes.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The ID of a mesh workload: `spiffe://<trust_domain>/sa/<name>`.
    pub fn workload(trust_domain: &str, name: &str) -> Result<Self, TlsError> {
        format!("spiffe://{trust_domain}/sa/{name}").parse()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain, e.g. `mesh.local`.
    pub fn trust_domain(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        rest.split('/').next().unwrap_or(rest)
    }

    /// The last path segment, which for mesh workloads (`/sa/<name>`) is the workload's name.
    pub fn workload_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }
}

impl FromStr for SpiffeId {
    type Err = TlsError;

    /// Accepts only the SPIFFE ID grammar: lower-case trust domain of `[a-z0-9.-_]`, a non-empty
    /// path of segments of `[A-Za-z0-9.-_]`, no query, fragment, port or user info.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = || TlsError::Invalid {
            what: "SPIFFE ID",
            value: raw.to_owned(),
        };
        let rest = raw.strip_prefix("spiffe://").ok_or_else(invalid)?;
        let (domain, path) = rest.split_once('/').ok_or_else(invalid)?;
        let domain_ok = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        let path_ok = path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        });
        if domain_ok && path_ok && raw.len() <= 2048 {
            Ok(Self(raw.into()))
        } else {
            Err(invalid())
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.0)
    }
}

/// Who is on the other end of a mesh connection, as proved by its TLS handshake.
///
/// The server side inserts one into every request's extensions (through tonic's
/// `Connected::connect_info`), computed once per connection, so a layer can authorize the caller
/// without touching rustls.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// The peer's socket address.
    pub remote_addr: Option<SocketAddr>,
    /// The SPIFFE ID of the peer's verified client certificate; `None` on listeners that do not
    /// ask for one (the public HTTPS listener).
    pub spiffe_id: Option<SpiffeId>,
    /// The serial (hex) of that certificate: which of the workload's certificates it is.
    pub certificate_serial: Option<String>,
    /// The SHA-256 of that certificate: what a token bound to it names (RFC 8705).
    pub certificate: Option<Thumbprint>,
}

/// The SHA-256 of a certificate's DER encoding: RFC 8705's `x5t#S256`, which a
/// certificate-bound token carries in its `cnf` claim.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Thumbprint([u8; 32]);

impl Thumbprint {
    /// The thumbprint of the DER certificate `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// The base64url text (no padding) a `cnf` claim carries.
    pub fn to_base64url(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Reads the text of a `cnf` claim: base64url of exactly 32 bytes, no padding.
    pub fn from_base64url(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Thumbprint({})", self.to_base64url())
    }
}

/// In a client request's extensions: the certificate of ours the request must be sent with,
/// because the token it carries is bound to that certificate. A mesh client sends it over a
/// connection that presents exactly that certificate ([`crate::client::CertChannel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundTo(pub Thumbprint);

/// Reads the one SPIFFE ID from a DER certificate's URI SANs.
///
/// A certificate with no `spiffe://` URI, or with more than one, has no mesh identity: the
/// SPIFFE X.509-SVID rules allow exactly one.
pub fn spiffe_id_of(cert_der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
            _ => None,
        });
    let first = ids.next()?;
    if ids.next().is_some() {
        return None;
    }
    first.parse().ok()
}

/// The serial number of a certificate, hex, as `openssl x509 -serial` prints it.
pub fn serial_of(cert: &[u8]) -> String {
    X509Certificate::from_der(cert)
        .map(|(_, parsed)| parsed.raw_serial_as_string().replace(':', ""))
        .unwrap_or_default()
}

/// The validity window (not before, not after) of a DER certificate.
pub fn validity_of(cert_der: &[u8]) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        let seconds = u64::try_from(t.timestamp()).ok()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
    };
    Some((
        at(cert.validity().not_before)?,
        at(cert.validity().not_after)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids_and_rejects_malformed_ones() {
        let id: SpiffeId = "spiffe://mesh.local/sa/orders".parse().expect("valid");
        assert_eq!(id.trust_domain(), "mesh.local");
        assert_eq!(id.workload_name(), "orders");
        for bad in [
            "https://mesh.local/sa/orders",
            "spiffe://mesh.local",
            "spiffe://Mesh.Local/sa/x",
            "spiffe://mesh.local/sa/../x",
            "spiffe://mesh.local/sa//x",
            "spiffe://mesh.local:8443/sa/x",
            "spiffe://mesh.local/sa/x?y=1",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn a_thumbprint_reads_back_only_from_its_own_text() {
        let thumbprint = Thumbprint::of(b"a certificate");
        let text = thumbprint.to_base64url();
        assert_eq!(text.len(), 43, "32 bytes, base64url without padding");
        assert_eq!(Thumbprint::from_base64url(&text), Some(thumbprint));
        assert_ne!(Thumbprint::of(b"another certificate"), thumbprint);
        for bad in [
            "",
            "abc",
            &format!("{text}="),
            &text[..42],
            &format!("{text}AA"),
        ] {
            assert_eq!(Thumbprint::from_base64url(bad), None, "{bad:?}");
        }
    }
}
