//! The bearer token as a type: a secret that cannot be printed, compares in constant time and
//! attaches itself to a request.

use std::sync::Arc;

use http::HeaderValue;
use mesh_tls::{BoundTo, Thumbprint};
use tonic::metadata::{Ascii, MetadataValue};

/// A bearer token (an access token, ours or a client's), from the moment it is received or
/// issued until it is sent.
///
/// It has no `Display`, and its `Debug` prints only a fingerprint (the first 8 bytes of its
/// SHA-256), so it cannot reach a log line or an error message by accident. Two tokens compare
/// in constant time. It knows how to attach itself as `authorization: Bearer …`, marked
/// sensitive (HPACK never indexes it), to a tonic request or an `http` request: that is written
/// once, here, instead of at every call site. [`BearerToken::expose_secret`] is the one way to
/// the text, for the places that must send it in a body (token exchange).
#[derive(Clone)]
pub struct BearerToken {
    token: Arc<str>,
    metadata: MetadataValue<Ascii>,
    header: HeaderValue,
    /// The certificate of ours the token is bound to, for a token the issuer gave us.
    certificate: Option<Thumbprint>,
}

/// The text cannot be a bearer token: empty, or with bytes other than visible ASCII.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a bearer token: must be 1 or more visible ASCII characters")]
pub struct InvalidBearerToken;

impl BearerToken {
    /// A token from its text (RFC 6750 `b64token`: visible ASCII, no spaces).
    pub fn new(token: impl Into<Arc<str>>) -> Result<Self, InvalidBearerToken> {
        let token: Arc<str> = token.into();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidBearerToken);
        }
        let value = format!("Bearer {token}");
        let mut metadata =
            MetadataValue::try_from(value.as_str()).map_err(|_| InvalidBearerToken)?;
        metadata.set_sensitive(true);
        let mut header = HeaderValue::try_from(value).map_err(|_| InvalidBearerToken)?;
        header.set_sensitive(true);
        Ok(Self {
            token,
            metadata,
            header,
            certificate: None,
        })
    }

    /// A token the issuer just gave this workload, with the certificate it is bound to read
    /// from its `cnf` claim (if it has one): attached to a request, it sends the request over a
    /// connection that presents that certificate ([`BoundTo`]).
    pub fn issued(token: impl Into<Arc<str>>) -> Result<Self, InvalidBearerToken> {
        let mut issued = Self::new(token)?;
        issued.certificate = crate::claims::bound_certificate_unverified(&issued.token);
        Ok(issued)
    }

    /// The certificate of ours this token is bound to, for a token from [`BearerToken::issued`].
    pub fn certificate(&self) -> Option<Thumbprint> {
        self.certificate
    }

    /// The token's text. Only for sending it where a header cannot go (the `subject_token` of
    /// a token exchange, a verifier's input); never for logging.
    pub fn expose_secret(&self) -> &str {
        &self.token
    }

    /// `sha256:` and the first 8 bytes of the token's SHA-256, hex: enough to tell two tokens
    /// apart in a log, useless for replaying one.
    pub fn fingerprint(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.token.as_bytes());
        let hex: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }

    /// Puts `authorization: Bearer <token>` on a tonic request, replacing any other.
    /// A bound token also names its certificate in the request's extensions.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        request
            .metadata_mut()
            .insert("authorization", self.metadata.clone());
        if let Some(certificate) = self.certificate {
            request.extensions_mut().insert(BoundTo(certificate));
        }
    }

    /// `message` as a tonic request carrying this token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.attach(&mut request);
        request
    }

    /// Puts `authorization: Bearer <token>` on an `http` request (a tower layer's view),
    /// replacing any other.
    /// A bound token also names its certificate in the request's extensions.
    pub fn attach_http<B>(&self, request: &mut http::Request<B>) {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, self.header.clone());
        if let Some(certificate) = self.certificate {
            request.extensions_mut().insert(BoundTo(certificate));
        }
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken({})", self.fingerprint())
    }
}

impl PartialEq for BearerToken {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.token.as_bytes(), other.token.as_bytes());
        // The length is no secret (tokens of one issuer have one length); the bytes are.
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for BearerToken {}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    #[test]
    fn debug_shows_a_fingerprint_never_the_token() {
        let token = BearerToken::new(TOKEN).expect("token");
        let shown = format!("{token:?}");
        assert!(shown.starts_with("BearerToken(sha256:"), "{shown}");
        assert!(!shown.contains("eyJ"), "{shown}");
        assert!(!format!("{:?}", Some(token.clone())).contains("eyJ"));
    }

    #[test]
    fn it_attaches_itself_as_a_sensitive_bearer_header() {
        let token = BearerToken::new(TOKEN).expect("token");
        let request = token.request(());
        let value = request.metadata().get("authorization").expect("attached");
        assert_eq!(value.to_str().expect("ascii"), format!("Bearer {TOKEN}"));
        assert!(value.is_sensitive());
        let mut http_request = http::Request::new(());
        token.attach_http(&mut http_request);
        let header = &http_request.headers()[http::header::AUTHORIZATION];
        assert!(header.is_sensitive());
        assert_eq!(header.to_str().expect("ascii"), format!("Bearer {TOKEN}"));
    }

    #[test]
    fn text_that_cannot_travel_in_a_header_is_refused() {
        for bad in ["", "two words", "tab\there", "naïve", "line\nbreak"] {
            assert_eq!(BearerToken::new(bad), Err(InvalidBearerToken), "{bad:?}");
        }
    }

    #[test]
    fn equality_compares_the_whole_token() {
        let a = BearerToken::new("abc.def").expect("a");
        assert_eq!(a, BearerToken::new("abc.def").expect("same"));
        assert_ne!(a, BearerToken::new("abc.deg").expect("other"));
        assert_ne!(a, BearerToken::new("abc.de").expect("shorter"));
    }
}
