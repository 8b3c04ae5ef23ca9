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
    /// Log in as a user (authorization code + PKCE) and keep the tokens in the session file.
    Login(LoginArgs),
    /// Revoke the session's tokens at the issuer and delete the session file.
    Logout(LogoutArgs),
    /// Place, read and cancel orders as the logged-in user.
    #[command(subcommand)]
    Orders(OrdersCommand),
    /// Call the inventory service.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Check a service with grpc.health.v1 over mTLS (or on its plaintext health listener);
    /// exit 0 when it is SERVING.
    Health(HealthArgs),
    /// Workload identities from the mesh CA.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// The mesh CA itself.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Hash a client secret read from standard input (Argon2id), or make one (`--generate`), for
    /// the auth config's `secret_hash`.
    HashSecret(HashSecretArgs),
    /// The HMAC-chained audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The issuer's token-signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Authorization policy files (config/policy/).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Start a whole mesh in this process and walk through allowed and denied calls.
    Demo(DemoArgs),
    /// Keep a running mesh busy as several users (orders placed, read, cancelled, and refused
    /// attempts), each action its own trace.
    Loadgen(LoadgenArgs),
    /// The RED view per service and method (requests/s, success rate, p50/p99, denials by
    /// reason), read from the services' /metrics.
    Stat(StatArgs),
    /// Receive OTLP/gRPC traces and draw each one as a waterfall (a collector for the terminal).
    TraceSink {
        /// Where to listen for OTLP/gRPC (plaintext, like a collector's 4317).
        #[arg(long, env = "MESH_TRACE_SINK_LISTEN", default_value = "127.0.0.1:4317")]
        listen: std::net::SocketAddr,
    },
}

/// `meshctl certs …`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a dev CA and a certificate for every workload.
    Init(CertsInitArgs),
    /// Sign a certificate and key for a server outside the mesh that workloads reach by host
    /// name (the database): `<name>.pem` (its certificate, then the CA's) and `<name>.key`, DNS
    /// SAN `<name>`, 90 days. Clients verify it with the mesh CA (`sslmode=verify-full`).
    Server(CertsServerArgs),
    /// Show the certificate a workload serves right now: SPIFFE ID, serial, time left.
    Show {
        /// The workload's mesh address (`host:port`).
        #[arg(long)]
        addr: String,
        /// The workload expected behind the address (its SPIFFE ID is checked).
        #[arg(long)]
        workload: String,
        /// meshctl's certificate.
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// `meshctl certs server`.
#[derive(Debug, Args)]
pub struct CertsServerArgs {
    /// The server's host name, as clients name it (and the file names).
    #[arg(long)]
    pub name: String,
    /// The CA's certificate (`ca.pem`).
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// The CA's private key (what `certs init --ca-key` wrote).
    #[arg(long)]
    pub ca_key: PathBuf,
    /// Directory to write `<name>.pem` and `<name>.key` (0600) into.
    #[arg(long)]
    pub out: PathBuf,
    /// Trust domain of the CA.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
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
    #[arg(long, conflicts_with = "if_missing")]
    pub force: bool,
    /// Keep a complete existing set and exit 0 (a one-shot init container that runs on every
    /// start); an incomplete set is an error.
    #[arg(long)]
    pub if_missing: bool,
    /// Write the CA's private key here (mode 0600), for the auth service to import
    /// (`MESH_CA_KEY`): it then certifies itself and every workload online, and no `auth`
    /// certificate file is written. Keep it where only the auth service reads it.
    #[arg(long)]
    pub ca_key: Option<PathBuf>,
    /// `NAME=FILE`: workload NAME gets its certificate online; a join token for it is written to
    /// FILE (mode 0600) instead of a certificate and key. Repeatable; needs `--join-list`.
    #[arg(long = "join", value_parser = join_target, requires = "join_list")]
    pub joins: Vec<(String, PathBuf)>,
    /// Where to write the hashes of the join tokens, for the auth service (`MESH_JOIN_TOKENS`).
    #[arg(long, requires = "ca_key")]
    pub join_list: Option<PathBuf>,
    /// How long the written join tokens wait for their first use (`24h`, `7d`; 5 m to 30 d).
    #[arg(long, default_value = "7d", value_parser = join_ttl)]
    pub join_ttl: std::time::Duration,
}

fn join_target(raw: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?}: expected NAME=FILE"))?;
    mesh_tls::certs::validate_workload_name(name).map_err(|e| e.to_string())?;
    if file.is_empty() {
        return Err(format!("{raw:?}: the file is empty"));
    }
    Ok((name.to_owned(), PathBuf::from(file)))
}

