//! The business scenario: the real `PlaceOrder` path (meshctl → orders → auth `ExchangeToken` →
//! inventory `Reserve` → SQLite) at a fixed rate, with p50/p99 of every hop read from the traces
//! and end to end measured by the client. The mesh runs in this process (`DevMesh`), exporting
//! its spans to an in-process OTLP receiver.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mesh_dev::devmesh::DevMesh;
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{OrderLine, PlaceOrderRequest};

/// One hop's latency quantiles in milliseconds.
#[derive(Debug, Clone)]
pub struct Hop {
    /// What was measured.
    pub name: String,
    /// Samples.
    pub count: u64,
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
}

fn hop(name: &str, histogram: &Histogram<u64>) -> Hop {
    Hop {
        name: name.to_owned(),
        count: histogram.len(),
        p50: histogram.value_at_quantile(0.5) as f64 / 1e3,
        p99: histogram.value_at_quantile(0.99) as f64 / 1e3,
    }
}

/// Places orders at `rate` per second for `duration` (after a discarded warm-up) and returns the
/// end-to-end and per-hop latencies.
pub async fn run(rate: f64, duration: Duration, warmup: Duration) -> anyhow::Result<Vec<Hop>> {
    let dir = tempfile::tempdir()?;
    let mesh = DevMesh::start(dir.path()).await?;
    let (end_to_end, failures, measured_after) = drive(&mesh, rate, duration, warmup).await?;
    anyhow::ensure!(failures == 0, "{failures} PlaceOrder calls failed");

    mesh.flush_traces().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let measured_after = measured_after
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let mut by_span: HashMap<(String, String, i32), Histogram<u64>> = HashMap::new();
    for span in mesh.sink.spans() {
        if span.start_ns < measured_after {
            continue;
        }
        let key = (span.service.clone(), span.name.clone(), span.kind);
        let histogram = match by_span.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Histogram::new(3)?),
        };
        histogram.record(((span.end_ns - span.start_ns) / 1_000).max(1))?;
    }
    let mut hops = vec![hop("end to end (client, from due time)", &end_to_end)];
    let wanted = [
        (
            "orders",
            "mesh.orders.v1.OrdersService/PlaceOrder",
            2,
            "orders PlaceOrder (server span)",
        ),
        (
            "orders",
            "mesh.auth.v1.AuthService/ExchangeToken",
            3,
            "orders → auth ExchangeToken (client span)",
        ),
        (
            "auth",
            "mesh.auth.v1.AuthService/ExchangeToken",
            2,
            "auth ExchangeToken (server span)",
        ),
        (
            "orders",
            "mesh.inventory.v1.InventoryService/Reserve",
            3,
            "orders → inventory Reserve (client span)",
        ),
        (
            "inventory",
            "mesh.inventory.v1.InventoryService/Reserve",
            2,
            "inventory Reserve (server span)",
        ),
    ];
    for (service, name, kind, label) in wanted {
        if let Some(histogram) = by_span.get(&(service.to_owned(), name.to_owned(), kind)) {
            hops.push(hop(label, histogram));
        }
    }
    mesh.stop().await;
    Ok(hops)
}

/// Alice places orders at `rate` per second on `mesh`, each call due at its time whatever the
/// earlier ones do (open loop); the end-to-end latency from the due time of every call after
/// the warm-up, how many failed, and when the measured part began (wall clock, for the spans).
async fn drive(
    mesh: &DevMesh,
    rate: f64,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<(Histogram<u64>, u64, std::time::SystemTime)> {
    let token = auth_interceptor::BearerToken::new(alice_logs_in(mesh).await?)?;
    let channel = mesh.traced_channel("meshctl", "orders", &mesh.orders_addr.to_string())?;
    let client = OrdersServiceClient::new(channel);

    let start = Instant::now();
    let measure_from = start + warmup;
    let measured_after = std::time::SystemTime::now() + warmup;
    // Due times from the bench's pacer thread: tokio's timer would release each call up to a
    // millisecond late, and latency counts from the due time.
    let paced = crate::load::pacer(start, measure_from + duration, rate);
    let mut paced = paced.lock().await;
    let mut calls = Vec::new();
    let mut i = 0u64;
    while let Some(due) = paced.recv().await {
        i += 1;
        let mut client = client.clone();
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(PlaceOrderRequest {
                idempotency_key: format!("bench-order-{i:08}"),
                lines: vec![OrderLine {
                    // Stock runs out part-way; a refused reservation takes the same path.
                    sku: "SKU-003".into(),
                    quantity: 1,
                }],
            });
            token.attach(&mut request);
            let answered = client.place_order(request).await;
            (due, due.elapsed(), answered.is_ok())
        }));
    }
    let mut end_to_end = Histogram::<u64>::new(3)?;
    let mut failures = 0u64;
    for call in calls {
        let (due, took, ok) = call.await?;
        if due < measure_from {
            continue;
        }
        if ok {
            end_to_end.record(took.as_micros().max(1) as u64)?;
        } else {
            failures += 1;
        }
    }
    Ok((end_to_end, failures, measured_after))
}

/// One point of the PlaceOrder sweep.
#[derive(Debug, Clone)]
pub struct Point {
    /// Offered orders per second.
    pub rate: f64,
    /// Orders answered OK per second.
    pub answered: f64,
    /// Calls that failed.
    pub failures: u64,
    /// End to end, ms.
    pub p50: f64,
    /// End to end, ms.
    pub p99: f64,
}

/// The databases a sweep can run on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file per service, in a temporary directory (on disk, so fsync costs what it costs).
    Sqlite,
    /// A PostgreSQL server from Debian's binaries, started for each point, over loopback TCP.
    Postgres,
}

/// PlaceOrder at each of `rates` on a fresh mesh (fresh databases, fresh stock) per rate.
pub async fn sweep(
    rates: &[f64],
    backend: Backend,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    for &rate in rates {
        let dir = tempfile::tempdir()?;
        let (server, options) = match backend {
            Backend::Sqlite => (None, mesh_dev::devmesh::DevOptions::default()),
            Backend::Postgres => {
                let server =
                    mesh_test_support::postgres::PgServer::start(&["auth", "orders", "inventory"])
                        .await?;
                let options = mesh_dev::devmesh::DevOptions {
                    database: mesh_dev::devmesh::DevDatabase::Postgres(server.server_url()),
                    ..Default::default()
                };
                (Some(server), options)
            }
        };
        let mesh = DevMesh::start_with(dir.path(), options).await?;
        let (latency, failures, _) = drive(&mesh, rate, duration, warmup).await?;
        mesh.stop().await;
        drop(server);
        points.push(Point {
            rate,
            answered: latency.len() as f64 / duration.as_secs_f64(),
            failures,
            p50: latency.value_at_quantile(0.5) as f64 / 1e3,
            p99: latency.value_at_quantile(0.99) as f64 / 1e3,
        });
    }
    Ok(points)
}

/// Alice's access token for orders, from a password login at `mesh`'s issuer.
pub(crate) async fn alice_logs_in(mesh: &DevMesh) -> anyhow::Result<String> {
    let login = mesh_dev::oauth::login_with_password(
        &mesh.https_client()?,
        &mesh.issuer,
        "alice",
        "alice-demo-password",
        "orders",
    )
    .await?;
    Ok(login.access_token)
}
