//! Business service B: the shop's stock, in SQLite, behind the mesh's auth layer.
//!
//! Reads need scope `inventory:read`. Reservations may only be made by the orders service acting
//! for a user: its certificate, a token addressed to inventory, `act.sub = orders` and scope
//! `inventory:reserve`, all four. Restocking needs `inventory:admin`.
//!
//! # Layout
//! - [`store`]: SQLite (WAL, migrations): items, idempotent all-or-nothing reservations.
//! - [`api`]: the gRPC handlers, which parse requests into domain types at the edge.
//! - [`policy`]: the service's authorization table.
//! - [`Application`]: flags, start-up and serving.

#![forbid(unsafe_code)]

pub mod api;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use auth_interceptor::audit::AuditLog;
use auth_interceptor::{AuthLayer, Policy, Rule, TokenVerifier};
use mesh_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use mesh_telemetry::trace::{Telemetry, TelemetryFlags};
use mesh_telemetry::{AuditFlags, StartError, TlsFlags, Workload};
use mesh_tls::SpiffeId;
use mesh_tls::server::{ServerLimits, TlsListener, grpc_server};
use std::sync::Arc;
use tokio::net::TcpListener;

use crate::api::InventoryApi;
use crate::store::Store;

/// Flags of the inventory service, with the operator interface's env twins.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "inventory-service",
    version,
    about = "Stock and reservations of the mesh"
)]
pub struct Args {
    /// Mesh gRPC listen address (mTLS required).
    #[arg(long, env = "MESH_LISTEN", default_value = "0.0.0.0:50053")]
    pub listen: SocketAddr,
    /// This workload's certificate, key and trust bundle.
    #[command(flatten)]
    pub tls: TlsFlags,
    /// The HMAC-chained audit log.
    #[command(flatten)]
    pub audit: AuditFlags,
    /// OpenTelemetry export.
    #[command(flatten)]
    pub telemetry: TelemetryFlags,
    /// Issuer whose tokens are accepted; keys are discovered at its well-known URL.
    #[arg(long, env = "MESH_ISSUER")]
    pub issuer: String,
    /// The audience tokens must carry.
    #[arg(long, env = "MESH_AUDIENCE", default_value = "inventory")]
    pub audience: String,
    /// SQLite file (created and migrated on start).
    #[arg(long, env = "MESH_DB")]
    pub db: PathBuf,
}

/// The inventory policy for the workloads of `trust_domain`. `orders` is the SPIFFE ID of the
/// orders workload, the only caller that may reserve and release.
pub fn policy(trust_domain: &str, orders: SpiffeId) -> Policy {
    let service = "/mesh.inventory.v1.InventoryService";
    Policy::new(trust_domain)
        .with_health()
        .with_reflection()
        .allow(
            format!("{service}/ListItems"),
            Rule::token().scope("inventory:read"),
        )
        .allow(
            format!("{service}/GetItem"),
            Rule::token().scope("inventory:read"),
        )
        .allow(
            format!("{service}/Reserve"),
            Rule::token()
                .scope("inventory:reserve")
                .callers([orders.clone()])
                .actors(["orders"]),
        )
        .allow(
            format!("{service}/Release"),
            Rule::token()
                .scope("inventory:reserve")
                .callers([orders])
                .actors(["orders"]),
        )
        .allow(
            format!("{service}/Restock"),
            Rule::token().scope("inventory:admin"),
        )
}

/// A built, bound inventory service.
#[derive(Debug)]
pub struct Application {
    listener: TlsListener,
    addr: SocketAddr,
    verifier: Arc<TokenVerifier>,
    audit: Option<Arc<AuditLog>>,
    telemetry: Telemetry,
    policy: Policy,
    store: Store,
    limits: ServerLimits,
}

impl Application {
    /// Loads certificates, discovers the issuer's keys, opens the database, binds the listener.
    pub async fn build(args: Args) -> Result<Self, StartError> {
        let Workload {
            identity,
            roots,
            spiffe_id,
        } = args.tls.load()?;
        let trust_domain = spiffe_id.trust_domain();
        let orders = SpiffeId::workload(trust_domain, "orders")
            .map_err(|e| StartError::Config(e.to_string()))?;
        let policy = policy(trust_domain, orders);
        let verifier = TokenVerifier::for_issuer(&args.issuer, &args.audience, roots.clone())
            .await
            .map_err(|e| StartError::Runtime(format!("--issuer {}: {e}", args.issuer)))?;
        let store = Store::open(&args.db)
            .await
            .map_err(|e| StartError::Config(format!("--db {}: {e}", args.db.display())))?;
        let tcp = TcpListener::bind(args.listen)
            .await
            .map_err(|e| StartError::Runtime(format!("bind {}: {e}", args.listen)))?;
        let listener = TlsListener::mesh(tcp, identity, roots)
            .map_err(|e| StartError::Config(format!("--tls-ca: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let audit = args.audit.open("inventory")?;
        let telemetry = Telemetry::new(&args.telemetry, "inventory")?;
        Ok(Self {
            listener,
            addr,
            verifier,
            audit,
            telemetry,
            policy,
            store,
            limits: ServerLimits::default(),
        })
    }

    /// The service's tracer (the demo flushes it before drawing traces).
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token verifier (tests read its JWKS fetch count).
    pub fn verifier(&self) -> Arc<TokenVerifier> {
        self.verifier.clone()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = mesh_proto::reflection("mesh.inventory.v1.InventoryService")
            .map_err(|e| StartError::Runtime(format!("reflection: {e}")))?;
        health
            .set_serving::<InventoryServiceServer<InventoryApi>>()
            .await;
        let api = InventoryServiceServer::new(InventoryApi::new(self.store))
            .max_decoding_message_size(self.limits.max_message_bytes);
        let telemetry = self.telemetry.clone();
        let served = grpc_server(&self.limits)
            // Continue the caller's trace first, so every decision below belongs to it.
            .layer(self.telemetry.server_layer())
            // Authenticate, then authorize against the full method path; deny by default.
            .layer(AuthLayer::new(self.verifier, self.policy).with_audit(self.audit))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api)
            .serve_with_incoming_shutdown(self.listener.incoming(), shutdown)
            .await
            .map_err(|e| StartError::Runtime(format!("serve: {e}")));
        // Flush what is queued; an unreachable collector cannot hold shutdown up.
        telemetry.shutdown(std::time::Duration::from_secs(3)).await;
        served
    }
}
