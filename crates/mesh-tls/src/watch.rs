//! File-watch mode: for certificates managed outside the mesh (cert-manager, a SPIRE agent
//! writing files), the workload follows its certificate, key and trust bundle on disk.
//!
//! The files are polled (metadata only: inode, size, modification time), which works the same
//! on every filesystem and on Kubernetes secret volumes, whose updates swap a symlink. A change
//! is loaded in full and checked before it is served; a broken file or a certificate that does
//! not match its key is refused, logged, and the material already in service stays.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::material::{Reloadable, TrustBundle};
use crate::{TlsError, TlsFiles};

/// What the watcher has done, for operators and tests.
#[derive(Debug, Default)]
pub struct WatchStatus {
    reloads: AtomicU64,
    refusals: AtomicU64,
    last_refusal: Mutex<Option<String>>,
}

impl WatchStatus {
    /// Changes loaded and served.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changes refused (the old material stayed).
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Why the last change was refused.
    pub fn last_refusal(&self) -> Option<String> {
        self.last_refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// What a file looked like at the last poll; `None` when it could not be read.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()))
}

fn stamps(files: &TlsFiles) -> [Stamp; 3] {
    [stamp(&files.cert), stamp(&files.key), stamp(&files.ca)]
}

/// Polls the files of `identity` (which must have been loaded from files) and of the bundle
/// every `every`, and swaps in what changed once it loads and checks. Runs until the returned
/// task is aborted or the runtime stops.
pub fn spawn_file_watch(
    identity: Arc<Reloadable>,
    trust: TrustBundle,
    every: Duration,
) -> Result<(tokio::task::JoinHandle<()>, Arc<WatchStatus>), TlsError> {
    let files = identity.files().cloned().ok_or(TlsError::Invalid {
        what: "file watch",
        value: "this certificate is held in memory, not read from files".into(),
    })?;
    let status = Arc::new(WatchStatus::default());
    let report = status.clone();
    let task = tokio::spawn(async move {
        let mut seen = stamps(&files);
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = stamps(&files);
            if now == seen {
                continue;
            }
            let pair_changed = now[..2] != seen[..2];
            let bundle_changed = now[2] != seen[2];
            seen = now;
            let mut outcome = Ok(());
            if bundle_changed {
                outcome = reload_bundle(&trust, &files.ca);
            }
            if pair_changed && outcome.is_ok() {
                outcome = identity.reload();
            }
            match outcome {
                Ok(()) => {
                    report.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        serial = %identity.serial(),
                        cas = trust.len(),
                        "tls material reloaded from files"
                    );
                }
                Err(error) => {
                    report.refusals.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "changed tls files refused; the material in service stays");
                    *report
                        .last_refusal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
                }
            }
        }
    });
    Ok((task, status))
}

fn reload_bundle(trust: &TrustBundle, path: &Path) -> Result<(), TlsError> {
    let fresh = crate::material::load_trust_bundle(path)?;
    trust.replace_pem(&fresh.pem())
}
