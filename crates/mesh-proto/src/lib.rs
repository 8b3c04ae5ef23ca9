//! Rust types and gRPC stubs for the mesh's v1 APIs, generated from `proto/` at build time.
//!
//! `build.rs` parses the `.proto` files with protox (pure Rust), so no `protoc` is needed on any
//! machine, and hands the descriptors to tonic-prost-build. Generated code is never committed.
//!
//! # Layout
//! - [`auth::v1`]: `mesh.auth.v1.AuthService`, token issuance and exchange for workloads.
//! - [`inventory::v1`]: `mesh.inventory.v1.InventoryService`, stock and reservations.
//! - [`orders::v1`]: `mesh.orders.v1.OrdersService`, orders placed on behalf of users.
//! - [`domain`]: parsed domain types (`Sku`, `Quantity`, …) and `INVALID_ARGUMENT` with field
//!   violations.
//! - [`FILE_DESCRIPTOR_SET`], [`reflection`]: the encoded descriptors, and a gRPC reflection
//!   service that describes one of our services.

#![forbid(unsafe_code)]

pub mod domain;

/// `mesh.auth.v1`.
pub mod auth {
    /// Version 1 of the auth API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("mesh.auth.v1");
    }
}

/// `mesh.inventory.v1`.
pub mod inventory {
    /// Version 1 of the inventory API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("mesh.inventory.v1");
    }
}

/// `mesh.orders.v1`.
pub mod orders {
    /// Version 1 of the orders API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("mesh.orders.v1");
    }
}

/// The encoded `FileDescriptorSet` of every mesh API, as served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mesh_descriptor");

/// The gRPC reflection service (v1) describing `service` only (e.g.
/// `mesh.orders.v1.OrdersService`), so a server never advertises APIs it does not serve.
pub fn reflection(
    service: &str,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .build_v1()
}
