//! Rate limits per identity on a policy rule: a token bucket for each caller workload, token
//! subject, or pair of them. Over the limit a call is RESOURCE_EXHAUSTED with
//! `google.rpc.RetryInfo` saying when the next token is there.
//!
//! Memory is bounded: a rule keeps at most [`MAX_IDENTITIES`] buckets. A bucket that has filled
//! up again says nothing a new one would not, so when the table is full those are dropped first;
//! if every bucket is still in use, identities not in the table share one overflow bucket (they
//! are limited together, never let through unlimited). The buckets are in the process: each
//! replica counts its own calls, so N replicas admit up to N times the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_tls::SpiffeId;

use crate::verify::VerifiedToken;

/// The most identities a rule keeps a bucket for.
pub const MAX_IDENTITIES: usize = 10_000;

/// What a rule's buckets are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// The token's `sub` (a user, or a client for its own tokens).
    Subject,
    /// The caller's SPIFFE ID.
    Caller,
    /// Both: one bucket per subject per workload.
    SubjectAndCaller,
}

/// A token-bucket limit: `rate` calls a second on average, `burst` at once.
#[derive(Debug)]
pub struct RateLimit {
    key: LimitKey,
    rate: u32,
    burst: u32,
    buckets: Mutex<Buckets>,
}

impl PartialEq for RateLimit {
    /// Two limits are the same rule when they say the same; the counts are state.
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.rate, self.burst) == (other.key, other.rate, other.burst)
    }
}

impl Eq for RateLimit {}

#[derive(Debug)]
struct Buckets {
    by_identity: HashMap<String, Bucket>,
    overflow: Bucket,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `rate` calls a second per identity (`key`), up to `burst` at once; both at least 1.
    pub fn new(key: LimitKey, rate: u32, burst: u32) -> Self {
        let (rate, burst) = (rate.max(1), burst.max(1));
        Self {
            key,
            rate,
            burst,
            buckets: Mutex::new(Buckets {
                by_identity: HashMap::new(),
                overflow: Bucket {
                    tokens: f64::from(burst),
                    at: Instant::now(),
                },
            }),
        }
    }

    /// Takes a token for the call's identity, or says how long until there is one. A call
    /// without the identity the limit is keyed by (no token on a subject limit) is not counted:
    /// the rule's other checks refuse it.
    pub fn take(
        &self,
        token: Option<&VerifiedToken>,
        peer: Option<&SpiffeId>,
    ) -> Result<(), Duration> {
        let identity = match self.key {
            LimitKey::Subject => token.map(|t| t.subject.clone()),
            LimitKey::Caller => peer.map(|p| p.as_str().to_owned()),
            LimitKey::SubjectAndCaller => token
                .zip(peer)
                .map(|(t, p)| format!("{}\u{0}{}", t.subject, p.as_str())),
        };
        let Some(identity) = identity else {
            return Ok(());
        };
        let now = Instant::now();
        let (rate, burst) = (f64::from(self.rate), f64::from(self.burst));
        let refill = |bucket: &mut Bucket| {
            let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
            bucket.at = now;
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let buckets = &mut *buckets;
        if !buckets.by_identity.contains_key(&identity)
            && buckets.by_identity.len() >= MAX_IDENTITIES
        {
            // Full buckets carry no state: drop them to make room.
            buckets.by_identity.retain(|_, bucket| {
                let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
                bucket.tokens + elapsed * rate < burst
            });
        }
        let bucket = if buckets.by_identity.len() < MAX_IDENTITIES
            || buckets.by_identity.contains_key(&identity)
        {
            buckets.by_identity.entry(identity).or_insert(Bucket {
                tokens: burst,
                at: now,
            })
        } else {
            &mut buckets.overflow
        };
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// The limit in words: `5/s, burst 10, per subject`.
    pub fn describe(&self) -> String {
        let per = match self.key {
            LimitKey::Subject => "subject",
            LimitKey::Caller => "caller",
            LimitKey::SubjectAndCaller => "subject and caller",
        };
        format!("{}/s, burst {}, per {per}", self.rate, self.burst)
    }

    /// How many identities have a bucket now (for tests and the docs' memory bound).
    pub fn identities(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_identity
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(subject: &str) -> VerifiedToken {
        VerifiedToken {
            subject: subject.into(),
            client_id: "c".into(),
            scopes: vec![],
            token_id: "j".into(),
            actor: None,
            expires_at: 0,
            session: None,
            certificate: None,
        }
    }

    #[test]
    fn a_burst_then_the_rate_per_subject_and_others_untouched() {
        let limit = RateLimit::new(LimitKey::Subject, 2, 3);
        let alice = token("alice");
        for _ in 0..3 {
            assert!(limit.take(Some(&alice), None).is_ok());
        }
        let wait = limit.take(Some(&alice), None).expect_err("over");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(
            limit.take(Some(&token("bob")), None).is_ok(),
            "bob has his own bucket"
        );
        std::thread::sleep(wait);
        assert!(
            limit.take(Some(&alice), None).is_ok(),
            "refilled at the rate"
        );
    }

    #[test]
    fn the_table_is_bounded_and_strangers_beyond_it_share_the_overflow() {
        let limit = RateLimit::new(LimitKey::Subject, 1, 1);
        for n in 0..MAX_IDENTITIES {
            assert!(limit.take(Some(&token(&format!("u{n}"))), None).is_ok());
        }
        assert_eq!(limit.identities(), MAX_IDENTITIES);
        // Every bucket is empty (in use): the next identities share one bucket of 1.
        assert!(limit.take(Some(&token("stranger-1")), None).is_ok());
        assert!(limit.take(Some(&token("stranger-2")), None).is_err());
        assert_eq!(
            limit.identities(),
            MAX_IDENTITIES,
            "no growth past the bound"
        );
    }
}
