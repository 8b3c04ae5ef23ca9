//! Revocations pushed by the issuer: the list every verifier consults on every call (cached
//! tokens included), and the feed that keeps it current over `AuthService.WatchRevocations`.
//!
//! A JWT verifies by itself until its `exp`; revoking one at the issuer changes nothing at a
//! verifier unless the verifier is told. The issuer streams each revocation the moment it is
//! recorded; the feed applies it to the list, and [`crate::TokenVerifier::verify`] refuses a
//! token whose `jti` or `sid` is on it. A verifier that loses the stream keeps serving (on what
//! it knew), says so, and on reconnecting asks for everything after the last sequence it applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::auth::v1::revocation::Target;
use mesh_proto::auth::v1::{Revocation, WatchRevocationsRequest};

use crate::claims::{VerifiedToken, unix_now};
use mesh_client::Transport;

/// Revoked token ids and logins, each kept until the last token it covers has expired.
#[derive(Debug, Default)]
pub struct RevocationList {
    entries: RwLock<Entries>,
    last_sequence: AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    tokens: HashMap<String, u64>,
    sessions: HashMap<String, u64>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether `token`, or the login it belongs to, is revoked.
    pub fn is_revoked(&self, token: &VerifiedToken) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        if entries.tokens.is_empty() && entries.sessions.is_empty() {
            return false;
        }
        entries.tokens.contains_key(&token.token_id)
            || token
                .session
                .as_ref()
                .is_some_and(|sid| entries.sessions.contains_key(sid))
    }

    /// Applies one revocation from the issuer and forgets those that can no longer matter.
    pub fn apply(&self, revocation: &Revocation) {
        let now = unix_now();
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        entries.tokens.retain(|_, until| *until > now);
        entries.sessions.retain(|_, until| *until > now);
        if revocation.expires_at > now {
            match &revocation.target {
                Some(Target::TokenId(jti)) => {
                    entries.tokens.insert(jti.clone(), revocation.expires_at);
                }
                Some(Target::SessionId(sid)) => {
                    entries.sessions.insert(sid.clone(), revocation.expires_at);
                }
                None => {}
            }
        }
        self.last_sequence
            .fetch_max(revocation.sequence, Ordering::Relaxed);
    }

    /// The highest sequence number applied: where a resubscription starts.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Relaxed)
    }

    /// How many revocations are in force.
    pub fn len(&self) -> usize {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.tokens.len() + entries.sessions.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The health of a verifier's revocation stream, for logs, health and metrics.
#[derive(Debug, Default)]
pub struct FeedStatus {
    connected: AtomicBool,
    disconnects: AtomicU64,
    received: AtomicU64,
}

impl FeedStatus {
    /// Whether the stream is up now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// How many times the stream was lost or could not be opened.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    /// How many revocations arrived over it.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// The first wait before resubscribing; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between attempts while the issuer is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Keeps `list` current from the issuer at the other end of `auth` (an mTLS transport to the
/// auth service's mesh port) until the returned task is aborted (a service keeps it for as long
/// as it runs). Returns the task and the stream's status.
pub fn spawn_feed(
    auth: Transport,
    list: Arc<RevocationList>,
) -> (tokio::task::JoinHandle<()>, Arc<FeedStatus>) {
    let status = Arc::new(FeedStatus::default());
    let reported = status.clone();
    let task = tokio::spawn(async move {
        let mut client = AuthServiceClient::new(auth);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let after_sequence = list.last_sequence();
            let why = match client
                .watch_revocations(WatchRevocationsRequest { after_sequence })
                .await
            {
                Ok(response) => {
                    status.connected.store(true, Ordering::Relaxed);
                    tracing::info!(after_sequence, "revocation stream connected");
                    backoff = FIRST_BACKOFF;
                    let mut stream = response.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(revocation)) => {
                                list.apply(&revocation);
                                status.received.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(None) => break "the issuer ended it".to_owned(),
                            Err(error) => break error.to_string(),
                        }
                    }
                }
                Err(error) => error.to_string(),
            };
            status.connected.store(false, Ordering::Relaxed);
            status.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                reason = %why,
                retry_in_ms = backoff.as_millis() as u64,
                "revocation stream down: serving on the revocations known so far; \
                 missed ones are fetched on reconnect"
            );
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    (task, reported)
}

/// `base` plus up to a quarter more, so verifiers that lost the issuer together do not all come
/// back in the same instant.
fn jittered(base: Duration) -> Duration {
    let spread = base.as_millis() as u64 / 4;
    base + Duration::from_millis(rand::random_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(jti: &str, sid: Option<&str>) -> VerifiedToken {
        VerifiedToken {
            subject: "alice".into(),
            client_id: "meshctl-cli".into(),
            scopes: vec![],
            token_id: jti.into(),
            actor: None,
            expires_at: unix_now() + 60,
            session: sid.map(str::to_owned),
            certificate: None,
        }
    }

    fn revocation(sequence: u64, target: Target, expires_at: u64) -> Revocation {
        Revocation {
            sequence,
            target: Some(target),
            expires_at,
        }
    }

    #[test]
    fn a_revoked_jti_or_session_is_refused_and_forgotten_after_it_expires() {
        let list = RevocationList::new();
        let later = unix_now() + 60;
        assert!(!list.is_revoked(&verified("t1", Some("s1"))));
        list.apply(&revocation(3, Target::TokenId("t1".into()), later));
        list.apply(&revocation(7, Target::SessionId("s1".into()), later));
        assert!(list.is_revoked(&verified("t1", None)));
        assert!(
            list.is_revoked(&verified("other", Some("s1"))),
            "same login"
        );
        assert!(!list.is_revoked(&verified("other", Some("s2"))));
        assert_eq!(list.last_sequence(), 7);
        // Out of order (a replay after reconnect) never moves the cursor back.
        list.apply(&revocation(5, Target::TokenId("t5".into()), later));
        assert_eq!(list.last_sequence(), 7);
        // An entry already past its horizon is not kept.
        list.apply(&revocation(
            8,
            Target::TokenId("old".into()),
            unix_now() - 1,
        ));
        assert!(!list.is_revoked(&verified("old", None)));
        assert_eq!(list.len(), 3);
    }
}