fn join_ttl(raw: &str) -> Result<std::time::Duration, String> {
    mesh_service::config::parse_bounded_duration(
        raw,
        std::time::Duration::from_secs(300),
        std::time::Duration::from_secs(30 * 86_400),
    )
}

/// `meshctl identity …`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Create a single-use join token for a workload's first certificate and print it (an
    /// administrator's session with `auth:keys`). Start the workload with the token in the file
    /// `MESH_JOIN_TOKEN_FILE` names.
    JoinToken {
        /// The workload: the token is bound to spiffe://<trust domain>/sa/<workload>.
        #[arg(long)]
        workload: String,
        /// How long the token waits for its first use (`10m`, `1h`; at most 24 h).
        #[arg(long, default_value = "1h", value_parser = join_token_ttl)]
        ttl: std::time::Duration,
        /// Write the token to this file (mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the auth service is, and the administrator's session.
        #[command(flatten)]
        admin: AuthAdmin,
    },
}

fn join_token_ttl(raw: &str) -> Result<std::time::Duration, String> {
    mesh_service::config::parse_bounded_duration(
        raw,
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(86_400),
    )
}

/// `meshctl ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// One step of a CA rotation (an administrator's session with `auth:keys`): `add` a new CA
    /// to the trust bundle, `activate` it (it signs from then on) one certificate lifetime
    /// later, `retire` the previous one a lifetime after that. docs/deployment.md has the
    /// runbook.
    Rotate {
        /// The step.
        #[arg(value_enum)]
        step: CaStep,
        /// Write the trust bundle after the step to this file, for workloads that read their
        /// bundle from a file (they pick it up with `MESH_TLS_WATCH`).
        #[arg(long)]
        bundle_out: Option<PathBuf>,
        /// Where the auth service is, and the administrator's session.
        #[command(flatten)]
        admin: AuthAdmin,
    },
}

/// A step of `meshctl ca rotate`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CaStep {
    /// Publish a new CA in the trust bundle.
    Add,
    /// The new CA signs from now on.
    Activate,
    /// Remove the previous CA from the trust bundle.
    Retire,
}

/// The workload certificate meshctl presents on the mesh, and the trust domain of the servers'
/// SPIFFE IDs: the same flags (and env twins) every service takes.
pub use mesh_service::TlsFlags as TlsArgs;

/// How meshctl reaches the issuer's HTTPS endpoints.
#[derive(Debug, Clone, Args)]
pub struct IssuerArgs {
    /// PEM trust bundle that the issuer's certificate chains to.
    #[arg(long, env = "MESH_TLS_CA")]
    pub tls_ca: PathBuf,
    /// Connect to this IP for the issuer's host name instead of resolving it (like curl's
    /// `--resolve`): the URL, the TLS name check and the `iss` claim stay the issuer's. For a
    /// compose stack seen from the host: the issuer is `https://auth:8443`, auth is published
    /// on 127.0.0.1:8443.
    #[arg(long, env = "MESH_ISSUER_IP")]
    pub issuer_ip: Option<std::net::IpAddr>,
}

/// `meshctl token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Issuer URL; the token endpoint is `<issuer>/oauth2/token`.
    #[arg(long, env = "MESH_ISSUER")]
    pub issuer: String,
    /// How to reach it.
    #[command(flatten)]
    pub reach: IssuerArgs,
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

