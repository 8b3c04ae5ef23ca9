//! Minting access tokens: the one place that decides what a token says.

use std::sync::Arc;
use std::time::Duration;

use auth_interceptor::AccessClaims;
use auth_interceptor::claims::{Actor, Audience, Confirmation};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_tls::Thumbprint;
use rand::RngCore;

use crate::keys::KeyStore;
use crate::oidc::IdClaims;

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
    /// `cnf.x5t#S256`: the certificate the workload asked with, which it must present with
    /// the token (RFC 8705); none for tokens asked over HTTPS without a client certificate.
    pub certificate: Option<Thumbprint>,
}

/// What an ID token is about: the login a code was redeemed for.
#[derive(Debug, Clone)]
pub struct IdTokenRequest<'a> {
    /// `sub`: the user.
    pub subject: &'a str,
    /// `aud` and `azp`: the client that logged the user in.
    pub client_id: &'a str,
    /// The client's `nonce`.
    pub nonce: Option<&'a str>,
    /// When the user authenticated.
    pub auth_time: u64,
    /// `sid`: the login.
    pub session: &'a str,
    /// The access token issued with it (for `at_hash`).
    pub access_token: &'a str,
    /// Lifetime.
    pub lifetime: Duration,
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
            cnf: request.certificate.map(Confirmation::certificate),
        };
        let access_token = self.keys.sign(&claims)?;
        Ok(IssuedToken {
            access_token,
            expires_in: lifetime,
            scopes: request.scopes,
            token_id,
        })
    }

    /// Signs a logout token telling `client_id` that `subject`'s login `session` ended.
    pub fn issue_logout_token(
        &self,
        client_id: &str,
        subject: &str,
        session: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = crate::unix_now();
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = crate::oidc::LogoutClaims {
            iss: self.url.clone(),
            aud: client_id.to_owned(),
            iat: now,
            exp: now + 120,
            jti: URL_SAFE_NO_PAD.encode(jti),
            sub: subject.to_owned(),
            sid: session.to_owned(),
            events: serde_json::json!({ crate::oidc::BACKCHANNEL_LOGOUT_EVENT: {} }),
        };
        self.keys.sign_logout_token(&claims)
    }

    /// Signs an ID token (OpenID Connect Core §2): for the client, about the user, bound to the
    /// access token issued with it and to the client's `nonce`.
    pub fn issue_id_token(
        &self,
        request: IdTokenRequest<'_>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = crate::unix_now();
        let claims = IdClaims {
            iss: self.url.clone(),
            sub: request.subject.to_owned(),
            aud: request.client_id.to_owned(),
            azp: request.client_id.to_owned(),
            exp: now + request.lifetime.as_secs(),
            iat: now,
            auth_time: request.auth_time,
            nonce: request.nonce.map(str::to_owned),
            at_hash: crate::oidc::access_token_hash(request.access_token),
            sid: request.session.to_owned(),
            acr: crate::oidc::ACR_PASSWORD.to_owned(),
            amr: vec!["pwd".to_owned()],
        };
        self.keys.sign_id_token(&claims)
    }
}
