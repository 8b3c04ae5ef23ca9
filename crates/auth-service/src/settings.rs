//! Configuration: the operator-interface flags (with env twins) and the clients file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mesh_tls::SpiffeId;
use serde::Deserialize;

use crate::StartError;

/// Flags of the auth service; each has the env twin DESIGN.md's operator interface names.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "auth-service",
    version,
    about = "OAuth2/OIDC issuer of the mesh"
)]
pub struct Args {
    /// Mesh gRPC listen address (mTLS required).
    #[arg(long, env = "MESH_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Public HTTPS listen address for the OAuth2/OIDC endpoints.
    #[arg(long, env = "MESH_PUBLIC_LISTEN", default_value = "0.0.0.0:8443")]
    pub public_listen: SocketAddr,
    /// This workload's certificate, key and trust bundle.
    #[command(flatten)]
    pub tls: mesh_service::TlsFlags,
    /// The HMAC-chained audit log of mesh-API decisions.
    #[command(flatten)]
    pub audit: mesh_service::AuditFlags,
    /// OpenTelemetry export.
    #[command(flatten)]
    pub telemetry: mesh_telemetry::trace::TelemetryFlags,
    /// Issuer URL written into tokens; defaults to https://localhost:<public port>.
    #[arg(long, env = "MESH_ISSUER")]
    pub issuer: Option<String>,
    /// TOML file with the registered clients (see config/auth.example.toml).
    #[arg(long, env = "MESH_AUTH_CONFIG")]
    pub auth_config: PathBuf,
    /// The database of keys, grants, revocations and CAs: a SQLite file (`PATH` or
    /// `sqlite:PATH`, created if missing) or a PostgreSQL URL (`postgres://…`) that replicas
    /// share. Migrated on start.
    #[arg(long, env = "MESH_DB")]
    pub db: mesh_service::DbUrl,
    /// How long a signing key signs before the next one takes over (`90m`, `24h`, `7d`; 5 m to
    /// 90 d). The next key is published a whole interval before it signs, so verifiers, which
    /// refresh their keys every 5 minutes, know it first.
    #[arg(long, env = "MESH_SIGNING_KEY_ROTATION", default_value = "24h", value_parser = key_rotation)]
    pub signing_key_rotation: Duration,
    /// File holding the key-encryption key that seals the CA key and the signing keys in the
    /// database: 64 hex digits (`meshctl audit keygen`). A database opens only with the key it
    /// was created with.
    #[arg(
        long,
        env = "MESH_KEK_FILE",
        required_unless_present = "kek",
        conflicts_with = "kek"
    )]
    pub kek_file: Option<PathBuf>,
    /// The key-encryption key itself, 64 hex digits, for platforms that inject secrets as
    /// environment variables. Never logged.
    #[arg(long, env = "MESH_KEK", hide_env_values = true)]
    pub kek: Option<String>,
    /// The mesh CA's certificate, imported with `--ca-key` into the database on first start.
    #[arg(long, env = "MESH_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The mesh CA's PKCS#8 key (`meshctl certs init` writes `ca.key`), imported sealed on first
    /// start; the file can be deleted afterwards.
    #[arg(long, env = "MESH_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of the workload certificates the CA signs (`1h`; 1 m to 24 h). Workloads renew
    /// at about half of it. Below a few minutes is for demonstrations: every workload then
    /// depends on the CA answering within minutes.
    #[arg(long, env = "MESH_CERT_TTL", default_value = "1h", value_parser = cert_ttl)]
    pub cert_ttl: Duration,
    /// A file of join tokens to accept (`meshctl certs init` writes `join-tokens`), added on
    /// start to those the database knows; tokens already used stay used.
    #[arg(long, env = "MESH_JOIN_TOKENS")]
    pub join_tokens: Option<PathBuf>,
    /// How long the rejoin token a workload gets with each certificate stays usable (`7d`; 1 h
    /// to 30 d): the longest a workload may stay down and still restart on its own.
    #[arg(long, env = "MESH_REJOIN_TOKEN_TTL", default_value = "7d", value_parser = rejoin_ttl)]
    pub rejoin_token_ttl: Duration,
    /// What every server runs with: probe and admin listeners, drain, load shedding (the
    /// mesh listener's).
    #[command(flatten)]
    pub server: mesh_service::ServerFlags,
}

