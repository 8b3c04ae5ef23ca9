//! The markdown report `scripts/bench.sh` writes and docs/benchmarks.md quotes.

use std::fmt::Write as _;

use crate::issuer::Rate;
use crate::memory::Idle;
use crate::micro::Row;
use crate::place_order::{Hop, Point};

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// How the run was driven, for the header.
    pub setup: String,
    /// The layer-by-layer rows, baseline first.
    pub rows: Vec<Row>,
    /// Fixed rate of the open-loop runs.
    pub rate: f64,
    /// Spans the receiver got during configurations 5 to 7.
    pub spans: u64,
    /// The PlaceOrder scenario.
    pub hops: Vec<Hop>,
    /// Its fixed rate.
    pub place_rate: f64,
    /// PlaceOrder at rising rates: (backend, points).
    pub sweeps: Vec<(String, Vec<Point>)>,
    /// The issuer's sustained rates.
    pub issuer: Vec<Rate>,
    /// Idle RSS per service.
    pub idle: Vec<Idle>,
    /// Per server configuration: (configuration, connections, RSS before, RSS after, bytes per
    /// connection).
    pub per_connection: Vec<(crate::server::Config, usize, u64, u64, f64)>,
}

impl Report {
    /// The mesh's full stack (configurations 6 and 7) against the sidecar pair (8), and 6 against
    /// the hand-rolled peer (9), when the run measured them.
    fn against_the_peers(&self) -> String {
        use crate::server::Config;
        let row = |config| self.rows.iter().find(|row| row.config == config);
        let mut out = String::new();
        let mut versus = |mesh: &Row, peer: &Row, peer_name: &str| {
            let _ = writeln!(
                out,
                "{} against {peer_name}: {:.2}× its throughput, {:.1} vs {:.1} µs of CPU per call.",
                mesh.config.label(),
                mesh.closed.throughput() / peer.closed.throughput().max(1e-9),
                mesh.cpu_us_per_call,
                peer.cpu_us_per_call,
            );
        };
        if let Some(sidecar) = row(Config::Sidecar) {
            for mesh in [Config::Full, Config::Client].into_iter().filter_map(row) {
                versus(mesh, sidecar, "the sidecar pair");
            }
        }
        if let (Some(mesh), Some(peer)) = (row(Config::Full), row(Config::HandRolled)) {
            versus(mesh, peer, "the hand-rolled peer");
        }
        if out.is_empty() {
            return out;
        }
        out.push('\n');
        out
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl Report {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Setup: {}\n", self.setup);
        if let Some(base) = self.rows.first() {
            let _ = writeln!(
                out,
                "| configuration | calls/s (closed loop) | × plain | p50 / p99 ms (closed) | p50 / p99 ms at {:.0}/s | added p50 / p99 ms | server CPU µs/call | server RSS |",
                self.rate
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
            for row in &self.rows {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.2}× | {:.3} / {:.3} | {:.3} / {:.3} | {:+.3} / {:+.3} | {:.1} | {} |",
                    row.config.label(),
                    row.closed.throughput(),
                    row.closed.throughput() / base.closed.throughput().max(1e-9),
                    row.closed.quantile_ms(0.5),
                    row.closed.quantile_ms(0.99),
                    row.open.quantile_ms(0.5),
                    row.open.quantile_ms(0.99),
                    row.open.quantile_ms(0.5) - base.open.quantile_ms(0.5),
                    row.open.quantile_ms(0.99) - base.open.quantile_ms(0.99),
                    row.cpu_us_per_call,
                    mb(row.rss),
                );
            }
            let errors: u64 = self
                .rows
                .iter()
                .map(|r| r.closed.errors + r.open.errors)
                .sum();
            let _ = writeln!(
                out,
                "\nFailed calls: {errors}. Spans received by the OTLP receiver (configurations 5 to 7): {}. \
                 Configuration 8's CPU and RSS are the sum of its three processes (plain tonic and both proxies).\n",
                self.spans
            );
            let _ = write!(out, "{}", self.against_the_peers());
            let checked: Vec<_> = self
                .rows
                .iter()
                .filter_map(|row| Some((row, row.h2load?)))
                .collect();
            if !checked.is_empty() {
                let _ = writeln!(
                    out,
                    "The h2c configurations driven by h2load (nghttp2) with the same connections and streams:\n\n\
                     | configuration | mesh-bench calls/s | h2load calls/s | h2load mean ms |\n|---|---:|---:|---:|"
                );
                for (row, h2load) in checked {
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} | {:.0} | {:.3} |",
                        row.config.label(),
                        row.closed.throughput(),
                        h2load.per_second,
                        h2load.mean_ms
                    );
                }
                out.push('\n');
            }
        }
        if !self.hops.is_empty() {
            let _ = writeln!(
                out,
                "PlaceOrder at {:.0}/s (meshctl → orders → auth ExchangeToken → inventory Reserve → SQLite):\n",
                self.place_rate
            );
            let _ = writeln!(
                out,
                "| hop | samples | p50 ms | p99 ms |\n|---|---:|---:|---:|"
            );
            for hop in &self.hops {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.3} | {:.3} |",
                    hop.name, hop.count, hop.p50, hop.p99
                );
            }
            out.push('\n');
        }
        for (backend, points) in &self.sweeps {
            let _ = writeln!(
                out,
                "PlaceOrder at rising rates on {backend} (a fresh mesh per rate; end to end, from each call's due time):\n"
            );
            let _ = writeln!(
                out,
                "| offered/s | answered/s | failed | p50 ms | p99 ms | |\n|---:|---:|---:|---:|---:|---|"
            );
            for point in points {
                // A bar per point, log-scaled on p99 so the knee shows in plain text.
                let bar = "█".repeat(((point.p99.max(0.1) * 10.0).log2().max(1.0) * 2.0) as usize);
                let _ = writeln!(
                    out,
                    "| {:.0} | {:.0} | {} | {:.2} | {:.2} | {bar} |",
                    point.rate, point.answered, point.failures, point.p50, point.p99
                );
            }
            let sustained = points
                .iter()
                .filter(|p| p.failures == 0 && p.p99 < 50.0)
                .map(|p| p.rate)
                .fold(0.0f64, f64::max);
            let _ = writeln!(
                out,
                "\nHighest offered rate with no failure and p99 < 50 ms: {sustained:.0}/s.\n"
            );
        }
        if !self.issuer.is_empty() {
            let _ = writeln!(
                out,
                "The issuer (auth service in a dev mesh, same process as the loops that drive it):\n"
            );
            let _ = writeln!(
                out,
                "| request | per second | latency ms |\n|---|---:|---:|"
            );
            for rate in &self.issuer {
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.2} |",
                    rate.name, rate.per_second, rate.p50
                );
            }
            out.push_str("\n(Latency: the median of our loops; h2load prints the mean.)\n\n");
        }
        if !self.idle.is_empty() || !self.per_connection.is_empty() {
            let _ = writeln!(out, "| memory | RSS |\n|---|---:|");
            for idle in &self.idle {
                let _ = writeln!(out, "| {} idle | {} |", idle.service, mb(idle.rss));
            }
            for &(config, count, before, after, per) in &self.per_connection {
                let _ = writeln!(
                    out,
                    "| {}, {count} idle connections | {} → {} = {:.1} KB per connection |",
                    config.label(),
                    mb(before),
                    mb(after),
                    per / 1e3
                );
            }
        }
        out
    }
}
