//! People's sessions at the issuer (single sign-on) and the consents they gave.
//!
//! A session is a row named by the SHA-256 of a 256-bit cookie value; the cookie is the only
//! copy of the secret. It lives at most `session_lifetime_secs` from the sign-in and
//! `session_idle_secs` from its last use (the auth config; 8 hours and 30 minutes by default). Every login a client gets in the session (a token family)
//! remembers the session's public `session_id`, so ending the session revokes all of them.

use std::time::Duration;

use crate::grants::{Grants, hash_secret_token, new_secret, revoke_family_in};

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserSession {
    /// The session's public name (not the cookie).
    pub session_id: String,
    /// Who signed in.
    pub username: String,
    /// When they typed their password (seconds since the epoch).
    pub auth_time: i64,
    /// When the session started.
    pub created_at: i64,
}

mesh_service::from_row!(BrowserSession {
    session_id,
    username,
    auth_time,
    created_at
});

/// A login (token family) a sign-out revoked: who and which client, for the client's
/// back-channel logout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedLogin {
    /// The family: the `sid` of the client's ID token.
    pub family_id: String,
    /// The client.
    pub client_id: String,
    /// The user.
    pub username: String,
}

/// The sessions and consents, in the grants database.
#[derive(Debug, Clone)]
pub struct Sessions {
    grants: Grants,
    idle: Duration,
    lifetime: Duration,
}

impl Sessions {
    /// Sessions stored beside `grants` (whose revocations a sign-out uses) that end `idle`
    /// after their last use and `lifetime` after their sign-in.
    pub fn new(grants: Grants, idle: Duration, lifetime: Duration) -> Self {
        Self {
            grants,
            idle,
            lifetime,
        }
    }

    /// How long a session lives at most: the cookie's `Max-Age`.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The live session the cookie value names, marked used now; `None` when the value names
    /// none, or one that ended, idled out or outlived its absolute timeout.
    pub async fn find(
        &self,
        cookie: &str,
        now: i64,
    ) -> Result<Option<BrowserSession>, sqlx::Error> {
        let idle_since = now - self.idle.as_secs() as i64;
        let started_since = now - self.lifetime.as_secs() as i64;
        let session: Option<BrowserSession> = sqlx::query_as(
            "SELECT session_id, username, auth_time, created_at FROM browser_sessions \
             WHERE cookie_hash = $1 AND ended_at IS NULL AND last_seen_at > $2 AND created_at > $3",
        )
        .bind(hash_secret_token(cookie))
        .bind(idle_since)
        .bind(started_since)
        .fetch_optional(self.grants.db().pool())
        .await?;
        if session.is_some() {
            sqlx::query("UPDATE browser_sessions SET last_seen_at = $1 WHERE cookie_hash = $2")
                .bind(now)
                .bind(hash_secret_token(cookie))
                .execute(self.grants.db().pool())
                .await?;
        }
        Ok(session)
    }

