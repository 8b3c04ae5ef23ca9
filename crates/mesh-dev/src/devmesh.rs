//! A whole mesh in this process, on loopback: what `meshctl demo` and the integration tests run.
//!
//! It issues fresh certificates from a new dev CA into a directory, writes the shipped example
//! clients file there, and starts the auth, inventory and orders services on loopback (auth and
//! inventory, which tests restart in place, on free ports below the kernel's ephemeral range;
//! the rest on `127.0.0.1:0`), each exactly as its binary would (same `Application::build`, same
//! flags).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use auth_interceptor::jwks::JwksSource;
use mesh_service::identity::RenewalStatus;
use mesh_service::{ServiceBinary, traced};
use mesh_telemetry::trace::{Telemetry, TelemetryFlags};

use crate::sink::TraceSink;
use mesh_tls::certs::{CertAuthority, DEFAULT_WORKLOADS};
use mesh_tls::client::MeshConnector;
use mesh_tls::{Reloadable, SpiffeId, TlsFiles};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The clients file shipped in `config/auth.example.toml`, used verbatim by the dev mesh.
pub const EXAMPLE_AUTH_CONFIG: &str = include_str!("../../../config/auth.example.toml");

/// The demo secret of the `meshctl` client in the example config.
pub const MESHCTL_DEMO_SECRET: &str = "meshctl-demo-secret";

/// The demo secret of the `stock-admin` client in the example config.
pub const STOCK_ADMIN_DEMO_SECRET: &str = "IRr2hs2icOVrJflHEVzjF0iIVcdpSCNDdaQTT3_X-h0";

/// The demo secret of the `storefront` client in the example config.
pub const STOREFRONT_DEMO_SECRET: &str = "j0e-VIqb8_Virf9HgQOSS9K-_EFPUznN0LMjpb2JGIQ";

/// A workload whose certificate the mesh CA signed but which no client registration names:
/// proof that a valid certificate alone grants nothing.
pub const STRANGER: &str = "stranger";

/// A workload whose certificate the mesh CA signed for another trust domain
/// (`spiffe://evil.example/sa/orders`): it chains to the trust bundle, and must still get
/// nowhere but health checks.
pub const FOREIGN_ORDERS: &str = "foreign-orders";

/// A second certificate of orders (`spiffe://mesh.local/sa/orders`, another key): what a copy
/// of orders' identity on another host, or its next certificate, looks like. A token bound to
/// orders' first certificate must not work from it.
pub const ORDERS_OTHER_CERTIFICATE: &str = "orders-other-certificate";

/// The trust domain of [`FOREIGN_ORDERS`].
pub const FOREIGN_TRUST_DOMAIN: &str = "evil.example";

/// The trust domain of the example config.
pub const TRUST_DOMAIN: &str = "mesh.local";

/// A running in-process mesh.
#[derive(Debug)]
pub struct DevMesh {
    dir: PathBuf,
    database: DevDatabase,
    /// The issuer URL (`https://localhost:<port>`).
    pub issuer: String,
    /// The auth service's mesh gRPC address.
    pub auth_addr: std::net::SocketAddr,
    /// The auth service's public HTTPS address.
    pub auth_public_addr: std::net::SocketAddr,
    /// The inventory service's mesh address.
    pub inventory_addr: std::net::SocketAddr,
    /// The orders service's mesh address.
    pub orders_addr: std::net::SocketAddr,
    /// Orders' plaintext health listener (health only, no certificate).
    pub orders_health_addr: std::net::SocketAddr,
    /// Rotates the auth service's signing key.
    pub key_rotator: auth_service::KeyRotator,
    /// The inventory service's token verifier (its JWKS fetch count is observable).
    pub inventory_verifier: Arc<auth_interceptor::TokenVerifier>,
    /// The orders service's token verifier.
    pub orders_verifier: Arc<auth_interceptor::TokenVerifier>,
    /// Each service's certificate renewal (auth renews from its own CA, orders and inventory
    /// at the mesh CA).
    pub renewals: std::collections::BTreeMap<&'static str, Arc<RenewalStatus>>,
    /// Each service's (and replica's) admin listener, serving `/metrics`, by name.
    pub metrics_addrs: std::collections::BTreeMap<&'static str, std::net::SocketAddr>,
    inventory_args: inventory_service::Args,
    orders_args: orders_service::Args,
    auth_args: auth_service::Args,
    join_tokens: auth_service::join::JoinTokens,
    /// The audit logs and their key.
    pub audit: AuditFiles,
    /// meshctl's own tracer, for client spans of calls made from this process.
    pub client_telemetry: Telemetry,
    /// The in-process OTLP receiver every service exports to.
    pub sink: TraceSink,
    tracers: Vec<Telemetry>,
    sink_service: Option<SinkTask>,
    services: Vec<Running>,
}