/// The bounds of `--cert-ttl`.
fn cert_ttl(raw: &str) -> Result<Duration, String> {
    mesh_service::config::parse_bounded_duration(
        raw,
        Duration::from_secs(60),
        Duration::from_secs(86_400),
    )
}

/// The bounds of `--rejoin-token-ttl`.
fn rejoin_ttl(raw: &str) -> Result<Duration, String> {
    mesh_service::config::parse_bounded_duration(
        raw,
        Duration::from_secs(3600),
        Duration::from_secs(30 * 86_400),
    )
}

/// The bounds of `--signing-key-rotation`: no shorter than the verifiers' key refresh, no longer
/// than a quarter year.
fn key_rotation(raw: &str) -> Result<Duration, String> {
    mesh_service::config::parse_bounded_duration(
        raw,
        Duration::from_secs(300),
        Duration::from_secs(90 * 86_400),
    )
}

impl Args {
    /// Reads the clients file and checks the flags that clap cannot.
    pub fn into_settings(self) -> Result<Settings, StartError> {
        let clients = AuthConfig::load(&self.auth_config)?;
        if let Some(issuer) = &self.issuer {
            check_issuer(issuer)?;
        }
        let kek = match (&self.kek_file, &self.kek) {
            (Some(path), _) => crate::sealing::LocalKek::from_file(path)
                .map_err(|e| StartError::config("--kek-file", e))?,
            (None, Some(hex)) => crate::sealing::LocalKek::from_hex(hex)
                .map_err(|e| StartError::config("--kek", e))?,
            (None, None) => {
                return Err(StartError::config("--kek-file", "required (MESH_KEK_FILE)"));
            }
        };
        let read = |flag: &'static str, path: &PathBuf| {
            std::fs::read_to_string(path)
                .map_err(|e| StartError::config(flag, format!("{}: {e}", path.display())))
        };
        let ca_import = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => Some(CaImport {
                cert_pem: read("--ca-cert", cert)?,
                key_pem: read("--ca-key", key)?,
            }),
            _ => None,
        };
        Ok(Settings {
            listen: self.listen,
            public_listen: self.public_listen,
            tls: self.tls,
            audit: self.audit,
            telemetry: self.telemetry,
            issuer: self.issuer,
            config: clients,
            db: self.db,
            signing_key_rotation: self.signing_key_rotation,
            kek: std::sync::Arc::new(kek),
            ca_import,
            cert_ttl: self.cert_ttl,
            join_tokens: self.join_tokens,
            rejoin_token_ttl: self.rejoin_token_ttl,
            server: self.server,
        })
    }
}

/// Everything [`crate::Application::build`] needs, already validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Mesh gRPC listen address.
    pub listen: SocketAddr,
    /// Public HTTPS listen address.
    pub public_listen: SocketAddr,
    /// This workload's TLS files and trust domain.
    pub tls: mesh_service::TlsFlags,
    /// The audit log flags.
    pub audit: mesh_service::AuditFlags,
    /// OpenTelemetry export.
    pub telemetry: mesh_telemetry::trace::TelemetryFlags,
    /// The issuer URL; `None` means `https://localhost:<public port>`.
    pub issuer: Option<String>,
    /// Registered clients and token settings.
    pub config: AuthConfig,
    /// The database.
    pub db: mesh_service::DbUrl,
    /// How long a signing key signs before the next one takes over.
    pub signing_key_rotation: Duration,
    /// Seals the keys at rest.
    pub kek: std::sync::Arc<dyn crate::sealing::KeyWrapper>,
    /// A CA certificate and key to import when the database holds no CA.
    pub ca_import: Option<CaImport>,
    /// Lifetime of the workload certificates the CA signs.
    pub cert_ttl: Duration,
    /// Join tokens to import on start.
    pub join_tokens: Option<PathBuf>,
    /// How long a rejoin token stays usable.
    pub rejoin_token_ttl: Duration,
    /// The server-wide flags: probe and admin listeners, drain, load shedding.
    pub server: mesh_service::ServerFlags,
}

