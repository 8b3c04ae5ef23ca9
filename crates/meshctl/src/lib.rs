//! meshctl: the operator and user CLI of Zero-Trust Mesh, and the in-process dev mesh.
//!
//! meshctl is a workload too: on the mesh it presents its own certificate
//! (`spiffe://mesh.local/sa/meshctl`) and carries a token, like any service would.
//!
//! # Layout
//! - [`cli`]: the flags (clap, with env twins).
//! - [`run`]: dispatches a parsed command; [`CliError`] decides the exit code.
//! - [`token`]: client credentials against the auth service's token endpoint.
//! - [`login`]: authorization code + PKCE, refresh, revocation, the 0600 session file.
//! - [`calls`]: login, logout, orders and inventory commands.
//! - [`devmesh`]: auth and inventory started in-process on loopback (`demo`, tests).
//! - [`demo`]: the guided scenario of `meshctl demo`.
//! - [`loadgen`]: steady load as several users, for a trace UI (`docker compose up`).

#![forbid(unsafe_code)]

pub mod calls;
pub mod cli;
pub mod demo;
pub mod devmesh;
pub mod loadgen;
pub mod login;
pub mod token;

use std::io::Read;

use mesh_tls::certs::{DEFAULT_WORKLOADS, DevCa, validate_workload_name};
use mesh_tls::client::MeshConnector;
use mesh_tls::{Reloadable, SpiffeId, TlsFiles};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::cli::{AuditCommand, CertsCommand, Cli, Command, TlsArgs};

/// How a command failed, which decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or configuration: exit 64.
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed (a refused call, an unreachable service): exit 1.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => mesh_telemetry::EXIT_USAGE,
            Self::Failed(_) => 1,
        }
    }
}

pub(crate) fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Certs(CertsCommand::Init(args)) => {
            for name in &args.names {
                validate_workload_name(name)
                    .map_err(|e| CliError::Usage(format!("--name: {e}")))?;
            }
            let mut names: Vec<String> =
                DEFAULT_WORKLOADS.iter().map(|n| (*n).to_owned()).collect();
            names.extend(
                args.names
                    .iter()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            if args.if_missing && complete_set(&args.out, &names)? {
                println!(
                    "kept the certificates in {} (pass --force to replace them)",
                    args.out.display()
                );
                return Ok(());
            }
            let ca = DevCa::generate(&args.trust_domain)
                .map_err(|e| CliError::Usage(format!("--trust-domain: {e}")))?;
            let written = ca
                .write_dir(&args.out, &names, args.force)
                .map_err(|e| CliError::Usage(format!("--out: {e}")))?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Token(args) => {
            let http = calls::https(&args.reach.tls_ca, &args.issuer, args.reach.issuer_ip)?;
            let credentials = token::ClientCredentials {
                client_id: args.client_id,
                client_secret: args.client_secret,
            };
            let response = token::client_credentials(
                &http,
                &args.issuer,
                &credentials,
                &args.audience,
                &args.scopes,
            )
            .await
            .map_err(failed)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "access_token": response.access_token,
                        "token_type": response.token_type,
                        "expires_in": response.expires_in,
                        "scope": response.scope,
                    })
                );
            } else {
                println!("{}", response.access_token);
            }
            Ok(())
        }
        Command::Login(args) => calls::login(args).await,
        Command::Logout(args) => calls::logout(args).await,
        Command::Orders(command) => calls::orders(command).await,
        Command::Inventory(command) => calls::inventory(command).await,
        Command::Health(args) => {
            let channel = connect(&args.tls, &args.workload, &args.addr)?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: args.service.clone(),
                })
                .await
                .map_err(|s| failed(format!("{}: {}", s.code(), s.message())))?
                .into_inner()
                .status();
            println!("{}: {}", args.addr, status.as_str_name());
            if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                Ok(())
            } else {
                Err(failed("not serving"))
            }
        }
        Command::HashSecret => {
            let mut secret = String::new();
            std::io::stdin()
                .read_to_string(&mut secret)
                .map_err(|e| CliError::Usage(format!("stdin: {e}")))?;
            let secret = secret.trim_end_matches(['\n', '\r']);
            if secret.len() < 16 {
                return Err(CliError::Usage(
                    "stdin: a client secret must be at least 16 characters".into(),
                ));
            }
            let hash = auth_service::clients::hash_secret(secret).map_err(failed)?;
            println!("{hash}");
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { file, key_file }) => {
            use auth_interceptor::audit::{VerifyError, verify};
            match verify(&file, &key_file) {
                Ok(count) => {
                    println!("audit verify: OK ({count} records)");
                    Ok(())
                }
                Err(VerifyError::Open(error)) => Err(CliError::Usage(error.to_string())),
                Err(VerifyError::Chain(problem)) => {
                    println!("audit verify: FAILED: {problem}");
                    Err(failed(format!("{}: {problem}", file.display())))
                }
            }
        }
        Command::Audit(AuditCommand::Keygen { out }) => {
            auth_interceptor::audit::write_new_key(&out)
                .map_err(|e| CliError::Usage(format!("--out: {e}")))?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Loadgen(args) => loadgen::run(args).await,
        Command::TraceSink { listen } => trace_sink(listen).await,
    }
}

