//! OpenID Connect: the identity scopes, what an ID token says, and its `at_hash`.
//!
//! A login that asks for `openid` gets, besides its access token, an ID token for the client
//! that asked (`aud` = the client id), signed with the issuer's EdDSA key and typed `JWT`, so no
//! service mistakes it for an access token (those are `at+jwt`, RFC 9068, and verifiers refuse
//! any other `typ`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

/// The scope that makes an authorization request an OpenID Connect one.
pub const OPENID: &str = "openid";
/// The scope that adds `preferred_username` to the userinfo answer.
pub const PROFILE: &str = "profile";
/// The scopes about the user rather than a service: they belong to no audience.
pub const IDENTITY_SCOPES: [&str; 2] = [OPENID, PROFILE];

/// The `acr` of a login where the user typed their password. (`0`, "a long-lived browser
/// cookie" in OpenID Connect Core §2, is kept for sign-ins that reuse a session.)
pub const ACR_PASSWORD: &str = "1";

/// The longest `nonce` accepted, in bytes: enough for any random value a client makes, short
/// enough that a code row stays small.
pub const MAX_NONCE: usize = 256;

/// Whether `scope` is an identity scope.
pub fn is_identity_scope(scope: &str) -> bool {
    IDENTITY_SCOPES.contains(&scope)
}

/// Splits requested scopes into identity scopes and scopes for services, keeping the order.
pub fn split_scopes(scopes: Vec<String>) -> (Vec<String>, Vec<String>) {
    scopes.into_iter().partition(|s| is_identity_scope(s))
}

/// A `nonce` is 1 to [`MAX_NONCE`] visible ASCII characters: it is echoed into a signed token,
/// so nothing that could be read two ways (controls, spaces, non-ASCII) is taken.
pub fn valid_nonce(nonce: &str) -> bool {
    (1..=MAX_NONCE).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_graphic())
}

/// `at_hash` (OpenID Connect Core §3.1.3.6): the left half of the access token's hash, with the
/// hash EdDSA over Ed25519 uses, SHA-512, base64url.
pub fn access_token_hash(access_token: &str) -> String {
    let digest = Sha512::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

/// The claims of an ID token (OpenID Connect Core §2).
#[derive(Debug, Clone, Serialize)]
pub struct IdClaims {
    /// The issuer URL.
    pub iss: String,
    /// The user.
    pub sub: String,
    /// The client the token is for.
    pub aud: String,
    /// The client the token is for, again: the party it was issued to.
    pub azp: String,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// When the user authenticated.
    pub auth_time: u64,
    /// The client's `nonce`, exactly as it sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Binds the ID token to the access token issued with it.
    pub at_hash: String,
    /// The login (token family) both tokens belong to.
    pub sid: String,
    /// The authentication context class.
    pub acr: String,
    /// The authentication methods (RFC 8176).
    pub amr: Vec<String>,
}

/// The event of a logout token (OpenID Connect Back-Channel Logout 1.0 §2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The claims of a logout token: like an ID token's, without `nonce` (§2.4 forbids it, so a
/// logout token can never pass for an ID token), with the logout event.
#[derive(Debug, Clone, Serialize)]
pub struct LogoutClaims {
    /// The issuer URL.
    pub iss: String,
    /// The client told.
    pub aud: String,
    /// Issued at.
    pub iat: u64,
    /// Expiry: a logout token is for now, not for later.
    pub exp: u64,
    /// Unique, so the client can refuse a replay.
    pub jti: String,
    /// The user.
    pub sub: String,
    /// The login that ended: the `sid` of the client's ID token.
    pub sid: String,
    /// `{"http://schemas.openid.net/event/backchannel-logout": {}}`.
    pub events: serde_json::Value,
}

/// What a sign-out request's `id_token_hint` tells, once its signature checked out.
#[derive(Debug, Clone, Deserialize)]
pub struct HintClaims {
    /// The user.
    pub sub: String,
    /// The client it was issued to.
    pub aud: String,
    /// The login (token family) it belongs to.
    pub sid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_sha512_in_base64url() {
        // 32 bytes of SHA-512 in base64url without padding: 43 characters.
        let hash = access_token_hash("token");
        assert_eq!(hash.len(), 43);
        let digest = Sha512::digest(b"token");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&hash).expect("base64url"),
            &digest[..32]
        );
        assert_ne!(hash, access_token_hash("token2"));
    }

    #[test]
    fn nonces_are_bounded_visible_ascii() {
        assert!(valid_nonce("n-0S6_WzA2Mj"));
        assert!(valid_nonce(&"a".repeat(MAX_NONCE)));
        for bad in [
            "",
            "two words",
            "tab\there",
            "é",
            &"a".repeat(MAX_NONCE + 1),
        ] {
            assert!(!valid_nonce(bad), "{bad:?}");
        }
    }

    #[test]
    fn identity_scopes_are_split_from_service_scopes() {
        let scopes = ["orders:read", "openid", "profile", "orders:write"].map(str::to_owned);
        let (identity, services) = split_scopes(scopes.to_vec());
        assert_eq!(identity, ["openid", "profile"]);
        assert_eq!(services, ["orders:read", "orders:write"]);
    }
}