/// A CA to import: its certificate and PKCS#8 key, PEM. The key is never printed.
#[derive(Clone)]
pub struct CaImport {
    /// The CA certificate.
    pub cert_pem: String,
    /// The CA key.
    pub key_pem: String,
}

impl std::fmt::Debug for CaImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaImport").finish_non_exhaustive()
    }
}

/// The `MESH_AUTH_CONFIG` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of access tokens, in seconds (default 300).
    #[serde(default = "default_ttl")]
    pub access_token_ttl_secs: u64,
    /// Lifetime cap of exchanged tokens, in seconds (default 60).
    #[serde(default = "default_exchange_ttl")]
    pub exchanged_token_ttl_secs: u64,
    /// Failed client authentications allowed per address and window before answering 429.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Lifetime of refresh tokens, in seconds (default 8 hours).
    #[serde(default = "default_refresh_ttl")]
    pub refresh_token_ttl_secs: u64,
    /// A person's session at the issuer ends this long after its last use (default 30 min).
    #[serde(default = "default_session_idle")]
    pub session_idle_secs: u64,
    /// ... and this long after its sign-in, used or not (default 8 hours).
    #[serde(default = "default_session_lifetime")]
    pub session_lifetime_secs: u64,
    /// Registered clients.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Scopes each role grants its users: a user token carries the scopes its client may have
    /// for the audience *and* the user's roles grant.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
    /// Users who log in through the authorization-code flow.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// One user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name; becomes the token's `sub`.
    pub username: String,
    /// Argon2id PHC hash of the password (`meshctl hash-secret`).
    pub password_hash: String,
    /// Roles, each a key of `[roles]`.
    #[serde(default)]
    pub roles: Vec<String>,
}

fn default_refresh_ttl() -> u64 {
    8 * 3600
}

fn default_session_idle() -> u64 {
    30 * 60
}

fn default_session_lifetime() -> u64 {
    8 * 3600
}

fn default_ttl() -> u64 {
    300
}

fn default_exchange_ttl() -> u64 {
    60
}

/// The failed-authentication limiter's settings (see [`crate::ratelimit`] for what each bounds).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Failures allowed per source address (an IPv6 /64) and window (default 100: many users
    /// behind one NAT share it). `max_failures` is the name it had before accounts were limited.
    #[serde(default = "default_per_address", alias = "max_failures")]
    pub max_failures_per_address: u32,
    /// Failures allowed per account (client id or username) and window, from any address
    /// (default 10).
    #[serde(default = "default_per_account")]
    pub max_failures_per_account: u32,
    /// Window length in seconds (default 60).
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Password hashes computed at once (default 2; each Argon2id check of our parameters holds
    /// ~19 MiB while it runs).
    #[serde(default = "default_concurrent_hashes")]
    pub concurrent_hashes: u32,
}

fn default_per_address() -> u32 {
    100
}

fn default_per_account() -> u32 {
    10
}

fn default_window() -> u64 {
    60
}

fn default_concurrent_hashes() -> u32 {
    2
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            max_failures_per_address: default_per_address(),
            max_failures_per_account: default_per_account(),
            window_secs: default_window(),
            concurrent_hashes: default_concurrent_hashes(),
        }
    }
}

