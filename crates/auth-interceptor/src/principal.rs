//! The authenticated caller, as business handlers see it.

use std::sync::Arc;

use mesh_tls::SpiffeId;
use tonic::{Request, Status};

use crate::bearer::BearerToken;
use crate::error::refused;
use crate::verify::VerifiedToken;

/// Who is calling, proved twice: by the token (user or service) and by the certificate
/// (workload). The auth layer inserts it into the request's extensions; handlers ask for the
/// caller they need with [`Principal::user`] or [`Principal::workload`] and never see the raw
/// token.
///
/// The token itself is kept inside, unreadable, so that the service can *delegate* with it: a
/// [`crate::TokenExchanger`] may present it to the auth service for a token exchange (RFC 8693),
/// and nothing else can get at it (`Debug` prints a fingerprint at most).
#[derive(Debug, Clone)]
pub struct Principal {
    token: Option<Arc<VerifiedToken>>,
    peer: Option<SpiffeId>,
    bearer: Option<BearerToken>,
}

/// A caller that presented a verified token with a subject: a user, or a workload acting with
/// its own service token. What [`Principal::user`] hands a handler; it cannot be empty.
#[derive(Debug, Clone)]
pub struct User {
    token: Arc<VerifiedToken>,
    peer: Option<SpiffeId>,
    bearer: Option<BearerToken>,
}

impl Principal {
    pub(crate) fn new(
        token: Option<Arc<VerifiedToken>>,
        peer: Option<SpiffeId>,
        bearer: Option<BearerToken>,
    ) -> Self {
        Self {
            token,
            peer,
            bearer,
        }
    }

    /// The caller of `request`, whose token the auth layer verified; UNAUTHENTICATED (and a
    /// `deny no_user` audit record) when the method was reached without one.
    pub fn user<T>(request: &Request<T>) -> Result<User, Status> {
        let principal = request.extensions().get::<Principal>();
        principal
            .and_then(|p| Some((p, p.token.clone()?)))
            .filter(|(_, token)| !token.subject.is_empty())
            .map(|(principal, token)| User {
                token,
                peer: principal.peer.clone(),
                bearer: principal.bearer.clone(),
            })
            .ok_or_else(|| refused(Status::unauthenticated("no authenticated user"), "no_user"))
    }

    /// The workload identity proved by the caller's certificate; UNAUTHENTICATED (and a
    /// `deny no_peer_identity` audit record) when there is none.
    pub fn workload<T>(request: &Request<T>) -> Result<SpiffeId, Status> {
        request
            .extensions()
            .get::<Principal>()
            .and_then(|p| p.peer.clone())
            .ok_or_else(|| {
                refused(
                    Status::unauthenticated("no client certificate identity"),
                    "no_peer_identity",
                )
            })
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

impl User {
    fn token(&self) -> &VerifiedToken {
        &self.token
    }

    /// The token's subject: the user, or the workload's client id for service tokens. Never
    /// empty.
    pub fn subject(&self) -> &str {
        &self.token().subject
    }

    /// Whether the token's subject is `subject`. Object-level checks read
    /// `user.is(owner) || user.has_scope("orders:admin")`.
    pub fn is(&self, subject: &str) -> bool {
        self.subject() == subject
    }

    /// The OAuth2 client the token was issued to.
    pub fn client_id(&self) -> &str {
        &self.token().client_id
    }

    /// The token's scopes.
    pub fn scopes(&self) -> &[String] {
        &self.token().scopes
    }

    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().iter().any(|s| s == scope)
    }

    /// The `jti` of the token, for audit records.
    pub fn token_id(&self) -> &str {
        &self.token().token_id
    }

    /// The client acting on behalf of the subject (`act.sub`), for exchanged tokens.
    pub fn actor(&self) -> Option<&str> {
        self.token().actor.as_deref()
    }

    /// The certificate identity the call came with.
    pub fn peer(&self) -> Option<&SpiffeId> {
        self.peer.as_ref()
    }

    /// The presented token, for the token exchanger only.
    pub(crate) fn bearer(&self) -> Option<&BearerToken> {
        self.bearer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(subject: &str) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            subject: subject.into(),
            client_id: "meshctl-cli".into(),
            scopes: vec!["orders:read".into()],
            token_id: "jti-1".into(),
            actor: None,
            expires_at: 0,
            session: None,
            certificate: None,
        })
    }

    fn request_with(principal: Option<Principal>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(principal) = principal {
            request.extensions_mut().insert(principal);
        }
        request
    }

    #[test]
    fn debug_never_shows_the_token() {
        let secret = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        let principal = Principal::new(
            Some(verified("alice")),
            None,
            Some(BearerToken::new(secret).expect("token")),
        );
        let user = Principal::user(&request_with(Some(principal.clone()))).expect("user");
        for shown in [format!("{principal:?}"), format!("{user:?}")] {
            assert!(!shown.contains("eyJ"), "{shown}");
            assert!(shown.contains("alice"), "{shown}");
        }
    }

    #[test]
    fn a_user_needs_a_verified_token_with_a_subject() {
        let user = Principal::user(&request_with(Some(Principal::new(
            Some(verified("alice")),
            None,
            None,
        ))))
        .expect("user");
        assert_eq!(user.subject(), "alice");
        assert!(user.is("alice") && !user.is("bob") && user.has_scope("orders:read"));

        for principal in [
            None,
            Some(Principal::new(None, None, None)),
            Some(Principal::new(Some(verified("")), None, None)),
        ] {
            let refused = Principal::user(&request_with(principal)).expect_err("no user");
            assert_eq!(refused.code(), tonic::Code::Unauthenticated);
            assert_eq!(
                refused
                    .metadata()
                    .get(crate::error::DENY_REASON_KEY)
                    .map(|v| v.to_str().ok()),
                Some(Some("no_user"))
            );
        }
    }

    #[test]
    fn a_workload_needs_a_certificate_identity() {
        let id = SpiffeId::workload("mesh.local", "orders").expect("id");
        let request = request_with(Some(Principal::new(None, Some(id.clone()), None)));
        assert_eq!(Principal::workload(&request).expect("workload"), id);
        let none = Principal::workload(&request_with(None)).expect_err("no identity");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
    }
}
