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
#![warn(missing_docs)]

pub mod api;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use auth_interceptor::{Policy, TokenVerifier};
use mesh_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use mesh_service::{MeshServer, Runtime, ServiceBinary, ServiceFlags, StartError};

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
    /// The audience tokens must carry.
    #[arg(long, env = "MESH_AUDIENCE", default_value = "inventory")]
    pub audience: String,
    /// What every mesh service is given: identity, audit log, tracing, issuer, database.
    #[command(flatten)]
    pub mesh: ServiceFlags,
}

/// The inventory policy shipped with the service (config/policy/inventory.toml): orders, and only
/// orders acting for a user, reserves and releases stock.
pub const SHIPPED_POLICY: &str = include_str!("../../../config/policy/inventory.toml");

/// The shipped inventory policy for the workloads of `trust_domain`, checked against the protos.
pub fn policy(trust_domain: &str) -> Result<Policy, auth_interceptor::PolicyFileError> {
    auth_interceptor::parse_policy(SHIPPED_POLICY, POLICY_NAME, trust_domain, SERVED)
}

const POLICY_NAME: &str = "config/policy/inventory.toml";
const SERVED: &[&[mesh_proto::rpc::Rpc]] = mesh_proto::rpc::servers::INVENTORY;

/// A built, bound inventory service: its state and the shared server around it.
#[derive(Debug)]
pub struct Application {
    server: MeshServer,
    verifier: Arc<TokenVerifier>,
    api: InventoryApi,
}

impl Application {
    /// The shared server: bound address, tracer, limits.
    pub fn server(&self) -> &MeshServer {
        &self.server
    }

    /// The token verifier (tests read its JWKS fetch count).
    pub fn verifier(&self) -> Arc<TokenVerifier> {
        self.verifier.clone()
    }
}

impl ServiceBinary for Application {
    type Args = Args;

    /// Loads certificates, discovers the issuer's keys, opens the database, binds the listener.
    async fn build(args: Args) -> Result<Self, StartError> {
        // Checked first: a bad policy file stops the start before anything is opened.
        let policy = args.mesh.server.load_policy(
            POLICY_NAME,
            SHIPPED_POLICY,
            &args.mesh.tls.trust_domain,
            SERVED,
        )?;
        let runtime = Runtime::start("inventory", args.listen, &args.mesh, &args.audience).await?;
        let store = Store::new(mesh_service::Db::open(&args.mesh.db, &store::MIGRATIONS).await?);
        Ok(Self {
            verifier: runtime.verifier().clone(),
            api: InventoryApi::new(store),
            server: runtime.into_server(policy),
        })
    }

    fn observed(&self) -> mesh_service::Observed {
        self.server.observed()
    }

    fn describe(&self) -> String {
        format!("inventory service listening on {}", self.server.addr())
    }

    async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let api = InventoryServiceServer::new(self.api)
            .max_decoding_message_size(self.server.limits().max_message_bytes);
        self.server.serve(api, shutdown).await
    }
}
