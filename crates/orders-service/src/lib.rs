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
#![warn(missing_docs)]

pub mod api;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;

use auth_interceptor::{Policy, TokenExchanger};
use mesh_proto::orders::v1::orders_service_server::OrdersServiceServer;
use mesh_service::{MeshServer, Runtime, ServiceBinary, ServiceFlags, StartError};

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
    /// The audience tokens must carry.
    #[arg(long, env = "MESH_AUDIENCE", default_value = "orders")]
    pub audience: String,
    /// What every mesh service is given: identity, audit log, tracing, issuer, database.
    #[command(flatten)]
    pub mesh: ServiceFlags,
    /// The inventory service's mesh address: `host:port` (every address the name resolves to is
    /// a replica, re-resolved every few seconds) or a comma-separated list of them.
    #[arg(long, env = "MESH_INVENTORY_URL", default_value = "localhost:50053")]
    pub inventory_url: String,
}

/// The orders policy shipped with the service (config/policy/orders.toml): reading needs
/// `orders:read`, placing and cancelling `orders:write`; which orders a caller may touch is
/// decided per object in the handlers.
pub const SHIPPED_POLICY: &str = include_str!("../../../config/policy/orders.toml");

/// The shipped orders policy for the workloads of `trust_domain`, checked against the protos.
pub fn policy(trust_domain: &str) -> Result<Policy, auth_interceptor::PolicyFileError> {
    auth_interceptor::parse_policy(SHIPPED_POLICY, POLICY_NAME, trust_domain, SERVED)
}

const POLICY_NAME: &str = "config/policy/orders.toml";
const SERVED: &[&[mesh_proto::rpc::Rpc]] = mesh_proto::rpc::servers::ORDERS;

/// A built, bound orders service: its state and the shared server around it.
#[derive(Debug)]
pub struct Application {
    server: MeshServer,
    api: OrdersApi,
}

impl Application {
    /// The shared server: bound address, tracer, limits.
    pub fn server(&self) -> &MeshServer {
        &self.server
    }
}

impl ServiceBinary for Application {
    type Args = Args;

    /// Loads certificates, discovers the issuer's keys, opens the database, binds the listener.
    /// Dependencies are connected lazily, so orders starts (and serves reads) without them.
    async fn build(args: Args) -> Result<Self, StartError> {
        // Checked first: a bad policy file stops the start before anything is opened.
        let policy = args.mesh.server.load_policy(
            POLICY_NAME,
            SHIPPED_POLICY,
            &args.mesh.tls.trust_domain,
            SERVED,
        )?;
        let runtime = Runtime::start("orders", args.listen, &args.mesh, &args.audience).await?;
        let auth = runtime.client("auth", &args.mesh.auth_url, "--auth-url")?;
        let inventory = runtime.client("inventory", &args.inventory_url, "--inventory-url")?;
        let store = Store::new(mesh_service::Db::open(&args.mesh.db, &store::MIGRATIONS).await?);
        Ok(Self {
            api: OrdersApi::new(
                store,
                TokenExchanger::new(auth, runtime.workload().identity.clone()),
                inventory,
            )
            .with_metrics(runtime.meter()),
            server: runtime.into_server(policy),
        })
    }

    fn observed(&self) -> mesh_service::Observed {
        self.server.observed()
    }

    fn describe(&self) -> String {
        format!("orders service listening on {}", self.server.addr())
    }

    async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let api = OrdersServiceServer::new(self.api)
            .max_decoding_message_size(self.server.limits().max_message_bytes);
        self.server.serve(api, shutdown).await
    }
}
