//! Limits failed client authentications per source address, so secrets cannot be guessed at
//! speed and a flood of bad attempts cannot keep the CPU busy with Argon2.
//!
//! Why not `governor` (keyed GCRA): its limiter only has a check that *spends* a cell. Ours must
//! ask "is this address blocked?" before any hash is computed, yet count only the attempts that
//! *failed*: spending a cell on every attempt would throttle a client that authenticates
//! correctly and often (a busy service asking for tokens), and spending after the hash would let
//! a blocked address still buy Argon2 work. A peek-then-count limiter is what the guarantee
//! needs, and it is forty lines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts failures per address in fixed windows; past `max_failures` the address is refused
/// (HTTP 429) until its window ends. Successful attempts do not reset the count.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// Addresses tracked at most; beyond it, expired windows are swept first.
const MAX_TRACKED: usize = 65_536;

impl FailureLimiter {
    /// A limiter allowing `max_failures` per `window` and address.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(retry_after)` when `addr` has used up its failures for the current window.
    pub fn blocked(&self, addr: IpAddr) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = windows.get(&addr)?;
        let elapsed = start.elapsed();
        (elapsed < self.window && *count >= self.max_failures).then(|| self.window - elapsed)
    }

    /// Records one failed authentication from `addr`.
    pub fn record_failure(&self, addr: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TRACKED {
            let window = self.window;
            windows.retain(|_, (start, _)| start.elapsed() < window);
        }
        let now = Instant::now();
        let entry = windows.entry(addr).or_insert((now, 0));
        if entry.0.elapsed() >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_allowed_failures_and_only_that_address() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(limiter.blocked(a).is_none());
            limiter.record_failure(a);
        }
        assert!(limiter.blocked(a).is_some());
        assert!(limiter.blocked(b).is_none());
    }
}