/// Where the user's tokens are kept between runs.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Session file (0600); default `$HOME/.config/meshctl/session.json`.
    #[arg(long, env = "MESH_SESSION_FILE")]
    pub session_file: Option<PathBuf>,
    /// Use this access token instead of the session's (e.g. from `meshctl token`).
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Reach the session's issuer at this IP (see `meshctl login --help`).
    #[arg(long, env = "MESH_ISSUER_IP")]
    pub issuer_ip: Option<std::net::IpAddr>,
}

/// `meshctl login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Issuer URL.
    #[arg(long, env = "MESH_ISSUER")]
    pub issuer: String,
    /// How to reach it.
    #[command(flatten)]
    pub reach: IssuerArgs,
    /// Fill in the login form as this user instead of waiting for a browser (scripts, tests).
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// The password for `--username` (prefer the env var).
    #[arg(long, env = "MESH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Only print the sign-in URL; do not try to open a browser (`$BROWSER`, else `xdg-open`
    /// or `open`).
    #[arg(long)]
    pub no_browser: bool,
    /// The audiences the login is for, space-separated; the first is the first access
    /// token's. The session can later get tokens for these audiences only (a refresh never
    /// widens a login).
    #[arg(long, default_value = "orders inventory")]
    pub audience: String,
    /// Session file (0600); default `$HOME/.config/meshctl/session.json`.
    #[arg(long, env = "MESH_SESSION_FILE")]
    pub session_file: Option<PathBuf>,
}

/// `meshctl logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// How to reach the session's issuer.
    #[command(flatten)]
    pub reach: IssuerArgs,
    /// Session file; default `$HOME/.config/meshctl/session.json`.
    #[arg(long, env = "MESH_SESSION_FILE")]
    pub session_file: Option<PathBuf>,
}

/// `meshctl orders …`.
#[derive(Debug, Subcommand)]
pub enum OrdersCommand {
    /// Place an order.
    Place {
        /// A line as `SKU:QUANTITY`; repeat for more lines.
        #[arg(long = "line", required = true)]
        lines: Vec<String>,
        /// Idempotency key (8 to 64 of letters, digits, '-', '_'); a new one when omitted.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Where and as whom.
        #[command(flatten)]
        target: OrdersTarget,
    },
    /// Show one order.
    Get {
        /// The order id.
        order_id: String,
        /// Where and as whom.
        #[command(flatten)]
        target: OrdersTarget,
    },
    /// List orders, newest first.
    List {
        /// Orders per page (1 to 100).
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        /// The next-page token printed by a previous list.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Where and as whom.
        #[command(flatten)]
        target: OrdersTarget,
    },
    /// Cancel an order and release its stock.
    Cancel {
        /// The order id.
        order_id: String,
        /// Where and as whom.
        #[command(flatten)]
        target: OrdersTarget,
    },
}

/// The orders service and the credentials to call it with.
#[derive(Debug, Args)]
pub struct OrdersTarget {
    /// Orders' mesh address (`host:port`).
    #[arg(long, env = "MESH_ORDERS_URL", default_value = "localhost:50052")]
    pub addr: String,
    /// meshctl's certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The user's tokens.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `meshctl keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Rotate the signing key now (an administrator's session with `auth:keys`, e.g. after
    /// `meshctl login --username admin --audience auth`): the published next key starts to
    /// sign, the current one stays published until its tokens expire.
    Rotate {
        /// Where the auth service is, and the administrator's session.
        #[command(flatten)]
        admin: AuthAdmin,
    },
}

