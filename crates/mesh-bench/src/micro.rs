//! The layer-by-layer scenario: every server configuration in its own process, measured in one
//! run with the same load, reported as ratios to plain h2c tonic.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_client::Transport;
use mesh_client::deadline::ClientDeadlineLayer;
use mesh_client::{Balanced, Dns};
use mesh_dev::sink::TraceSink;
use mesh_telemetry::trace::{Telemetry, TelemetryFlags};
use mesh_tls::client::MeshConnector;
use mesh_tls::{Reloadable, SpiffeId};
use tonic::transport::{Channel, Endpoint};
use tower::Layer as _;

use crate::load::{Connection, Measured, Shape, drive};
use crate::material::{Material, SERVER};
use crate::procstat;
use crate::server::Config;
use crate::sidecar::Sidecars;

/// One configuration's figures.
#[derive(Debug)]
pub struct Row {
    /// Which configuration.
    pub config: Config,
    /// Closed loop: maximum throughput.
    pub closed: Measured,
    /// Open loop at the fixed rate.
    pub open: Measured,
    /// Server CPU microseconds per call in the closed-loop run.
    pub cpu_us_per_call: f64,
    /// Server RSS after the runs, bytes.
    pub rss: u64,
    /// The closed loop driven by h2load instead (h2c configurations: plain and the sidecar pair).
    pub h2load: Option<crate::h2load::H2load>,
}

/// A running `mesh-bench serve` child; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `mesh-bench serve --config CONFIG` and waits for its `READY <addr>` line.
    pub fn start(
        config: Config,
        material: &Material,
        otlp: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--config", &config.arg(), "--dir"])
            .arg(material.dir())
            .stdout(Stdio::piped())
            .stdin(Stdio::piped());
        if let Some(otlp) = otlp {
            command.args(["--otlp", &format!("http://{otlp}")]);
        }
        let mut child = command.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .strip_prefix("READY ")
            .ok_or_else(|| anyhow::anyhow!("server said {line:?}"))?
            .trim()
            .parse()?;
        Ok(Self { child, addr })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `connections` separate connections to the server of `config`.
pub async fn connect(
    config: Config,
    material: &Material,
    addr: SocketAddr,
    connections: usize,
) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = if config.tls() {
            let files = material.client_files();
            let roots = files.trust_bundle()?;
            MeshConnector::new(
                Reloadable::load(files)?,
                roots,
                SpiffeId::workload("mesh.local", SERVER)?,
            )?
            .channel(&addr.to_string())?
        } else {
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await?
        };
        channels.push(channel);
    }
    Ok(channels)
}

/// Measures every configuration with the same `closed` and `open` shapes.
pub async fn run(
    material: &Material,
    configs: &[Config],
    closed: Shape,
    open: Shape,
) -> anyhow::Result<(Vec<Row>, u64)> {
    // The collector for configurations 5 to 7: counts spans and drops them.
    let sink = TraceSink::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sink.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    let spans = Arc::new(AtomicU64::new(0));
    let counter = {
        let (sink, spans) = (sink.clone(), spans.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                spans.fetch_add(sink.drain() as u64, Ordering::Relaxed);
            }
        })
    };

    let token = material.token("bench-user")?;
    let mut rows = Vec::new();
    for &config in configs {
        let server = ServerProcess::start(config, material, Some(otlp))?;
        let sidecars = match config {
            Config::Sidecar => Some(Sidecars::start(material, server.addr).await?),
            _ => None,
        };
        // Every process that serves the call: the server, and the proxies in front of it.
        let mut pids = vec![server.pid()];
        pids.extend(sidecars.iter().flat_map(Sidecars::pids));
        let target = sidecars.as_ref().map_or(server.addr, |s| s.front);
        let row = if config == Config::Client {
            // The client side's spans go to the same collector, as a service's would.
            let telemetry = Telemetry::new(
                &TelemetryFlags {
                    otlp_endpoint: Some(format!("http://{otlp}")),
                    service_name: Some("bench-client".into()),
                    metrics_exporter: mesh_telemetry::trace::MetricsExporter::None,
                },
                "bench-client",
            )?;
            let closed_stacks =
                client_stacks(material, server.addr, closed.connections, &telemetry)?;
            let open_stacks = client_stacks(material, server.addr, open.connections, &telemetry)?;
            let row = measure(
                config,
                &pids,
                &closed_stacks,
                &open_stacks,
                &token,
                closed,
                open,
            )
            .await?;
            telemetry.shutdown(Duration::from_secs(3)).await;
            row
        } else {
            let closed_channels = connect(config, material, target, closed.connections).await?;
            let open_channels = connect(config, material, target, open.connections).await?;
            measure(
                config,
                &pids,
                &closed_channels,
                &open_channels,
                &token,
                closed,
                open,
            )
            .await?
        };
        let mut row = row;
        if !config.tls() {
            // The same closed loop from a generator we did not write.
            let body = material.dir().join("health-check.grpc");
            row.h2load = Some(
                crate::h2load::health_checks(
                    target,
                    &body,
                    closed.connections,
                    closed.streams,
                    closed.warmup,
                    closed.duration,
                )
                .await?,
            );
        }
        rows.push(row);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    spans.fetch_add(sink.drain() as u64, Ordering::Relaxed);
    counter.abort();
    let _ = stop.send(());
    let _ = server.await;
    Ok((rows, spans.load(Ordering::Relaxed)))
}

