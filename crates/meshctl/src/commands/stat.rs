//! `meshctl stat`: the RED view of the mesh in a terminal, per service and method: requests a
//! second, success rate, p50/p99 latency and denials by reason, read from the services' own
//! `/metrics` (their admin listeners).
//!
//! Two scrapes `--interval` apart give rates over that window; `--totals` reads one scrape and
//! reports everything since each service started.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_service::admin::{scrape, scrape_client};
use mesh_telemetry::prom::{Sample, Samples};

use crate::cli::StatArgs;
use crate::{CliError, failed};

const CALLS: &str = "rpc_server_call_duration_seconds_count";
const BUCKETS: &str = "rpc_server_call_duration_seconds_bucket";
const DECISIONS: &str = "mesh_authz_decisions_total";

/// One row's key: service (`service.name`), gRPC service, method.
type Key = (String, String, String);

/// What one row adds up from a scrape (or from the difference of two).
#[derive(Debug, Default, Clone)]
struct Row {
    calls: f64,
    ok: f64,
    /// Cumulative bucket counts by upper bound.
    buckets: BTreeMap<OrderedF64, f64>,
    denied: BTreeMap<String, f64>,
}

/// An `f64` bucket bound, ordered (bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedF64(f64);

impl Eq for OrderedF64 {}

impl PartialOrd for OrderedF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Runs `meshctl stat`.
pub async fn run(args: StatArgs) -> Result<(), CliError> {
    if args.metrics.is_empty() {
        return Err(CliError::Usage(
            "--metrics: name at least one admin listener (host:port)".into(),
        ));
    }
    loop {
        let table = snapshot(&args.metrics, args.interval, args.totals).await?;
        if args.watch {
            // Clear the screen and draw the table again, as `watch` would.
            print!("\x1b[2J\x1b[H");
        }
        println!("{table}");
        if !args.watch {
            return Ok(());
        }
        if args.totals {
            tokio::time::sleep(args.interval).await;
        }
    }
}

/// The table for `targets`: rates over `interval`, or totals since start.
pub async fn snapshot(
    targets: &[String],
    interval: Duration,
    totals: bool,
) -> Result<String, CliError> {
    let client = scrape_client().map_err(failed)?;
    let first = scrape_all(&client, targets).await?;
    if totals {
        return Ok(render(&rows(&first), None));
    }
    tokio::time::sleep(interval).await;
    let second = scrape_all(&client, targets).await?;
    let (before, after) = (rows(&first), rows(&second));
    let delta = after
        .into_iter()
        .map(|(key, now)| {
            let then = before.get(&key).cloned().unwrap_or_default();
            (key, now.minus(&then))
        })
        .collect();
    Ok(render(&delta, Some(interval)))
}

/// Every target's samples, each with its `service.name`.
async fn scrape_all(
    client: &reqwest::Client,
    targets: &[String],
) -> Result<Vec<(String, Samples)>, CliError> {
    let mut all = Vec::new();
    for target in targets {
        let samples = scrape(client, target).await.map_err(failed)?;
        let service = samples
            .select("target_info", &[])
            .next()
            .map_or_else(|| target.clone(), |s| s.label("service_name").to_owned());
        all.push((service, samples));
    }
    Ok(all)
}

fn key_of(service: &str, sample: &Sample) -> Key {
    (
        service.to_owned(),
        sample.label("rpc_service").to_owned(),
        sample.label("rpc_method").to_owned(),
    )
}

