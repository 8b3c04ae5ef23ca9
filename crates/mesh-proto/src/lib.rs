//! Rust types and gRPC stubs for the mesh's v1 APIs, generated from `proto/` at build time.
//!
//! `build.rs` parses the `.proto` files with protox (pure Rust), so no `protoc` is needed on any
//! machine, and hands the descriptors to tonic-prost-build. Generated code is never committed.
//!
//! # Layout
//! - [`auth::v1`]: `mesh.auth.v1.AuthService`, token issuance and exchange for workloads.
//! - [`inventory::v1`]: `mesh.inventory.v1.InventoryService`, stock and reservations.
//! - [`orders::v1`]: `mesh.orders.v1.OrdersService`, orders placed on behalf of users.
//! - [`rpc`]: what an RPC is, once: a typed constant per method (path, service, idempotency from
//!   the proto's `idempotency_level`), and lookups by path.
//! - [`domain`]: parsed domain types (`Sku`, `Quantity`, …) and `INVALID_ARGUMENT` with field
//!   violations.
//! - [`FILE_DESCRIPTOR_SET`], [`reflection`]: the encoded descriptors, and a gRPC reflection
//!   service that describes one of our services.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod domain;
pub mod rpc;

/// `mesh.auth.v1`.
pub mod auth {
    /// Version 1 of the auth API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("mesh.auth.v1");

        /// One typed constant per method of this package's services (see [`crate::rpc`]).
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/mesh.auth.v1.rpc.rs"));
        }
    }
}

/// `mesh.identity.v1`.
pub mod identity {
    /// Version 1 of the identity (CA) API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("mesh.identity.v1");

        /// One typed constant per method of this package's services (see [`crate::rpc`]).
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/mesh.identity.v1.rpc.rs"));
        }
    }
}

/// `mesh.inventory.v1`.
pub mod inventory {
    /// Version 1 of the inventory API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("mesh.inventory.v1");

        /// One typed constant per method of this package's services (see [`crate::rpc`]).
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/mesh.inventory.v1.rpc.rs"));
        }
    }
}

/// `mesh.orders.v1`.
pub mod orders {
    /// Version 1 of the orders API.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
        tonic::include_proto!("mesh.orders.v1");

        /// One typed constant per method of this package's services (see [`crate::rpc`]).
        pub mod rpc {
            include!(concat!(env!("OUT_DIR"), "/mesh.orders.v1.rpc.rs"));
        }
    }
}

/// The encoded `FileDescriptorSet` of every mesh API, as served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mesh_descriptor");

/// Why a reflection service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// The embedded descriptors do not decode (a build problem, not an operator one).
    #[error("embedded descriptors: {0}")]
    Descriptors(#[from] prost::DecodeError),
    /// No embedded file defines the service.
    #[error("no descriptor defines service {0}")]
    UnknownService(String),
    /// tonic-reflection refused the descriptors.
    #[error(transparent)]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The gRPC reflection service (v1) describing `service` only (e.g.
/// `mesh.orders.v1.OrdersService`), so a server never advertises APIs it does not serve.
///
/// tonic-reflection filters only `list_services` by service name; `file_containing_symbol` and
/// `file_by_filename` answer from every file registered. So only the file that defines
/// `service` and the files it imports are registered: every reflection method then describes
/// this server's API and nothing else.
pub fn reflection(
    service: &str,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ReflectionError,
> {
    let served = descriptors_of(service)?;
    Ok(tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(served)
        .with_service_name(service)
        .build_v1()?)
}

/// The file that defines `service` (a full name such as `mesh.orders.v1.OrdersService`) and,
/// transitively, the files it imports, out of [`FILE_DESCRIPTOR_SET`].
pub fn descriptors_of(service: &str) -> Result<prost_types::FileDescriptorSet, ReflectionError> {
    use prost::Message as _;
    let all = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)?;
    let defines = |file: &prost_types::FileDescriptorProto| {
        file.service
            .iter()
            .any(|s| format!("{}.{}", file.package(), s.name()) == service)
    };
    let root = all
        .file
        .iter()
        .find(|f| defines(f))
        .ok_or_else(|| ReflectionError::UnknownService(service.to_owned()))?;
    let mut wanted = vec![root.name().to_owned()];
    let mut kept = Vec::new();
    while let Some(name) = wanted.pop() {
        if kept
            .iter()
            .any(|f: &prost_types::FileDescriptorProto| f.name() == name)
        {
            continue;
        }
        if let Some(file) = all.file.iter().find(|f| f.name() == name) {
            wanted.extend(file.dependency.iter().cloned());
            kept.push(file.clone());
        }
    }
    Ok(prost_types::FileDescriptorSet { file: kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_is_described_by_its_own_file_only() {
        for (service, file) in [
            ("mesh.auth.v1.AuthService", "mesh/auth/v1/auth.proto"),
            (
                "mesh.orders.v1.OrdersService",
                "mesh/orders/v1/orders.proto",
            ),
            (
                "mesh.inventory.v1.InventoryService",
                "mesh/inventory/v1/inventory.proto",
            ),
        ] {
            let set = descriptors_of(service).expect("described");
            let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
            assert_eq!(names, [file], "{service}");
        }
    }

    #[test]
    fn an_unknown_service_is_refused() {
        assert!(matches!(
            descriptors_of("mesh.orders.v1.Nope"),
            Err(ReflectionError::UnknownService(_))
        ));
    }
}
