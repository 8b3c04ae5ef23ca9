//! One replica behind a balanced target: its channel, its calls in flight, and whether it is
//! ejected (passed over after failures, probed again once its ejection ends).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

/// The header a server's shed answer carries, so that a caller's balancer can tell "this replica
/// is overloaded" from an UNAVAILABLE the handler returned about its own dependencies.
pub const OVERLOADED_HEADER: &str = "mesh-overloaded";

/// How long a replica whose connection failed is ejected the first time; doubled for each
/// failure in a row, up to [`EJECT_MAX`].
const EJECT_BASE: Duration = Duration::from_millis(250);

/// The longest ejection.
const EJECT_MAX: Duration = Duration::from_secs(4);

/// Overloaded answers in a row that eject a replica.
const EJECT_AFTER_OVERLOADED: u32 = 5;

/// One replica: its channel and what the balancer knows of it.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) addr: SocketAddr,
    pub(crate) channel: Channel,
    pub(crate) in_flight: AtomicUsize,
    /// Ejections in a row.
    failures: AtomicU32,
    /// Overloaded answers in a row.
    overloaded: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Replica {
    pub(crate) fn new(addr: SocketAddr, channel: Channel) -> Self {
        Self {
            addr,
            channel,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            overloaded: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        }
    }

    pub(crate) fn available(&self) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| Instant::now() >= until)
    }

    /// Ejected for twice as long as the last time in a row, up to [`EJECT_MAX`].
    pub(crate) fn eject(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).min(8);
        let period = (EJECT_BASE * 2u32.pow(failures)).min(EJECT_MAX);
        *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + period);
        tracing::debug!(addr = %self.addr, ?period, "replica ejected");
    }

    /// An overloaded answer: whether it is the one that ejects the replica.
    pub(crate) fn overloaded(&self) -> bool {
        let in_a_row = self.overloaded.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= EJECT_AFTER_OVERLOADED {
            self.overloaded.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub(crate) fn succeeded(&self) {
        self.overloaded.store(0, Ordering::Relaxed);
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// Counts a call in flight on a replica until dropped.
pub(crate) struct InFlight(pub(crate) Arc<Replica>);

impl InFlight {
    pub(crate) fn new(replica: Arc<Replica>) -> Self {
        replica.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(replica)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
