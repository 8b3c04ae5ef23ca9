//! Logs, traces and metrics: the tracing subscriber every binary installs, and OpenTelemetry
//! tracers and meters with the tower layers that carry W3C trace context across every hop.
//!
//! This crate knows nothing of authentication or of how a service starts (that is
//! `mesh-service`); it depends on no auth crate, so anything may use it.
//!
//! # Layout
//! - [`init`], [`init_with_default`]: the tracing subscriber (`RUST_LOG` filter, JSON or pretty
//!   lines per `MESH_LOG_FORMAT`).
//! - [`trace`]: OpenTelemetry tracers per service and the W3C-propagating gRPC layers.
//! - [`metrics`]: the meter provider beside each tracer, its Prometheus rendering, and the RPC
//!   duration histograms the trace layers record; [`prom`], reading a scrape back.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod metrics;
pub mod prom;
pub mod trace;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Installs the global tracing subscriber: `RUST_LOG` filtering (default `info`), JSON lines
/// when `MESH_LOG_FORMAT=json`, pretty lines otherwise. Safe to call more than once (later calls
/// do nothing), which tests rely on.
pub fn init() {
    init_with_default("info");
}

/// Like [`init`], with `default_filter` in force when `RUST_LOG` is not set.
pub fn init_with_default(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("MESH_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}
