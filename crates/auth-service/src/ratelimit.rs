//! Limits failed authentications, so secrets cannot be guessed at speed and a flood of bad
//! attempts can neither keep the CPU busy with Argon2 nor fill memory with it.
//!
//! Three guarantees, each one a test:
//! - **Reserve, then work.** An attempt takes a slot under every key it names (its source
//!   address, the account it tries) *before* any hash is computed; a key is refused while its
//!   failures plus the attempts still in flight reach its allowance. So at most the allowance is
//!   ever hashed per key, however many requests arrive at once: 64 parallel wrong secrets for
//!   one client buy 10 hashes, not 64.
//! - **A fixed number of hashes at once.** Argon2id with the parameters of our hashes
//!   (`m=19456`) works in ~19 MiB. [`FailureLimiter::hash_slot`] hands out at most
//!   `concurrent_hashes` slots, each with its own reused memory ([`crate::passwords`]) (default 2: ~38 MiB, inside the auth pod's 256 MiB limit with the
//!   rest of the service); a request waits at most [`WAIT`] for one, then gets 429.
//! - **Per address and per account.** Guessing one account from many addresses hits the
//!   account's allowance; many users behind one NAT share only the larger per-address one, so a
//!   few wrong logins there lock out nobody else. IPv6 sources are counted per /64, the block
//!   one host usually holds. The table is bounded ([`MAX_TRACKED`] keys): when it is full of
//!   live windows, newcomers share one overflow key per kind and are limited together.
//!
//! An attempt is a failure unless the caller says it succeeded: a request dropped half-way (the
//! client reset its stream after the hash started) still counts.
//!
//! Why not `governor` (keyed GCRA): its limiter spends a cell on every check. Ours must spend on
//! failures only (a busy client that authenticates correctly and often must not be throttled)
//! and hold a reservation across the hash, which a GCRA cell cannot express.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::passwords::{HashSlot, HashSlots};

/// How long an attempt waits for its keys' in-flight attempts to settle, or for a hash slot,
/// before it is refused with 429.
pub const WAIT: Duration = Duration::from_secs(2);

/// Keys tracked at most; past it, expired windows are swept, then newcomers share an overflow key.
pub const MAX_TRACKED: usize = 65_536;

/// The limiter's settings (the `[rate_limit]` table of the auth config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Failures allowed per source address (an IPv6 /64) and window.
    pub per_address: u32,
    /// Failures allowed per account (a client id or a username) and window, from anywhere.
    pub per_account: u32,
    /// The window.
    pub window: Duration,
    /// Password hashes computed at once, service-wide.
    pub concurrent_hashes: u32,
}

/// What an attempt is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// A source address; IPv6 masked to its /64.
    Address(IpAddr),
    /// An account, by a keyed hash of its kind and name (names can be long, and are not kept).
    Account(u64),
    /// Every new address while the table is full.
    OverflowAddress,
    /// Every new account while the table is full.
    OverflowAccount,
}

impl Key {
    fn overflow(self) -> Self {
        match self {
            Key::Address(_) | Key::OverflowAddress => Key::OverflowAddress,
            Key::Account(_) | Key::OverflowAccount => Key::OverflowAccount,
        }
    }
}

/// Why an attempt may not go ahead: both are answered 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A key has used up its failures; it may try again after this long.
    Blocked(Duration),
    /// The key's allowance is held by attempts in flight, or every hash slot is busy, for longer
    /// than [`WAIT`].
    Busy,
}

