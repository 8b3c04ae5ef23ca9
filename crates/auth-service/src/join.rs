//! Join tokens: how a workload with no certificate yet proves which workload it is.
//!
//! A join token is 32 random bytes, shown once to whoever creates it and stored only as its
//! SHA-256. It is bound to one SPIFFE ID, expires, and is spent by its first use. A workload that
//! joined receives a fresh *rejoin* token with each certificate (the one it holds replaced), so
//! a restarted workload can join again without anyone handing it a new secret, while a copied
//! token is worth one certificate at most and its use locks the legitimate workload out, which
//! is noticed.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_service::Db;
use mesh_tls::SpiffeId;
use sha2::{Digest, Sha256};

/// Every join token starts so, which tells it apart from other secrets in logs and files.
pub const TOKEN_PREFIX: &str = "ztm-join-";

/// Why a join token was not accepted. Each is a distinct audit reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// No such token.
    #[error("unknown join token")]
    Unknown,
    /// The token was used before.
    #[error("join token already used")]
    Used,
    /// The token's time ran out.
    #[error("join token expired")]
    Expired,
}

impl JoinRefusal {
    /// The audit reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "join_token_unknown",
            Self::Used => "join_token_reused",
            Self::Expired => "join_token_expired",
        }
    }
}

/// The most rejoin tokens one SPIFFE ID holds at once: one per replica, and replicas of one
/// workload share its ID. Past it, the oldest is withdrawn.
pub const MAX_LIVE_REJOIN_TOKENS: u32 = 32;

/// A freshly created token.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The secret itself, to hand to the workload.
    pub token: String,
    /// Seconds since the epoch.
    pub expires_at: i64,
}

/// The join tokens of the CA.
#[derive(Debug, Clone)]
pub struct JoinTokens {
    db: Db,
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Makes a token (not stored: [`JoinTokens::create`] stores one, `meshctl certs init` writes
/// one for [`JoinTokens::import`]).
pub fn new_token() -> Result<String, sqlx::Error> {
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret)
        .map_err(|_| sqlx::Error::Protocol("the system random generator failed".into()))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret)))
}

/// The expiry, seconds since the epoch, of a token valid for `ttl` from now.
pub fn expiry(ttl: Duration) -> i64 {
    (crate::unix_now() + ttl.as_secs()) as i64
}

