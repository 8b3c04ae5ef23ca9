//! The flag groups every service shares, with the env twins of the operator interface, and the
//! parsing that turns a usage error into exit code 64.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use auth_interceptor::audit::AuditLog;
use mesh_telemetry::trace::TelemetryFlags;
use mesh_tls::{Reloadable, SpiffeId, TlsFiles, TrustBundle};

use crate::error::StartError;

pub use crate::error::EXIT_USAGE;

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

/// The TLS flags of every mesh workload (`MESH_TLS_CERT`, `MESH_TLS_KEY`, `MESH_TLS_CA`,
/// `MESH_TRUST_DOMAIN`, `MESH_TLS_WATCH`).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsFlags {
    /// PEM certificate chain of this workload (not with a join token, which gets the
    /// certificate from the mesh CA instead).
    #[arg(long, env = "MESH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of this workload (not with a join token: the key is then made in memory
    /// and never written).
    #[arg(long, env = "MESH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM trust bundle: the CAs peers must chain to. With a join token, the bundle that
    /// authenticates the CA until it sends the mesh's current one.
    #[arg(long, env = "MESH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The SPIFFE trust domain: this workload's own certificate must be in it, and callers from
    /// any other domain get PERMISSION_DENIED on everything but health checks.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = "mesh.local")]
    pub trust_domain: String,
    /// How often a service looks for changed certificate, key and bundle files and serves them
    /// (`10s`, `1m`; `off` never). For certificates managed outside the mesh (cert-manager, a
    /// SPIRE agent writing files); a broken or mismatched file is refused and the old one kept.
    #[arg(long, env = "MESH_TLS_WATCH", default_value = "10s", value_parser = watch_interval)]
    pub tls_watch: WatchInterval,
}

/// `--tls-watch`: a polling interval, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchInterval(pub Option<Duration>);

fn watch_interval(raw: &str) -> Result<WatchInterval, String> {
    if raw.trim() == "off" {
        return Ok(WatchInterval(None));
    }
    parse_bounded_duration(raw, Duration::from_secs(1), Duration::from_secs(3600))
        .map(|every| WatchInterval(Some(every)))
}

/// Where a workload's certificate comes from, and so what keeps it fresh.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// Files managed outside the mesh, re-read every interval when one is set.
    Files(Option<Duration>),
    /// The mesh CA, joined with a join token; renewed over mTLS.
    MeshCa,
    /// The service is the CA and certifies itself.
    OwnCa,
}

/// A workload's loaded TLS identity.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Its own certificate, swappable.
    pub identity: Arc<Reloadable>,
    /// The CAs it trusts, swappable.
    pub roots: TrustBundle,
    /// Its SPIFFE ID, in the trust domain of `--trust-domain`.
    pub spiffe_id: SpiffeId,
    /// Where the certificate comes from.
    pub source: CertSource,
}

impl Workload {
    /// The trust domain the workload and its callers belong to.
    pub fn trust_domain(&self) -> &str {
        self.spiffe_id.trust_domain()
    }
}

impl TlsFlags {
    /// The trust bundle file, which every mode needs.
    pub fn ca_file(&self) -> Result<&PathBuf, StartError> {
        self.tls_ca
            .as_ref()
            .ok_or_else(|| StartError::config("--tls-ca", "required (MESH_TLS_CA)"))
    }

