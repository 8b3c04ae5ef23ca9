//! meshctl's flags. Every flag that names something in the environment has an env twin.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The Zero-Trust Mesh operator and user CLI.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// meshctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Certificates for the mesh.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Get an access token with client credentials and print it.
    Token(TokenArgs),
    /// Call the inventory service.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Check a service with grpc.health.v1 over mTLS; exit 0 when it is SERVING.
    Health(HealthArgs),
    /// Hash a client secret read from standard input, for the auth config's `secret_hash`.
    HashSecret,
    /// Start a whole mesh in this process and walk through allowed and denied calls.
    Demo(DemoArgs),
}

/// `meshctl certs …`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a dev CA and a certificate for every workload.
    Init(CertsInitArgs),
}

/// `meshctl certs init`.
#[derive(Debug, Args)]
pub struct CertsInitArgs {
    /// Directory to write `ca.pem`, `<name>.pem` and `<name>.key` into.
    #[arg(long, env = "MESH_CERTS_DIR")]
    pub out: PathBuf,
    /// Extra workload names (auth, orders, inventory and meshctl are always issued).
    #[arg(long = "name")]
    pub names: Vec<String>,
    /// Trust domain of the SPIFFE IDs.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// The workload certificate meshctl presents on the mesh.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain meshctl presents.
    #[arg(long, env = "MESH_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of that certificate.
    #[arg(long, env = "MESH_TLS_KEY")]
    pub tls_key: PathBuf,
    /// PEM trust bundle (the mesh CA).
    #[arg(long, env = "MESH_TLS_CA")]
    pub tls_ca: PathBuf,
    /// Trust domain of the servers' SPIFFE IDs.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
}

/// `meshctl token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Issuer URL; the token endpoint is `<issuer>/oauth2/token`.
    #[arg(long, env = "MESH_ISSUER")]
    pub issuer: String,
    /// PEM trust bundle that the issuer's certificate chains to.
    #[arg(long, env = "MESH_TLS_CA")]
    pub tls_ca: PathBuf,
    /// The OAuth2 client id.
    #[arg(long, env = "MESH_CLIENT_ID")]
    pub client_id: String,
    /// The client secret (prefer the env var: flags show up in process lists).
    #[arg(long, env = "MESH_CLIENT_SECRET", hide_env_values = true)]
    pub client_secret: String,
    /// The audience (service) the token is for.
    #[arg(long, default_value = "inventory")]
    pub audience: String,
    /// Scopes to ask for; none means all the client may have for the audience.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Print the whole token response as JSON instead of the bare token.
    #[arg(long)]
    pub json: bool,
}

/// `meshctl inventory …`.
#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// List items and their stock.
    List(InventoryListArgs),
}

/// `meshctl inventory list`.
#[derive(Debug, Args)]
pub struct InventoryListArgs {
    /// Inventory's mesh address (`host:port`).
    #[arg(long, env = "MESH_INVENTORY_URL", default_value = "localhost:50053")]
    pub addr: String,
    /// Access token for audience `inventory` (e.g. from `meshctl token`).
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// meshctl's certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `meshctl health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service's mesh address (`host:port`).
    #[arg(long, env = "MESH_HEALTH_ADDR")]
    pub addr: String,
    /// The workload expected behind the address (its SPIFFE ID is checked).
    #[arg(long)]
    pub workload: String,
    /// The grpc.health.v1 service name to ask about; empty for the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// meshctl's certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `meshctl demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the mesh running after the scenario and print how to reach it.
    #[arg(long)]
    pub keep_running: bool,
}
