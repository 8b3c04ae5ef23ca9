//! Hand-made JWTs: the header and claims are whatever the test says, so every attack on the
//! verifier can be expressed, and signed with whatever key the attack needs.

use anyhow::Context;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// An Ed25519 key that can sign anything.
#[derive(Debug)]
pub struct SigningKey {
    /// The `kid` to put in headers by default.
    pub kid: String,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A key from PKCS#8 bytes (e.g. the issuer's, read from its database).
    pub fn from_pkcs8(kid: String, pkcs8: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).context("parsing pkcs8")?;
        Ok(Self { kid, pair })
    }

    /// A fresh key no one trusts.
    pub fn foreign(kid: &str) -> anyhow::Result<Self> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating a key"))?;
        Self::from_pkcs8(kid.to_owned(), pkcs8.as_ref())
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as a JWK (for a `jwk` header attack).
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.public_key()),
        })
    }

    /// The header our issuer writes, with this key's `kid`.
    pub fn header(&self) -> Value {
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": self.kid })
    }

    /// Signs `header.claims` with EdDSA.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let signature = self.pair.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// Valid claims for `audience` from `issuer`, issued now, living 5 minutes.
pub fn claims(issuer: &str, audience: &str, scope: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer, "sub": "mallory", "aud": audience, "client_id": "meshctl",
        "scope": scope, "iat": now, "nbf": now, "exp": now + 300,
        "jti": format!("forged-{now}-{}", rand_suffix()),
    })
}

/// Signs with HMAC-SHA256 keyed by `secret` (the classic algorithm-confusion attack uses the
/// issuer's public key bytes as the secret).
pub fn sign_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(header, claims);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// An unsigned token (`alg: none`), with an empty signature part.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!("{}.", signing_input(header, claims))
}

/// Replaces the payload of a signed token, keeping header and signature.
pub fn with_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!(
        "{}.{payload}.{}",
        parts[0],
        parts.get(2).copied().unwrap_or_default()
    )
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}
