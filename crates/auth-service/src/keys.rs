//! The issuer's signing keys: Ed25519, kept in SQLite so they survive restarts, rotated on a
//! schedule with the next key published before it signs and retired keys kept until their
//! tokens have expired.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use mesh_service::Db;
use serde_json::json;
use sha2::{Digest, Sha256};

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
    /// A stored key does not open with the configured key-encryption key.
    #[error(transparent)]
    Sealed(#[from] crate::sealing::SealError),
}

impl From<KeyError> for crate::StartError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Sealed(sealed) => crate::StartError::config("--kek-file/MESH_KEK", sealed),
            other => crate::StartError::runtime("signing keys", other),
        }
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
    activated_at: u64,
    next_kid: String,
    retired: Vec<String>,
    published: Vec<PublicKey>,
}

/// A stored key: kid, sealed PKCS#8, public x, activated_at, retired_at.
type KeyRow = (String, Vec<u8>, String, Option<i64>, Option<i64>);

/// The label a signing key is sealed under.
fn seal_label(kid: &str) -> String {
    format!("signing-key:{kid}")
}

/// The key ids after a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The key that signs now.
    pub signing_kid: String,
    /// The key published to sign after the next rotation.
    pub next_kid: String,
    /// Keys still published so that tokens they signed keep verifying.
    pub retired_kids: Vec<String>,
}