    /// The flags as files; all three are required.
    pub fn files(&self) -> Result<TlsFiles, StartError> {
        let required = |flag: &'static str, value: &Option<PathBuf>, env: &str| {
            value.clone().ok_or_else(|| {
                StartError::config(
                    flag,
                    format!(
                        "required ({env}), unless the workload gets its certificate from the                          mesh CA with --join-token-file"
                    ),
                )
            })
        };
        Ok(TlsFiles {
            cert: required("--tls-cert", &self.tls_cert, "MESH_TLS_CERT")?,
            key: required("--tls-key", &self.tls_key, "MESH_TLS_KEY")?,
            ca: self.ca_file()?.clone(),
        })
    }

    /// Loads the certificate, key and trust bundle, and checks that the certificate names a
    /// workload of the trust domain; a configuration error names the flag.
    pub fn load(&self) -> Result<Workload, StartError> {
        let files = self.files()?;
        let identity = Reloadable::load(files.clone())
            .map_err(|e| StartError::config("--tls-cert/--tls-key", e))?;
        let roots = files
            .trust_bundle()
            .map_err(|e| StartError::config("--tls-ca", e))?;
        let spiffe_id = identity
            .spiffe_id()
            .ok_or_else(|| StartError::config("--tls-cert", "the certificate has no SPIFFE ID"))?;
        check_trust_domain(&spiffe_id, &self.trust_domain)?;
        Ok(Workload {
            identity,
            roots,
            spiffe_id,
            source: CertSource::Files(self.tls_watch.0),
        })
    }
}

/// Refuses a workload certificate from outside `trust_domain`: a service that would run under
/// a foreign identity is misconfigured, and would refuse every caller of its own mesh.
pub fn check_trust_domain(spiffe_id: &SpiffeId, trust_domain: &str) -> Result<(), StartError> {
    if spiffe_id.trust_domain() == trust_domain {
        return Ok(());
    }
    Err(StartError::config(
        "--tls-cert",
        format!(
            "the certificate's SPIFFE ID {spiffe_id} is outside the trust domain {trust_domain} \
             (--trust-domain / MESH_TRUST_DOMAIN)"
        ),
    ))
}

/// Where a service appends its audit records (`MESH_AUDIT_LOG`) and the HMAC key file that
/// chains them (`MESH_AUDIT_KEY_FILE`). Both or neither.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuditFlags {
    /// JSON-lines audit log, HMAC-chained; created if missing, verified before appending.
    #[arg(long, env = "MESH_AUDIT_LOG", requires = "audit_key_file")]
    pub audit_log: Option<PathBuf>,
    /// File holding the audit HMAC key: hex text of at least 32 bytes (`meshctl audit keygen`).
    /// Never logged.
    #[arg(long, env = "MESH_AUDIT_KEY_FILE", requires = "audit_log")]
    pub audit_key_file: Option<PathBuf>,
    /// The active segment of the log is sealed (renamed `<log>.<first sequence>`) once it holds
    /// this many MiB (default 64; 1 to 65536). The chain runs on across segments.
    #[arg(long, env = "MESH_AUDIT_SEGMENT_MIB", value_parser = audit_segment_mib)]
    pub audit_segment_mib: Option<u64>,
    /// ...or once its first record is this old (default `24h`; `1m` to `365d`; `off`: by size
    /// only).
    #[arg(long, env = "MESH_AUDIT_SEGMENT_AGE", value_parser = audit_segment_age)]
    pub audit_segment_age: Option<AuditSegmentAge>,
}

/// `--audit-segment-age`: a duration, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSegmentAge(pub Option<Duration>);

fn audit_segment_mib(raw: &str) -> Result<u64, String> {
    match raw.trim().parse::<u64>() {
        Ok(n) if (1..=65_536).contains(&n) => Ok(n),
        _ => Err(format!("{raw:?} is not a number of MiB from 1 to 65536")),
    }
}

fn audit_segment_age(raw: &str) -> Result<AuditSegmentAge, String> {
    if raw.trim() == "off" {
        return Ok(AuditSegmentAge(None));
    }
    parse_bounded_duration(
        raw,
        Duration::from_secs(60),
        Duration::from_secs(365 * 86_400),
    )
    .map(|age| AuditSegmentAge(Some(age)))
}

