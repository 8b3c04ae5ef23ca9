//! The policy a server enforces: its `--policy` file or the one shipped with it, with a
//! `--policy-trial` file tried beside it, checked before the server opens anything, and, for
//! files, read again while it runs. A changed file is checked like at start; a valid one takes
//! effect for the next call (the layer reads the policy once per call, so no call sees a mix of
//! two), an invalid one changes nothing. Either way the event is logged, counted
//! (`mesh.policy.reloads`) and appended to the audit chain, and `mesh.policy.active` says which
//! version is in force (`<enforced>+<trial>` with a trial file).

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
    pub(crate) file: Option<PolicyFiles>,
}

impl From<Policy> for ServerPolicy {
    /// A policy built in code: nothing to reload.
    fn from(policy: Policy) -> Self {
        Self { policy, file: None }
    }
}

/// Where the enforced policy comes from.
#[derive(Debug, Clone)]
enum Enforced {
    /// The text shipped with the service, under its name in config/policy/.
    Shipped { name: String, text: String },
    /// The `--policy` file.
    File(PathBuf),
}

/// The policy files of a server (the enforced one, a whole-file trial beside it) and what they
/// are checked against.
#[derive(Debug, Clone)]
pub(crate) struct PolicyFiles {
    enforced: Enforced,
    trial: Option<PathBuf>,
    trust_domain: String,
    served: &'static [&'static [Rpc]],
}

/// A refused policy: the flag whose file is at fault, and why.
type Refused = (&'static str, String);

/// The texts of the policy files as they stand.
struct Texts {
    enforced: String,
    trial: Option<String>,
}

impl Texts {
    /// The version they make: the enforced file's, `+` the trial's when there is one (what
    /// [`Policy::with_trial`] names the combination).
    fn version(&self) -> String {
        let enforced = auth_interceptor::policy_file::version_of(&self.enforced);
        match &self.trial {
            None => enforced,
            Some(trial) => format!(
                "{enforced}+{}",
                auth_interceptor::policy_file::version_of(trial)
            ),
        }
    }
}

impl PolicyFiles {
    /// Whether anything here is a file that can change while the server runs.
    fn watched(&self) -> bool {
        matches!(self.enforced, Enforced::File(_)) || self.trial.is_some()
    }

    /// The enforced policy's name in errors, records and logs.
    fn enforced_name(&self) -> String {
        match &self.enforced {
            Enforced::Shipped { name, .. } => name.clone(),
            Enforced::File(path) => path.display().to_string(),
        }
    }

    /// What an audit record or a log line calls these files.
    fn describe(&self) -> String {
        match &self.trial {
            None => self.enforced_name(),
            Some(trial) => format!("{} + trial {}", self.enforced_name(), trial.display()),
        }
    }

    /// Reads the files (a few KiB each), naming the flag of one that cannot be read.
    fn read(&self) -> Result<Texts, Refused> {
        let read = |flag: &'static str, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|e| (flag, format!("{}: {e}", path.display())))
        };
        let enforced = match &self.enforced {
            Enforced::Shipped { text, .. } => text.clone(),
            Enforced::File(path) => read("--policy", path)?,
        };
        let trial = match &self.trial {
            None => None,
            Some(path) => Some(read("--policy-trial", path)?),
        };
        Ok(Texts { enforced, trial })
    }

    /// Checks `texts` and makes the policy they say.
    fn build(&self, texts: &Texts) -> Result<Policy, Refused> {
        let policy = auth_interceptor::parse_policy(
            &texts.enforced,
            &self.enforced_name(),
            &self.trust_domain,
            self.served,
        )
        .map_err(|e| ("--policy", e.to_string()))?;
        let (Some(path), Some(text)) = (&self.trial, &texts.trial) else {
            return Ok(policy);
        };
        let name = path.display().to_string();
        let trial =
            auth_interceptor::parse_trial_policy(text, &name, &self.trust_domain, self.served)
                .map_err(|e| ("--policy-trial", e.to_string()))?;
        policy
            .with_trial(&trial)
            .map_err(|why| ("--policy-trial", format!("{name}: {why}")))
    }
}

impl ServerFlags {
    /// The policy the server enforces: the `--policy` file, else `shipped` (the text of the
    /// service's file in config/policy/, named `shipped_name`), with the `--policy-trial` file
    /// beside it when one is given, checked against the methods of `served` for the workloads of
    /// `trust_domain`. A file that cannot be read or is not valid is an error of its flag
    /// (exit 64) naming the file and line. The files are read again while the server runs.
    pub fn load_policy(
        &self,
        shipped_name: &str,
        shipped: &str,
        trust_domain: &str,
        served: &'static [&'static [Rpc]],
    ) -> Result<ServerPolicy, StartError> {
        let files = PolicyFiles {
            enforced: match &self.policy {
                Some(path) => Enforced::File(path.clone()),
                None => Enforced::Shipped {
                    name: shipped_name.to_owned(),
                    text: shipped.to_owned(),
                },
            },
            trial: self.policy_trial.clone(),
            trust_domain: trust_domain.to_owned(),
            served,
        };
        let policy = files
            .read()
            .and_then(|texts| files.build(&texts))
            .map_err(|(flag, why)| StartError::config(flag, why))?;
        Ok(ServerPolicy {
            policy,
            file: files.watched().then_some(files),
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

/// Watches the policy files and puts each valid new version in `slot`.
pub(crate) fn spawn_reload(
    files: PolicyFiles,
    slot: PolicySlot,
    reporting: Reporting,
) -> tokio::task::JoinHandle<()> {
    let current = slot.current();
    reporting
        .active
        .record(1, &[KeyValue::new("version", current.version().to_owned())]);
    tokio::spawn(async move {
        let path = files.describe();
        // The last version refused: reported once, not at every look.
        let mut refused = String::new();
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tick.tick().await;
            // A file being replaced (a ConfigMap's symlink swap) may be briefly missing.
            let Ok(texts) = files.read() else {
                continue;
            };
            let version = texts.version();
            if version == slot.current().version() || version == refused {
                continue;
            }
            match files.build(&texts) {
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
                Err((flag, error)) => {
                    reporting.record("rejected", &path, &version);
                    tracing::warn!(
                        %flag,
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
