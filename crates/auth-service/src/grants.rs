//! Storage of the user grants: authorization codes, refresh-token families, issued access tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use std::sync::Arc;
use std::time::Duration;

use mesh_service::Db;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// A new opaque secret: 256 random bits, base64url.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of an opaque secret.
pub fn hash_secret_token(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

/// What an authorization code was issued for.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    /// The family the code starts.
    pub family_id: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The redirect URI of the authorization request.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The user who logged in.
    pub username: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The audience of the access token.
    pub audience: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
    /// The relying party's `nonce`, for the ID token of an OpenID Connect login.
    pub nonce: Option<String>,
    /// When the user authenticated (seconds since the epoch): the ID token's `auth_time`.
    pub auth_time: i64,
    /// The browser session at the issuer the login was made in (`session_id`), if any: signing
    /// out of it revokes the login.
    pub browser_session: Option<String>,
}

/// Why a code or refresh token was not redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemError {
    /// Not known (or a storage failure; the caller cannot tell and must not).
    Unknown,
    /// Past its expiry.
    Expired,
    /// Used before: a replay. The family has been revoked.
    Reused,
    /// Its family was revoked.
    Revoked,
}

/// A refresh token's family, as found when it is redeemed.
#[derive(Debug, Clone)]
pub struct Family {
    /// The family id.
    pub family_id: String,
    /// The client.
    pub client_id: String,
    /// The user.
    pub username: String,
    /// What the login granted, space-separated: a refresh may ask for less, never more.
    pub scope: String,
    /// The audience of the login: a refresh keeps it.
    pub audience: String,
}

mesh_service::from_row!(Family {
    family_id,
    client_id,
    username,
    scope,
    audience
});

/// What a revocation covers: one access token, or every token of one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokedTarget {
    /// An access token's `jti`.
    Token(String),
    /// A login's `sid` (its token family), which exchanged tokens carry too.
    Session(String),
}

/// One row of the revocation log, as the verifiers' stream sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    /// Its place in the log.
    pub sequence: u64,
    /// What it revokes.
    pub target: RevokedTarget,
    /// When the last token it covers expires (seconds since the epoch).
    pub expires_at: u64,
}

/// The grants database.
#[derive(Debug, Clone)]
pub struct Grants {
    db: Db,
    /// How long after a login is revoked one of its tokens can still verify somewhere: the
    /// longest access-token lifetime plus the verifiers' clock leeway.
    session_horizon: Duration,
    /// Ticks after every revocation, so the revocation streams look for new rows at once.
    revoked: Arc<watch::Sender<()>>,
}

impl Grants {
    /// Grants stored in `db` (already migrated), for tokens that live at most
    /// `longest_token_lifetime`.
    pub fn new(db: Db, longest_token_lifetime: Duration) -> Self {
        Self {
            db,
            session_horizon: longest_token_lifetime + VERIFIER_LEEWAY,
            revoked: Arc::new(watch::channel(()).0),
        }
    }

    /// The database (the browser sessions share it).
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// How long a revoked login's revocation must stay in the log.
    pub(crate) fn session_horizon(&self) -> Duration {
        self.session_horizon
    }

    /// Wakes the revocation streams after a revocation committed elsewhere.
    pub(crate) fn revoked_now(&self) {
        self.revoked.send_replace(());
    }

    /// A receiver that is marked changed after every revocation.
    pub fn revocation_ticks(&self) -> watch::Receiver<()> {
        self.revoked.subscribe()
    }

