//! Business service A: orders placed on behalf of users, with stock reserved in inventory.
//!
//! `PlaceOrder` stores the order (PENDING) under the caller's idempotency key, exchanges the
//! caller's token for an inventory token that names orders as actor (RFC 8693), reserves the
//! stock with a reservation id derived from the order, and records CONFIRMED or REJECTED. A retry
//! with the same key returns the same order and reserves once, also after a half-finished first
//! attempt. Customers see only their own orders (others answer NOT_FOUND); `orders:admin` sees
//! all. When inventory is down, placing answers UNAVAILABLE and reads keep working.
//!
//! # Layout
//! - [`store`]: SQLite (WAL, migrations): orders, their lines and states.
//! - [`api`]: the gRPC handlers, parsing at the edge and acting for the caller.
//! - [`policy`]: the service's authorization table.
//! - [`Application`]: flags, start-up and serving.

#![forbid(unsafe_code)]

pub mod api;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use auth_interceptor::audit::AuditLog;
use auth_interceptor::{AuthLayer, Policy, Rule, TokenExchanger, TokenVerifier};
use mesh_proto::orders::v1::orders_service_server::OrdersServiceServer;
use mesh_telemetry::trace::{Telemetry, TelemetryFlags};
use mesh_telemetry::{AuditFlags, StartError, TlsFlags, Workload};
use mesh_tls::SpiffeId;
use mesh_tls::client::MeshConnector;
use mesh_tls::server::{ServerLimits, TlsListener, grpc_server};
use tokio::net::TcpListener;

use crate::api::OrdersApi;
use crate::store::Store;

/// Flags of the orders service, with the operator interface's env twins.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "orders-service",
    version,
    about = "Orders of the mesh, placed on behalf of users"
)]
pub struct Args {
    /// Mesh gRPC listen address (mTLS required).
    #[arg(long, env = "MESH_LISTEN", default_value = "0.0.0.0:50052")]
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
    #[arg(long, env = "MESH_AUDIENCE", default_value = "orders")]
    pub audience: String,
    /// SQLite file (created and migrated on start).
    #[arg(long, env = "MESH_DB")]
    pub db: PathBuf,
    /// The auth service's mesh address (for token exchange).
    #[arg(long, env = "MESH_AUTH_URL", default_value = "localhost:50051")]
    pub auth_url: String,
    /// The inventory service's mesh address.
    #[arg(long, env = "MESH_INVENTORY_URL", default_value = "localhost:50053")]
    pub inventory_url: String,
}

/// The orders policy for the workloads of `trust_domain`: reading needs `orders:read`, placing
/// and cancelling `orders:write`; which orders a caller may touch is decided per object in the
/// handlers.
pub fn policy(trust_domain: &str) -> Policy {
    let service = "/mesh.orders.v1.OrdersService";
    Policy::new(trust_domain)
        .with_health()
        .with_reflection()
        .allow(
            format!("{service}/PlaceOrder"),
            Rule::token().scope("orders:write"),
        )
        .allow(
            format!("{service}/CancelOrder"),
            Rule::token().scope("orders:write"),
        )
        .allow(
            format!("{service}/GetOrder"),
            Rule::token().scope("orders:read"),
        )
        .allow(
            format!("{service}/ListOrders"),
            Rule::token().scope("orders:read"),
        )
}

/// A built, bound orders service.
#[derive(Debug)]
pub struct Application {
    listener: TlsListener,
    addr: SocketAddr,
    verifier: Arc<TokenVerifier>,
    audit: Option<Arc<AuditLog>>,
    telemetry: Telemetry,
    api: OrdersApi,
    policy: Policy,
    limits: ServerLimits,
}

impl Application {
    /// Loads certificates, discovers the issuer's keys, opens the database, binds the listener.
    /// Dependencies are connected lazily, so orders starts (and serves reads) without them.
    pub async fn build(args: Args) -> Result<Self, StartError> {
        let config = |flag: &str| {
            let flag = flag.to_owned();
            move |e: mesh_tls::TlsError| StartError::Config(format!("{flag}: {e}"))
        };
        let workload = args.tls.load()?;
        let policy = policy(workload.trust_domain());
        let Workload {
            identity,
            roots,
            spiffe_id,
        } = workload;
        let peer = |name: &str| {
            SpiffeId::workload(spiffe_id.trust_domain(), name)
                .and_then(|id| MeshConnector::new(identity.clone(), roots.clone(), id))
        };
        let auth = peer("auth")
            .and_then(|c| c.channel(&args.auth_url))
            .map_err(config("--auth-url"))?;
        let inventory = peer("inventory")
            .and_then(|c| c.channel(&args.inventory_url))
            .map_err(config("--inventory-url"))?;
        let verifier = TokenVerifier::for_issuer(&args.issuer, &args.audience, roots.clone())
            .await
            .map_err(|e| StartError::Runtime(format!("--issuer {}: {e}", args.issuer)))?;
        let store = Store::open(&args.db)
            .await
            .map_err(|e| StartError::Config(format!("--db {}: {e}", args.db.display())))?;
        let tcp = TcpListener::bind(args.listen)
            .await
            .map_err(|e| StartError::Runtime(format!("bind {}: {e}", args.listen)))?;
        let listener = TlsListener::mesh(tcp, identity, roots).map_err(config("--tls-ca"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let audit = args.audit.open("orders")?;
        let telemetry = Telemetry::new(&args.telemetry, "orders")?;
        let auth = mesh_telemetry::trace::traced(auth, &telemetry.client_layer(&args.auth_url));
        let inventory =
            mesh_telemetry::trace::traced(inventory, &telemetry.client_layer(&args.inventory_url));
        Ok(Self {
            listener,
            addr,
            verifier,
            audit,
            telemetry,
            api: OrdersApi::new(store, TokenExchanger::new(auth), inventory),
            policy,
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

    /// Serves until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = mesh_proto::reflection("mesh.orders.v1.OrdersService")
            .map_err(|e| StartError::Runtime(format!("reflection: {e}")))?;
        health.set_serving::<OrdersServiceServer<OrdersApi>>().await;
        let api = OrdersServiceServer::new(self.api)
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