/// Signs tokens with the current key and publishes, in the JWKS, the next key before it signs
/// anything and every retired key until the tokens it signed have expired.
///
/// Rotation promotes the next key (which verifiers have had since it was published) to current,
/// retires the current one, and publishes a new next key: a verifier that refreshes its keys at
/// least once per rotation interval never meets a token signed with a key it does not know.
///
/// The key material lives in the `signing_keys` table of the service's SQLite file, sealed by a
/// [`Sealer`](crate::sealing::Sealer) whose key-encryption key a KMS or HSM could hold instead.
pub struct KeyStore {
    db: Db,
    sealer: crate::sealing::Sealer,
    /// How long a retired key stays published: the longest token lifetime plus clock leeway.
    retention: Duration,
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
    /// Loads the keys, making a current and a next key where there are none. Retired keys stay
    /// published for `retention` after they stop signing. Keys stored before sealing existed
    /// are sealed now; a key that does not open with `sealer`'s KEK fails the start.
    pub async fn open(
        db: Db,
        sealer: crate::sealing::Sealer,
        retention: Duration,
    ) -> Result<Self, KeyError> {
        let now = crate::unix_now() as i64;
        // Serialized, so replicas starting together on one database make one key each.
        let mut tx = db.begin_serialized("signing-keys").await?;
        let plain: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT kid, pkcs8 FROM signing_keys WHERE sealed IS NULL")
                .fetch_all(&mut *tx)
                .await?;
        for (kid, pkcs8) in plain {
            sqlx::query("UPDATE signing_keys SET sealed = $1, pkcs8 = $2 WHERE kid = $3")
                .bind(sealer.seal(&seal_label(&kid), &pkcs8)?)
                .bind(Vec::<u8>::new())
                .bind(&kid)
                .execute(&mut *tx)
                .await?;
            tracing::info!(%kid, "stored signing key sealed");
        }
        let current: Option<String> = sqlx::query_scalar(
            "SELECT kid FROM signing_keys WHERE activated_at IS NOT NULL AND retired_at IS NULL",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if current.is_none() {
            insert_new_key(&mut tx, &sealer, Some(now)).await?;
        }
        let next: Option<String> =
            sqlx::query_scalar("SELECT kid FROM signing_keys WHERE activated_at IS NULL")
                .fetch_optional(&mut *tx)
                .await?;
        if next.is_none() {
            insert_new_key(&mut tx, &sealer, None).await?;
        }
        tx.commit().await?;
        let keys = Self::load(&db, &sealer, retention)
            .await?
            .ok_or(KeyError::Missing("generating one"))?;
        Ok(Self {
            db,
            sealer,
            retention,
            keys: RwLock::new(keys),
        })
    }

    /// Retires the current key, starts signing with the next one, and publishes a new next key:
    /// the key current in the database, whatever this replica last read.
    pub async fn rotate(&self) -> Result<Rotation, KeyError> {
        self.rotate_from(None).await
    }

    /// Rotates the key current in the database, or only `expected` when given (a scheduled
    /// rotation: another replica on the same database may have rotated it first, and then
    /// this one takes that rotation instead of making a second).
    async fn rotate_from(&self, expected: Option<String>) -> Result<Rotation, KeyError> {
        let now = crate::unix_now() as i64;
        let mut tx = self.db.begin_serialized("signing-keys").await?;
        let current: Option<String> = sqlx::query_scalar(
            "SELECT kid FROM signing_keys WHERE activated_at IS NOT NULL AND retired_at IS NULL",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let to_retire = match (current, expected) {
            (Some(current), None) => Some(current),
            (Some(current), Some(expected)) if current == expected => Some(current),
            _ => None,
        };
        if let Some(current) = to_retire {
            sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE kid = $2")
                .bind(now)
                .bind(&current)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE signing_keys SET activated_at = $1 WHERE activated_at IS NULL")
                .bind(now)
                .execute(&mut *tx)
                .await?;
            insert_new_key(&mut tx, &self.sealer, None).await?;
        }
        tx.commit().await?;
        self.reload().await?;
        let rotation = self.rotation();
        tracing::info!(
            signing_kid = %rotation.signing_kid,
            next_kid = %rotation.next_kid,
            "signing key rotated"
        );
        Ok(rotation)
    }

    /// Rotates if the current key has signed for `interval` or longer, and otherwise re-reads
    /// the keys so that retired keys past their retention leave the JWKS. Returns the rotation
    /// if there was one.
    pub async fn rotate_if_due(&self, interval: Duration) -> Result<Option<Rotation>, KeyError> {
        // Read first: another replica may have rotated since.
        self.reload().await?;
        let (activated_at, current) = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            (keys.activated_at, keys.signing.kid.clone())
        };
        if crate::unix_now() >= activated_at.saturating_add(interval.as_secs()) {
            return self.rotate_from(Some(current)).await.map(Some);
        }
        Ok(None)
    }

    async fn reload(&self) -> Result<(), KeyError> {
        let keys = Self::load(&self.db, &self.sealer, self.retention)
            .await?
            .ok_or(KeyError::Missing("rotation"))?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    /// The key ids as they stand.
    pub fn rotation(&self) -> Rotation {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        Rotation {
            signing_kid: keys.signing.kid.clone(),
            next_kid: keys.next_kid.clone(),
            retired_kids: keys.retired.clone(),
        }
    }

    /// When the key that signs now started signing (seconds since the epoch).
    pub fn activated_at(&self) -> u64 {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .activated_at
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
        self.sign_typed(ACCESS_TOKEN_TYP, claims)
    }

    /// Signs `claims` as an OpenID Connect ID token (`typ: JWT`, `alg: EdDSA`, `kid`): a type
    /// no verifier of access tokens accepts.
    pub fn sign_id_token(
        &self,
        claims: &crate::oidc::IdClaims,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_typed("JWT", claims)
    }

    /// Signs a back-channel logout token (`typ: logout+jwt`, as the specification recommends,
    /// so it is neither an access token nor an ID token to anyone).
    pub fn sign_logout_token(
        &self,
        claims: &crate::oidc::LogoutClaims,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign_typed("logout+jwt", claims)
    }

    fn sign_typed(
        &self,
        typ: &str,
        claims: &impl serde::Serialize,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let signing = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .signing
            .clone();
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(signing.kid.clone());
        jsonwebtoken::encode(&header, claims, &signing.encoding)
    }

    /// Checks an `id_token_hint` (RP-Initiated Logout 1.0 §2): an ID token signed with one of
    /// the published keys (`typ: JWT`, EdDSA, `iss` = `issuer`). An expired one is accepted, as
    /// the specification allows: a person may sign out long after signing in.
    pub fn verify_id_token_hint(
        &self,
        issuer: &str,
        token: &str,
    ) -> Option<crate::oidc::HintClaims> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some("JWT") {
            return None;
        }
        let jwks: JwkSet = serde_json::from_value(self.jwks()).ok()?;
        let jwk = jwks.find(header.kid.as_deref()?)?;
        let key = DecodingKey::from_jwk(jwk).ok()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["iss", "sub", "aud"]);
        jsonwebtoken::decode::<crate::oidc::HintClaims>(token, &key, &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// The JWKS document: the current key, the next one and the retired ones still needed.
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

    async fn load(
        db: &Db,
        sealer: &crate::sealing::Sealer,
        retention: Duration,
    ) -> Result<Option<Keys>, KeyError> {
        let now = crate::unix_now() as i64;
        // Current first, then next, then retired newest first.
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT kid, sealed, public_x, activated_at, retired_at FROM signing_keys \
             WHERE retired_at IS NULL OR retired_at > $1 \
             ORDER BY retired_at IS NOT NULL, activated_at IS NULL, retired_at DESC, created_at DESC, kid",
        )
        .bind(now - retention.as_secs() as i64)
        .fetch_all(db.pool())
        .await?;
        let mut signing = None;
        let mut next_kid = None;
        let mut retired = Vec::new();
        let mut published = Vec::new();
        for (kid, sealed, x, activated_at, retired_at) in rows {
            match (activated_at, retired_at) {
                (Some(activated_at), None) if signing.is_none() => {
                    let pkcs8 = sealer.open(&seal_label(&kid), &sealed)?;
                    // Fail at start, not at first sign, if the stored key is damaged.
                    Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| KeyError::Damaged {
                        kid: kid.clone(),
                        detail: e.to_string(),
                    })?;
                    signing = Some((
                        Arc::new(SigningKey {
                            kid: kid.clone(),
                            encoding: EncodingKey::from_ed_der(&pkcs8),
                        }),
                        activated_at as u64,
                    ));
                }
                (None, None) => next_kid = Some(kid.clone()),
                _ => retired.push(kid.clone()),
            }
            published.push(PublicKey { kid, x });
        }
        let (Some((signing, activated_at)), Some(next_kid)) = (signing, next_kid) else {
            return Ok(None);
        };
        Ok(Some(Keys {
            signing,
            activated_at,
            next_kid,
            retired,
            published,
        }))
    }
}