/// How a dev mesh runs, where it differs from the defaults.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Lifetime of the certificates the mesh CA signs for orders and inventory (and auth).
    pub cert_ttl: Duration,
    /// Where the services keep their state.
    pub database: DevDatabase,
    /// The auth config (clients, users, lifetimes); `None` is the example,
    /// [`EXAMPLE_AUTH_CONFIG`].
    pub auth_config: Option<String>,
    /// A policy file per service name (`auth`, `orders`, `inventory`), as `--policy`; a service
    /// without one enforces the policy shipped with it.
    pub policies: std::collections::BTreeMap<String, PathBuf>,
    /// A whole-file trial per service name, as `--policy-trial`.
    pub policy_trials: std::collections::BTreeMap<String, PathBuf>,
}

impl Default for DevOptions {
    fn default() -> Self {
        Self {
            cert_ttl: Duration::from_secs(3600),
            database: DevDatabase::Sqlite,
            auth_config: None,
            policies: std::collections::BTreeMap::new(),
            policy_trials: std::collections::BTreeMap::new(),
        }
    }
}

/// The backend of a dev mesh's databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevDatabase {
    /// `<dir>/<service>.db`; replicas of a service open the same file.
    Sqlite,
    /// One database per service (`auth`, `orders`, `inventory`, which must exist) on the
    /// PostgreSQL server at this URL (`postgres://user@host:port`, no database); replicas of a
    /// service share it.
    Postgres(String),
}

impl DevDatabase {
    /// The database of `service` for a mesh in `dir`.
    pub fn url(&self, dir: &Path, service: &str) -> mesh_service::DbUrl {
        match self {
            Self::Sqlite => mesh_service::DbUrl::Sqlite(dir.join(format!("{service}.db"))),
            Self::Postgres(server) => {
                mesh_service::DbUrl::Postgres(format!("{}/{service}", server.trim_end_matches('/')))
            }
        }
    }
}

