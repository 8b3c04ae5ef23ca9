//! The metrics a service reports about its own machinery, read from the counters that
//! machinery already keeps (the verifier, the audit log, the balancer, the load shedder) when a
//! reader collects: nothing on the request path pays for them.
//!
//! Every label comes from a closed set (an outcome, a configured target); the catalogue with
//! meanings and alerts is `docs/observability.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use auth_interceptor::audit::AuditLog;
use auth_interceptor::revocation::FeedStatus;
use auth_interceptor::verify::TokenVerifier;
use mesh_tls::Reloadable;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use mesh_client::BalanceStats;

/// `mesh.certificate.remaining`: seconds until the served certificate expires.
pub fn certificate(meter: &Meter, identity: Arc<Reloadable>) {
    meter
        .f64_observable_gauge("mesh.certificate.remaining")
        .with_description("Seconds until the workload certificate served now expires")
        .with_unit("s")
        .with_callback(move |gauge| {
            let (_, not_after) = identity.validity();
            let left = match not_after.duration_since(SystemTime::now()) {
                Ok(left) => left.as_secs_f64(),
                Err(past) => -past.duration().as_secs_f64(),
            };
            gauge.observe(left, &[]);
        })
        .build();
}

/// `mesh.token.verifications` by cache result and `mesh.jwks.fetches` by outcome.
pub fn verifier(meter: &Meter, verifier: &Arc<TokenVerifier>) {
    let cache = Arc::downgrade(verifier);
    meter
        .u64_observable_counter("mesh.token.verifications")
        .with_description("Token verifications, by whether the verified-token cache answered")
        .with_callback(move |counter| {
            if let Some(verifier) = cache.upgrade() {
                let (hits, misses) = verifier.cache_hits_and_misses();
                counter.observe(hits, &[KeyValue::new("cache", "hit")]);
                counter.observe(misses, &[KeyValue::new("cache", "miss")]);
            }
        })
        .build();
    let fetches = Arc::downgrade(verifier);
    meter
        .u64_observable_counter("mesh.jwks.fetches")
        .with_description("Fetches of the issuer's signing keys, by outcome")
        .with_callback(move |counter| {
            if let Some(verifier) = fetches.upgrade() {
                let failed = verifier.jwks_fetch_failures();
                let ok = verifier.jwks_fetches().saturating_sub(failed);
                counter.observe(ok, &[KeyValue::new("outcome", "ok")]);
                counter.observe(failed, &[KeyValue::new("outcome", "error")]);
            }
        })
        .build();
}

/// `mesh.audit.records` by outcome (`appended`, `failed`).
pub fn audit(meter: &Meter, log: &Arc<AuditLog>) {
    let log = Arc::downgrade(log);
    meter
        .u64_observable_counter("mesh.audit.records")
        .with_description("Audit records appended, and appends that failed (the call was refused)")
        .with_callback(move |counter| {
            if let Some(log) = log.upgrade() {
                let (appended, failed) = log.appended_and_failed();
                counter.observe(appended, &[KeyValue::new("outcome", "appended")]);
                counter.observe(failed, &[KeyValue::new("outcome", "failed")]);
            }
        })
        .build();
}

/// `mesh.revocation.stream.up`: 1 while the revocation stream from the issuer is connected.
pub fn revocation_feed(meter: &Meter, feed: &Arc<FeedStatus>) {
    let feed = Arc::downgrade(feed);
    meter
        .u64_observable_gauge("mesh.revocation.stream.up")
        .with_description("1 while the revocation stream from the issuer is connected, else 0")
        .with_callback(move |gauge| {
            if let Some(feed) = feed.upgrade() {
                gauge.observe(u64::from(feed.connected()), &[]);
            }
        })
        .build();
}

/// `mesh.client.*`: what the balanced client to `target` did (retries, budget refusals,
/// ejections, fast failures), labelled with the target as configured.
pub fn balanced(meter: &Meter, target: &str, stats: Arc<BalanceStats>) {
    type Read = fn(&BalanceStats) -> &AtomicU64;
    let counters: [(&'static str, &'static str, Read); 4] = [
        (
            "mesh.client.retries",
            "Retries sent (idempotent calls, after a connection failure or UNAVAILABLE)",
            |s| &s.retries,
        ),
        (
            "mesh.client.retry_budget_exhausted",
            "Retries the retry budget refused",
            |s| &s.budget_exhausted,
        ),
        (
            "mesh.client.ejections",
            "Replicas ejected (connection failure, or overloaded 5 times in a row)",
            |s| &s.ejections,
        ),
        (
            "mesh.client.fast_failures",
            "Calls failed at once because every replica was ejected",
            |s| &s.fast_failures,
        ),
    ];
    for (name, description, read) in counters {
        let stats = Arc::downgrade(&stats);
        let target = KeyValue::new("server.address", target.to_owned());
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |counter| {
                if let Some(stats) = stats.upgrade() {
                    counter.observe(
                        read(&stats).load(Ordering::Relaxed),
                        std::slice::from_ref(&target),
                    );
                }
            })
            .build();
    }
}

/// `mesh.server.shed`: calls refused because the server was at `--max-in-flight`.
pub fn shed(meter: &Meter, shed: Arc<AtomicU64>) {
    meter
        .u64_observable_counter("mesh.server.shed")
        .with_description("Calls answered UNAVAILABLE at once because the server was full")
        .with_callback(move |counter| counter.observe(shed.load(Ordering::Relaxed), &[]))
        .build();
}
