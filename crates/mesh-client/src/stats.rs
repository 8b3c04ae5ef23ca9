//! What a balanced client has done, for tests and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a balanced client has done, for tests and metrics.
#[derive(Debug, Default)]
pub struct BalanceStats {
    /// Calls made through it.
    pub calls: AtomicU64,
    /// Attempts sent to a replica (first tries and retries).
    pub attempts: AtomicU64,
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries the budget refused.
    pub budget_exhausted: AtomicU64,
    /// Replicas ejected (each failure that ejected one).
    pub ejections: AtomicU64,
    /// Calls failed at once because every replica was ejected.
    pub fast_failures: AtomicU64,
}

impl BalanceStats {
    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