/// An administrator's call to the auth service's mesh port: the address, meshctl's certificate
/// and the session holding a token with `auth:keys`.
#[derive(Debug, Args)]
pub struct AuthAdmin {
    /// The auth service's mesh address (`host:port`).
    #[arg(long, env = "MESH_AUTH_URL", default_value = "localhost:50051")]
    pub addr: String,
    /// meshctl's certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The administrator's tokens.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `meshctl inventory …`.
#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// List items and their stock.
    List {
        /// Where and as whom.
        #[command(flatten)]
        target: InventoryTarget,
    },
    /// Add stock to an item (needs `inventory:admin`).
    Restock {
        /// The item's SKU.
        #[arg(long)]
        sku: String,
        /// Units to add.
        #[arg(long)]
        quantity: u32,
        /// Where and as whom.
        #[command(flatten)]
        target: InventoryTarget,
    },
}

/// The inventory service and the credentials to call it with.
#[derive(Debug, Args)]
pub struct InventoryTarget {
    /// Inventory's mesh address (`host:port`).
    #[arg(long, env = "MESH_INVENTORY_URL", default_value = "localhost:50053")]
    pub addr: String,
    /// meshctl's certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The user's tokens.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `meshctl health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service's mesh address (`host:port`).
    #[arg(long, env = "MESH_HEALTH_ADDR")]
    pub addr: String,
    /// The workload expected behind the address (its SPIFFE ID is checked); not with
    /// `--plaintext`.
    #[arg(long, required_unless_present = "plaintext")]
    pub workload: Option<String>,
    /// The grpc.health.v1 service name to ask about; empty for the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Ask the plaintext health listener (`MESH_HEALTH_LISTEN`) instead of the mesh port: no
    /// certificate is presented and none is checked.
    #[arg(long)]
    pub plaintext: bool,
    /// meshctl's certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `meshctl audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check a log's chain; exit 0 and print OK, or name the first altered, removed, reordered
    /// or truncated record and exit 1.
    Verify {
        /// The JSON-lines audit log.
        file: PathBuf,
        /// The file holding the HMAC key.
        #[arg(long, env = "MESH_AUDIT_KEY_FILE")]
        key_file: PathBuf,
    },
    /// Write a new audit HMAC key: 32 random bytes as hex text, mode 0600. Refuses to replace
    /// an existing file (exit 64): a new key cannot verify the chain the old one signed.
    Keygen {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `meshctl demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the mesh running after the scenario and print how to reach it.
    #[arg(long)]
    pub keep_running: bool,
}

/// `meshctl stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// The services' admin listeners (`host:port`, their `MESH_ADMIN_LISTEN`); repeat, or
    /// comma-separate. Replicas of one service add up.
    #[arg(long, env = "MESH_METRICS", value_delimiter = ',', required = true)]
    pub metrics: Vec<String>,
    /// The window rates are measured over: two scrapes this far apart (`2s`; 100 ms to 10 m).
    #[arg(long, default_value = "2s", value_parser = stat_interval)]
    pub interval: std::time::Duration,
    /// Counts since each service started, from one scrape, instead of rates.
    #[arg(long)]
    pub totals: bool,
    /// Draw the table again and again until interrupted.
    #[arg(long)]
    pub watch: bool,
}

fn stat_interval(raw: &str) -> Result<std::time::Duration, String> {
    mesh_service::config::parse_bounded_duration(
        raw,
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(600),
    )
}

/// `meshctl loadgen`.
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// A user as `NAME:PASSWORD`; repeat, or comma-separate in the env var (prefer it: flags
    /// show up in process lists). Customers: reading another user's order must be refused.
    #[arg(
        long = "user",
        env = "MESH_LOADGEN_USERS",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    pub users: Vec<String>,
    /// Actions per second, across all users, one at a time.
    #[arg(long, env = "MESH_LOADGEN_RATE", default_value_t = 2.0)]
    pub rate: f64,
    /// Stop after this many seconds (default: until SIGTERM or Ctrl-C).
    #[arg(long, env = "MESH_LOADGEN_DURATION")]
    pub duration: Option<u64>,
    /// Open orders a user keeps; beyond that the oldest is cancelled, so stock stays put.
    #[arg(long, default_value_t = 3)]
    pub max_open: usize,
    /// Issuer URL (users log in there).
    #[arg(long, env = "MESH_ISSUER")]
    pub issuer: String,
    /// Reach the issuer at this IP (see `meshctl login --help`).
    #[arg(long, env = "MESH_ISSUER_IP")]
    pub issuer_ip: Option<std::net::IpAddr>,
    /// Orders' mesh address: `host:port` (balanced over every replica the name resolves to) or
    /// a comma-separated list.
    #[arg(long, env = "MESH_ORDERS_URL", default_value = "localhost:50052")]
    pub orders_addr: String,
    /// Inventory's mesh address (for the direct call that must be refused), balanced likewise.
    #[arg(long, env = "MESH_INVENTORY_URL", default_value = "localhost:50053")]
    pub inventory_addr: String,
    /// meshctl's certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Where loadgen's own spans go (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[command(flatten)]
    pub telemetry: mesh_telemetry::trace::TelemetryFlags,
}

