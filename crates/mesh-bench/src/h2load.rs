//! nghttp2's `h2load`, a load generator we did not write: the cross-check that our own generator
//! is not what bounds the figures (h2c targets: plain tonic and the sidecar pair's front proxy;
//! h2load cannot present a client certificate), and the driver of the token endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// What one h2load run measured.
#[derive(Debug, Clone, Copy)]
pub struct H2load {
    /// Requests per second over the measured window.
    pub per_second: f64,
    /// Mean time per request, ms (h2load prints no median).
    pub mean_ms: f64,
}

/// Runs h2load with `args` before the URL, `connections` × `in_flight`, for `duration` after
/// `warmup`, and refuses a run where any request failed or got other than 2xx.
pub async fn run(
    url: &str,
    connections: usize,
    in_flight: usize,
    warmup: Duration,
    duration: Duration,
    args: Vec<String>,
) -> anyhow::Result<H2load> {
    let mut command = std::process::Command::new("h2load");
    command
        .arg(format!("--clients={connections}"))
        .arg(format!("--max-concurrent-streams={in_flight}"))
        .arg(format!("--warm-up-time={}ms", warmup.as_millis().max(100)))
        .arg(format!("--duration={}ms", duration.as_millis().max(500)))
        .args(args)
        .arg(url)
        .stdin(Stdio::null());
    // h2load runs in its own process; the server it drives keeps this process's workers.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .map_err(|e| {
            anyhow::anyhow!("h2load (Debian's nghttp2-client; scripts/bench.sh installs it): {e}")
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "h2load failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse(&text)
}

/// `grpc.health.v1.Health/Check` over h2c at `addr`: the request body is an empty message in
/// gRPC's 5-byte framing (not compressed, length 0), written to `body`.
pub async fn health_checks(
    addr: SocketAddr,
    body: &Path,
    connections: usize,
    streams: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<H2load> {
    std::fs::write(body, [0u8; 5])?;
    run(
        &format!("http://{addr}{}", crate::server::METHOD),
        connections,
        streams.div_ceil(connections.max(1)),
        warmup,
        duration,
        vec![
            "--data".into(),
            body.display().to_string(),
            "--header=content-type: application/grpc".into(),
            "--header=te: trailers".into(),
        ],
    )
    .await
}

fn parse(text: &str) -> anyhow::Result<H2load> {
    let field = |line_start: &str, index: usize| -> Option<&str> {
        text.lines()
            .find(|l| l.trim_start().starts_with(line_start))?
            .split_whitespace()
            .nth(index)
    };
    let per_second: f64 = field("finished in", 3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no rate in h2load's output: {text}"))?;
    // "requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout" and
    // "status codes: A 2xx, B 3xx, C 4xx, D 5xx". The status counts include answers to requests
    // sent in the warm-up, so they are not compared with the total: a run is good when no request
    // failed, errored or timed out and no answer was other than 2xx.
    let count = |line_start: &str, index: usize| -> Option<u64> {
        field(line_start, index).and_then(|v| v.parse().ok())
    };
    let total = count("requests:", 1).unwrap_or(0);
    let bad = [
        count("requests:", 9),
        count("requests:", 11),
        count("requests:", 13),
        count("status codes:", 4),
        count("status codes:", 6),
        count("status codes:", 8),
    ];
    anyhow::ensure!(
        total > 0 && bad.iter().all(|n| *n == Some(0)),
        "h2load: a request failed, timed out or was answered other than 2xx: {text}"
    );
    // "time for request:  min  max  mean  sd  +/- sd"
    let mean_ms = field("time for request:", 5)
        .and_then(|v| {
            let (number, unit) = v.split_at(v.find(|c: char| c.is_alphabetic())?);
            let number: f64 = number.parse().ok()?;
            Some(match unit {
                "us" => number / 1e3,
                "ms" => number,
                "s" => number * 1e3,
                _ => return None,
            })
        })
        .unwrap_or(f64::NAN);
    Ok(H2load {
        per_second,
        mean_ms,
    })
}
