//! The authenticated caller, as business handlers see it.

use std::sync::Arc;

use mesh_tls::SpiffeId;

use crate::verify::VerifiedToken;

/// Who is calling, proved twice: by the token (user or service) and by the certificate
/// (workload). The auth layer inserts it into the request's extensions; handlers read it with
/// `request.extensions().get::<Principal>()` and never see the raw token.
///
/// The raw token is kept inside, unreadable, so that the service can *delegate* with it: a
/// [`crate::TokenExchanger`] may present it to the auth service for a token exchange (RFC 8693),
/// and nothing else can get at it (its `Debug` output is redacted).
#[derive(Clone)]
pub struct Principal {
    token: Option<Arc<VerifiedToken>>,
    peer: Option<SpiffeId>,
    raw: Option<Arc<str>>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("token", &self.token)
            .field("peer", &self.peer)
            .field("raw", &self.raw.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Principal {
    pub(crate) fn new(
        token: Option<Arc<VerifiedToken>>,
        peer: Option<SpiffeId>,
        raw: Option<Arc<str>>,
    ) -> Self {
        Self { token, peer, raw }
    }

    /// The raw token, for the token exchanger only.
    pub(crate) fn raw_token(&self) -> Option<&str> {
        self.raw.as_deref()
    }

    /// Whether the token's subject is `subject` (never for an empty one). Object-level checks
    /// read `principal.is(owner) || principal.has_scope("orders:admin")`.
    pub fn is(&self, subject: &str) -> bool {
        self.subject() == subject && !subject.is_empty()
    }

    /// The token's subject: the user, or the workload's client id for service tokens. Empty on
    /// methods that authenticate by certificate only.
    pub fn subject(&self) -> &str {
        self.token.as_ref().map_or("", |t| t.subject.as_str())
    }

    /// The OAuth2 client the token was issued to.
    pub fn client_id(&self) -> &str {
        self.token.as_ref().map_or("", |t| t.client_id.as_str())
    }

    /// The token's scopes.
    pub fn scopes(&self) -> &[String] {
        self.token.as_ref().map_or(&[], |t| t.scopes.as_slice())
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().iter().any(|s| s == scope)
    }

    /// The `jti` of the token, for audit records.
    pub fn token_id(&self) -> &str {
        self.token.as_ref().map_or("", |t| t.token_id.as_str())
    }

    /// The client acting on behalf of the subject (`act.sub`), for exchanged tokens.
    pub fn actor(&self) -> Option<&str> {
        self.token.as_ref().and_then(|t| t.actor.as_deref())
    }

    /// The workload identity proved by the caller's certificate.
    pub fn peer(&self) -> Option<&SpiffeId> {
        self.peer.as_ref()
    }

    /// Whether a token was presented and verified for this call.
    pub fn is_token_authenticated(&self) -> bool {
        self.token.is_some()
    }
}
