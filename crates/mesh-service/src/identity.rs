//! A workload's certificate over its life: joining the mesh CA with a join token, renewing
//! before expiry, and saying so when it cannot.
//!
//! The private key is made in memory for each certificate and never written anywhere. Renewal
//! starts at about half the remaining lifetime (with jitter, so replicas do not renew in step),
//! retries with backoff while the CA cannot answer, and swaps the new certificate and trust
//! bundle in for new connections; established connections keep theirs. When the certificate
//! is about to expire without a successor, the service reports NOT_SERVING and logs why; once
//! it has expired, the next attempt joins again with the rejoin token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_client::Transport;
use mesh_proto::identity::v1::identity_client::IdentityClient;
use mesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use mesh_tls::material::parse_pem_certs;
use mesh_tls::{Reloadable, Trust, TrustBundle};

use crate::config::{CertSource, TlsFlags, Workload, check_trust_domain};
use crate::error::StartError;

/// The longest a renewal waits between attempts while the CA does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a joining workload keeps trying to reach the CA before it gives up.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// A certificate and what came with it.
#[derive(Debug)]
pub struct Renewed {
    /// The certificate chain, PEM.
    pub chain_pem: String,
    /// Its private key, made in memory.
    pub key: mesh_tls::PrivateKeyDer<'static>,
    /// The trust bundle to use from now on, PEM.
    pub bundle_pem: String,
}

/// What the renewal loop has done, for health, operators and tests.
#[derive(Debug)]
pub struct RenewalStatus {
    renewals: AtomicU64,
    failures: AtomicU64,
    problem: tokio::sync::watch::Sender<Option<String>>,
}

impl Default for RenewalStatus {
    fn default() -> Self {
        Self {
            renewals: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            problem: tokio::sync::watch::channel(None).0,
        }
    }
}

impl RenewalStatus {
    /// Certificates renewed and served.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Renewal attempts that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Why the service cannot go on serving, once its certificate is about to expire without a
    /// successor; `None` while all is well.
    pub fn problem(&self) -> Option<String> {
        self.problem.borrow().clone()
    }

    /// Follows [`RenewalStatus::problem`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.problem.subscribe()
    }
}

pub use mesh_client::TaskGuard;

/// A random fraction in `[0, 1)`.
fn random_fraction() -> f64 {
    rand::random::<f64>()
}

/// When to renew a certificate with `remaining` validity: between 40 % and 60 % of it.
fn renew_after(remaining: Duration) -> Duration {
    remaining.mul_f64(0.4 + 0.2 * random_fraction())
}

/// Keeps `identity` renewed with `renew`, swapping in each new certificate and bundle. `nudge`
/// (when given) asks for a renewal now, e.g. after the CA changed.
pub fn spawn_renewal<F, Fut>(
    identity: Arc<Reloadable>,
    trust: TrustBundle,
    mut renew: F,
    mut nudge: Option<tokio::sync::watch::Receiver<u64>>,
) -> (TaskGuard, Arc<RenewalStatus>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Renewed, String>> + Send,
{
    let status = Arc::new(RenewalStatus::default());
    let report = status.clone();
    let task = tokio::spawn(async move {
        loop {
            // The life left now, with the certificate fresh: its tenth is the alarm threshold.
            let lifetime = identity.remaining();
            let wait = renew_after(lifetime);
            match nudge.as_mut() {
                Some(nudge) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        changed = nudge.changed() => if changed.is_err() { return },
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
            let mut backoff = Duration::from_millis(500);
            loop {
                let outcome = match renew().await {
                    Ok(renewed) => install(&identity, &trust, renewed),
                    Err(error) => Err(error),
                };
                match outcome {
                    Ok(()) => {
                        report.renewals.fetch_add(1, Ordering::Relaxed);
                        report.problem.send_replace(None);
                        tracing::info!(serial = %identity.serial(), valid_for = ?identity.remaining(), "certificate renewed");
                        break;
                    }
                    Err(error) => {
                        report.failures.fetch_add(1, Ordering::Relaxed);
                        let remaining = identity.remaining();
                        if remaining <= lifetime / 10 {
                            let problem = format!(
                                "the certificate expires in {}s and cannot be renewed: {error}",
                                remaining.as_secs()
                            );
                            tracing::error!(%problem, "reporting NOT_SERVING");
                            report.problem.send_replace(Some(problem));
                        } else {
                            tracing::warn!(%error, valid_for = ?remaining, "certificate renewal failed; retrying");
                        }
                        // Close to expiry, try again sooner; once expired, at the backoff's pace.
                        let pause = if remaining.is_zero() {
                            backoff
                        } else {
                            backoff.min((remaining / 4).max(Duration::from_millis(100)))
                        };
                        tokio::time::sleep(pause).await;
                        // Doubles what was waited, so the short waits close to expiry do not
                        // leave a long one for after it.
                        backoff = (pause * 2).clamp(Duration::from_millis(500), MAX_BACKOFF);
                    }
                }
            }
        }
    });
    (TaskGuard::new(task), status)
}

fn install(identity: &Reloadable, trust: &Trust, renewed: Renewed) -> Result<(), String> {
    let chain = parse_pem_certs(&renewed.chain_pem).map_err(|e| e.to_string())?;
    // The bundle first: a new certificate may come from a CA peers learn about with it.
    trust
        .replace_pem(&renewed.bundle_pem)
        .map_err(|e| e.to_string())?;
    identity
        .install(chain, renewed.key)
        .map_err(|e| e.to_string())
}

/// Asks the CA behind `channel` for a certificate: a fresh key in memory, a request for it, and
/// `join_token` when the caller has no certificate yet.
pub async fn certify(
    channel: Transport,
    join_token: &str,
    replaces_rejoin_token: &str,
) -> Result<(Renewed, CertifyResponse), tonic::Status> {
    let (key, csr) = mesh_tls::certs::new_key_and_request(None)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let response = IdentityClient::new(channel)
        .certify(CertifyRequest {
            certificate_request: csr,
            join_token: join_token.to_owned(),
            rejoin: true,
            replaces_rejoin_token: replaces_rejoin_token.to_owned(),
        })
        .await?
        .into_inner();
    Ok((
        Renewed {
            chain_pem: response.certificate_chain_pem.clone(),
            key,
            bundle_pem: response.trust_bundle_pem.clone(),
        },
        response,
    ))
}

/// The join token file of a workload that gets its certificate from the mesh CA. The CA hands
/// out a rejoin token with every certificate; it replaces the file's contents (written aside,
/// then renamed, mode 0600), so a restart can join again.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
}

impl TokenFile {
    /// The file at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// The token in the file.
    pub fn read(&self) -> Result<String, StartError> {
        let token = std::fs::read_to_string(&self.path)
            .map_err(|e| StartError::config("--join-token-file", e))?;
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(StartError::config("--join-token-file", "the file is empty"));
        }
        Ok(token)
    }

    /// Replaces the token; a failure is logged (the running workload does not need it).
    pub fn replace(&self, token: &str) {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        if token.is_empty() {
            return;
        }
        let aside = self.path.with_extension("next");
        let _ = std::fs::remove_file(&aside);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .and_then(|mut file| file.write_all(format!("{token}\n").as_bytes()))
            .and_then(|()| std::fs::rename(&aside, &self.path));
        if let Err(error) = written {
            tracing::warn!(path = %self.path.display(), %error, "rejoin token not written: a restart will need a new join token");
        }
    }
}