impl RateLimitConfig {
    /// The limiter's settings.
    pub fn settings(&self) -> crate::ratelimit::LimitSettings {
        crate::ratelimit::LimitSettings {
            per_address: self.max_failures_per_address,
            per_account: self.max_failures_per_account,
            window: std::time::Duration::from_secs(self.window_secs),
            concurrent_hashes: self.concurrent_hashes,
        }
    }

    fn check(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.max_failures_per_address) {
            return Err("rate_limit.max_failures_per_address must be between 1 and 100000".into());
        }
        if !(1..=100_000).contains(&self.max_failures_per_account) {
            return Err("rate_limit.max_failures_per_account must be between 1 and 100000".into());
        }
        if !(1..=86_400).contains(&self.window_secs) {
            return Err("rate_limit.window_secs must be between 1 and 86400".into());
        }
        if !(1..=64).contains(&self.concurrent_hashes) {
            return Err("rate_limit.concurrent_hashes must be between 1 and 64".into());
        }
        Ok(())
    }
}

/// One registered OAuth2 client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The client's id; for workloads also the audience of the service it runs.
    pub client_id: String,
    /// Hash of the client secret, for clients that use the token endpoint: Argon2id for a secret
    /// someone chose (`meshctl hash-secret`), HMAC-SHA256 for one `meshctl hash-secret
    /// --generate` made (256 random bits need no work factor). Workloads authenticate by
    /// certificate and have none.
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// The workload identity bound to this client: a caller presenting a certificate with this
    /// SPIFFE ID on the mesh port *is* this client.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Grants the client may use on the token endpoint.
    #[serde(default)]
    pub grant_types: Vec<String>,
    /// Audiences the client may get tokens for.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Scopes the client may get. A scope `X:…` belongs to audience `X`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Redirect URIs for the authorization-code flow, matched exactly.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// What this workload may do downstream for a user, by the scopes of the user's token:
    /// `"orders:write" = ["inventory:reserve"]` lets orders reserve for a user whose token may
    /// write orders, and no one else. An exchanged token carries only scopes that some scope of
    /// the subject token maps to here (and the client holds).
    #[serde(default)]
    pub acts_for: std::collections::BTreeMap<String, Vec<String>>,
    /// Whether a person is asked, once, to let this client have what it asks for (a client of
    /// another party). First-party clients (meshctl) are not asked.
    #[serde(default)]
    pub consent: bool,
    /// Where the client may send a person after signing out (RP-initiated logout), matched
    /// exactly like redirect URIs.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    /// Where the issuer tells the client that a person signed out (OpenID Connect Back-Channel
    /// Logout: a signed logout token POSTed there), https with a certificate from the mesh CA,
    /// or loopback http.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
}

impl ClientConfig {
    /// The bound SPIFFE ID, parsed.
    pub fn spiffe(&self) -> Option<SpiffeId> {
        self.spiffe_id.as_deref().and_then(|s| s.parse().ok())
    }
}