impl Refused {
    /// When to try again.
    pub fn retry_after(self) -> Duration {
        match self {
            Refused::Blocked(after) => after,
            Refused::Busy => Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    failures: u32,
    pending: u32,
}

#[derive(Debug)]
struct Inner {
    settings: LimitSettings,
    table: Mutex<HashMap<Key, Window>>,
    /// Woken whenever an attempt settles, so waiters re-check their keys.
    settled: Notify,
    hashes: HashSlots,
    accounts: std::hash::RandomState,
}

/// The failed-authentication limiter, shared by the login form, the token endpoint and the CA's
/// join-token door.
#[derive(Debug, Clone)]
pub struct FailureLimiter {
    inner: Arc<Inner>,
}

impl FailureLimiter {
    /// A limiter with `settings`.
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                table: Mutex::new(HashMap::new()),
                settled: Notify::new(),
                hashes: HashSlots::new(settings.concurrent_hashes),
                accounts: std::hash::RandomState::new(),
            }),
        }
    }

    /// The key of a source address.
    pub fn address(addr: IpAddr) -> Key {
        match addr.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                Key::Address(IpAddr::V6(bits.into()))
            }
            v4 => Key::Address(v4),
        }
    }

    /// The key of an account: `kind` keeps clients and users apart.
    pub fn account(&self, kind: &str, name: &str) -> Key {
        Key::Account(self.inner.accounts.hash_one((kind, name)))
    }

    /// Reserves an attempt under every key of `keys`, waiting at most [`WAIT`] while in-flight
    /// attempts hold a key's allowance.
    pub async fn begin(&self, keys: &[Key]) -> Result<Attempt, Refused> {
        let deadline = Instant::now() + WAIT;
        loop {
            let settled = self.inner.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a settle between the check and the wait is seen.
            settled.as_mut().enable();
            match self.try_reserve(keys) {
                Ok(reserved) => {
                    return Ok(Attempt {
                        limiter: self.clone(),
                        keys: reserved,
                        settled: false,
                    });
                }
                Err(Some(refused)) => return Err(refused),
                Err(None) => {}
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(Refused::Busy);
            }
        }
    }

    /// `Err(None)`: wait and try again.
    fn try_reserve(&self, keys: &[Key]) -> Result<Vec<Key>, Option<Refused>> {
        let settings = self.inner.settings;
        let mut table = self.inner.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let keys: Vec<Key> = keys
            .iter()
            .map(|k| tracked(&mut table, *k, settings.window, now))
            .collect();
        let mut wait = false;
        for key in &keys {
            let limit = match key {
                Key::Address(_) | Key::OverflowAddress => settings.per_address,
                Key::Account(_) | Key::OverflowAccount => settings.per_account,
            };
            let window = table.entry(*key).or_insert(Window {
                start: now,
                failures: 0,
                pending: 0,
            });
            let elapsed = now.duration_since(window.start);
            if elapsed >= settings.window {
                window.start = now;
                window.failures = 0;
            }
            if window.failures >= limit {
                let left = settings
                    .window
                    .saturating_sub(now.duration_since(window.start));
                return Err(Some(Refused::Blocked(left)));
            }
            if window.failures.saturating_add(window.pending) >= limit {
                wait = true;
            }
        }
        if wait {
            return Err(None);
        }
        for key in &keys {
            if let Some(window) = table.get_mut(key) {
                window.pending += 1;
            }
        }
        Ok(keys)
    }

    /// One of the service's few hash slots, waiting at most [`WAIT`]. Move it into the blocking
    /// task that hashes, so it is held for exactly as long as the hash runs, even if the request
    /// is dropped meanwhile.
    pub async fn hash_slot(&self) -> Result<HashSlot, Refused> {
        self.inner.hashes.take(WAIT).await.ok_or(Refused::Busy)
    }

    fn settle(&self, keys: &[Key], failed: bool) {
        {
            let mut table = self.inner.table.lock().unwrap_or_else(|p| p.into_inner());
            for key in keys {
                if let Some(window) = table.get_mut(key) {
                    window.pending = window.pending.saturating_sub(1);
                    if failed {
                        window.failures = window.failures.saturating_add(1);
                    }
                }
            }
        }
        self.inner.settled.notify_waiters();
    }

    /// Keys tracked now (for the bound's test).
    pub fn tracked(&self) -> usize {
        self.inner
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// The key under which `key` is tracked: itself if it is tracked or there is room (after sweeping
/// windows that are over and hold no attempt), else its kind's overflow key.
fn tracked(table: &mut HashMap<Key, Window>, key: Key, window: Duration, now: Instant) -> Key {
    if table.contains_key(&key) || table.len() < MAX_TRACKED {
        return key;
    }
    table.retain(|_, w| w.pending > 0 || now.duration_since(w.start) < window);
    if table.len() < MAX_TRACKED {
        key
    } else {
        key.overflow()
    }
}

/// A reserved attempt. Say how it ended with [`Attempt::succeeded`] or [`Attempt::failed`];
/// dropped without either, it counts as failed.
#[derive(Debug)]
pub struct Attempt {
    limiter: FailureLimiter,
    keys: Vec<Key>,
    settled: bool,
}

impl Attempt {
    /// The credentials were right (or the request failed for a reason that guesses nothing).
    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(&self.keys, false);
    }

    /// The credentials, code or token were wrong: one failure under every key.
    pub fn failed(self) {
        drop(self);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(&self.keys, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_address: u32, per_account: u32) -> FailureLimiter {
        FailureLimiter::new(LimitSettings {
            per_address,
            per_account,
            window: Duration::from_secs(60),
            concurrent_hashes: 2,
        })
    }

    #[tokio::test]
    async fn blocks_after_the_allowed_failures_and_only_that_address() {
        let limiter = limiter(3, 100);
        let a = FailureLimiter::address([127, 0, 0, 1].into());
        let b = FailureLimiter::address([127, 0, 0, 2].into());
        for _ in 0..3 {
            limiter.begin(&[a]).await.expect("allowed").failed();
        }
        assert!(matches!(
            limiter.begin(&[a]).await,
            Err(Refused::Blocked(_))
        ));
        limiter.begin(&[b]).await.expect("b is not a").succeeded();
    }

    #[tokio::test]
    async fn successes_do_not_count_and_a_dropped_attempt_does() {
        let limiter = limiter(2, 100);
        let a = FailureLimiter::address([127, 0, 0, 1].into());
        for _ in 0..10 {
            limiter.begin(&[a]).await.expect("allowed").succeeded();
        }
        drop(limiter.begin(&[a]).await.expect("allowed"));
        limiter.begin(&[a]).await.expect("allowed").failed();
        assert!(limiter.begin(&[a]).await.is_err());
    }

    #[tokio::test]
    async fn attempts_in_flight_hold_the_allowance_so_parallel_ones_wait_then_are_refused() {
        let limiter = limiter(100, 3);
        let account = limiter.account("client", "meshctl");
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                limiter
                    .begin(&[account])
                    .await
                    .expect("within the allowance"),
            );
        }
        // A fourth waits while three are in flight; when they fail, it is blocked.
        let fourth = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.begin(&[account]).await.map(Attempt::succeeded) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fourth.is_finished(), "the fourth did not wait");
        held.into_iter().for_each(Attempt::failed);
        assert!(matches!(
            fourth.await.expect("join"),
            Err(Refused::Blocked(_))
        ));
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("v6");
        let next: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(FailureLimiter::address(one), FailureLimiter::address(other));
        assert_ne!(FailureLimiter::address(one), FailureLimiter::address(next));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("mapped");
        assert_eq!(
            FailureLimiter::address(mapped),
            FailureLimiter::address([127, 0, 0, 1].into())
        );
    }

    #[tokio::test]
    async fn a_full_table_of_live_windows_sends_newcomers_to_one_shared_overflow_key() {
        let limiter = limiter(1, 1);
        for n in 0..MAX_TRACKED as u32 {
            let key = FailureLimiter::address(IpAddr::V4(n.into()));
            limiter.begin(&[key]).await.expect("first").failed();
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED);
        let newcomer = FailureLimiter::address([10, 9, 9, 9].into());
        limiter
            .begin(&[newcomer])
            .await
            .expect("overflow's first")
            .failed();
        let another = FailureLimiter::address([10, 9, 9, 10].into());
        assert!(
            limiter.begin(&[another]).await.is_err(),
            "overflow is shared"
        );
        assert_eq!(limiter.tracked(), MAX_TRACKED + 1);
    }
}
