//! The policy a server enforces: its `--policy` file or the one shipped with it, checked before
//! the server opens anything, and, for a file, read again while it runs. A changed file is
//! checked like at start; a valid one takes effect for the next call (the layer reads the policy
//! once per call, so no call sees a mix of two), an invalid one changes nothing. Either way the
//! event is logged, counted (`mesh.policy.reloads`) and appended to the audit chain, and
//! `mesh.policy.active` says which version is in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use auth_interceptor::audit::{AuditLog, Decision};
use auth_interceptor::{Policy, PolicySlot};
use mesh_proto::rpc::Rpc;
use opentelemetry::KeyValue;

use crate::config::ServerFlags;
use crate::error::StartError;

/// How often a policy file is looked at: a change is in force within this and a parse.
pub const RELOAD_EVERY: Duration = Duration::from_millis(250);

/// The policy a server starts with and, when it came from a file, how to read it again.
#[derive(Debug)]
pub struct ServerPolicy {
    pub(crate) policy: Policy,
    pub(crate) file: Option<PolicyFile>,
}

impl From<Policy> for ServerPolicy {
    /// A policy built in code: nothing to reload.
    fn from(policy: Policy) -> Self {
        Self { policy, file: None }
    }
}

/// A policy file and what it is checked against.
#[derive(Debug, Clone)]
pub(crate) struct PolicyFile {
    path: PathBuf,
    trust_domain: String,
    served: &'static [&'static [Rpc]],
}

impl PolicyFile {
    fn parse(&self, text: &str) -> Result<Policy, auth_interceptor::PolicyFileError> {
        auth_interceptor::parse_policy(
            text,
            &self.path.display().to_string(),
            &self.trust_domain,
            self.served,
        )
    }
}

impl ServerFlags {
    /// The policy the server enforces: the `--policy` file (read again while the server runs),
    /// else `shipped` (the text of the service's file in config/policy/, named `shipped_name`),
    /// checked against the methods of `served` for the workloads of `trust_domain`. A file that
    /// cannot be read or is not valid is a `--policy` error (exit 64) naming the file and line.
    pub fn load_policy(
        &self,
        shipped_name: &str,
        shipped: &str,
        trust_domain: &str,
        served: &'static [&'static [Rpc]],
    ) -> Result<ServerPolicy, StartError> {
        let Some(path) = &self.policy else {
            let policy =
                auth_interceptor::parse_policy(shipped, shipped_name, trust_domain, served)
                    .map_err(|e| StartError::config("--policy", e.to_string()))?;
            return Ok(policy.into());
        };
        let file = PolicyFile {
            path: path.clone(),
            trust_domain: trust_domain.to_owned(),
            served,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::config("--policy", format!("{}: {e}", path.display())))?;
        let policy = file
            .parse(&text)
            .map_err(|e| StartError::config("--policy", e.to_string()))?;
        Ok(ServerPolicy {
            policy,
            file: Some(file),
        })
    }
}

/// What the reload task reports to.
pub(crate) struct Reporting {
    pub(crate) audit: Option<Arc<AuditLog>>,
    pub(crate) reloads: opentelemetry::metrics::Counter<u64>,
    pub(crate) active: opentelemetry::metrics::Gauge<u64>,
}

impl Reporting {
    pub(crate) fn new(meter: &opentelemetry::metrics::Meter, audit: Option<Arc<AuditLog>>) -> Self {
        Self {
            audit,
            reloads: meter
                .u64_counter("mesh.policy.reloads")
                .with_description("Changed policy files read, by outcome (applied, rejected)")
                .build(),
            active: meter
                .u64_gauge("mesh.policy.active")
                .with_description("1 for the version of the policy in force, 0 for the ones before")
                .build(),
        }
    }

    fn record(&self, outcome: &'static str, path: &str, version: &str) {
        self.reloads.add(1, &[KeyValue::new("outcome", outcome)]);
        if let Some(log) = &self.audit {
            let written = log.append(&Decision {
                decision: "policy_reload",
                reason: outcome,
                method: path,
                policy: version,
                ..Decision::default()
            });
            if let Err(error) = written {
                tracing::error!(%error, "the policy reload could not be recorded in the audit log");
            }
        }
    }
}

/// Watches `file` and puts each valid new version in `slot`.
pub(crate) fn spawn_reload(
    file: PolicyFile,
    slot: PolicySlot,
    reporting: Reporting,
) -> tokio::task::JoinHandle<()> {
    let current = slot.current();
    reporting
        .active
        .record(1, &[KeyValue::new("version", current.version().to_owned())]);
    tokio::spawn(async move {
        let path = file.path.display().to_string();
        // The last version refused: reported once, not at every look.
        let mut refused = String::new();
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tick.tick().await;
            let Ok(text) = tokio::fs::read_to_string(&file.path).await else {
                // A file being replaced (a ConfigMap's symlink swap) may be briefly missing.
                continue;
            };
            let version = auth_interceptor::policy_file::version_of(&text);
            if version == slot.current().version() || version == refused {
                continue;
            }
            match file.parse(&text) {
                Ok(policy) => {
                    let old = slot.replace(policy);
                    refused.clear();
                    reporting
                        .active
                        .record(0, &[KeyValue::new("version", old.version().to_owned())]);
                    reporting
                        .active
                        .record(1, &[KeyValue::new("version", version.clone())]);
                    reporting.record("applied", &path, &version);
                    tracing::info!(policy = %path, from = old.version(), to = %version, "policy reloaded");
                }
                Err(error) => {
                    reporting.record("rejected", &path, &version);
                    tracing::warn!(
                        %error,
                        in_force = slot.current().version(),
                        "the changed policy file is not valid; the policy in force stays"
                    );
                    refused = version;
                }
            }
        }
    })
}
