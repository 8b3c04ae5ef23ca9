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
    /// The certificate the token is bound to (RFC 8705 §3.1): tokens the issuer gives a
    /// workload over mTLS (service tokens, exchanged tokens) name the certificate that asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim (RFC 7800) as our profile writes it: a certificate thumbprint. A token
/// whose `cnf` holds no `x5t#S256` (another confirmation method, e.g. DPoP's `jkt`) cannot be
/// checked here, and is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// base64url of the SHA-256 of the certificate's DER.
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    /// The confirmation of a token bound to the certificate with `thumbprint`.
    pub fn certificate(thumbprint: mesh_tls::Thumbprint) -> Self {
        Self {
            x5t_s256: Some(thumbprint.to_base64url()),
        }
    }
}

/// The certificate a token we were just given is bound to, read from its payload without
/// checking its signature: for a client that got the token from the issuer over mTLS and must
/// send it over a connection that presents that certificate. `None` for an unbound token or
/// one that is not a JWT.
pub fn bound_certificate_unverified(token: &str) -> Option<mesh_tls::Thumbprint> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Bound {
        cnf: Option<Confirmation>,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let bound: Bound = serde_json::from_slice(&json).ok()?;
    mesh_tls::Thumbprint::from_base64url(&bound.cnf?.x5t_s256?)
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
    /// `cnf.x5t#S256`: the certificate a caller must present with it, if it is bound to one.
    pub certificate: Option<mesh_tls::Thumbprint>,
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