impl AuthConfig {
    /// Reads and checks the file.
    pub fn load(path: &std::path::Path) -> Result<Self, StartError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::config("--auth-config", format!("{}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|e| StartError::config("--auth-config", format!("{}: {e}", path.display())))
    }

    /// Parses and checks the TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        self.rate_limit.check()?;
        if !(10..=86_400).contains(&self.access_token_ttl_secs) {
            return Err("access_token_ttl_secs must be between 10 and 86400".into());
        }
        if !(10..=self.access_token_ttl_secs).contains(&self.exchanged_token_ttl_secs) {
            return Err(
                "exchanged_token_ttl_secs must be between 10 and access_token_ttl_secs".into(),
            );
        }
        if !(1..=86_400).contains(&self.session_idle_secs) {
            return Err("session_idle_secs must be between 1 and 86400".into());
        }
        if !(self.session_idle_secs..=30 * 86_400).contains(&self.session_lifetime_secs) {
            return Err(
                "session_lifetime_secs must be between session_idle_secs and 2592000 (30 days)"
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for client in &self.clients {
            let id = &client.client_id;
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "client_id {id:?}: use letters, digits, '-', '_', '.'"
                ));
            }
            if !seen.insert(id.clone()) {
                return Err(format!("client_id {id:?} is registered twice"));
            }
            if let Some(raw) = &client.spiffe_id {
                raw.parse::<SpiffeId>()
                    .map_err(|e| format!("client {id:?}: {e}"))?;
            }
            if let Some(hash) = &client.secret_hash {
                crate::passwords::FastHash::parse(hash)
                    .map_err(|e| format!("client {id:?}: secret_hash: {e}"))?;
            }
            for grant in &client.grant_types {
                if !GRANT_TYPES.contains(&grant.as_str()) {
                    return Err(format!("client {id:?}: unsupported grant type {grant:?}"));
                }
            }
            let code_flow = client.grant_types.iter().any(|g| g == "authorization_code");
            if code_flow && client.redirect_uris.is_empty() {
                return Err(format!(
                    "client {id:?}: authorization_code needs redirect_uris"
                ));
            }
            for uri in &client.redirect_uris {
                check_redirect_uri(uri)
                    .map_err(|why| format!("client {id:?}: redirect_uri {uri:?}: {why}"))?;
            }
            for uri in &client.post_logout_redirect_uris {
                check_redirect_uri(uri).map_err(|why| {
                    format!("client {id:?}: post_logout_redirect_uri {uri:?}: {why}")
                })?;
            }
            if let Some(uri) = &client.backchannel_logout_uri {
                check_redirect_uri(uri).map_err(|why| {
                    format!("client {id:?}: backchannel_logout_uri {uri:?}: {why}")
                })?;
            }
            let sign_in_only = client.consent
                || !client.post_logout_redirect_uris.is_empty()
                || client.backchannel_logout_uri.is_some();
            if !code_flow && sign_in_only {
                return Err(format!(
                    "client {id:?}: consent, post_logout_redirect_uris and backchannel_logout_uri are for authorization_code clients"
                ));
            }
            for (user_scope, downstream) in &client.acts_for {
                if let Some(scope) = downstream.iter().find(|s| !client.scopes.contains(s)) {
                    return Err(format!(
                        "client {id:?}: acts_for {user_scope:?} maps to {scope:?}, which the client does not hold"
                    ));
                }
            }
            for grant in ["client_credentials", TOKEN_EXCHANGE] {
                if client.grant_types.iter().any(|g| g == grant) && client.secret_hash.is_none() {
                    return Err(format!("client {id:?}: {grant} needs a secret_hash"));
                }
            }
            if let Some(name) = client
                .audiences
                .iter()
                .find(|a| crate::oidc::is_identity_scope(a))
            {
                return Err(format!(
                    "client {id:?}: audience {name:?} is reserved for OpenID Connect"
                ));
            }
            for scope in &client.scopes {
                let owner = scope.split(':').next().unwrap_or_default();
                if !client.audiences.iter().any(|a| a == owner) {
                    return Err(format!(
                        "client {id:?}: scope {scope:?} belongs to audience {owner:?}, which the client may not reach"
                    ));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for user in &self.users {
            let name = &user.username;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "username {name:?}: use letters, digits, '-', '_', '.'"
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(format!("user {name:?} is listed twice"));
            }
            argon2::PasswordHash::new(&user.password_hash)
                .map_err(|e| format!("user {name:?}: password_hash is not a PHC string: {e}"))?;
            if let Some(role) = user.roles.iter().find(|r| !self.roles.contains_key(*r)) {
                return Err(format!(
                    "user {name:?}: role {role:?} is not defined in [roles]"
                ));
            }
        }
        Ok(())
    }
}

/// A registered redirect URI: an absolute `https` URL with a host, or a loopback `http` URL for
/// native apps (RFC 8252 §7.3: the literal `127.0.0.1` or `[::1]`, any port); never user
/// information (`http://127.0.0.1@evil.example/` sends the code to evil.example), never a
/// fragment (RFC 6749 §3.1.2), and written the way a URL parser writes it back, so the string
/// compared at login is the URL the browser goes to.
pub fn check_redirect_uri(raw: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(raw).map_err(|_| "not an absolute URL")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry user information");
    }
    if url.fragment().is_some() || raw.contains('#') {
        return Err("must not have a fragment");
    }
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => {}
        ("http", Some(url::Host::Ipv4(ip)))
            if ip.is_loopback() && ip.octets() == [127, 0, 0, 1] => {}
        ("http", Some(url::Host::Ipv6(ip))) if ip.is_loopback() => {}
        ("http", _) => {
            return Err("http is allowed only for the loopback address 127.0.0.1 or [::1]");
        }
        _ => return Err("must be https (or loopback http)"),
    }
    if url.as_str() != raw && url.as_str() != format!("{raw}/") {
        return Err("must be written in its normal form (as a URL parser writes it back)");
    }
    Ok(())
}