    /// Starts a session for `username`, who has just typed their password; returns the new
    /// cookie value and the session. The session the browser held before (`replacing`) ends
    /// here, so a cookie value is never carried across a sign-in (no fixation): its logins move
    /// to the new session when the same person signed in again, and are revoked when someone
    /// else did (the browser changed hands).
    pub async fn start(
        &self,
        username: &str,
        replacing: Option<&BrowserSession>,
        now: i64,
    ) -> Result<(String, BrowserSession, Vec<RevokedLogin>), sqlx::Error> {
        let cookie = new_secret();
        let session = BrowserSession {
            session_id: new_secret(),
            username: username.to_owned(),
            auth_time: now,
            created_at: now,
        };
        let db = self.grants.db();
        let mut tx = db.begin_write().await?;
        sqlx::query(
            "INSERT INTO browser_sessions (cookie_hash, session_id, username, auth_time, \
             created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hash_secret_token(&cookie))
        .bind(&session.session_id)
        .bind(username)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut revoked = Vec::new();
        if let Some(old) = replacing {
            sqlx::query("UPDATE browser_sessions SET ended_at = $1 WHERE session_id = $2")
                .bind(now)
                .bind(&old.session_id)
                .execute(&mut *tx)
                .await?;
            if old.username == username {
                sqlx::query(
                    "UPDATE token_families SET browser_session = $1 WHERE browser_session = $2",
                )
                .bind(&session.session_id)
                .bind(&old.session_id)
                .execute(&mut *tx)
                .await?;
            } else {
                revoked = self.revoke_logins_in(&mut tx, &old.session_id, now).await?;
            }
        }
        tx.commit().await?;
        if !revoked.is_empty() {
            self.grants.revoked_now();
        }
        Ok((cookie, session, revoked))
    }

    /// Ends a session and revokes every login made in it (their refresh tokens, access tokens
    /// and the tokens exchanged from them, pushed to every verifier). Returns the logins it
    /// revoked.
    pub async fn end(&self, session_id: &str, now: i64) -> Result<Vec<RevokedLogin>, sqlx::Error> {
        let db = self.grants.db();
        let mut tx = db.begin_write().await?;
        sqlx::query(
            "UPDATE browser_sessions SET ended_at = $1 WHERE session_id = $2 AND ended_at IS NULL",
        )
        .bind(now)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        let revoked = self.revoke_logins_in(&mut tx, session_id, now).await?;
        tx.commit().await?;
        self.grants.revoked_now();
        Ok(revoked)
    }

    async fn revoke_logins_in(
        &self,
        tx: &mut mesh_service::Tx,
        session_id: &str,
        now: i64,
    ) -> Result<Vec<RevokedLogin>, sqlx::Error> {
        let families: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT family_id, client_id, username FROM token_families \
             WHERE browser_session = $1 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .fetch_all(&mut **tx)
        .await?;
        for (family, _, _) in &families {
            revoke_family_in(
                self.grants.db(),
                tx,
                family,
                now,
                self.grants.session_horizon(),
            )
            .await?;
        }
        Ok(families
            .into_iter()
            .map(|(family_id, client_id, username)| RevokedLogin {
                family_id,
                client_id,
                username,
            })
            .collect())
    }

    /// The browser session a login (token family) was made in.
    pub async fn session_of_login(&self, family_id: &str) -> Result<Option<String>, sqlx::Error> {
        let session: Option<Option<String>> =
            sqlx::query_scalar("SELECT browser_session FROM token_families WHERE family_id = $1")
                .bind(family_id)
                .fetch_optional(self.grants.db().pool())
                .await?;
        Ok(session.flatten())
    }

    /// Whether `username` already let `client_id` have `scopes` for `audience` (each of them).
    pub async fn consented(
        &self,
        username: &str,
        client_id: &str,
        audience: &str,
        scopes: &[String],
    ) -> Result<bool, sqlx::Error> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT scope, audience FROM consents WHERE username = $1 AND client_id = $2",
        )
        .bind(username)
        .bind(client_id)
        .fetch_optional(self.grants.db().pool())
        .await?;
        Ok(row.is_some_and(|(granted, audiences)| {
            let granted: Vec<&str> = granted.split_ascii_whitespace().collect();
            let audiences: Vec<&str> = audiences.split_ascii_whitespace().collect();
            scopes.iter().all(|s| granted.contains(&s.as_str()))
                && audience
                    .split_ascii_whitespace()
                    .all(|a| audiences.contains(&a))
        }))
    }

    /// Remembers that `username` let `client_id` have `scopes` for `audience`.
    pub async fn remember_consent(
        &self,
        username: &str,
        client_id: &str,
        audience: &str,
        scopes: &[String],
        now: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO consents (username, client_id, scope, audience, granted_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (username, client_id) DO UPDATE \
             SET scope = excluded.scope, audience = excluded.audience, \
             granted_at = excluded.granted_at",
        )
        .bind(username)
        .bind(client_id)
        .bind(scopes.join(" "))
        .bind(audience)
        .bind(now)
        .execute(self.grants.db().pool())
        .await?;
        Ok(())
    }
}