/// Joins the mesh: spends the token in `token_file` at the CA on the issuer's public listener
/// (`issuer`, authenticated with the bootstrap bundle of `--tls-ca`) and returns the workload
/// with its first certificate, whose key exists only in this process.
pub async fn join(
    tls: &TlsFlags,
    token_file: &TokenFile,
    issuer: &str,
) -> Result<(Workload, String), StartError> {
    let token = token_file.read()?;
    let bootstrap = mesh_tls::material::load_trust_bundle(tls.ca_file()?)
        .map_err(|e| StartError::config("--tls-ca", e))?;
    let config = mesh_tls::client::https_grpc_client_config(bootstrap)
        .map_err(|e| StartError::config("--tls-ca", e))?;
    let channel =
        mesh_tls::client::channel(issuer, config).map_err(|e| StartError::config("--issuer", e))?;
    let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut backoff = Duration::from_millis(200);
    let (renewed, response) = loop {
        match certify(mesh_client::transport(channel.clone()), &token, "").await {
            Ok(certified) => break certified,
            // The CA's certificate does not chain to the bootstrap bundle: no retry mends that.
            Err(status) if status.message().contains("invalid peer certificate") => {
                return Err(StartError::config(
                    "--tls-ca",
                    format!("the mesh CA at {issuer}: {}", status.message()),
                ));
            }
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && tokio::time::Instant::now() + backoff < deadline =>
            {
                tracing::warn!(%issuer, error = %status.message(), "the mesh CA does not answer yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(status) => {
                let detail = format!("the mesh CA at {issuer} refused: {}", status.message());
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Internal | tonic::Code::Unknown => {
                        StartError::runtime("join", detail)
                    }
                    _ => StartError::config("--join-token-file", detail),
                });
            }
        }
    };
    token_file.replace(&response.rejoin_token);
    let chain = parse_pem_certs(&renewed.chain_pem)
        .map_err(|e| StartError::runtime("join: the CA's certificate", e))?;
    let identity = Reloadable::in_memory(chain, renewed.key)
        .map_err(|e| StartError::runtime("join: the CA's certificate", e))?;
    let roots = Trust::from_pem(&renewed.bundle_pem)
        .map_err(|e| StartError::runtime("join: the CA's trust bundle", e))?;
    let spiffe_id = identity
        .spiffe_id()
        .ok_or_else(|| StartError::runtime("join", "the CA's certificate has no SPIFFE ID"))?;
    check_trust_domain(&spiffe_id, &tls.trust_domain)?;
    tracing::info!(%spiffe_id, serial = %identity.serial(), "joined the mesh: certificate from the mesh CA");
    Ok((
        Workload {
            identity,
            roots,
            spiffe_id,
            source: CertSource::MeshCa,
        },
        response.rejoin_token,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_starts_between_forty_and_sixty_percent_of_the_remaining_life() {
        let hour = Duration::from_secs(3600);
        let waits: Vec<_> = (0..200).map(|_| renew_after(hour)).collect();
        assert!(
            waits
                .iter()
                .all(|w| *w >= hour.mul_f64(0.4) && *w < hour.mul_f64(0.6))
        );
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 150,
            "jittered: {} distinct of 200",
            distinct.len()
        );
    }
}
