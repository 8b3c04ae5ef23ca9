//! The issuer's rates, on a dev mesh in this process: client-credentials grants over HTTPS
//! keep-alive, driven by `h2load` (nghttp2's load generator: a client we did not write), then
//! token exchanges and certificate signings over mTLS gRPC, driven by our own closed loop (h2load
//! cannot present a client certificate).

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mesh_dev::devmesh::{DevMesh, STOCK_ADMIN_DEMO_SECRET};
use mesh_proto::auth::v1::ExchangeTokenRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::identity::v1::CertifyRequest;
use mesh_proto::identity::v1::identity_client::IdentityClient;

/// One rate the issuer sustained.
#[derive(Debug, Clone)]
pub struct Rate {
    /// What was asked for, and how.
    pub name: String,
    /// Answers per second (all of them successful: a failure fails the run).
    pub per_second: f64,
    /// Median latency, ms.
    pub p50: f64,
}

/// Measures the three rates for `duration` each, after `warmup`.
pub async fn run(duration: Duration, warmup: Duration) -> anyhow::Result<Vec<Rate>> {
    let dir = tempfile::tempdir()?;
    let mesh = DevMesh::start(dir.path()).await?;
    let mut rates = vec![grants(&mesh, duration, warmup).await?];

    let http = mesh.https_client()?;
    let login = mesh_dev::oauth::login_with_password(
        &http,
        &mesh.issuer,
        "alice",
        "alice-demo-password",
        "orders",
    )
    .await?;
    let auth = AuthServiceClient::new(
        mesh.connector("orders", "auth")?
            .channel(&mesh.auth_addr.to_string())?,
    );
    let subject = login.access_token;
    rates.push(
        closed_loop(
            "ExchangeToken (orders for alice → inventory), gRPC over mTLS, 32 in flight",
            warmup,
            duration,
            move || {
                let mut auth = auth.clone();
                let request = ExchangeTokenRequest {
                    subject_token: subject.clone(),
                    audience: "inventory".into(),
                    scopes: vec!["inventory:reserve".into()],
                };
                async move { auth.exchange_token(request).await.map(|_| ()) }
            },
        )
        .await?,
    );

    // A renewal as the CA sees it: the workload's current certificate on the connection, a
    // certificate request for a new key (made once here: the client's key generation is not the
    // CA's work).
    let (_key, csr) = mesh_tls::certs::new_key_and_request(None)?;
    let identity = IdentityClient::new(
        mesh.connector("inventory", "auth")?
            .channel(&mesh.auth_addr.to_string())?,
    );
    rates.push(
        closed_loop(
            "Certify (inventory renews), gRPC over mTLS, 32 in flight",
            warmup,
            duration,
            move || {
                let mut identity = identity.clone();
                let request = CertifyRequest {
                    certificate_request: csr.clone(),
                    ..Default::default()
                };
                async move { identity.certify(request).await.map(|_| ()) }
            },
        )
        .await?,
    );
    mesh.stop().await;
    Ok(rates)
}

/// `stock-admin`'s client-credentials grant (a generated secret) posted by h2load: 4
/// connections, 8 requests in flight on each, keep-alive.
async fn grants(mesh: &DevMesh, duration: Duration, warmup: Duration) -> anyhow::Result<Rate> {
    let body = tempfile::NamedTempFile::new()?;
    std::fs::write(
        body.path(),
        "grant_type=client_credentials&audience=inventory&scope=inventory%3Aread",
    )?;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("stock-admin:{STOCK_ADMIN_DEMO_SECRET}"));
    let mut command = std::process::Command::new("h2load");
    command
        .args(["-c", "4", "-m", "8"])
        .arg(format!("--warm-up-time={}ms", warmup.as_millis().max(100)))
        .arg(format!("--duration={}ms", duration.as_millis().max(500)))
        .arg("--data")
        .arg(body.path())
        .args([
            "-H",
            "content-type: application/x-www-form-urlencoded",
            "-H",
        ])
        .arg(format!("authorization: Basic {basic}"))
        .arg(format!("{}/oauth2/token", mesh.issuer))
        .stdin(Stdio::null());
    // h2load runs in its own process; the mesh it drives keeps this process's workers.
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
    parse_h2load(&text).map(|(per_second, p50)| Rate {
        name:
            "client_credentials grant over HTTPS keep-alive (h2load, 4 connections × 8 in flight)"
                .into(),
        per_second,
        p50,
    })
}

/// Requests per second and the mean request time (ms) from h2load's summary, refusing a run
/// where any request got something other than 2xx.
fn parse_h2load(text: &str) -> anyhow::Result<(f64, f64)> {
    let field = |line_start: &str, index: usize| -> Option<&str> {
        text.lines()
            .find(|l| l.trim_start().starts_with(line_start))?
            .split_whitespace()
            .nth(index)
    };
    let per_second: f64 = field("finished in", 3)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no rate in h2load's output: {text}"))?;
    let total: u64 = field("requests:", 1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ok: u64 = field("status codes:", 2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    anyhow::ensure!(
        total > 0 && ok == total,
        "h2load: {ok} of {total} grants answered 2xx: {text}"
    );
    // "time for request:  min  max  mean  sd  +/- sd"; h2load prints no median.
    let mean = field("time for request:", 5)
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
    Ok((per_second, mean))
}

/// `call` made by 32 tasks back to back for `duration` after `warmup`; every call must succeed.
async fn closed_loop<F, Fut>(
    name: &str,
    warmup: Duration,
    duration: Duration,
    call: F,
) -> anyhow::Result<Rate>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                call().await?;
                if began >= measure_from {
                    latencies.push(began.elapsed());
                }
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?.map_err(|s| anyhow::anyhow!("{name}: {s}"))?);
    }
    anyhow::ensure!(!latencies.is_empty(), "{name}: no call finished");
    latencies.sort_unstable();
    Ok(Rate {
        name: name.to_owned(),
        per_second: latencies.len() as f64 / duration.as_secs_f64(),
        p50: latencies[latencies.len() / 2].as_secs_f64() * 1e3,
    })
}
