//! Memory: the idle RSS of each real service binary, and what one more idle mTLS connection
//! costs a server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::loopback::{free_port, wait_listening};
use crate::material::Material;
use crate::micro::{ServerProcess, connect};
use crate::procstat;
use crate::server::Config;

/// Idle RSS of one service, bytes.
#[derive(Debug)]
pub struct Idle {
    /// The binary.
    pub service: &'static str,
    /// RSS after start-up and a quiet second.
    pub rss: u64,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts auth, inventory and orders from `bin_dir` (their binaries, as operators run them) and
/// reads each one's RSS once it is up and idle. `config` is the auth client/user registry.
pub async fn idle_services(bin_dir: &Path, config: &Path) -> anyhow::Result<Vec<Idle>> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let names: Vec<String> = mesh_tls::certs::DEFAULT_WORKLOADS
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    mesh_tls::certs::CertAuthority::generate("mesh.local")?.write_dir(&certs, &names, false)?;
    // The auth service seals its signing keys under a key-encryption key; it holds no CA here,
    // so every service serves the certificate files written above.
    let kek = dir.path().join("auth.kek");
    auth_interceptor::audit::write_new_key(&kek)?;
    let (auth_port, public_port, inventory_port, orders_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let issuer = format!("https://localhost:{public_port}");
    let start = |binary: &str, name: &str, extra: &[(&str, String)]| -> anyhow::Result<Killed> {
        let path: PathBuf = bin_dir.join(binary);
        let mut command = Command::new(&path);
        command
            .env_clear()
            .env("MESH_TLS_CERT", certs.join(format!("{name}.pem")))
            .env("MESH_TLS_KEY", certs.join(format!("{name}.key")))
            .env("MESH_TLS_CA", certs.join("ca.pem"))
            .env("MESH_ISSUER", &issuer)
            .env("MESH_DB", dir.path().join(format!("{name}.db")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Killed(child))
    };
    let auth = start(
        "auth-service",
        "auth",
        &[
            ("MESH_LISTEN", format!("127.0.0.1:{auth_port}")),
            ("MESH_PUBLIC_LISTEN", format!("127.0.0.1:{public_port}")),
            ("MESH_AUTH_CONFIG", config.display().to_string()),
            ("MESH_KEK_FILE", kek.display().to_string()),
        ],
    )?;
    wait_listening(public_port).await?;
    let inventory = start(
        "inventory-service",
        "inventory",
        &[("MESH_LISTEN", format!("127.0.0.1:{inventory_port}"))],
    )?;
    let orders = start(
        "orders-service",
        "orders",
        &[
            ("MESH_LISTEN", format!("127.0.0.1:{orders_port}")),
            ("MESH_AUTH_URL", format!("127.0.0.1:{auth_port}")),
            ("MESH_INVENTORY_URL", format!("127.0.0.1:{inventory_port}")),
        ],
    )?;
    wait_listening(inventory_port).await?;
    wait_listening(orders_port).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(vec![
        Idle {
            service: "auth-service",
            rss: procstat::rss_bytes(auth.0.id())?,
        },
        Idle {
            service: "inventory-service",
            rss: procstat::rss_bytes(inventory.0.id())?,
        },
        Idle {
            service: "orders-service",
            rss: procstat::rss_bytes(orders.0.id())?,
        },
    ])
}

/// RSS of the server of `config` before and after `count` idle connections (each made one call,
/// so the handshake and the HTTP/2 session are complete): bytes per connection. Measured for
/// plain h2c, mTLS and the full stack, it splits a connection's memory into HTTP/2 (hyper, h2,
/// the connection task), TLS (rustls) and the layers.
pub async fn per_connection(
    config: Config,
    material: &Material,
    count: usize,
) -> anyhow::Result<(u64, u64, f64)> {
    let server = ServerProcess::start(config, material, None)?;
    let token = material.token("bench-idle")?;
    let header = auth_interceptor::BearerToken::new(token)?;
    // One warm connection first, so the first connection's one-off costs are not counted.
    let warm = connect(config, material, server.addr, 1).await?;
    call(&warm[0], &header).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::rss_bytes(server.pid())?;
    let channels = connect(config, material, server.addr, count).await?;
    for channel in &channels {
        call(channel, &header).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procstat::rss_bytes(server.pid())?;
    let added = after.saturating_sub(before) as f64 / count as f64;
    drop(channels);
    Ok((before, after, added))
}

async fn call(
    channel: &tonic::transport::Channel,
    header: &auth_interceptor::BearerToken,
) -> anyhow::Result<()> {
    let request = header.request(HealthCheckRequest::default());
    HealthClient::new(channel.clone()).check(request).await?;
    Ok(())
}