/// `connections` client stacks to `addr`, each the stack `Runtime::client` gives a service
/// (trace, deadline, a balancer with retries and ejection), each balancer on its own connection.
pub fn client_stacks(
    material: &Material,
    addr: SocketAddr,
    connections: usize,
    telemetry: &Telemetry,
) -> anyhow::Result<Vec<Transport>> {
    let mut stacks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let files = material.client_files();
        let roots = files.trust_bundle()?;
        let connector = MeshConnector::new(
            Reloadable::load(files)?,
            roots,
            SpiffeId::workload("mesh.local", SERVER)?,
        )?;
        let target = addr.to_string();
        let balanced = Balanced::new(
            connector,
            &target,
            Arc::new(Dns),
            mesh_client::RESOLVE_EVERY,
        )?;
        stacks.push(Transport::new(
            telemetry
                .client_layer(&target)
                .layer(ClientDeadlineLayer.layer(Transport::new(balanced))),
        ));
    }
    Ok(stacks)
}

/// One configuration measured: warm-up, the closed loop (with the CPU of every process in
/// `pids`: the server, and the proxies in front of it), then the fixed rate.
async fn measure<T: Connection>(
    config: Config,
    pids: &[u32],
    closed_channels: &[T],
    open_channels: &[T],
    token: &str,
    closed: Shape,
    open: Shape,
) -> anyhow::Result<Row> {
    // Warm up (connections, handshakes, caches, allocator), then measure.
    drive(
        closed_channels,
        token,
        Shape {
            duration: closed.warmup,
            warmup: Duration::ZERO,
            ..closed
        },
    )
    .await?;
    let cpu_of_all =
        || -> anyhow::Result<f64> { pids.iter().map(|&pid| procstat::cpu_seconds(pid)).sum() };
    let cpu_before = cpu_of_all()?;
    let closed_run = drive(
        closed_channels,
        token,
        Shape {
            warmup: Duration::ZERO,
            ..closed
        },
    )
    .await?;
    let cpu = cpu_of_all()? - cpu_before;
    let open_run = drive(open_channels, token, open).await?;
    let rss = pids
        .iter()
        .map(|&pid| procstat::rss_bytes(pid))
        .sum::<anyhow::Result<u64>>()?;
    // A server that answered calls for half a second used CPU and holds more than a MiB: a
    // reading of less is a broken /proc reader, not a figure (CI's bench smoke checks this).
    anyhow::ensure!(
        cpu > 0.0 && rss > 1 << 20,
        "/proc readings of pids {pids:?}: {cpu} CPU seconds, {rss} bytes resident"
    );
    eprintln!(
        "  {:<40} {:>9.0} calls/s  p50 {:.3} ms  p99 {:.3} ms  | fixed rate p50 {:.3} ms  p99 {:.3} ms  ({} errors)",
        config.label(),
        closed_run.throughput(),
        closed_run.quantile_ms(0.5),
        closed_run.quantile_ms(0.99),
        open_run.quantile_ms(0.5),
        open_run.quantile_ms(0.99),
        closed_run.errors + open_run.errors,
    );
    Ok(Row {
        config,
        cpu_us_per_call: cpu * 1e6 / closed_run.ok.max(1) as f64,
        closed: closed_run,
        open: open_run,
        rss,
        h2load: None,
    })
}
