//! What every mesh binary does first: parse its flags the operator-interface way, and start
//! logging.
//!
//! The operator interface (DESIGN.md) promises that every binary takes flags with env-var twins,
//! prints a clear message and exits 64 (`EX_USAGE`) on bad configuration, and honours `RUST_LOG`
//! and `MESH_LOG_FORMAT`. Putting that in one place keeps the promise the same everywhere.
//!
//! # Layout
//! - [`parse_args`]: clap parsing with exit code 64 on any usage error.
//! - [`init`]: the tracing subscriber (`RUST_LOG` filter, JSON or pretty lines).
//! - [`shutdown_signal`]: resolves on SIGINT or SIGTERM, for graceful shutdown.
//! - [`EXIT_USAGE`]: the exit code for bad configuration.
//! - [`trace`]: OpenTelemetry tracers per service and the W3C-propagating gRPC layers.
//! - [`sink`]: an OTLP/gRPC receiver (official proto types) that keeps spans and draws waterfalls.
//! - [`TlsFlags`], [`AuditFlags`], [`StartError`], [`exit_on_start_error`]: the flags and
//!   start-up failures every mesh service shares.

#![forbid(unsafe_code)]

pub mod sink;
pub mod trace;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use auth_interceptor::audit::AuditLog;
use mesh_tls::{Reloadable, SpiffeId, TlsFiles, TrustBundle};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// `EX_USAGE` from sysexits.h: the command was used incorrectly (a bad flag, env var or file).
pub const EXIT_USAGE: i32 = 64;

/// Parses the process's arguments (and their env twins). `--help` and `--version` print and
/// exit 0; any error prints clap's message, which names the flag, and exits 64.
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let _ = error.print();
            std::process::exit(EXIT_USAGE)
        }
    }
}

/// Prints `message` as a configuration error and exits 64.
pub fn exit_bad_config(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(EXIT_USAGE)
}

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

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// The TLS flags of every mesh workload (`MESH_TLS_CERT`, `MESH_TLS_KEY`, `MESH_TLS_CA`).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsFlags {
    /// PEM certificate chain of this workload.
    #[arg(long, env = "MESH_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of this workload.
    #[arg(long, env = "MESH_TLS_KEY")]
    pub tls_key: PathBuf,
    /// PEM trust bundle (the mesh CA).
    #[arg(long, env = "MESH_TLS_CA")]
    pub tls_ca: PathBuf,
    /// The SPIFFE trust domain: this workload's own certificate must be in it, and callers from
    /// any other domain get PERMISSION_DENIED on everything but health checks.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
}

/// Where a service appends its audit records (`MESH_AUDIT_LOG`) and the HMAC key file that
/// chains them (`MESH_AUDIT_KEY_FILE`). Both or neither.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditFlags {
    /// JSON-lines audit log, HMAC-chained; created if missing, verified before appending.
    #[arg(long, env = "MESH_AUDIT_LOG", requires = "audit_key_file")]
    pub audit_log: Option<PathBuf>,
    /// File holding the audit HMAC key (at least 32 bytes). Never logged.
    #[arg(long, env = "MESH_AUDIT_KEY_FILE", requires = "audit_log")]
    pub audit_key_file: Option<PathBuf>,
}

impl AuditFlags {
    /// Opens the log for `service`, if one is configured.
    pub fn open(&self, service: &str) -> Result<Option<Arc<AuditLog>>, StartError> {
        match (&self.audit_log, &self.audit_key_file) {
            (Some(log), Some(key)) => AuditLog::open(service, log, key)
                .map(|log| Some(Arc::new(log)))
                .map_err(|e| StartError::Config(format!("--audit-log/--audit-key-file: {e}"))),
            _ => Ok(None),
        }
    }
}

/// A workload's loaded TLS identity.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its own certificate, reloadable.
    pub identity: Arc<Reloadable>,
    /// The mesh CA.
    pub roots: TrustBundle,
    /// Its SPIFFE ID, in the trust domain of `--trust-domain`.
    pub spiffe_id: SpiffeId,
}

impl Workload {
    /// The trust domain the workload and its callers belong to.
    pub fn trust_domain(&self) -> &str {
        self.spiffe_id.trust_domain()
    }
}

impl TlsFlags {
    /// The flags as files.
    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
        }
    }

    /// Loads the certificate, key and trust bundle; a configuration error names the flag.
    pub fn load(&self) -> Result<Workload, StartError> {
        let files = self.files();
        let identity = Reloadable::load(files.clone())
            .map_err(|e| StartError::Config(format!("--tls-cert/--tls-key: {e}")))?;
        let roots = files
            .trust_bundle()
            .map_err(|e| StartError::Config(format!("--tls-ca: {e}")))?;
        let spiffe_id = identity.spiffe_id().ok_or_else(|| {
            StartError::Config("--tls-cert: the certificate has no SPIFFE ID".into())
        })?;
        if spiffe_id.trust_domain() != self.trust_domain {
            return Err(StartError::Config(format!(
                "--tls-cert: the certificate's SPIFFE ID {spiffe_id} is outside the trust \
                 domain {} (--trust-domain / MESH_TRUST_DOMAIN)",
                self.trust_domain
            )));
        }
        Ok(Workload {
            identity,
            roots,
            spiffe_id,
        })
    }
}

/// Why a service could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (a flag, an env var, a file): the binary exits 64.
    #[error("{0}")]
    Config(String),
    /// A runtime failure (a port in use, an unreachable issuer): the binary exits 1.
    #[error("{0}")]
    Runtime(String),
}

impl StartError {
    /// Whether this is the operator's configuration (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_))
    }
}

/// Prints a start-up error and exits: 64 for configuration, 1 otherwise.
pub fn exit_on_start_error(error: StartError) -> ! {
    if error.is_config() {
        exit_bad_config(error)
    }
    eprintln!("error: {error}");
    std::process::exit(1)
}
