//! Token exchange (RFC 8693): one implementation behind two doors, the mesh's `ExchangeToken`
//! (the actor proven by its certificate) and the token endpoint's token-exchange grant (the
//! actor proven by its client authentication). Both apply exactly these rules.

use std::sync::Arc;
use std::time::Duration;

use auth_interceptor::{AuthError, VerifiedToken};
use mesh_tls::Thumbprint;

use crate::audit::{Event, IssuerAudit};
use crate::clients::{Client, GrantError};
use crate::grants::Grants;
use crate::issuer::{IssuedToken, Issuer, TokenRequest};
use crate::local::LocalVerifiers;

/// Exchanges a user's token for one that lets the calling client act for the user elsewhere.
#[derive(Debug)]
pub struct TokenExchange {
    pub(crate) issuer: Arc<Issuer>,
    /// Verifies subject tokens: a subject token may only be exchanged by the client it was
    /// issued to (its audience is the actor's client id).
    pub(crate) verifiers: Arc<LocalVerifiers>,
    /// A subject token revoked by itself is not exchanged, even before its `exp`.
    pub(crate) grants: Grants,
    /// The longest an exchanged token lives (never past the subject token's `exp`).
    pub(crate) ttl: Duration,
    pub(crate) audit: IssuerAudit,
}

/// Why an exchange was refused. [`Refusal::reason`] is the audit label; each door turns the
/// refusal into its own protocol's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The subject token is addressed to another client.
    NotForCaller,
    /// The subject token, or its login, was revoked.
    Revoked,
    /// The subject token does not verify; the reason class, never the token.
    Invalid(String),
    /// The subject token is itself an exchanged token: delegation is one step deep.
    AlreadyExchanged,
    /// The actor may not get tokens for the audience, or these scopes there.
    Grant(GrantError),
    /// The user's token does not let the actor act with these scopes.
    NotDelegated,
    /// The subject token has no life left.
    Expired,
    /// The revocation state could not be read.
    Unavailable,
    /// Signing failed.
    Signing,
    /// The audit chain cannot be written: nothing is issued until it can.
    AuditUnavailable,
}

impl Refusal {
    /// The label recorded in the audit chain.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotForCaller => "subject_token_not_for_caller",
            Self::Revoked => "subject_token_revoked",
            Self::Invalid(_) => "subject_token_invalid",
            Self::AlreadyExchanged => "subject_token_already_exchanged",
            Self::Grant(GrantError::Audience) => "audience_not_allowed",
            Self::Grant(GrantError::Scope) => "scope_not_allowed",
            Self::NotDelegated => "scope_not_delegated",
            Self::Expired => "subject_token_expired",
            Self::Unavailable => "revocation_state_unavailable",
            Self::Signing => "signing_failed",
            Self::AuditUnavailable => "audit_unavailable",
        }
    }
}

/// An exchanged token and the subject token it was made from.
#[derive(Debug)]
pub struct Exchanged {
    /// The new token: `sub` the user, `act.sub` the actor, `aud` the requested audience.
    pub issued: IssuedToken,
    /// The verified subject token.
    pub subject: Arc<VerifiedToken>,
}

impl TokenExchange {
    /// Exchanges `subject_token` for a token for `audience` with `scopes` (all the actor may
    /// delegate when empty), acting as `actor`; `door` (the gRPC method or the endpoint) is
    /// recorded with the grant. The token is bound to `certificate`, the one the actor
    /// presented, when it asked over mTLS.
    pub async fn exchange(
        &self,
        actor: &Client,
        subject_token: &str,
        audience: &str,
        scopes: &[String],
        door: &str,
        certificate: Option<Thumbprint>,
    ) -> Result<Exchanged, Refusal> {
        let subject = self
            .verifiers
            .verify_for(&actor.client_id, subject_token)
            .await
            .map_err(|e| match e {
                AuthError::WrongAudience => Refusal::NotForCaller,
                AuthError::Revoked => Refusal::Revoked,
                other => Refusal::Invalid(other.to_string()),
            })?;
        let revoked = self
            .grants
            .access_revoked(&subject.token_id)
            .await
            .map_err(|_| Refusal::Unavailable)?;
        if revoked {
            return Err(Refusal::Revoked);
        }
        if subject.actor.is_some() {
            return Err(Refusal::AlreadyExchanged);
        }
        actor.grant(audience, scopes).map_err(Refusal::Grant)?;
        // What the actor may hold is not enough: the user's token must let it act so.
        let scopes = actor
            .grant_for_subject(audience, scopes, &subject.scopes)
            .map_err(|_| Refusal::NotDelegated)?;
        let remaining = subject.expires_at.saturating_sub(crate::unix_now());
        let lifetime = self.ttl.min(Duration::from_secs(remaining));
        if lifetime.is_zero() {
            return Err(Refusal::Expired);
        }
        let issued = self
            .issuer
            .issue(TokenRequest {
                subject: &subject.subject,
                client_id: &subject.client_id,
                audience,
                scopes,
                actor: Some(&actor.client_id),
                lifetime,
                session: subject.session.as_deref(),
                certificate,
            })
            .map_err(|_| Refusal::Signing)?;
        self.audit
            .grant(Event {
                decision: "allow",
                reason: "token_exchange",
                method: door,
                subject: &subject.subject,
                client: &subject.client_id,
                actor: &actor.client_id,
            })
            .map_err(|_| Refusal::AuditUnavailable)?;
        Ok(Exchanged { issued, subject })
    }
}
