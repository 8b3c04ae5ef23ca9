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

use auth_interceptor::{Policy, Rule, TokenVerifier};
use mesh_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use mesh_service::{MeshServer, Runtime, ServiceBinary, ServiceFlags, StartError};
use mesh_tls::SpiffeId;

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

/// The inventory policy for the workloads of `trust_domain`. `orders` is the SPIFFE ID of the
/// orders workload, the only caller that may reserve and release.
pub fn policy(trust_domain: &str, orders: SpiffeId) -> Policy {
    use mesh_proto::inventory::v1::rpc::inventory_service as rpc;
    Policy::new(trust_domain)
        .with_health()
        .with_reflection()
        .allow(rpc::LIST_ITEMS, Rule::token().scope("inventory:read"))
        .allow(rpc::GET_ITEM, Rule::token().scope("inventory:read"))
        .allow(
            rpc::RESERVE,
            Rule::token()
                .scope("inventory:reserve")
                .callers([orders.clone()])
                .actors(["orders"]),
        )
        .allow(
            rpc::RELEASE,
            Rule::token()
                .scope("inventory:reserve")
                .callers([orders])
                .actors(["orders"]),
        )
        .allow(rpc::RESTOCK, Rule::token().scope("inventory:admin"))
}

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
        let runtime = Runtime::start("inventory", args.listen, &args.mesh, &args.audience).await?;
        let orders = SpiffeId::workload(runtime.trust_domain(), "orders")
            .map_err(|e| StartError::config("--trust-domain", e))?;
        let store = Store::new(mesh_service::Db::open(&args.mesh.db, &store::MIGRATIONS).await?);
        let policy = policy(runtime.trust_domain(), orders);
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
