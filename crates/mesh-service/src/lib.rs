//! The runtime every mesh service shares, written once: a service is its state, its routes and
//! its policy; everything around them lives here.
//!
//! The operator interface promises that every binary takes flags with env-var twins, prints a
//! clear message and exits 64 (`EX_USAGE`) on bad configuration, serves its API behind mutual TLS
//! with the workload's SPIFFE identity, authenticates, authorizes and audits every call, exports
//! its traces, and drains on SIGTERM. Orders, inventory and the auth service's mesh side keep that
//! promise by building on this crate rather than each restating it.
//!
//! # Layout
//! - [`config`]: flag groups ([`TlsFlags`], [`AuditFlags`], [`ServiceFlags`]) and [`parse_args`]
//!   (exit 64 on any usage error).
//! - [`error`]: [`StartError`], which names the flag at fault and decides the exit code.
//! - [`runtime`]: [`Runtime`], what a service holds once its flags are loaded (workload
//!   identity, token verifier, bound listener, audit log, tracer), and client transports to its
//!   dependencies.
//! - [`server`]: [`MeshServer`], health + reflection + trace layer + auth layer + HTTP/2 limits
//!   around any tonic service.
//! - [`admin`], [`observe`]: the `/metrics` listener and the metrics of the shared machinery.
//! - [`shed`]: [`shed::ShedLayer`], the server-wide bound on calls in flight.
//! - [`storage`]: [`Db`], the one way a service opens and migrates its database (SQLite or
//!   PostgreSQL, [`DbUrl`]).
//! - [`run_binary`], [`shutdown_signal`]: what every `main.rs` does.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod config;
pub mod error;
pub mod identity;
pub mod observe;
pub mod policy;
pub mod runtime;
pub mod server;
pub mod shed;
pub mod storage;

use std::future::Future;

pub use config::{
    AuditFlags, EXIT_USAGE, ServerFlags, ServiceFlags, TlsFlags, Workload, parse_args,
    parse_duration,
};
pub use error::{StartError, exit_on_start_error};
pub use runtime::{IdentitySource, Parts, RenewOwn, Runtime, VerifierSource, traced};
pub use server::MeshServer;
pub use storage::{Db, DbUrl, Dialect, Migrations, Tx};

/// A service binary's life, from flags to drain: what [`run_binary`] drives.
pub trait ServiceBinary: Sized {
    /// The flags (clap, with env twins).
    type Args: clap::Parser;

    /// Loads configuration, binds listeners, opens storage. Errors exit 64 or 1.
    fn build(args: Self::Args) -> impl Future<Output = Result<Self, StartError>>;

    /// One line for the log once the service listens (addresses, issuer).
    fn describe(&self) -> String;

    /// What it exposes to whoever watches it: its certificate renewal, its admin listener, its
    /// tracer.
    fn observed(&self) -> Observed;

    /// Serves until `shutdown` resolves, then drains.
    fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<(), StartError>> + Send;
}

/// What a running service exposes to an operator's tools and the dev harness.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Its certificate renewal, when it renews one.
    pub renewal: Option<std::sync::Arc<identity::RenewalStatus>>,
    /// Its admin listener (`/metrics`), when it has one.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// Its tracer.
    pub telemetry: mesh_telemetry::trace::Telemetry,
}

/// What every service's `main.rs` does: parse flags (exit 64 on a bad one), install logging,
/// build the service (exit 64 on bad configuration, 1 on a runtime failure), serve until
/// SIGINT or SIGTERM, then drain.
pub async fn run_binary<S: ServiceBinary>() {
    let args: S::Args = parse_args();
    mesh_telemetry::init();
    let service = S::build(args)
        .await
        .unwrap_or_else(|e| exit_on_start_error(e));
    tracing::info!("{}", service.describe());
    if let Err(error) = service.run_until_stopped(shutdown_signal()).await {
        exit_on_start_error(error);
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