/// `meshctl policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file as the server would at start: one rule per method the server
    /// serves, every rule a real method, every identity in the trust domain. Exit 0 when it is
    /// valid, 1 with the file, line and reason when it is not (for CI).
    Check(PolicyCheckArgs),
    /// Whether a call would be allowed, and which rule decides it and why: a what-if for one
    /// caller, method and token (the token's claims are read, not verified). Exit 0 for allow,
    /// 1 for deny.
    Explain(PolicyExplainArgs),
    /// Which methods change between two policy files, and who gains or loses them.
    Diff(PolicyDiffArgs),
}

/// `meshctl policy explain`.
#[derive(Debug, clap::Args)]
pub struct PolicyExplainArgs {
    /// The server: auth, orders or inventory.
    #[arg(long, value_parser = ["auth", "orders", "inventory"])]
    pub service: String,
    /// The method: its path (`/mesh.orders.v1.OrdersService/ListOrders`) or its name
    /// (`ListOrders`).
    #[arg(long)]
    pub method: String,
    /// The calling workload: `sa/<name>` or a SPIFFE ID.
    #[arg(long)]
    pub caller: String,
    /// The bearer token the call would carry (its claims are read, not verified).
    #[arg(long, env = "MESH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The policy file; without it, the one the service ships with.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// A whole-file trial (`mode = "audit"`) tried beside the policy, as `--policy-trial` on the
    /// server: what it would refuse is shown, not enforced.
    #[arg(long)]
    pub trial: Option<std::path::PathBuf>,
    /// The trust domain.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
}

/// `meshctl policy diff`.
#[derive(Debug, clap::Args)]
pub struct PolicyDiffArgs {
    /// The policy in force.
    pub old: std::path::PathBuf,
    /// The policy proposed.
    pub new: std::path::PathBuf,
    /// The server: auth, orders or inventory.
    #[arg(long, value_parser = ["auth", "orders", "inventory"])]
    pub service: String,
    /// The trust domain.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
}

/// `meshctl policy check`.
#[derive(Debug, clap::Args)]
pub struct PolicyCheckArgs {
    /// The policy file.
    pub file: std::path::PathBuf,
    /// The server it is for: auth, orders or inventory.
    #[arg(long, value_parser = ["auth", "orders", "inventory"])]
    pub service: String,
    /// The file is a whole-file trial (`mode = "audit"` at its top), for `--policy-trial`.
    #[arg(long)]
    pub trial: bool,
    /// The trust domain whose workloads the policy admits.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
}

/// `meshctl hash-secret`.
#[derive(Debug, clap::Args)]
pub struct HashSecretArgs {
    /// Make a secret of 256 random bits instead of reading one: prints the secret, then its
    /// hash (HMAC-SHA256, checked in a microsecond; a chosen secret gets Argon2id, tens of
    /// milliseconds, since it may be guessable).
    #[arg(long)]
    pub generate: bool,
}