impl AuditFlags {
    /// When the log seals a segment.
    pub fn rotation(&self) -> auth_interceptor::audit::Rotation {
        let default = auth_interceptor::audit::Rotation::default();
        auth_interceptor::audit::Rotation {
            max_bytes: self
                .audit_segment_mib
                .map_or(default.max_bytes, |mib| mib << 20),
            max_age: self.audit_segment_age.map_or(default.max_age, |age| age.0),
        }
    }

    /// Opens the log for `service`, if one is configured.
    pub fn open(&self, service: &str) -> Result<Option<Arc<AuditLog>>, StartError> {
        match (&self.audit_log, &self.audit_key_file) {
            (Some(log), Some(key)) => AuditLog::open_with(service, log, key, self.rotation())
                .map(|log| Some(Arc::new(log)))
                .map_err(|e| StartError::config("--audit-log/--audit-key-file", e)),
            _ => Ok(None),
        }
    }
}

/// The flags a business service shares with every other (its listen address and audience,
/// whose defaults differ per service, stay in its own `Args`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceFlags {
    /// This workload's certificate, key, trust bundle and trust domain.
    #[command(flatten)]
    pub tls: TlsFlags,
    /// The HMAC-chained audit log.
    #[command(flatten)]
    pub audit: AuditFlags,
    /// OpenTelemetry export.
    #[command(flatten)]
    pub telemetry: TelemetryFlags,
    /// Issuer whose tokens are accepted; keys are discovered at its well-known URL.
    #[arg(long, env = "MESH_ISSUER")]
    pub issuer: String,
    /// The auth service's mesh address: token exchange, renewal, and the revocation stream every
    /// verifier follows. `host:port` (every address the name resolves to is a replica) or a
    /// comma-separated list.
    #[arg(long, env = "MESH_AUTH_URL", default_value = "localhost:50051")]
    pub auth_url: String,
    /// The database: a SQLite file (`PATH` or `sqlite:PATH`, created if missing) or a
    /// PostgreSQL URL (`postgres://user:password@host:5432/database`, shared by replicas).
    /// Migrated on start.
    #[arg(long, env = "MESH_DB")]
    pub db: crate::DbUrl,
    /// File holding a join token (`meshctl identity join-token`, `meshctl certs init`): the
    /// workload makes its key in memory and gets its certificate from the mesh CA at
    /// `--issuer`, then renews it over mTLS at `--auth-url` before it expires. The file is
    /// replaced with a rejoin token for the next start; it must be writable and private.
    #[arg(long, env = "MESH_JOIN_TOKEN_FILE", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub join_token_file: Option<PathBuf>,
    /// What every server runs with: probe and admin listeners, drain, load shedding.
    #[command(flatten)]
    pub server: ServerFlags,
}

/// The shutdown grace when none is set (`--shutdown-grace`'s default).
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The flags every server has, the auth service included: its probe and admin listeners, how
/// it drains, how many calls it runs at once. A new server-wide flag is a field here and its use
/// in the one place `Runtime::build` applies them (`serve_with`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServerFlags {
    /// A plaintext grpc.health.v1 listener, for probes that cannot present a client
    /// certificate (a container health check, a kubelet gRPC probe). Health only; bind it to
    /// loopback or a probe-only interface.
    #[arg(long, env = "MESH_HEALTH_LISTEN")]
    pub health_listen: Option<std::net::SocketAddr>,
    /// A plain HTTP admin listener serving `GET /metrics` (Prometheus text format); bind it
    /// where only the scraper reaches (see docs/observability.md).
    #[arg(long, env = "MESH_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// On SIGTERM the service reports NOT_SERVING, stops accepting, and lets the calls in
    /// flight finish for at most this long (`10s`; 0 s to 60 s) before it closes them.
    #[arg(long, env = "MESH_SHUTDOWN_GRACE", default_value = "10s", value_parser = shutdown_grace)]
    pub shutdown_grace: std::time::Duration,
    /// Calls this server runs at once, over all its connections (1 to 65,536); the next one is
    /// answered UNAVAILABLE at once instead of queueing. Health checks are never refused.
    #[arg(long, env = "MESH_MAX_IN_FLIGHT", default_value_t = crate::shed::DEFAULT_MAX_IN_FLIGHT, value_parser = max_in_flight)]
    pub max_in_flight: usize,
    /// The authorization policy (TOML, one rule per served method; see config/policy/). Without
    /// it the service uses the policy shipped with it, the same file as in config/policy/.
    #[arg(long, env = "MESH_POLICY")]
    pub policy: Option<std::path::PathBuf>,
    /// A whole policy file to try beside the enforced one (`mode = "audit"` at its top, one rule
    /// per served method): it refuses nothing, and each call it would refuse is recorded
    /// `would_deny <reason>`. Read again while the service runs, like `--policy`.
    #[arg(long, env = "MESH_POLICY_TRIAL")]
    pub policy_trial: Option<std::path::PathBuf>,
}

