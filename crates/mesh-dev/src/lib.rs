//! The mesh for development: every service in one process, a trace receiver, and the OAuth2
//! client side of the issuer. What `meshctl demo`, the integration tests and the benchmarks
//! share, so none of them needs the CLI crate.
//!
//! # Layout
//! - [`devmesh`]: [`DevMesh`], auth, inventory and orders started on loopback from fresh
//!   certificates, exactly as their binaries start them (same `Application::build`, same
//!   flags).
//! - [`sink`]: [`sink::TraceSink`], an OTLP/gRPC receiver that keeps spans and draws waterfalls.
//! - [`oauth`]: client credentials, authorization code + PKCE, refresh rotation, revocation.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod devmesh;
pub mod oauth;
pub mod sink;

pub use devmesh::DevMesh;
