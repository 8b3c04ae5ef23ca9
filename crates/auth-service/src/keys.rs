//! The issuer's signing keys: Ed25519, kept in SQLite so they survive restarts, rotated with the
//! previous key still published.

use std::sync::{Arc, RwLock};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;

use auth_interceptor::{ACCESS_TOKEN_TYP, AccessClaims, KeySet};

/// Why the key store could not load, generate or rotate a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The `signing_keys` table could not be read or written.
    #[error("signing keys in the database: {0}")]
    Storage(#[from] sqlx::Error),
    /// The system random generator or the key parser failed while making a key.
    #[error("generating a signing key: {0}")]
    Generate(String),
    /// A stored key does not parse: the database is damaged.
    #[error("signing key {kid} is damaged: {detail}")]
    Damaged {
        /// The key's id.
        kid: String,
        /// What the parser said.
        detail: String,
    },
    /// No current key after writing one (a concurrent writer retired it).
    #[error("no current signing key after {0}")]
    Missing(&'static str),
}

impl From<KeyError> for crate::StartError {
    fn from(error: KeyError) -> Self {
        crate::StartError::runtime("signing keys", error)
    }
}

/// A key that signs: its id and the jsonwebtoken key built once from its PKCS#8 bytes.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
}

/// The published public half of a key.
#[derive(Debug, Clone)]
struct PublicKey {
    kid: String,
    x: String,
}

#[derive(Clone)]
struct Keys {
    signing: Arc<SigningKey>,
    published: Vec<PublicKey>,
}

/// Signs tokens with the current key and publishes the current and the previous key.
///
/// The key material lives in the `signing_keys` table of the service's SQLite file; production
/// deployments would keep it in a KMS or HSM instead, behind the same two methods.
pub struct KeyStore {
    pool: SqlitePool,
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("current_kid", &self.current_kid())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Loads the keys, generating the first one on an empty database.
    pub async fn open(pool: SqlitePool) -> Result<Self, KeyError> {
        if Self::load(&pool).await?.is_none() {
            insert_new_key(&pool).await?;
        }
        let keys = Self::load(&pool)
            .await?
            .ok_or(KeyError::Missing("generating one"))?;
        Ok(Self {
            pool,
            keys: RwLock::new(keys),
        })
    }

    /// Retires the current key and starts signing with a new one. The retired key stays in the
    /// JWKS until the next rotation, so tokens it signed keep verifying until they expire.
    pub async fn rotate(&self) -> Result<String, KeyError> {
        let now = crate::unix_now();
        sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL")
            .bind(now as i64)
            .execute(&self.pool)
            .await?;
        insert_new_key(&self.pool).await?;
        let keys = Self::load(&self.pool)
            .await?
            .ok_or(KeyError::Missing("rotation"))?;
        let kid = keys.signing.kid.clone();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(kid)
    }

    /// The id of the key that signs now.
    pub fn current_kid(&self) -> String {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .signing
            .kid
            .clone()
    }

    /// Signs `claims` as an access token (`typ: at+jwt`, `alg: EdDSA`, `kid`).
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, jsonwebtoken::errors::Error> {
        let signing = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .signing
            .clone();
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(signing.kid.clone());
        jsonwebtoken::encode(&header, claims, &signing.encoding)
    }

    /// The JWKS document: the current key and the previous one.
    pub fn jwks(&self) -> serde_json::Value {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let entries: Vec<_> = keys
            .published
            .iter()
            .map(|k| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": k.x,
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        json!({ "keys": entries })
    }

    /// The published keys as a verifier's key set (the issuer verifies its own tokens locally).
    pub fn key_set(&self) -> KeySet {
        serde_json::from_value(self.jwks())
            .map(|jwks| KeySet::from_jwks(&jwks))
            .unwrap_or_default()
    }

    async fn load(pool: &SqlitePool) -> Result<Option<Keys>, KeyError> {
        let current: Option<(String, Vec<u8>, String)> = sqlx::query_as(
            "SELECT kid, pkcs8, public_x FROM signing_keys WHERE retired_at IS NULL \
             ORDER BY created_at DESC, rowid DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        let Some((kid, pkcs8, x)) = current else {
            return Ok(None);
        };
        let previous: Option<(String, String)> = sqlx::query_as(
            "SELECT kid, public_x FROM signing_keys WHERE retired_at IS NOT NULL \
             ORDER BY retired_at DESC, rowid DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        // Fail at start, not at first sign, if the stored key is damaged.
        Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| KeyError::Damaged {
            kid: kid.clone(),
            detail: e.to_string(),
        })?;
        let mut published = vec![PublicKey {
            kid: kid.clone(),
            x,
        }];
        published.extend(previous.map(|(kid, x)| PublicKey { kid, x }));
        Ok(Some(Keys {
            signing: Arc::new(SigningKey {
                kid,
                encoding: EncodingKey::from_ed_der(&pkcs8),
            }),
            published,
        }))
    }
}

async fn insert_new_key(pool: &SqlitePool) -> Result<(), KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Generate("the system random generator failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let kid = thumbprint(&x);
    sqlx::query(
        "INSERT INTO signing_keys (kid, algorithm, pkcs8, public_x, created_at) \
         VALUES (?, 'EdDSA', ?, ?, ?)",
    )
    .bind(&kid)
    .bind(pkcs8.as_ref())
    .bind(&x)
    .bind(crate::unix_now() as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// The RFC 7638 JWK thumbprint of an Ed25519 key: a stable `kid` derived from the key itself.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}
