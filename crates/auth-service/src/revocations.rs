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

/// How often the log is cleared of revocations whose tokens have all expired.
/// How often a follower re-reads the log for what other replicas appended to it.
const REPLICA_POLL: Duration = Duration::from_millis(500);

/// Prune interval.
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

/// Where a subscriber that has applied up to `after` starts: there, unless the log has never
/// reached that sequence (the issuer's database was replaced), in which case from the start.
pub async fn starting_point(grants: &Grants, after: u64) -> Result<u64, sqlx::Error> {
    let last = grants.last_revocation().await?;
    Ok(if after > last { 0 } else { after })
}

/// Hands every revocation in force after `cursor` to `deliver`, then each new one as it is
/// recorded, until `deliver` returns `false` (the subscriber left). A storage error ends the
/// follow and is returned.
pub async fn follow<F, Fut>(
    grants: &Grants,
    mut cursor: u64,
    mut deliver: F,
) -> Result<(), sqlx::Error>
where
    F: FnMut(Revocation) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
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
            if !deliver(record.into()).await {
                return Ok(());
            }
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

/// Keeps `list` (the issuer's own verifiers' list) equal to the log, and prunes the log now and
/// then. Runs for the life of the process.
pub fn spawn_local_feed(grants: Grants, list: Arc<RevocationList>) {
    tokio::spawn(async move {
        let mut pruned = Instant::now();
        loop {
            let followed = follow(&grants, list.last_sequence(), |revocation| {
                list.apply(&revocation);
                if pruned.elapsed() > PRUNE_EVERY {
                    pruned = Instant::now();
                    let grants = grants.clone();
                    tokio::spawn(async move {
                        let _ = grants.prune_revocations(crate::unix_now()).await;
                    });
                }
                std::future::ready(true)
            })
            .await;
            if let Err(error) = followed {
                tracing::warn!(%error, "reading the revocation log failed; retrying");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
