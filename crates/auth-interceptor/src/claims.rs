//! The claims of a mesh access token (RFC 9068 profile).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What the auth service signs and every verifier reads.
///
/// Required claims are plain fields, so a token without them (or with a claim of the wrong JSON
/// type) fails to deserialize and is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer: the auth service's URL.
    pub iss: String,
    /// Subject: the user, or for service tokens the workload's client id.
    pub sub: String,
    /// Audience: the one service this token is for.
    pub aud: Audience,
    /// The OAuth2 client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Unique token id, for audit and revocation.
    pub jti: String,
    /// The acting party of a token exchange (RFC 8693 §4.1): who calls on behalf of `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// The login the token belongs to (its token family), also on tokens exchanged from it:
    /// revoking the login revokes every token that names it. Service tokens have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience, the form our issuer writes.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    /// Whether `audience` is among the token's audiences.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// The `act` claim: the party acting for the subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The actor's client id.
    pub sub: String,
}

impl AccessClaims {
    /// The scopes as a list.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_ascii_whitespace()
    }
}

/// What a verified token says, kept in the cache and shared by every request that presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`.
    pub subject: String,
    /// `client_id`.
    pub client_id: String,
    /// `scope`, split.
    pub scopes: Vec<String>,
    /// `jti`.
    pub token_id: String,
    /// `act.sub`, for exchanged tokens.
    pub actor: Option<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// `sid`: the login the token belongs to, if it came from one.
    pub session: Option<String>,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
