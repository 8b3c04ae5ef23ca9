//! Where a target's replicas are: DNS names re-resolved every few seconds (a Kubernetes headless
//! Service, a compose service with replicas) or a comma-separated list, behind the [`Resolve`]
//! trait so tests can answer for DNS.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

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