/// Whether `dir` already holds the whole set for `names`: `Ok(true)` when every file is there,
/// `Ok(false)` when none is, and a usage error naming the first missing file otherwise (a
/// partial set cannot be completed: the CA's key is never written).
fn complete_set(dir: &std::path::Path, names: &[String]) -> Result<bool, CliError> {
    let files: Vec<std::path::PathBuf> = std::iter::once(dir.join("ca.pem"))
        .chain(
            names
                .iter()
                .flat_map(|n| [dir.join(format!("{n}.pem")), dir.join(format!("{n}.key"))]),
        )
        .collect();
    let missing: Vec<_> = files.iter().filter(|path| !path.exists()).collect();
    match missing.first() {
        None => Ok(true),
        Some(_) if missing.len() == files.len() => Ok(false),
        Some(first) => Err(CliError::Usage(format!(
            "--out: {} is missing from an existing set (pass --force to replace the whole set)",
            first.display()
        ))),
    }
}

/// `meshctl trace-sink`: receive traces until Ctrl-C, drawing each once it has been quiet for a
/// second (its spans have all arrived).
async fn trace_sink(listen: std::net::SocketAddr) -> Result<(), CliError> {
    use std::collections::{HashMap, HashSet};
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Usage(format!("--listen {listen}: {e}")))?;
    let sink = mesh_telemetry::sink::TraceSink::new();
    println!("receiving OTLP/gRPC traces on {listen}; Ctrl-C to stop");
    let server = tokio::spawn(
        sink.clone()
            .serve(listener, mesh_telemetry::shutdown_signal()),
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut drawn: HashSet<String> = HashSet::new();
    while !server.is_finished() {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for span in sink.spans() {
            *counts.entry(span.trace_id).or_default() += 1;
        }
        for (trace_id, count) in &counts {
            if seen.get(trace_id) == Some(count) && drawn.insert(trace_id.clone()) {
                let services = sink.services(trace_id);
                println!("{}", sink.waterfall(trace_id));
                println!(
                    "trace {trace_id}: {count} spans across {} services: {}\n",
                    services.len(),
                    services.join(", ")
                );
                sink.forget(trace_id);
            }
        }
        seen = counts;
    }
    server
        .await
        .map_err(failed)?
        .map_err(|e| failed(format!("trace sink: {e}")))
}

/// An mTLS channel to `addr`, presenting meshctl's certificate, expecting workload `workload`.
pub(crate) fn connect(
    tls: &TlsArgs,
    workload: &str,
    addr: &str,
) -> Result<tonic::transport::Channel, CliError> {
    let files = TlsFiles {
        cert: tls.tls_cert.clone(),
        key: tls.tls_key.clone(),
        ca: tls.tls_ca.clone(),
    };
    let roots = files
        .trust_bundle()
        .map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))?;
    let identity = Reloadable::load(files)
        .map_err(|e| CliError::Usage(format!("--tls-cert/--tls-key: {e}")))?;
    let expected = SpiffeId::workload(&tls.trust_domain, workload)
        .map_err(|e| CliError::Usage(format!("--workload/--trust-domain: {e}")))?;
    MeshConnector::new(identity, roots, expected)
        .and_then(|c| c.channel(addr))
        .map_err(|e| CliError::Usage(format!("--addr: {e}")))
}
