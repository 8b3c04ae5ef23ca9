//! The revocation log, followed: what `WatchRevocations` streams to the mesh's verifiers and what
//! keeps the issuer's own verifiers current, read the same way from the same table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auth_interceptor::RevocationList;
use mesh_proto::auth::v1::Revocation;
use mesh_proto::auth::v1::revocation::Target;

use crate::grants::{Grants, RevocationRecord, RevokedTarget};

/// Rows read per query; a subscriber far behind catches up in batches of this size.
const BATCH: u32 = 512;

/// How often the poller re-reads the log for what other replicas appended to it.
const REPLICA_POLL: Duration = Duration::from_millis(500);

/// How long a new stream waits for the log's first read before it is told UNAVAILABLE.
const FIRST_READ_WAIT: Duration = Duration::from_secs(5);

/// How often the log is cleared of revocations whose tokens have all expired.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl From<RevocationRecord> for Revocation {
    fn from(record: RevocationRecord) -> Self {
        Self {
            sequence: record.sequence,
            target: Some(match record.target {
                RevokedTarget::Token(jti) => Target::TokenId(jti),
                RevokedTarget::Session(sid) => Target::SessionId(sid),
            }),
            expires_at: record.expires_at,
        }
    }
}

/// The most `WatchRevocations` streams one workload identity holds open at once. A service
/// needs one per replica (replicas share their workload's ID); past it the call is
/// RESOURCE_EXHAUSTED.
pub const MAX_STREAMS_PER_IDENTITY: usize = 32;

/// The revocation log as the process last read it, shared by every stream.
///
/// One task polls the log ([`spawn_feed`]); every `WatchRevocations` stream is served from
/// here: its backlog from the revocations in force kept in memory, then each new one when the
/// poller announces it. However many streams are open, the database sees the poller's queries
/// only, and a stream's task ends as soon as its client goes away.
#[derive(Debug, Default)]
pub struct RevocationHub {
    log: std::sync::Mutex<InForce>,
    /// The last sequence read; marked changed after every batch, and once the first read is done.
    last: tokio::sync::watch::Sender<Option<u64>>,
    /// Open streams per workload identity.
    streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

#[derive(Debug, Default)]
struct InForce {
    by_sequence: std::collections::BTreeMap<u64, Revocation>,
}

/// A stream's place in the per-identity count; gives it back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    hub: Arc<RevocationHub>,
    identity: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.hub.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = streams.get_mut(&self.identity) {
            *open -= 1;
            if *open == 0 {
                streams.remove(&self.identity);
            }
        }
    }
}

impl RevocationHub {
    /// An empty hub, not loaded yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            last: tokio::sync::watch::channel(None).0,
            ..Self::default()
        })
    }

    /// Takes one of `identity`'s stream slots, or `None` past [`MAX_STREAMS_PER_IDENTITY`].
    pub fn open_stream(self: &Arc<Self>, identity: &str) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let open = streams.entry(identity.to_owned()).or_default();
        if *open >= MAX_STREAMS_PER_IDENTITY {
            return None;
        }
        *open += 1;
        Some(StreamSlot {
            hub: self.clone(),
            identity: identity.to_owned(),
        })
    }

    /// Streams open now, all identities together.
    pub fn open_streams(&self) -> usize {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Where a subscriber that has applied up to `after` starts, once the log has been read:
    /// there, unless the log never reached that sequence (the issuer's database was replaced),
    /// in which case from the start. `None` when the log has not been read within
    /// [`FIRST_READ_WAIT`] (the database does not answer): the caller is told to come back.
    pub async fn starting_point(&self, after: u64) -> Option<u64> {
        let mut last = self.last.subscribe();
        let read = tokio::time::timeout(FIRST_READ_WAIT, last.wait_for(Option::is_some)).await;
        let last = read.ok()?.ok()?.unwrap_or_default();
        Some(if after > last { 0 } else { after })
    }

    /// Announcements: the receiver is marked changed after every batch read.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.last.subscribe()
    }

    /// Revocations in force with a sequence above `after`, oldest first, at most `limit`.
    pub fn after(&self, after: u64, limit: usize) -> Vec<Revocation> {
        let now = crate::unix_now();
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.by_sequence
            .range(after.saturating_add(1)..)
            .map(|(_, revocation)| revocation)
            .filter(|revocation| revocation.expires_at > now)
            .take(limit)
            .cloned()
            .collect()
    }

    fn record(&self, revocation: Revocation) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.by_sequence.insert(revocation.sequence, revocation);
    }

    /// Announces what was read up to `cursor`.
    fn announce(&self, cursor: u64) {
        self.last.send_replace(Some(cursor));
    }

    /// Forgets revocations whose tokens have all expired.
    fn forget_expired(&self) {
        let now = crate::unix_now();
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.by_sequence
            .retain(|_, revocation| revocation.expires_at > now);
    }
}

/// Keeps `list` (the issuer's own verifiers' list) and `hub` (what the streams serve) equal to
/// the log, and prunes the log now and then: the one reader of the log. Runs for the life of the
/// process.
pub fn spawn_feed(grants: Grants, list: Arc<RevocationList>, hub: Arc<RevocationHub>) {
    tokio::spawn(async move {
        let mut pruned = Instant::now();
        loop {
            let followed = follow_log(&grants, &list, &hub, &mut pruned).await;
            if let Err(error) = followed {
                tracing::warn!(%error, "reading the revocation log failed; retrying");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn follow_log(
    grants: &Grants,
    list: &RevocationList,
    hub: &RevocationHub,
    pruned: &mut Instant,
) -> Result<(), sqlx::Error> {
    let mut cursor = list.last_sequence();
    let mut ticks = grants.revocation_ticks();
    loop {
        // Marked seen before reading, so a revocation recorded during the read wakes us again.
        ticks.borrow_and_update();
        let batch = grants
            .revocations_after(cursor, crate::unix_now(), BATCH)
            .await?;
        let full = batch.len() == BATCH as usize;
        for record in batch {
            cursor = record.sequence;
            let revocation = Revocation::from(record);
            list.apply(&revocation);
            hub.record(revocation);
        }
        hub.announce(cursor.max(list.last_sequence()));
        if pruned.elapsed() > PRUNE_EVERY {
            *pruned = Instant::now();
            hub.forget_expired();
            let _ = grants.prune_revocations(crate::unix_now()).await;
        }
        if full {
            continue;
        }
        // A revocation written by another replica on the same database ticks only there: poll
        // as well.
        tokio::select! {
            changed = ticks.changed() => if changed.is_err() { return Ok(()); },
            () = tokio::time::sleep(REPLICA_POLL) => {}
        }
    }
}

/// Serves one `WatchRevocations` stream from `hub`: everything in force after `cursor`, then each
/// new revocation, into `tx`, until the client goes away (`tx` closed) or `stopping` changes.
pub async fn serve_stream(
    hub: Arc<RevocationHub>,
    mut cursor: u64,
    tx: tokio::sync::mpsc::Sender<Result<Revocation, tonic::Status>>,
    mut stopping: tokio::sync::watch::Receiver<()>,
) {
    let mut announced = hub.subscribe();
    loop {
        announced.borrow_and_update();
        let batch = hub.after(cursor, BATCH as usize);
        let full = batch.len() == BATCH as usize;
        for revocation in batch {
            cursor = revocation.sequence;
            tokio::select! {
                sent = tx.send(Ok(revocation)) => if sent.is_err() { return },
                _ = stopping.changed() => return,
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            changed = announced.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            _ = stopping.changed() => return,
        }
    }
}
