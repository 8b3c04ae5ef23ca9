//! Minting access tokens: the one place that decides what a token says.

use std::sync::Arc;
use std::time::Duration;

use auth_interceptor::AccessClaims;
use auth_interceptor::claims::{Actor, Audience};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::keys::KeyStore;

/// A freshly signed token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The JWT. A secret: never logged.
    pub access_token: String,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// The scopes it carries.
    pub scopes: Vec<String>,
    /// Its `jti`.
    pub token_id: String,
}

/// What a token is for.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// `sub`: the user, or the client itself for service tokens.
    pub subject: &'a str,
    /// `client_id`.
    pub client_id: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// `act.sub` for exchanged tokens.
    pub actor: Option<&'a str>,
    /// Lifetime.
    pub lifetime: Duration,
    /// `sid`: the login (token family) a user token, or a token exchanged from one, belongs to.
    pub session: Option<&'a str>,
}

/// Signs tokens for one issuer URL.
#[derive(Debug)]
pub struct Issuer {
    url: String,
    keys: Arc<KeyStore>,
}

impl Issuer {
    /// An issuer named `url` signing with `keys`.
    pub fn new(url: String, keys: Arc<KeyStore>) -> Self {
        Self { url, keys }
    }

    /// The issuer URL (`iss`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key store.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Signs a token: `iat` and `nbf` now, `exp` after `lifetime`, a random 128-bit `jti`.
    pub fn issue(
        &self,
        request: TokenRequest<'_>,
    ) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let now = crate::unix_now();
        let lifetime = request.lifetime.as_secs();
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let token_id = URL_SAFE_NO_PAD.encode(jti);
        let claims = AccessClaims {
            iss: self.url.clone(),
            sub: request.subject.to_owned(),
            aud: Audience::One(request.audience.to_owned()),
            client_id: request.client_id.to_owned(),
            scope: request.scopes.join(" "),
            exp: now + lifetime,
            iat: now,
            nbf: Some(now),
            jti: token_id.clone(),
            act: request.actor.map(|sub| Actor {
                sub: sub.to_owned(),
            }),
            sid: request.session.map(str::to_owned),
        };
        let access_token = self.keys.sign(&claims)?;
        Ok(IssuedToken {
            access_token,
            expires_in: lifetime,
            scopes: request.scopes,
            token_id,
        })
    }
}