impl Default for ServerFlags {
    /// No probe or admin listener; the flags' defaults otherwise.
    fn default() -> Self {
        Self {
            health_listen: None,
            admin_listen: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_in_flight: crate::shed::DEFAULT_MAX_IN_FLIGHT,
            policy: None,
            policy_trial: None,
        }
    }
}

/// The bounds of `--max-in-flight` (shared by every service).
pub fn max_in_flight(raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if (1..=65_536).contains(&n) => Ok(n),
        _ => Err(format!("{raw:?} is not a number of calls from 1 to 65536")),
    }
}

/// The bounds of `--shutdown-grace` (shared by every service).
pub fn shutdown_grace(raw: &str) -> Result<std::time::Duration, String> {
    parse_bounded_duration(
        raw,
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(60),
    )
}

/// Reads a duration written as a number and a unit: `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{raw:?} has no unit (s, m, h or d)"))?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} does not start with a number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{raw:?}: the unit must be s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

/// [`parse_duration`], refused outside `min..=max` with both bounds in the message.
pub fn parse_bounded_duration(raw: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let duration = parse_duration(raw)?;
    if duration < min || duration > max {
        return Err(format!(
            "{raw:?} is outside {}s..={}s",
            min.as_secs(),
            max.as_secs()
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        service: ServiceFlags,
    }

    #[test]
    fn service_flags_parse_with_defaults_and_refuse_half_an_audit_pair() {
        let parsed = Probe::try_parse_from([
            "probe",
            "--tls-cert=c.pem",
            "--tls-key=c.key",
            "--tls-ca=ca.pem",
            "--issuer=https://auth:8443",
            "--db=x.db",
        ])
        .expect("parses");
        assert_eq!(parsed.service.tls.trust_domain, "mesh.local");
        assert!(parsed.service.audit.audit_log.is_none());

        let half = Probe::try_parse_from([
            "probe",
            "--tls-cert=c.pem",
            "--tls-key=c.key",
            "--tls-ca=ca.pem",
            "--issuer=https://auth:8443",
            "--db=x.db",
            "--audit-log=a.jsonl",
        ])
        .expect_err("the key file is required with the log");
        assert!(half.to_string().contains("--audit-key-file"), "{half}");
    }

    #[test]
    fn durations_take_a_unit_and_bounds_name_themselves() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "10", "h", "1.5h", "10w", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        let minute = Duration::from_secs(60);
        let error = parse_bounded_duration("10s", minute, 2 * minute).expect_err("too short");
        assert!(error.contains("60s..=120s"), "{error}");
    }

    #[test]
    fn a_certificate_outside_the_trust_domain_is_a_configuration_error() {
        let id = SpiffeId::workload("evil.example", "orders").expect("id");
        let error = check_trust_domain(&id, "mesh.local").expect_err("refused");
        assert!(error.is_config());
        assert!(error.to_string().starts_with("--tls-cert: "), "{error}");
        assert!(check_trust_domain(&id, "evil.example").is_ok());
    }
}