    /// Revocations with a sequence above `after` that are still in force at `now`, oldest
    /// first, at most `limit` of them.
    pub async fn revocations_after(
        &self,
        after: u64,
        now: u64,
        limit: u32,
    ) -> Result<Vec<RevocationRecord>, sqlx::Error> {
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT sequence, kind, value, expires_at FROM revocations \
             WHERE sequence > $1 AND expires_at > $2 ORDER BY sequence LIMIT $3",
        )
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(now as i64)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(sequence, kind, value, expires_at)| RevocationRecord {
                sequence: sequence as u64,
                target: if kind == "session" {
                    RevokedTarget::Session(value)
                } else {
                    RevokedTarget::Token(value)
                },
                expires_at: expires_at as u64,
            })
            .collect())
    }

    /// Forgets revocations whose tokens have all expired.
    pub async fn prune_revocations(&self, now: u64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM revocations WHERE expires_at <= $1")
            .bind(now as i64)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Stores a new code and its (new) family; returns the code.
    pub async fn create_code(&self, grant: &CodeGrant) -> Result<String, sqlx::Error> {
        let code = new_secret();
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO token_families (family_id, client_id, username, scope, audience, \
             created_at, browser_session) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&grant.family_id)
        .bind(&grant.client_id)
        .bind(&grant.username)
        .bind(&grant.scope)
        .bind(&grant.audience)
        .bind(crate::unix_now() as i64)
        .bind(grant.browser_session.as_deref())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, family_id, client_id, redirect_uri, code_challenge, \
             username, scope, audience, expires_at, nonce, auth_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(hash_secret_token(&code))
        .bind(&grant.family_id)
        .bind(&grant.client_id)
        .bind(&grant.redirect_uri)
        .bind(&grant.code_challenge)
        .bind(&grant.username)
        .bind(&grant.scope)
        .bind(&grant.audience)
        .bind(grant.expires_at)
        .bind(grant.nonce.as_deref())
        .bind(grant.auth_time)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(code)
    }

    /// Marks a code used and returns its grant. A second presentation is [`RedeemError::Reused`]
    /// and revokes everything issued from the code.
    pub async fn redeem_code(&self, code: &str, now: i64) -> Result<CodeGrant, RedeemError> {
        self.redeem_once::<CodeGrantRow>(code, now)
            .await
            .map(CodeGrantRow::into_grant)
    }

    /// Stores a new refresh token of `family_id`; returns it.
    pub async fn issue_refresh(
        &self,
        family_id: &str,
        expires_at: i64,
    ) -> Result<String, sqlx::Error> {
        let token = new_secret();
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(hash_secret_token(&token))
        .bind(family_id)
        .bind(crate::unix_now() as i64)
        .bind(expires_at)
        .execute(self.db.pool())
        .await?;
        Ok(token)
    }

    /// Uses a refresh token once. Presenting a used one again is [`RedeemError::Reused`]: the
    /// token was stolen or replayed, and the whole family is revoked.
    pub async fn rotate_refresh(&self, token: &str, now: i64) -> Result<Family, RedeemError> {
        self.redeem_once::<RefreshRow>(token, now)
            .await
            .map(RefreshRow::family)
    }

    /// The one single-use transaction behind codes and refresh tokens: find the grant by the
    /// hash of `secret`, refuse it if its family is revoked or it has expired, and mark it used;
    /// a grant presented a second time revokes its whole family (RFC 6749 §4.1.2, RFC 9700
    /// §4.14.2: a replay means the secret leaked). All in one `BEGIN IMMEDIATE` transaction, so
    /// two concurrent presentations cannot both succeed. A storage failure answers `Unknown`:
    /// the caller cannot tell it from a made-up secret, and must not.
    async fn redeem_once<G: SingleUse>(&self, secret: &str, now: i64) -> Result<G, RedeemError> {
        let hash = hash_secret_token(secret);
        let result: Result<Result<G, RedeemError>, sqlx::Error> = async {
            let mut tx = self.db.begin_write().await?;
            let Some(grant) = sqlx::query_as::<_, G>(G::SELECT)
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(Err(RedeemError::Unknown));
            };
            let stored = grant.state();
            if stored.revoked_at.is_some() {
                return Ok(Err(RedeemError::Revoked));
            }
            if stored.expires_at <= now && stored.used_at.is_none() {
                return Ok(Err(RedeemError::Expired));
            }
            // Guarded: of two redemptions at once (two replicas on one database) one marks it
            // used; the other finds it used, like a replay, and gets the same answer.
            let marked = if stored.used_at.is_none() {
                sqlx::query(G::MARK_USED)
                    .bind(now)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            } else {
                0
            };
            if marked == 0 {
                revoke_family_in(
                    &self.db,
                    &mut tx,
                    &stored.family_id,
                    now,
                    self.session_horizon,
                )
                .await?;
                tx.commit().await?;
                self.revoked.send_replace(());
                return Ok(Err(RedeemError::Reused));
            }
            tx.commit().await?;
            Ok(Ok(grant))
        }
        .await;
        result.unwrap_or_else(|error| {
            tracing::error!(%error, grant = G::KIND, "redeeming a single-use grant failed");
            Err(RedeemError::Unknown)
        })
    }

    /// Records an issued access token (so a family revocation can find it).
    pub async fn record_access(
        &self,
        jti: &str,
        family_id: Option<&str>,
        expires_at: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO access_tokens (jti, family_id, expires_at) VALUES ($1, $2, $3)")
            .bind(jti)
            .bind(family_id)
            .bind(expires_at)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The family of a refresh token and whether the token is still usable; for revocation and
    /// introspection.
    pub async fn refresh_family(&self, token: &str) -> Result<Option<(Family, bool)>, sqlx::Error> {
        let row: Option<RefreshRow> = sqlx::query_as(RefreshRow::SELECT)
            .bind(hash_secret_token(token))
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|row| {
            let active = row.state.usable(crate::unix_now() as i64);
            (row.family(), active)
        }))
    }

    /// Revokes a family: its refresh tokens stop working, its access tokens are reported
    /// inactive by introspection.
    pub async fn revoke_family(&self, family_id: &str, now: i64) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        revoke_family_in(&self.db, &mut tx, family_id, now, self.session_horizon).await?;
        tx.commit().await?;
        self.revoked.send_replace(());
        Ok(())
    }

    /// Revokes one access token by its `jti`.
    pub async fn revoke_access(
        &self,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO access_tokens (jti, expires_at, revoked_at) VALUES ($1, $2, $3) \
             ON CONFLICT (jti) DO UPDATE SET revoked_at = excluded.revoked_at",
        )
        .bind(jti)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let covered_until = expires_at + VERIFIER_LEEWAY.as_secs() as i64;
        log_revocation(&self.db, &mut tx, "token", jti, covered_until, now).await?;
        tx.commit().await?;
        self.revoked.send_replace(());
        Ok(())
    }

    /// Whether an access token was revoked.
    pub async fn access_revoked(&self, jti: &str) -> Result<bool, sqlx::Error> {
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_at FROM access_tokens WHERE jti = $1")
                .bind(jti)
                .fetch_optional(self.db.pool())
                .await?;
        Ok(revoked.flatten().is_some())
    }
}

