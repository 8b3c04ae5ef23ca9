//! One replica behind a balanced target, gated by its own record: a replica whose connection
//! fails, or that answers "overloaded" (the server's load shedding) to 5 calls in a row, is
//! *ejected* — its service stops being ready for 250 ms, twice as long at each ejection in a row
//! (at most 4 s) — and the first call after that probes it; a success clears the record. The
//! balancer never sees an ejected replica as ready, so it never picks one. An UNAVAILABLE the
//! handler returned (its own dependency is down) does not count: the replica still answers its
//! reads, and ejecting it would lose them. (Linkerd's consecutive-failures accrual, in-process.)

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::stats::BalanceStats;

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

/// What the balancer knows of one replica's recent answers.
#[derive(Debug, Default)]
pub(crate) struct Record {
    /// Ejections in a row.
    failures: AtomicU32,
    /// Overloaded answers in a row.
    overloaded: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Record {
    /// Until when the replica is passed over, if it is now.
    fn ejected_until(&self) -> Option<Instant> {
        let until = *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner());
        until.filter(|until| Instant::now() < *until)
    }

    /// Whether the replica may be picked now.
    pub(crate) fn available(&self) -> bool {
        self.ejected_until().is_none()
    }

    /// Ejected for twice as long as the last time in a row, up to [`EJECT_MAX`].
    fn eject(&self, addr: SocketAddr) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).min(8);
        let period = (EJECT_BASE * 2u32.pow(failures)).min(EJECT_MAX);
        *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + period);
        tracing::debug!(%addr, ?period, "replica ejected");
    }

    /// An overloaded answer: whether it is the one that ejects the replica.
    fn overloaded(&self) -> bool {
        let in_a_row = self.overloaded.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row >= EJECT_AFTER_OVERLOADED {
            self.overloaded.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn succeeded(&self) {
        self.overloaded.store(0, Ordering::Relaxed);
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            *self.ejected_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}

/// Which replica answered a call: in the response's extensions, so that a retry can go
/// elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served(pub SocketAddr);

/// A replica's connection failed under a call.
#[derive(Debug)]
pub struct ReplicaError {
    /// The replica.
    pub addr: SocketAddr,
    source: tower::BoxError,
}

impl std::fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "replica {}: {}", self.addr, self.source)
    }
}

impl std::error::Error for ReplicaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A replica's service: ready only while the replica is not ejected; every answer updates its
/// record.
pub(crate) struct Gate<S> {
    addr: SocketAddr,
    inner: S,
    record: Arc<Record>,
    /// Wakes the balancer when the ejection ends, so the replica is probed again.
    wake: Option<Pin<Box<Sleep>>>,
    stats: Arc<BalanceStats>,
    /// Asks discovery to look again now (the replica may have moved).
    resolve_now: Arc<Notify>,
}

impl<S> Gate<S> {
    pub(crate) fn new(
        addr: SocketAddr,
        inner: S,
        record: Arc<Record>,
        stats: Arc<BalanceStats>,
        resolve_now: Arc<Notify>,
    ) -> Self {
        Self {
            addr,
            inner,
            record,
            wake: None,
            stats,
            resolve_now,
        }
    }
}

impl<S, B> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = ReplicaError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        while let Some(until) = self.record.ejected_until() {
            let wake = self
                .wake
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            wake.as_mut().reset(until);
            ready!(wake.as_mut().poll(cx));
        }
        self.wake = None;
        self.inner.poll_ready(cx).map_err(|source| ReplicaError {
            addr: self.addr,
            source: source.into(),
        })
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let answer = self.inner.call(request);
        let (addr, record) = (self.addr, self.record.clone());
        let (stats, resolve_now) = (self.stats.clone(), self.resolve_now.clone());
        Box::pin(async move {
            match answer.await {
                Err(source) => {
                    record.eject(addr);
                    stats.ejections.fetch_add(1, Ordering::Relaxed);
                    resolve_now.notify_one();
                    Err(ReplicaError {
                        addr,
                        source: source.into(),
                    })
                }
                Ok(mut response) => {
                    if response.headers().contains_key(OVERLOADED_HEADER) {
                        if record.overloaded() {
                            record.eject(addr);
                            stats.ejections.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        record.succeeded();
                    }
                    response.extensions_mut().insert(Served(addr));
                    Ok(response)
                }
            }
        })
    }
}
