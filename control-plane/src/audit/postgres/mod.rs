//! The audit store on PostgreSQL, shared by every replica (schema:
//! `migrations/0003_audit.sql`). A report is applied in one transaction under its cluster's
//! advisory lock, so two reports of one cluster never interleave; its changes take the next
//! positions of the audit feed (`follow`), which every replica follows to tell its watchers
//! and recount its clusters' open violations. Rows are typed: a record that does not decode is
//! skipped by readers and overwritten by the next report of its key, as sled's damaged ones.

mod follow;
mod reads;
mod report;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::{Pool, Transaction};
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::{Instrument, info_span, warn};

use super::{DELETE_BATCH, Published, record, record::ViolationRecord};
use crate::store::{StoreError, postgres::db_error};
use follow::Follower;

/// Where writers announce audit changes at commit (the payload is the last feed position),
/// for a replica listening to read the feed at once; without a listener, the poll finds them.
const CHANNEL: &str = "portcullis_violations";
/// How often a replica reads the feed for other replicas' changes.
const POLL: Duration = Duration::from_secs(1);
/// The first key of the audit's advisory locks (the second is the cluster's): "audt".
const LOCK_CLASS: i32 = 0x6175_6474;

pub struct PgAudit {
    pool: Pool,
    follower: Arc<Follower>,
    _following: AbortOnDrop,
}

impl PgAudit {
    /// Removes the records of clusters that no longer exist, counts the open violations, and
    /// starts following the feed.
    pub async fn open(
        pool: Pool,
        notified: Option<tokio::sync::watch::Receiver<u64>>,
        published: Arc<Published>,
    ) -> Result<Self, StoreError> {
        let mut client = client(&pool).await?;
        remove_orphans(&mut client).await?;
        let follower = Arc::new(Follower::start(&mut client, published).await?);
        drop(client);
        let following = tokio::spawn(
            follow::follow_periodically(Arc::downgrade(&follower), pool.clone(), POLL, notified)
                .instrument(info_span!("audit_follower")),
        );
        Ok(Self {
            pool,
            follower,
            _following: AbortOnDrop(following),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        client(&self.pool).await
    }

    /// Deletes every violation of `cluster` and its run; returns how many violations.
    pub async fn delete_cluster(&self, cluster: &str) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        lock_cluster(&tx, cluster).await?;
        let (deleted, position) = delete_records(&tx, cluster).await?;
        tx.commit().await.map_err(db_error)?;
        if let Some(position) = position {
            self.follower
                .catch_up_after_commit(&mut client, position)
                .await;
        }
        Ok(deleted)
    }

    /// Deletes resolved violations resolved before `cutoff_ms`, in batches; returns how many.
    pub async fn purge_resolved(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let batch = DELETE_BATCH as i64;
        let mut purged = 0;
        loop {
            // The outer conditions are checked again on a row a report changed meanwhile: a
            // violation opened again is kept.
            let deleted = client
                .execute(
                    "DELETE FROM violations \
                     WHERE state = 'resolved' AND resolved_at_ms < $1 AND key IN ( \
                         SELECT key FROM violations \
                         WHERE state = 'resolved' AND resolved_at_ms < $1 LIMIT $2)",
                    &[&cutoff_ms, &batch],
                )
                .await
                .map_err(db_error)?;
            purged += deleted;
            if deleted < DELETE_BATCH as u64 {
                return Ok(purged);
            }
        }
    }
}

/// A pooled connection; `Unavailable` when none can be had.
async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    crate::store::postgres::pooled(pool).await
}

/// Takes `cluster`'s lock until the transaction ends: its reports and deletion run one at a
/// time, on every replica (two clusters whose names hash alike share one: harmless).
async fn lock_cluster(tx: &Transaction<'_>, cluster: &str) -> Result<(), StoreError> {
    let digest = Sha256::digest(cluster.as_bytes());
    let hash = i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &hash],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Takes `cluster`'s lock (`lock_cluster`) and says whether the cluster still exists: one
/// deleted meanwhile must not get records again (its deletion waits for this lock).
async fn lock_existing_cluster(tx: &Transaction<'_>, cluster: &str) -> Result<bool, StoreError> {
    lock_cluster(tx, cluster).await?;
    Ok(tx
        .query_opt(
            "SELECT 1 FROM clusters WHERE name = $1",
            &[&cluster.as_bytes()],
        )
        .await
        .map_err(db_error)?
        .is_some())
}

/// Takes the next `n` feed positions (held until the transaction ends: see the schema) and
/// tells the replicas at commit; returns the last.
async fn take_positions(tx: &Transaction<'_>, n: usize) -> Result<i64, StoreError> {
    let last: i64 = tx
        .query_one(
            "UPDATE audit_feed SET seq = seq + $1 WHERE id = 1 RETURNING seq",
            &[&(n as i64)],
        )
        .await
        .map_err(db_error)?
        .get(0);
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &last.to_string()])
        .await
        .map_err(db_error)?;
    Ok(last)
}

/// Deletes `cluster`'s violations and run (the caller holds its lock); how many violations,
/// and the feed position of the deletion when there were any.
async fn delete_records(
    tx: &Transaction<'_>,
    cluster: &str,
) -> Result<(u64, Option<i64>), StoreError> {
    let prefix = record::violation_prefix(&[cluster]);
    let deleted = tx
        .execute(
            "DELETE FROM violations WHERE key >= $1 AND key < $2",
            &[&prefix, &record::prefix_end(&prefix)],
        )
        .await
        .map_err(db_error)?;
    tx.execute(
        "DELETE FROM audit_runs WHERE cluster = $1",
        &[&cluster.as_bytes()],
    )
    .await
    .map_err(db_error)?;
    if deleted == 0 {
        return Ok((0, None));
    }
    let position = take_positions(tx, 1).await?;
    tx.execute(
        "INSERT INTO audit_cleared (cluster, seq) VALUES ($1, $2) \
         ON CONFLICT (cluster) DO UPDATE SET seq = excluded.seq",
        &[&cluster.as_bytes(), &position],
    )
    .await
    .map_err(db_error)?;
    Ok((deleted, Some(position)))
}

/// Deletes the records of clusters the store no longer has (a crash between deleting a
/// cluster and its violations). Every cluster with violations has a run.
async fn remove_orphans(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let orphans: Vec<Vec<u8>> = client
        .query(
            "SELECT r.cluster FROM audit_runs r \
             WHERE NOT EXISTS (SELECT 1 FROM clusters c WHERE c.name = r.cluster)",
            &[],
        )
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    let mut removed = 0;
    for name in orphans {
        // Run names are the names reports were stored under: UTF-8.
        let Ok(cluster) = String::from_utf8(name) else {
            continue;
        };
        let tx = client.transaction().await.map_err(db_error)?;
        if !lock_existing_cluster(&tx, &cluster).await? {
            removed += delete_records(&tx, &cluster).await?.0;
        }
        tx.commit().await.map_err(db_error)?;
    }
    if removed > 0 {
        warn!(
            records = removed,
            "Audit records of deleted clusters removed"
        );
    }
    Ok(())
}

/// A stored record, or `None` (logged) when it does not decode: skipped, and overwritten by
/// the next report of its key.
fn readable(key: &[u8], bytes: &[u8]) -> Option<ViolationRecord> {
    match ViolationRecord::decode(bytes) {
        Ok(record) => Some(record),
        Err(error) => {
            warn!(%error, key = %hex::encode(key), "Unreadable audit record skipped");
            None
        }
    }
}

/// Ends the follower task when the store goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