/// The rows of a scrape of every target (replicas of one service add up).
fn rows(scrapes: &[(String, Samples)]) -> BTreeMap<Key, Row> {
    let mut rows: BTreeMap<Key, Row> = BTreeMap::new();
    for (service, samples) in scrapes {
        for sample in samples.select(CALLS, &[]) {
            let row = rows.entry(key_of(service, sample)).or_default();
            row.calls += sample.value;
            if sample.label("rpc_grpc_status_code") == "0" {
                row.ok += sample.value;
            }
        }
        for sample in samples.select(BUCKETS, &[]) {
            let bound = match sample.label("le") {
                "+Inf" => f64::INFINITY,
                other => other.parse().unwrap_or(f64::INFINITY),
            };
            let row = rows.entry(key_of(service, sample)).or_default();
            *row.buckets.entry(OrderedF64(bound)).or_default() += sample.value;
        }
        for sample in samples.select(DECISIONS, &[("decision", "deny")]) {
            let row = rows.entry(key_of(service, sample)).or_default();
            *row.denied
                .entry(sample.label("reason").to_owned())
                .or_default() += sample.value;
        }
        // What a rule in dry-run would refuse: shown beside the refusals, marked.
        for sample in samples.select(DECISIONS, &[("decision", "would_deny")]) {
            let row = rows.entry(key_of(service, sample)).or_default();
            *row.denied
                .entry(format!("would_deny({})", sample.label("reason")))
                .or_default() += sample.value;
        }
    }
    rows
}

impl Row {
    fn minus(&self, then: &Row) -> Row {
        let sub = |now: f64, was: Option<&f64>| (now - was.copied().unwrap_or(0.0)).max(0.0);
        Row {
            calls: (self.calls - then.calls).max(0.0),
            ok: (self.ok - then.ok).max(0.0),
            buckets: self
                .buckets
                .iter()
                .map(|(bound, n)| (*bound, sub(*n, then.buckets.get(bound))))
                .collect(),
            denied: self
                .denied
                .iter()
                .map(|(reason, n)| (reason.clone(), sub(*n, then.denied.get(reason))))
                .filter(|(_, n)| *n > 0.0)
                .collect(),
        }
    }

    /// The `q` quantile of the durations, in seconds, interpolated within its bucket.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.values().copied().fold(0.0, f64::max);
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for (bound, count) in &self.buckets {
            if *count >= rank {
                if bound.0.is_infinite() {
                    return Some(lower.0);
                }
                let width = count - lower.1;
                let into = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (bound.0 - lower.0) * into);
            }
            lower = (bound.0, *count);
        }
        Some(lower.0)
    }
}

fn millis(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s < 0.01 => format!("{:.2} ms", s * 1000.0),
        Some(s) => format!("{:.0} ms", s * 1000.0),
        None => "-".into(),
    }
}

/// The table: one line per service and method with calls, sorted.
fn render(rows: &BTreeMap<Key, Row>, window: Option<Duration>) -> String {
    use std::fmt::Write as _;
    let rate_header = if window.is_some() { "REQ/S" } else { "CALLS" };
    let mut out = format!(
        "{:<10} {:<34} {:>8} {:>8} {:>9} {:>9}  DENIED\n",
        "SERVICE", "METHOD", rate_header, "SUCCESS", "P50", "P99"
    );
    for ((service, rpc_service, method), row) in rows {
        if row.calls <= 0.0 && row.denied.is_empty() {
            continue;
        }
        let short = rpc_service.rsplit('.').next().unwrap_or(rpc_service);
        let volume = match window {
            Some(window) => format!("{:.1}", row.calls / window.as_secs_f64()),
            None => format!("{:.0}", row.calls),
        };
        let success = if row.calls > 0.0 {
            format!("{:.2}%", 100.0 * row.ok / row.calls)
        } else {
            "-".into()
        };
        let denied = if row.denied.is_empty() {
            "-".to_owned()
        } else {
            row.denied
                .iter()
                .map(|(reason, n)| format!("{reason}:{n:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            out,
            "{:<10} {:<34} {:>8} {:>8} {:>9} {:>9}  {}",
            service,
            format!("{short}/{method}"),
            volume,
            success,
            millis(row.quantile(0.5)),
            millis(row.quantile(0.99)),
            denied
        );
    }
    out
}