/// Makes a key: the next key when `activated_at` is `None`, else one that signs from then.
async fn insert_new_key(
    tx: &mut mesh_service::Tx,
    sealer: &crate::sealing::Sealer,
    activated_at: Option<i64>,
) -> Result<(), KeyError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| KeyError::Generate("the system random generator failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let kid = thumbprint(&x);
    sqlx::query(
        "INSERT INTO signing_keys \
         (kid, algorithm, pkcs8, sealed, public_x, created_at, activated_at) \
         VALUES ($1, 'EdDSA', $2, $3, $4, $5, $6)",
    )
    .bind(&kid)
    .bind(Vec::<u8>::new())
    .bind(sealer.seal(&seal_label(&kid), pkcs8.as_ref())?)
    .bind(&x)
    .bind(crate::unix_now() as i64)
    .bind(activated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The RFC 7638 JWK thumbprint of an Ed25519 key: a stable `kid` derived from the key itself.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &std::path::Path, retention: Duration) -> KeyStore {
        let db = mesh_service::Db::open(&dir.join("auth.db").into(), &crate::MIGRATIONS)
            .await
            .expect("database");
        KeyStore::open(db, crate::sealing::tests::sealer('a'), retention)
            .await
            .expect("keys")
    }

    fn published(keys: &KeyStore) -> Vec<String> {
        keys.jwks()["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_owned())
            .collect()
    }

    #[tokio::test]
    async fn the_schedule_rotates_when_due_and_drops_retired_keys_after_their_tokens_expire() {
        let dir = tempfile::tempdir().expect("dir");
        // Retirement is stored in whole seconds: with 2 s of retention the retired key is still
        // there when the clock ticks between the rotation and the reload, and gone 2.1 s later.
        let keys = store(dir.path(), Duration::from_secs(2)).await;
        let first = keys.rotation();
        assert_eq!(
            published(&keys),
            vec![first.signing_kid.clone(), first.next_kid.clone()]
        );

        assert_eq!(
            keys.rotate_if_due(Duration::from_secs(3600))
                .await
                .expect("check"),
            None
        );
        let rotated = keys
            .rotate_if_due(Duration::ZERO)
            .await
            .expect("check")
            .expect("due");
        assert_eq!(rotated.signing_kid, first.next_kid);
        assert_eq!(rotated.retired_kids, vec![first.signing_kid.clone()]);
        assert!(
            published(&keys).contains(&first.signing_kid),
            "kept while its tokens live"
        );

        // Past the retention the retired key leaves the JWKS at the next check.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            keys.rotate_if_due(Duration::from_secs(3600))
                .await
                .expect("check"),
            None
        );
        assert_eq!(
            published(&keys),
            vec![rotated.signing_kid.clone(), rotated.next_kid.clone()]
        );

        // The schedule is counted from when the key started signing, across restarts.
        drop(keys);
        let reopened = store(dir.path(), Duration::from_secs(1)).await;
        assert_eq!(reopened.rotation().signing_kid, rotated.signing_kid);
    }
}