/// The columns every single-use grant shares, as [`Grants::redeem_once`] checks them.
struct UseState {
    family_id: String,
    expires_at: i64,
    used_at: Option<i64>,
    /// The family's, from the join.
    revoked_at: Option<i64>,
}

mesh_service::from_row!(UseState {
    family_id,
    expires_at,
    used_at,
    revoked_at
});

impl UseState {
    /// Whether the grant could still be redeemed at `now`.
    fn usable(&self, now: i64) -> bool {
        self.used_at.is_none() && self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A grant that may be presented once: how to find it by the hash of its secret (joined with
/// its family's revocation), and how to mark it used.
trait SingleUse: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin {
    /// For logs.
    const KIND: &'static str;
    /// One row by `?` = the secret's hash, with `family_id`, `expires_at`, `used_at` and the
    /// family's `revoked_at`.
    const SELECT: &'static str;
    /// Sets `used_at = ?1` on the row whose hash is `?2`.
    const MARK_USED: &'static str;

    fn state(&self) -> &UseState;
}

struct RefreshRow {
    client_id: String,
    username: String,
    scope: String,
    audience: String,
    state: UseState,
}

mesh_service::from_row!(RefreshRow {
    client_id,
    username,
    scope,
    audience,
} flatten state: UseState);

impl SingleUse for RefreshRow {
    const KIND: &'static str = "refresh_token";
    const SELECT: &'static str = "SELECT f.family_id, f.client_id, f.username, f.scope, f.audience, r.expires_at, \
         r.used_at, f.revoked_at FROM refresh_tokens r \
         JOIN token_families f ON f.family_id = r.family_id WHERE r.token_hash = $1";
    const MARK_USED: &'static str =
        "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL";

    fn state(&self) -> &UseState {
        &self.state
    }
}

impl RefreshRow {
    fn family(self) -> Family {
        Family {
            family_id: self.state.family_id,
            client_id: self.client_id,
            username: self.username,
            scope: self.scope,
            audience: self.audience,
        }
    }
}

struct CodeGrantRow {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    username: String,
    scope: String,
    audience: String,
    nonce: Option<String>,
    auth_time: Option<i64>,
    state: UseState,
}

mesh_service::from_row!(CodeGrantRow {
    client_id,
    redirect_uri,
    code_challenge,
    username,
    scope,
    audience,
    nonce,
    auth_time,
} flatten state: UseState);

impl SingleUse for CodeGrantRow {
    const KIND: &'static str = "authorization_code";
    const SELECT: &'static str = "SELECT c.family_id, c.client_id, c.redirect_uri, \
         c.code_challenge, c.username, c.scope, c.audience, c.nonce, c.auth_time, c.expires_at, \
         c.used_at, f.revoked_at FROM auth_codes c JOIN token_families f ON f.family_id = c.family_id \
         WHERE c.code_hash = $1";
    const MARK_USED: &'static str =
        "UPDATE auth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL";

    fn state(&self) -> &UseState {
        &self.state
    }
}

impl CodeGrantRow {
    fn into_grant(self) -> CodeGrant {
        CodeGrant {
            family_id: self.state.family_id,
            client_id: self.client_id,
            redirect_uri: self.redirect_uri,
            code_challenge: self.code_challenge,
            username: self.username,
            scope: self.scope,
            audience: self.audience,
            expires_at: self.state.expires_at,
            nonce: self.nonce,
            auth_time: self.auth_time.unwrap_or_default(),
            // Not needed once the code is redeemed: the family keeps it.
            browser_session: None,
        }
    }
}

/// The clock skew verifiers allow on `exp`: a revocation stays in force this much longer than
/// the tokens it covers.
const VERIFIER_LEEWAY: Duration = Duration::from_secs(30);

/// Appends a row to the revocation log, in the transaction that revokes. Appenders are
/// serialized ([`Db::serialize`]) so rows become visible in sequence order: the streams and the
/// issuer's own list follow the log by "sequence above my cursor" and would skip, for good, a
/// lower sequence that committed after a higher one.
async fn log_revocation(
    db: &Db,
    tx: &mut mesh_service::Tx,
    kind: &str,
    value: &str,
    expires_at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    db.serialize(tx, "revocations").await?;
    sqlx::query(
        "INSERT INTO revocations (kind, value, expires_at, revoked_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(kind)
    .bind(value)
    .bind(expires_at)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) async fn revoke_family_in(
    db: &Db,
    tx: &mut mesh_service::Tx,
    family_id: &str,
    now: i64,
    horizon: Duration,
) -> Result<(), sqlx::Error> {
    let newly = sqlx::query(
        "UPDATE token_families SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    if newly.rows_affected() > 0 {
        let covered_until = now + horizon.as_secs() as i64;
        log_revocation(db, tx, "session", family_id, covered_until, now).await?;
    }
    sqlx::query(
        "UPDATE access_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    // The decision that caused it (a replayed grant, a logout) is the handler's audit record.
    tracing::warn!(family_id, "token family revoked");
    Ok(())
}