/// Stores a new token in `tx` (forgetting those a day past their expiry): a join token, or a
/// rejoin token handed out with certificate `issued_with` to a caller presenting `renewed_from`.
/// Returns it and its hash.
async fn insert_token(
    tx: &mut mesh_service::Tx,
    spiffe_id: &SpiffeId,
    ttl: Duration,
    issued_with: Option<&str>,
    renewed_from: Option<&str>,
) -> Result<(NewToken, String), sqlx::Error> {
    let token = new_token()?;
    let now = crate::unix_now() as i64;
    let expires_at = now + ttl.as_secs() as i64;
    // A token a day past its expiry tells nobody anything: forget it.
    sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
        .bind(now - 86_400)
        .execute(&mut **tx)
        .await?;
    let hash = token_hash(&token);
    sqlx::query(
        "INSERT INTO join_tokens (hash, spiffe_id, created_at, expires_at, issued_with, \
         renewed_from) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&hash)
    .bind(spiffe_id.as_str())
    .bind(now)
    .bind(expires_at)
    .bind(issued_with)
    .bind(renewed_from)
    .execute(&mut **tx)
    .await?;
    Ok((NewToken { token, expires_at }, hash))
}

impl JoinTokens {
    /// The tokens in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates a token for `spiffe_id` valid for `ttl`.
    pub async fn create(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
    ) -> Result<NewToken, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let (token, _) = insert_token(&mut tx, spiffe_id, ttl, None, None).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// A rejoin token for `spiffe_id`, handed out with the certificate `issued_with` (its
    /// serial), valid for `ttl`. In the same transaction it withdraws the rejoin tokens this one
    /// replaces: those handed out with the certificate the caller presented (`presented`) or to
    /// a caller presenting it before (a renewal over a connection opened with an older
    /// certificate presents that one), the one the caller names (`named`, only if it is the
    /// caller's own), and, past
    /// [`MAX_LIVE_REJOIN_TOKENS`] of the identity, the oldest. A workload that renews and
    /// restarts as it should holds exactly one; one that asks again and again holds no more than
    /// the cap.
    pub async fn create_rejoin(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
        issued_with: &str,
        presented: Option<&str>,
        named: Option<&str>,
    ) -> Result<NewToken, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let withdraw = "DELETE FROM join_tokens WHERE spiffe_id = $1 AND used_at IS NULL \
                        AND issued_with IS NOT NULL";
        if let Some(serial) = presented {
            sqlx::query(&format!(
                "{withdraw} AND (issued_with = $2 OR renewed_from = $2)"
            ))
            .bind(spiffe_id.as_str())
            .bind(serial)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(named) = named {
            sqlx::query(&format!("{withdraw} AND hash = $2"))
                .bind(spiffe_id.as_str())
                .bind(token_hash(named))
                .execute(&mut *tx)
                .await?;
        }
        let (token, hash) =
            insert_token(&mut tx, spiffe_id, ttl, Some(issued_with), presented).await?;
        // The new token stays; of the others, the newest `MAX - 1`.
        sqlx::query(&format!(
            "{withdraw} AND hash <> $2 AND hash NOT IN (SELECT hash FROM join_tokens \
             WHERE spiffe_id = $1 AND used_at IS NULL AND issued_with IS NOT NULL AND hash <> $2 \
             ORDER BY created_at DESC, hash LIMIT {})",
            MAX_LIVE_REJOIN_TOKENS - 1
        ))
        .bind(spiffe_id.as_str())
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Spends `token`: the SPIFFE ID it was bound to, or why it is refused. Of two concurrent
    /// uses exactly one succeeds.
    pub async fn redeem(&self, token: &str) -> Result<Result<SpiffeId, JoinRefusal>, sqlx::Error> {
        let hash = token_hash(token);
        let now = crate::unix_now() as i64;
        let spent: Option<String> = sqlx::query_scalar(
            "UPDATE join_tokens SET used_at = $1 \
             WHERE hash = $2 AND used_at IS NULL AND expires_at > $3 RETURNING spiffe_id",
        )
        .bind(now)
        .bind(&hash)
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(id) = spent {
            return Ok(id.parse().map_err(|_| JoinRefusal::Unknown));
        }
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT used_at FROM join_tokens WHERE hash = $1")
                .bind(&hash)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(Err(match row {
            None => JoinRefusal::Unknown,
            Some((Some(_),)) => JoinRefusal::Used,
            Some((None,)) => JoinRefusal::Expired,
        }))
    }

    /// Adds the tokens listed in `path` that are not known yet (a used token stays used). Each
    /// line is `<sha256 hex> <spiffe id> <expires at, seconds since the epoch>`, as
    /// `meshctl certs init` writes; `#` starts a comment. Returns how many were new.
    pub async fn import(&self, path: &Path, trust_domain: &str) -> Result<usize, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let mut added = 0;
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |what: &str| format!("line {}: {what}", number + 1);
            let mut fields = line.split_whitespace();
            let (Some(hash), Some(id), Some(expires), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `<sha256 hex> <spiffe id> <expires at>`"));
            };
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("the hash is not 64 hex digits"));
            }
            let id: SpiffeId = id.parse().map_err(|_| bad("not a SPIFFE ID"))?;
            if id.trust_domain() != trust_domain {
                return Err(bad("the SPIFFE ID is outside the trust domain"));
            }
            let expires: i64 = expires.parse().map_err(|_| bad("bad expiry"))?;
            let inserted = sqlx::query(
                "INSERT INTO join_tokens (hash, spiffe_id, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(hash.to_ascii_lowercase())
            .bind(id.as_str())
            .bind(crate::unix_now() as i64)
            .bind(expires)
            .execute(self.db.pool())
            .await
            .map_err(|e| e.to_string())?;
            added += inserted.rows_affected() as usize;
        }
        Ok(added)
    }
}
