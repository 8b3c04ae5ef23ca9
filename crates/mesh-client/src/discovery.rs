//! Where a target's replicas are: DNS names re-resolved every few seconds (a Kubernetes headless
//! Service, a compose service with replicas) or a comma-separated list, behind the [`Resolve`]
//! trait so tests can answer for DNS. [`discover`] turns the answers into a
//! [`tower::discover::Discover`] stream of replicas appearing and leaving, each with its own
//! lazily connecting mTLS channel from one connector (so every replica must present the SPIFFE
//! ID the connector pins).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_tls::client::CertChannel;
use mesh_tls::client::MeshConnector;
use tokio::sync::{Notify, mpsc, watch};
use tower::discover::Change;

use crate::TaskGuard;

/// How often a DNS name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(2);

/// How long a call waits for the first resolution before it tries the target as given.
pub(crate) const FIRST_RESOLUTION: Duration = Duration::from_secs(3);

/// Where a target's addresses come from: DNS in production, a fixed answer in tests.
pub trait Resolve: Send + Sync + 'static {
    /// Every address behind `target` now: `Some` when the answer is authoritative (an empty list
    /// means no replica is there, e.g. every pod of a headless Service is gone), `None` when
    /// the resolver could not tell (the replicas known so far are kept).
    fn resolve(
        &self,
        target: &str,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<Vec<SocketAddr>>> + Send + '_>>;
}

/// Whether a lookup error says the name does not exist (as opposed to a resolver that could
/// not answer): getaddrinfo's EAI_NONAME and EAI_NODATA.
fn no_such_name(error: &std::io::Error) -> bool {
    let text = error.to_string();
    text.contains("not known") || text.contains("No address associated")
}

/// The system resolver: each comma-separated entry looked up, the answers joined.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dns;

impl Resolve for Dns {
    fn resolve(
        &self,
        target: &str,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<Vec<SocketAddr>>> + Send + '_>> {
        let entries: Vec<String> = entries(target).map(str::to_owned).collect();
        Box::pin(async move {
            let mut found = Vec::new();
            let mut authoritative = true;
            for entry in entries {
                match tokio::net::lookup_host(entry.as_str()).await {
                    Ok(addrs) => found.extend(addrs),
                    Err(error) => {
                        authoritative &= no_such_name(&error);
                        tracing::debug!(%entry, %error, "no address for a replica entry");
                    }
                }
            }
            found.sort();
            found.dedup();
            (authoritative || !found.is_empty()).then_some(found)
        })
    }
}

/// The entries of a target, without scheme or trailing slash.
pub(crate) fn entries(target: &str) -> impl Iterator<Item = &str> {
    target
        .split(',')
        .map(|entry| {
            entry
                .trim()
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
        })
        .filter(|entry| !entry.is_empty())
}

/// The replicas as last resolved, for whoever watches them: `None` until the first answer.
pub type Replicas = watch::Receiver<Option<Vec<SocketAddr>>>;

/// Replicas appearing and leaving, as [`tower::discover::Discover`] reads them.
pub struct Discovered {
    changes: mpsc::UnboundedReceiver<Change<SocketAddr, CertChannel>>,
}

impl futures_util::Stream for Discovered {
    type Item = Result<Change<SocketAddr, CertChannel>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx).map(|change| change.map(Ok))
    }
}

impl std::fmt::Debug for Discovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovered").finish_non_exhaustive()
    }
}

/// The resolving side of a [`Discovered`] stream: what it has found, a way to ask it to look
/// again now, and its task (stopped when this is dropped).
pub struct Resolver {
    /// The replicas as last resolved.
    pub replicas: Replicas,
    /// Asks for a new lookup now (a replica's connection failed: it may have moved); at most a
    /// few lookups a second follow, however many calls fail.
    pub resolve_now: Arc<Notify>,
    _task: TaskGuard,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("replicas", &*self.replicas.borrow())
            .finish_non_exhaustive()
    }
}

/// Resolves `target` with `resolver` every `every` (or when asked), and streams the changes:
/// each new address as a channel made by `connector`, each address gone as a removal. A
/// resolver that could not answer keeps the replicas there are.
pub fn discover(
    connector: MeshConnector,
    target: &str,
    resolver: Arc<dyn Resolve>,
    every: Duration,
) -> (Discovered, Resolver) {
    let (send, changes) = mpsc::unbounded_channel();
    let (publish, replicas) = watch::channel(None);
    let resolve_now = Arc::new(Notify::new());
    let nudged = resolve_now.clone();
    let target = target.to_owned();
    let task = TaskGuard::new(tokio::spawn(async move {
        let mut known: BTreeSet<SocketAddr> = BTreeSet::new();
        loop {
            if let Some(addrs) = resolver.resolve(&target).await {
                let gone: Vec<SocketAddr> = known
                    .iter()
                    .filter(|addr| !addrs.contains(addr))
                    .copied()
                    .collect();
                for addr in &gone {
                    known.remove(addr);
                    let _ = send.send(Change::Remove(*addr));
                }
                let mut added = false;
                for addr in &addrs {
                    if known.contains(addr) {
                        continue;
                    }
                    match connector.cert_channel(&addr.to_string()) {
                        Ok(channel) => {
                            known.insert(*addr);
                            let _ = send.send(Change::Insert(*addr, channel));
                            added = true;
                        }
                        Err(error) => tracing::warn!(%addr, %error, "replica not usable"),
                    }
                }
                // Published after the changes are queued: whoever sees the new set sees the
                // balancer take it at its next call.
                if added || !gone.is_empty() || publish.borrow().is_none() {
                    let now: Vec<SocketAddr> = known.iter().copied().collect();
                    tracing::info!(%target, replicas = ?now, "replicas changed");
                    publish.send_replace(Some(now));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = nudged.notified() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }));
    (
        Discovered { changes },
        Resolver {
            replicas,
            resolve_now,
            _task: task,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_lists_of_entries_with_or_without_a_scheme() {
        let found: Vec<&str> = entries("https://a:1, b:2,,http://c:3/").collect();
        assert_eq!(found, ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn only_a_name_that_does_not_exist_empties_the_replica_set() {
        let gone = std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        );
        let flaky = std::io::Error::other(
            "failed to lookup address information: Temporary failure in name resolution",
        );
        assert!(no_such_name(&gone));
        assert!(!no_such_name(&flaky));
    }
}
