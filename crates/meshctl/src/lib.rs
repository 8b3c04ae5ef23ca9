//! meshctl: the operator and user CLI of Zero-Trust Mesh.
//!
//! meshctl is a workload too: on the mesh it presents its own certificate
//! (`spiffe://mesh.local/sa/meshctl`) and carries a token, like any service would.
//!
//! # Layout
//! - [`cli`]: the flags (clap, with env twins).
//! - [`run`]: dispatches a parsed command to its file under [`commands`]; [`CliError`] decides
//!   the exit code.
//! - [`commands`]: one file per command (`certs`, `token`, `login`, `orders`, `inventory`,
//!   `health`, `secret`, `audit`, `demo`, `loadgen`, `trace_sink`).
//! - [`session`]: the 0600 session file `login` writes.
//!
//! The in-process mesh, the trace receiver and the OAuth2 client side live in `mesh-dev`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod commands;
pub mod session;

use crate::cli::{CertsCommand, Cli, Command};

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
            Self::Usage(_) => mesh_service::EXIT_USAGE,
            Self::Failed(_) => 1,
        }
    }
}

pub(crate) fn failed(error: impl std::fmt::Display) -> CliError {
    CliError::Failed(error.to_string())
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    use commands::*;
    match cli.command {
        Command::Certs(CertsCommand::Init(args)) => certs::run(args),
        Command::Certs(CertsCommand::Server(args)) => certs::server(args),
        Command::Certs(CertsCommand::Show {
            addr,
            workload,
            tls,
        }) => certs::show(&addr, &workload, &tls).await,
        Command::Token(args) => token::run(args).await,
        Command::Login(args) => login::run(args).await,
        Command::Logout(args) => login::logout(args).await,
        Command::Orders(command) => orders::run(command).await,
        Command::Inventory(command) => inventory::run(command).await,
        Command::Health(args) => health::run(args).await,
        Command::HashSecret(args) => secret::run(&args),
        Command::Audit(command) => audit::run(command),
        Command::Keys(command) => keys::run(command).await,
        Command::Policy(command) => policy::run(command),
        Command::Identity(command) => identity::run(command).await,
        Command::Ca(command) => identity::run_ca(command).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Loadgen(args) => loadgen::run(args).await,
        Command::Stat(args) => stat::run(args).await,
        Command::TraceSink { listen } => trace_sink::run(listen).await,
    }
}
