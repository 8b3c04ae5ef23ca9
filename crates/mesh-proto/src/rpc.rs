//! What an RPC is, once: one typed constant per method of every mesh service, generated from the
//! `proto/` descriptors (`<package>::rpc::<service>::<METHOD>`), with its path, its service and
//! whether a retry is safe (protobuf's `idempotency_level`). Policy rows, the client's retry
//! decision and audit records take these, so a method that does not exist cannot be named, and a
//! new idempotent method is retried because its proto line says so.

/// Whether a method may be sent again with the same effect: protobuf's standard
/// `option idempotency_level` on the rpc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Idempotency {
    /// Not declared: never retried.
    Unknown,
    /// `NO_SIDE_EFFECTS`: a read.
    NoSideEffects,
    /// `IDEMPOTENT`: a write keyed by the caller (an idempotency key, a reservation id), or one
    /// whose repetition is harmless.
    Idempotent,
}

/// One gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rpc {
    /// `/package.Service/Method`, as on the wire.
    pub path: &'static str,
    /// `package.Service`.
    pub service: &'static str,
    /// `Method`.
    pub method: &'static str,
    /// From the proto's `idempotency_level`.
    pub idempotency: Idempotency,
    /// The client sends a stream.
    pub client_streaming: bool,
    /// The server answers with a stream.
    pub server_streaming: bool,
}

impl Rpc {
    /// Whether a failed attempt may be sent again: a unary method declared idempotent or free
    /// of side effects.
    pub fn is_retryable(&self) -> bool {
        self.idempotency != Idempotency::Unknown && !self.client_streaming && !self.server_streaming
    }
}

/// The standard gRPC health-checking service (`grpc.health.v1`), which every server carries.
pub mod health {
    use super::{Idempotency, Rpc};
    /// `/grpc.health.v1.Health/Check`.
    pub const CHECK: Rpc = Rpc {
        path: "/grpc.health.v1.Health/Check",
        service: "grpc.health.v1.Health",
        method: "Check",
        idempotency: Idempotency::NoSideEffects,
        client_streaming: false,
        server_streaming: false,
    };
    /// `/grpc.health.v1.Health/Watch`.
    pub const WATCH: Rpc = Rpc {
        path: "/grpc.health.v1.Health/Watch",
        service: "grpc.health.v1.Health",
        method: "Watch",
        idempotency: Idempotency::NoSideEffects,
        client_streaming: false,
        server_streaming: true,
    };
    /// Every method of the service.
    pub const ALL: &[Rpc] = &[CHECK, WATCH];
}

/// gRPC server reflection (`grpc.reflection.v1`), which mesh servers offer to mesh workloads.
pub mod reflection {
    use super::{Idempotency, Rpc};
    /// `/grpc.reflection.v1.ServerReflection/ServerReflectionInfo`.
    pub const SERVER_REFLECTION_INFO: Rpc = Rpc {
        path: "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        service: "grpc.reflection.v1.ServerReflection",
        method: "ServerReflectionInfo",
        idempotency: Idempotency::NoSideEffects,
        client_streaming: true,
        server_streaming: true,
    };
    /// Every method of the service.
    pub const ALL: &[Rpc] = &[SERVER_REFLECTION_INFO];
}

include!(concat!(env!("OUT_DIR"), "/rpc_index.rs"));

/// The method with this wire path, among the mesh's services, health and reflection.
pub fn by_path(path: &str) -> Option<&'static Rpc> {
    SERVICES
        .iter()
        .chain([health::ALL, reflection::ALL].iter())
        .flat_map(|service| service.iter())
        .find(|rpc| rpc.path == path)
}

/// The methods of service `name` (`package.Service`), if it is one of the mesh's.
pub fn service(name: &str) -> Option<&'static [Rpc]> {
    SERVICES
        .iter()
        .copied()
        .find(|methods| methods.first().is_some_and(|rpc| rpc.service == name))
}

/// The mesh's servers and the services each serves (besides health and reflection, which
/// every server carries): what a server's policy file must have a rule for.
pub mod servers {
    use super::Rpc;

    /// The auth service: its token API and the CA.
    pub const AUTH: &[&[Rpc]] = &[
        crate::auth::v1::rpc::auth_service::ALL,
        crate::identity::v1::rpc::identity::ALL,
        crate::identity::v1::rpc::identity_admin::ALL,
    ];
    /// The orders service.
    pub const ORDERS: &[&[Rpc]] = &[crate::orders::v1::rpc::orders_service::ALL];
    /// The inventory service.
    pub const INVENTORY: &[&[Rpc]] = &[crate::inventory::v1::rpc::inventory_service::ALL];

    /// The server named `name` (`auth`, `orders`, `inventory`).
    pub fn by_name(name: &str) -> Option<&'static [&'static [Rpc]]> {
        match name {
            "auth" => Some(AUTH),
            "orders" => Some(ORDERS),
            "inventory" => Some(INVENTORY),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_found_by_its_path_and_idempotency_comes_from_the_proto() {
        let reserve = crate::inventory::v1::rpc::inventory_service::RESERVE;
        assert_eq!(reserve.path, "/mesh.inventory.v1.InventoryService/Reserve");
        assert_eq!(by_path(reserve.path), Some(&reserve));
        assert!(reserve.is_retryable());
        assert!(!crate::inventory::v1::rpc::inventory_service::RESTOCK.is_retryable());
        assert!(!crate::auth::v1::rpc::auth_service::WATCH_REVOCATIONS.is_retryable());
        assert!(by_path("/mesh.inventory.v1.InventoryService/Typo").is_none());
        for methods in SERVICES {
            for rpc in *methods {
                assert_eq!(by_path(rpc.path), Some(rpc));
                assert_eq!(rpc.path, format!("/{}/{}", rpc.service, rpc.method));
            }
        }
    }
}