/// The grant types the token endpoint knows.
pub const GRANT_TYPES: [&str; 4] = [
    "client_credentials",
    "authorization_code",
    "refresh_token",
    TOKEN_EXCHANGE,
];

/// The grant type of token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// An issuer must be an https URL without query or fragment (OIDC Discovery §3).
pub fn check_issuer(issuer: &str) -> Result<(), StartError> {
    let ok = issuer.starts_with("https://")
        && !issuer.contains(['?', '#'])
        && !issuer.ends_with('/')
        && issuer.len() > "https://".len();
    if ok {
        Ok(())
    } else {
        Err(StartError::config(
            "--issuer",
            format!("{issuer:?} must be an https URL without query, fragment or trailing slash"),
        ))
    }
}

/// How long tokens live, from the config.
pub(crate) fn ttl(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binarys_workload_certificates_last_an_hour_by_default() {
        use clap::Parser as _;
        // The parser the binary runs, with only what is required: what an operator gets
        // (the dev harness sets its own lifetime, so no mesh test shows this one).
        let required = [
            "auth-service",
            "--auth-config=auth.toml",
            "--db=auth.db",
            "--kek-file=auth.kek",
        ];
        let args = Args::try_parse_from(required).expect("parses with defaults");
        assert_eq!(args.cert_ttl, Duration::from_secs(3600));
        let args =
            Args::try_parse_from(required.iter().chain(&["--cert-ttl=10m"])).expect("parses");
        assert_eq!(args.cert_ttl, Duration::from_secs(600));
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../../config/auth.example.toml");
        let config = AuthConfig::parse(text).expect("the example config is valid");
        assert!(config.clients.iter().any(|c| c.client_id == "orders"));
        assert_eq!(config.access_token_ttl_secs, 300);
    }

    #[test]
    fn redirect_uris_that_could_send_a_code_elsewhere_are_refused_at_load() {
        for good in [
            "http://127.0.0.1:8976/callback",
            "http://[::1]:8976/cb",
            "https://app.example/cb",
            "https://app.example",
        ] {
            assert_eq!(check_redirect_uri(good), Ok(()), "{good}");
        }
        for bad in [
            "http://127.0.0.1.evil.example/cb",
            "http://127.0.0.1@evil.example/",
            "https://user:pw@app.example/cb",
            "http://localhost:8976/cb",
            "http://127.0.0.2/cb",
            "https://app.example/cb#frag",
            "https://app.example/cb#",
            "HTTPS://App.Example/cb",
            "ftp://app.example/cb",
            "/cb",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad} accepted");
        }
        let config = "[[clients]]\nclient_id = \"x\"\ngrant_types = [\"authorization_code\"]\n\
                      redirect_uris = [\"http://127.0.0.1@evil.example/\"]\n";
        let refused = AuthConfig::parse(config).expect_err("refused");
        assert!(refused.contains("redirect_uri"), "{refused}");
    }

    #[test]
    fn rate_limits_out_of_range_are_refused_and_the_old_name_still_reads() {
        let old = "[rate_limit]\nmax_failures = 7\nwindow_secs = 30\n";
        let config = AuthConfig::parse(old).expect("old name");
        assert_eq!(config.rate_limit.max_failures_per_address, 7);
        assert_eq!(config.rate_limit.max_failures_per_account, 10);
        for bad in [
            "max_failures_per_account = 0",
            "max_failures_per_address = 0",
            "window_secs = 0",
            "concurrent_hashes = 0",
            "concurrent_hashes = 65",
        ] {
            let text = format!("[rate_limit]\n{bad}\n");
            assert!(AuthConfig::parse(&text).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn session_timeouts_out_of_range_and_sign_in_settings_on_other_clients_are_refused() {
        for (bad, named) in [
            ("session_idle_secs = 0", "session_idle_secs"),
            ("session_idle_secs = 100000", "session_idle_secs"),
            (
                "session_idle_secs = 600\nsession_lifetime_secs = 300",
                "session_lifetime_secs",
            ),
            ("session_lifetime_secs = 2592001", "session_lifetime_secs"),
        ] {
            let error = AuthConfig::parse(&format!("{bad}\n")).expect_err(bad);
            assert!(error.contains(named), "{bad}: {error}");
        }
        let workload = "[[clients]]\nclient_id = \"x\"\nsecret_hash = \"$hmac-sha256$42KgeIApjnw+jAaIjWDKTg$H2welcZm4qBtYckPHuT0HJlKl9mzWl1DAgq+UBPE7Gk\"\n\
                        grant_types = [\"client_credentials\"]\n";
        for extra in [
            "consent = true",
            "post_logout_redirect_uris = [\"https://app.example/out\"]",
            "backchannel_logout_uri = \"https://app.example/bc\"",
        ] {
            let error = AuthConfig::parse(&format!("{workload}{extra}\n")).expect_err(extra);
            assert!(
                error.contains("authorization_code clients"),
                "{extra}: {error}"
            );
        }
        let exchange = "[[clients]]\nclient_id = \"x\"\n\
                        grant_types = [\"urn:ietf:params:oauth:grant-type:token-exchange\"]\n";
        let error = AuthConfig::parse(exchange).expect_err("a public actor");
        assert!(error.contains("needs a secret_hash"), "{error}");
        let open_logout = "[[clients]]\nclient_id = \"x\"\ngrant_types = [\"authorization_code\"]\n\
                           redirect_uris = [\"https://app.example/cb\"]\n\
                           post_logout_redirect_uris = [\"http://evil.example/\"]\n";
        let error = AuthConfig::parse(open_logout).expect_err("plain http elsewhere");
        assert!(error.contains("post_logout_redirect_uri"), "{error}");
    }

    #[test]
    fn unknown_fields_and_unknown_grant_types_are_refused() {
        let typo = "acces_token_ttl_secs = 60\n";
        assert!(
            AuthConfig::parse(typo).is_err(),
            "a misspelt key is not silently ignored"
        );
        let grant = "[[clients]]\nclient_id = \"x\"\ngrant_types = [\"password\"]\n";
        let error = AuthConfig::parse(grant).expect_err("password grant");
        assert!(error.contains("unsupported grant type"), "{error}");
    }

    #[test]
    fn the_issuer_must_be_https_without_query_fragment_or_trailing_slash() {
        assert!(check_issuer("https://auth:8443").is_ok());
        for bad in [
            "http://auth",
            "https://auth/",
            "https://auth?x=1",
            "https://a#f",
            "https://",
        ] {
            let error = check_issuer(bad).expect_err(bad);
            assert!(
                error.is_config() && error.to_string().starts_with("--issuer"),
                "{error}"
            );
        }
    }
}