impl DevMesh {
    /// Makes a CA and files for `meshctl` and the test identities in `dir/certs`, then starts
    /// auth (which imports the CA, sealed) and orders and inventory, which join with a join
    /// token and get their certificates from the auth service's CA.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, DevOptions::default()).await
    }

    /// [`DevMesh::start`] with `options`.
    pub async fn start_with(dir: &Path, options: DevOptions) -> anyhow::Result<Self> {
        let certs = dir.join("certs");
        let names: Vec<String> = DEFAULT_WORKLOADS
            .iter()
            .chain([&STRANGER])
            .map(|n| (*n).to_owned())
            .collect();
        // A restart in the same directory keeps its CA, as the auth service's database does.
        let secrets = dir.join("auth-secrets");
        let ca_key = secrets.join("ca.key");
        let ca = match (
            std::fs::read_to_string(certs.join("ca.pem")),
            std::fs::read_to_string(&ca_key),
        ) {
            (Ok(cert), Ok(key)) => CertAuthority::from_pem(TRUST_DOMAIN, &cert, &key)?,
            _ => CertAuthority::generate(TRUST_DOMAIN)?,
        };
        ca.write_dir(&certs, &names, true)
            .context("writing dev certificates")?;
        let foreign = ca.issue_for(
            SpiffeId::workload(FOREIGN_TRUST_DOMAIN, "orders")?,
            "orders",
        )?;
        CertAuthority::write_issued(&certs, FOREIGN_ORDERS, &foreign)?;
        CertAuthority::write_issued(&certs, ORDERS_OTHER_CERTIFICATE, &ca.issue("orders")?)?;
        // Only the auth service reads these; a real deployment keeps them off every other host.
        std::fs::create_dir_all(&secrets)?;
        mesh_tls::certs::write_private(&ca_key, &ca.key_pem())?;
        let kek = secrets.join("auth.kek");
        if !kek.exists() {
            auth_interceptor::audit::write_new_key(&kek)?;
        }
        let join_tokens = secrets.join("join-tokens");
        let identity_dir = dir.join("identity");
        std::fs::create_dir_all(&identity_dir)?;
        let mut listed = String::new();
        for name in ["orders", "inventory"] {
            let token = auth_service::join::new_token()?;
            let expires = auth_service::join::expiry(Duration::from_secs(3600));
            listed.push_str(&format!(
                "{} {} {expires}\n",
                auth_service::join::token_hash(&token),
                SpiffeId::workload(TRUST_DOMAIN, name)?
            ));
            mesh_tls::certs::write_private(&identity_dir.join(format!("{name}.join")), &token)?;
        }
        std::fs::write(&join_tokens, listed)?;
        let audit = AuditFiles::create(dir)?;
        let config_path = dir.join("auth.toml");
        std::fs::write(
            &config_path,
            options
                .auth_config
                .as_deref()
                .unwrap_or(EXAMPLE_AUTH_CONFIG),
        )?;

        // Every service exports its spans to an OTLP receiver in this process.
        let sink = TraceSink::new();
        let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let otlp = format!("http://{}", sink_listener.local_addr()?);
        let (sink_stop, sink_stopped) = oneshot::channel::<()>();
        let sink_task = tokio::spawn(sink.clone().serve(sink_listener, async {
            let _ = sink_stopped.await;
        }));
        let telemetry_flags = TelemetryFlags {
            otlp_endpoint: Some(otlp.clone()),
            service_name: None,
            // The in-process receiver takes traces only.
            metrics_exporter: mesh_telemetry::trace::MetricsExporter::None,
        };
        let mut auth_args = auth_service::Args {
            listen: restartable_address()?,
            public_listen: restartable_address()?,
            tls: mesh_service::TlsFlags {
                tls_cert: None,
                tls_key: None,
                ..tls_flags(&certs, "auth")
            },
            audit: audit.flags("auth"),
            telemetry: telemetry_flags.clone(),
            issuer: None,
            auth_config: config_path,
            db: options.database.url(dir, "auth"),
            signing_key_rotation: std::time::Duration::from_secs(86_400),
            kek_file: Some(kek),
            kek: None,
            ca_cert: Some(certs.join("ca.pem")),
            ca_key: Some(ca_key),
            cert_ttl: options.cert_ttl,
            join_tokens: Some(join_tokens),
            rejoin_token_ttl: Duration::from_secs(86_400),
            server: mesh_service::ServerFlags {
                admin_listen: Some("127.0.0.1:0".parse().expect("address")),
                shutdown_grace: Duration::from_secs(5),
                policy: options.policies.get("auth").cloned(),
                policy_trial: options.policy_trials.get("auth").cloned(),
                ..mesh_service::ServerFlags::default()
            },
        };
        let auth = auth_service::Application::build(auth_args.clone().into_settings()?).await?;
        let issuer = auth.issuer().to_owned();
        let auth_addr = auth.mesh_addr();
        let auth_public_addr = auth.public_addr();
        let key_rotator = auth.key_rotator();
        let join_tokens = auth.join_tokens();
        // A restart must come back on the same addresses (and so the same issuer URL).
        auth_args.listen = auth_addr;
        auth_args.public_listen = auth_public_addr;
        let mut renewals = std::collections::BTreeMap::new();
        let mut metrics_addrs = std::collections::BTreeMap::new();
        let mut tracers = Vec::new();
        let mut services = Vec::new();
        let mut watched = Watched {
            renewals: &mut renewals,
            metrics_addrs: &mut metrics_addrs,
            tracers: &mut tracers,
            services: &mut services,
        };
        watched.launch("auth", auth, true);

        // Orders and inventory are configured as their binaries are: the shared service flags
        // plus their own.
        // Their keys are made in memory; only the join token is a file.
        let service_flags = |name: &str| mesh_service::ServiceFlags {
            tls: mesh_service::TlsFlags {
                tls_cert: None,
                tls_key: None,
                ..tls_flags(&certs, name)
            },
            audit: audit.flags(name),
            telemetry: telemetry_flags.clone(),
            issuer: issuer.clone(),
            auth_url: auth_addr.to_string(),
            db: options.database.url(dir, name),
            join_token_file: Some(identity_dir.join(format!("{name}.join"))),
            server: mesh_service::ServerFlags {
                health_listen: Some("127.0.0.1:0".parse().expect("address")),
                admin_listen: Some("127.0.0.1:0".parse().expect("address")),
                shutdown_grace: Duration::from_secs(5),
                policy: options.policies.get(name).cloned(),
                policy_trial: options.policy_trials.get(name).cloned(),
                ..mesh_service::ServerFlags::default()
            },
        };
        let mut inventory_args = inventory_service::Args {
            listen: restartable_address()?,
            audience: "inventory".into(),
            mesh: service_flags("inventory"),
        };
        let inventory = inventory_service::Application::build(inventory_args.clone()).await?;
        let inventory_addr = inventory.server().addr();
        // A restart must come back on the same address, as a restarted container would.
        inventory_args.listen = inventory_addr;
        let inventory_verifier = inventory.verifier();
        watched.launch("inventory", inventory, true);

        let orders_args = orders_service::Args {
            listen: "127.0.0.1:0".parse()?,
            audience: "orders".into(),
            mesh: service_flags("orders"),
            inventory_url: inventory_addr.to_string(),
        };
        let orders = orders_service::Application::build(orders_args.clone()).await?;
        let orders_addr = orders.server().addr();
        let orders_health_addr = orders
            .server()
            .health_addr()
            .context("orders has a health listener")?;
        let orders_verifier = orders.server().verifier().clone();
        watched.launch("orders", orders, true);

        Ok(Self {
            dir: dir.to_owned(),
            database: options.database.clone(),
            issuer,
            auth_addr,
            auth_public_addr,
            inventory_addr,
            inventory_args,
            orders_args,
            auth_args,
            join_tokens,
            audit,
            client_telemetry: Telemetry::new(
                &TelemetryFlags {
                    otlp_endpoint: Some(otlp),
                    service_name: Some("meshctl".into()),
                    // The in-process receiver takes traces only.
                    metrics_exporter: mesh_telemetry::trace::MetricsExporter::None,
                },
                "meshctl",
            )?,
            sink,
            tracers,
            sink_service: Some((sink_stop, sink_task)),
            orders_addr,
            orders_health_addr,
            key_rotator,
            inventory_verifier,
            orders_verifier,
            renewals,
            metrics_addrs,
            services,
        })
    }

    /// The database of `service` (`auth`, `orders`, `inventory`).
    pub fn db_url(&self, service: &str) -> mesh_service::DbUrl {
        self.database.url(&self.dir, service)
    }

    /// Where certificates, config and databases live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TLS files of workload `name` (`auth`, `orders`, `inventory`, `meshctl`).
    pub fn tls_files(&self, name: &str) -> TlsFiles {
        TlsFiles::in_dir(&self.dir.join("certs"), name)
    }

    /// A connector presenting `as_workload`'s certificate to a server that must be `to_workload`.
    pub fn connector(&self, as_workload: &str, to_workload: &str) -> anyhow::Result<MeshConnector> {
        let files = self.tls_files(as_workload);
        let roots = files.trust_bundle()?;
        Ok(MeshConnector::new(
            Reloadable::load(files)?,
            roots,
            SpiffeId::workload(TRUST_DOMAIN, to_workload)?,
        )?)
    }

    /// An HTTPS client trusting the mesh CA, for the auth service's public endpoints.
    pub fn https_client(&self) -> anyhow::Result<reqwest::Client> {
        let roots = self.tls_files("meshctl").trust_bundle()?;
        Ok(JwksSource::https_client(roots)?)
    }

    /// A channel presenting `as_workload`'s certificate to `to_workload` at `addr`, with client
    /// spans from meshctl's tracer.
    pub fn traced_channel(
        &self,
        as_workload: &str,
        to_workload: &str,
        addr: &str,
    ) -> anyhow::Result<mesh_client::Transport> {
        let channel = self.connector(as_workload, to_workload)?.channel(addr)?;
        Ok(traced(channel, &self.client_telemetry.client_layer(addr)))
    }

    /// Stops the OTLP receiver, as a collector outage would.
    pub async fn stop_trace_sink(&mut self) {
        if let Some((stop, task)) = self.sink_service.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Exports every service's queued spans to the sink.
    pub async fn flush_traces(&self) {
        for tracer in self.tracers.iter().chain([&self.client_telemetry]) {
            tracer.flush(Duration::from_secs(2)).await;
        }
    }

    /// Stops the inventory service (as an outage would), leaving the others running.
    pub async fn stop_inventory(&mut self) {
        self.stop_service("inventory").await;
    }

    /// Where a launched service is registered.
    fn watched(&mut self) -> Watched<'_> {
        Watched {
            renewals: &mut self.renewals,
            metrics_addrs: &mut self.metrics_addrs,
            tracers: &mut self.tracers,
            services: &mut self.services,
        }
    }

    /// Stops service `name` (`auth`, `inventory`, `orders`), leaving the others running.
    pub async fn stop_service(&mut self, name: &str) {
        if let Some(index) = self
            .services
            .iter()
            .position(|(service, _, _)| *service == name)
        {
            let (_, stop, handle) = self.services.remove(index);
            let _ = stop.send(());
            let _ = handle.await;
        }
    }

    /// Starts the inventory service again on its old address, with its old database.
    pub async fn restart_inventory(&mut self) -> anyhow::Result<()> {
        let inventory = inventory_service::Application::build(self.inventory_args.clone()).await?;
        self.inventory_verifier = inventory.verifier();
        self.watched().launch("inventory", inventory, true);
        Ok(())
    }

    /// A join token for one more replica of `workload`, written to `identity/<name>.join`.
    async fn replica_token(&self, workload: &str, name: &str) -> anyhow::Result<PathBuf> {
        let token = self
            .join_tokens
            .create(
                &SpiffeId::workload(TRUST_DOMAIN, workload)?,
                Duration::from_secs(60),
            )
            .await?;
        let token_file = self.dir.join("identity").join(format!("{name}.join"));
        mesh_tls::certs::write_private(&token_file, &token.token)?;
        Ok(token_file)
    }

    /// Starts another inventory replica named `name` (`inventory-2`) on a new loopback port:
    /// its own join token and audit log (`audit.log(name)`), the same database as the first
    /// (the same SQLite file, or the same PostgreSQL database).
    pub async fn start_inventory_replica(
        &mut self,
        name: &'static str,
    ) -> anyhow::Result<std::net::SocketAddr> {
        let mut args = self.inventory_args.clone();
        args.listen = "127.0.0.1:0".parse()?;
        args.mesh.join_token_file = Some(self.replica_token("inventory", name).await?);
        args.mesh.audit = self.audit.flags(name);
        args.mesh.server.health_listen = None;
        let replica = inventory_service::Application::build(args).await?;
        let addr = replica.server().addr();
        self.watched().launch(name, replica, false);
        Ok(addr)
    }

    /// Starts another orders replica named `name` (`orders-2`) on a new loopback port, on the
    /// first one's database, calling inventory at `inventory_url` (one address or a
    /// comma-separated list of replicas).
    pub async fn start_orders_replica(
        &mut self,
        name: &'static str,
        inventory_url: &str,
    ) -> anyhow::Result<std::net::SocketAddr> {
        self.start_orders_replica_with(name, inventory_url, |_| {})
            .await
    }

    /// Like [`DevMesh::start_orders_replica`], with its flags changed by `configure` first
    /// (a lower `--max-in-flight`, say).
    pub async fn start_orders_replica_with(
        &mut self,
        name: &'static str,
        inventory_url: &str,
        configure: impl FnOnce(&mut orders_service::Args),
    ) -> anyhow::Result<std::net::SocketAddr> {
        let mut args = self.orders_args.clone();
        args.listen = "127.0.0.1:0".parse()?;
        args.inventory_url = inventory_url.to_owned();
        args.mesh.join_token_file = Some(self.replica_token("orders", name).await?);
        args.mesh.audit = self.audit.flags(name);
        args.mesh.server.health_listen = None;
        configure(&mut args);
        let replica = orders_service::Application::build(args).await?;
        let addr = replica.server().addr();
        self.watched().launch(name, replica, false);
        Ok(addr)
    }

    /// Starts another auth replica named `name` (`auth-2`) on new loopback ports, on the first
    /// one's database: the same issuer, signing keys, CA and grants. Returns its mesh and public
    /// addresses.
    pub async fn start_auth_replica(
        &mut self,
        name: &'static str,
    ) -> anyhow::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
        let mut args = self.auth_args.clone();
        args.listen = "127.0.0.1:0".parse()?;
        args.public_listen = "127.0.0.1:0".parse()?;
        args.issuer = Some(self.issuer.clone());
        args.audit = self.audit.flags(name);
        let replica = auth_service::Application::build(args.into_settings()?).await?;
        let addrs = (replica.mesh_addr(), replica.public_addr());
        self.watched().launch(name, replica, false);
        Ok(addrs)
    }

    /// Starts the auth service again on its old addresses, with its old database.
    pub async fn restart_auth(&mut self) -> anyhow::Result<()> {
        let auth =
            auth_service::Application::build(self.auth_args.clone().into_settings()?).await?;
        self.key_rotator = auth.key_rotator();
        self.watched().launch("auth", auth, true);
        Ok(())
    }

    /// Stops every service and waits for them to drain.
    pub async fn stop(self) {
        // The issuer last (a restart may have started it after the others): every other
        // service depends on it, and would otherwise see it go away, and say so, while still
        // running.
        let (issuer, others): (Vec<Running>, Vec<Running>) = self
            .services
            .into_iter()
            .partition(|(name, _, _)| *name == "auth");
        for (_, stop, handle) in others.into_iter().rev().chain(issuer) {
            let _ = stop.send(());
            let _ = handle.await;
        }
        for tracer in self.tracers.iter().chain([&self.client_telemetry]) {
            tracer.shutdown(Duration::from_secs(2)).await;
        }
        if let Some((stop, task)) = self.sink_service {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

/// A loopback address for a service that is restarted on the same address, as a restarted
/// container would be: a free port below the kernel's ephemeral range. A port from `bind(:0)`
/// comes from that range, and while the service is down the kernel may give it to any other
/// socket, a client's outgoing connection included, so the restart would find it taken.
fn restartable_address() -> anyhow::Result<std::net::SocketAddr> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low > 10_000 {
        for _ in 0..100 {
            let port = rand::random_range(10_000..ephemeral_low);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpListener::bind(addr).is_ok() {
                return Ok(addr);
            }
        }
    }
    // No room below the range: the kernel's choice, as before.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The running OTLP receiver: its stop signal and task.
type SinkTask = (
    oneshot::Sender<()>,
    JoinHandle<Result<(), tonic::transport::Error>>,
);

/// Where the dev mesh's services write their audit logs, and the key that chains them.
#[derive(Debug, Clone)]
pub struct AuditFiles {
    /// The HMAC key file (random, 0600).
    pub key: PathBuf,
    dir: PathBuf,
}

impl AuditFiles {
    fn create(dir: &Path) -> anyhow::Result<Self> {
        let audit_dir = dir.join("audit");
        std::fs::create_dir_all(&audit_dir)?;
        let key = audit_dir.join("audit.key");
        if !key.exists() {
            auth_interceptor::audit::write_new_key(&key)?;
        }
        Ok(Self {
            key,
            dir: audit_dir,
        })
    }

    /// The audit log of `service`.
    pub fn log(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.jsonl"))
    }

    fn flags(&self, service: &str) -> mesh_service::AuditFlags {
        mesh_service::AuditFlags {
            audit_log: Some(self.log(service)),
            audit_key_file: Some(self.key.clone()),
            ..mesh_service::AuditFlags::default()
        }
    }
}

fn tls_flags(certs: &Path, name: &str) -> mesh_service::TlsFlags {
    mesh_service::TlsFlags {
        tls_cert: Some(certs.join(format!("{name}.pem"))),
        tls_key: Some(certs.join(format!("{name}.key"))),
        tls_ca: Some(certs.join("ca.pem")),
        trust_domain: TRUST_DOMAIN.into(),
        tls_watch: mesh_service::config::WatchInterval(None),
    }
}

/// A service the harness runs: its task, and what it exposes, by name.
type Running = (&'static str, oneshot::Sender<()>, JoinHandle<()>);

/// The harness's books: what every running service exposes, and its task.
struct Watched<'a> {
    renewals: &'a mut std::collections::BTreeMap<&'static str, Arc<RenewalStatus>>,
    metrics_addrs: &'a mut std::collections::BTreeMap<&'static str, std::net::SocketAddr>,
    tracers: &'a mut Vec<Telemetry>,
    services: &'a mut Vec<Running>,
}

impl Watched<'_> {
    /// Runs `app` as `name` until it is stopped, and registers its admin listener and tracer
    /// (and its certificate renewal, for the first instance of a workload: `renewal`). The one
    /// way every start, restart and replica of every service is launched.
    fn launch<S: ServiceBinary + Send + 'static>(
        &mut self,
        name: &'static str,
        app: S,
        renewal: bool,
    ) {
        let observed = app.observed();
        if renewal && let Some(status) = observed.renewal {
            self.renewals.insert(name, status);
        }
        if let Some(addr) = observed.admin_addr {
            self.metrics_addrs.insert(name, addr);
        }
        self.tracers.push(observed.telemetry);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let run = app.run_until_stopped(async move {
            let _ = stop_rx.await;
        });
        let handle = tokio::spawn(async move {
            if let Err(error) = run.await {
                tracing::error!(service = name, %error, "service stopped with an error");
            }
        });
        self.services.push((name, stop_tx, handle));
    }
}
