//! Why a call was refused, and the one place that decides which status the caller sees.

/// A refused call. The `Display` text names the reason class only: it never contains the token
/// or any part of it, so it is safe to return to the caller and to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing bearer token")]
    MissingToken,
    /// More than one `authorization` entry, a scheme other than `Bearer`, or unreadable bytes.
    #[error("malformed authorization header: {0}")]
    MalformedHeader(&'static str),
    /// The token is not a well-formed JWT of our profile (bad encoding, `alg`, `typ`, `crit`,
    /// missing or mistyped claims, too large).
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// The token's `kid` is not in the issuer's key set, even after a refetch.
    #[error("invalid token: unknown signing key")]
    UnknownKey,
    /// The signature does not verify under the key its `kid` names.
    #[error("invalid token: bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("invalid token: expired")]
    Expired,
    /// `nbf` is still in the future.
    #[error("invalid token: not yet valid")]
    NotYetValid,
    /// The issuer revoked the token, or the login it belongs to.
    #[error("invalid token: revoked")]
    Revoked,
    /// `iss` is not our issuer.
    #[error("invalid token: wrong issuer")]
    WrongIssuer,
    /// `aud` does not name this service.
    #[error("invalid token: wrong audience")]
    WrongAudience,
    /// The token is bound to a certificate (RFC 8705) other than the one the caller presented
    /// on this connection: it was sent by another workload, or by another certificate of this
    /// one.
    #[error("invalid token: bound to another certificate")]
    CertificateMismatch,
    /// The method is not in the service's policy table (default deny).
    #[error("permission denied: method not allowed by policy")]
    MethodNotInPolicy,
    /// A scope the method requires is missing from the token.
    #[error("permission denied: missing scope {0}")]
    MissingScope(String),
    /// The caller's certificate identity is not allowed to call this method.
    #[error("permission denied: caller identity not allowed")]
    CallerNotAllowed,
    /// The caller's certificate is from another SPIFFE trust domain.
    #[error("permission denied: caller is outside the trust domain")]
    ForeignTrustDomain,
    /// The policy allowed the call and the handler refused it, for the reason it labelled
    /// (see [`refused`]). Only ever recorded; the caller already has the handler's status.
    #[error("permission denied: refused by the handler ({0})")]
    Handler(String),
    /// A rule about the token's actor or subject (e.g. `act.sub`) failed.
    #[error("permission denied: {0}")]
    Forbidden(&'static str),
    /// The caller's identity is over the rule's rate limit; a token is there after this long.
    #[error("rate limited: retry in {} ms", .0.as_millis().max(1))]
    RateLimited(std::time::Duration),
}

impl AuthError {
    /// Whether the caller failed to prove who it is (as opposed to not being allowed).
    pub fn is_authentication_failure(&self) -> bool {
        !matches!(
            self,
            Self::MethodNotInPolicy
                | Self::MissingScope(_)
                | Self::CallerNotAllowed
                | Self::ForeignTrustDomain
                | Self::Handler(_)
                | Self::Forbidden(_)
                | Self::RateLimited(_)
        )
    }

    /// A short stable label for audit records and metrics.
    pub fn reason(&self) -> &str {
        match self {
            Self::MissingToken => "missing_token",
            Self::MalformedHeader(_) => "malformed_header",
            Self::InvalidToken(_) => "invalid_token",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MethodNotInPolicy => "method_not_in_policy",
            Self::MissingScope(_) => "missing_scope",
            Self::CallerNotAllowed => "caller_not_allowed",
            Self::ForeignTrustDomain => "foreign_trust_domain",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited(_) => "rate_limited",
            Self::CertificateMismatch => "certificate_mismatch",
            Self::Handler(reason) => reason,
        }
    }
}

/// The response metadata key by which a handler tells [`crate::AuthLayer`] that it refused the
/// call, and why. The layer removes it before the response leaves the server.
pub const DENY_REASON_KEY: &str = "mesh-deny-reason";

/// Marks `status` as a refusal decided in a handler (a workload with no registration, a token
/// the issuer refused, an object the caller may not see), with a short stable `reason` label.
///
/// The layer that allowed the call then appends a `deny` record with that reason to the same
/// audit chain, so every refusal ends as a deny record wherever it was decided. The caller sees
/// `status` unchanged (the marker is removed): a NOT_FOUND that hides another user's order stays
/// indistinguishable from a missing one.
pub fn refused(mut status: tonic::Status, reason: &'static str) -> tonic::Status {
    status.metadata_mut().insert(
        DENY_REASON_KEY,
        tonic::metadata::MetadataValue::from_static(reason),
    );
    status
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        if let AuthError::RateLimited(wait) = error {
            use tonic_types::{ErrorDetails, StatusExt};
            return tonic::Status::with_error_details(
                tonic::Code::ResourceExhausted,
                error.to_string(),
                ErrorDetails::with_retry_info(Some(wait.max(std::time::Duration::from_millis(1)))),
            );
        }
        if error.is_authentication_failure() {
            tonic::Status::unauthenticated(error.to_string())
        } else {
            tonic::Status::permission_denied(error.to_string())
        }
    }
}
