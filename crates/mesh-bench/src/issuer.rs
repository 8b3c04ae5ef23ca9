//! The issuer's rates, on a dev mesh in this process: client-credentials grants over HTTPS
//! keep-alive, driven by `h2load` (nghttp2's load generator: a client we did not write), then
//! token exchanges and certificate signings over mTLS gRPC, driven by our own closed loop (h2load
//! cannot present a client certificate).

use std::future::Future;
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

    let auth = AuthServiceClient::new(
        mesh.connector("orders", "auth")?
            .channel(&mesh.auth_addr.to_string())?,
    );
    let subject = crate::place_order::alice_logs_in(&mesh).await?;
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
    let measured = crate::h2load::run(
        &format!("{}/oauth2/token", mesh.issuer),
        4,
        8,
        warmup,
        duration,
        vec![
            "--data".into(),
            body.path().display().to_string(),
            "--header=content-type: application/x-www-form-urlencoded".into(),
            format!("--header=authorization: Basic {basic}"),
        ],
    )
    .await?;
    Ok(Rate {
        name:
            "client_credentials grant over HTTPS keep-alive (h2load, 4 connections × 8 in flight)"
                .into(),
        per_second: measured.per_second,
        p50: measured.mean_ms,
    })
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
