//! Deleting violations: a deleted cluster's, and resolved ones past the retention.

use std::{sync::Arc, time::Duration};

use portcullis_proto::words::ViolationState;
use tracing::{info, warn};

use super::{DELETE_BATCH, ViolationStore, record, record::ViolationRecord};
use crate::store::{StoreError, now_millis};

impl ViolationStore {
    /// Deletes every violation of `cluster` and its run (the cluster was deleted); returns
    /// how many violations.
    pub async fn delete_cluster(self: &Arc<Self>, cluster: &str) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        let audit = self.clone();
        let name = cluster.to_owned();
        let deleted = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let mut keys: Vec<sled::IVec> = Vec::new();
            for item in audit.tree.scan_prefix(record::violation_prefix(&[&name])) {
                keys.push(item?.0);
            }
            let mut batch = sled::Batch::default();
            keys.iter().for_each(|key| batch.remove(key));
            batch.remove(record::run_key(&name));
            audit.tree.apply_batch(batch)?;
            audit.write_counts().remove_cluster(&name);
            Ok(keys.len() as u64)
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            what: format!("audit delete task: {e}"),
        })??;
        self.store.flush_all().await?;
        Ok(deleted)
    }

    /// Deletes resolved violations resolved before `now_ms` minus the retention; returns
    /// how many.
    pub async fn purge_resolved(self: &Arc<Self>, now_ms: i64) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        let audit = self.clone();
        let purged = tokio::task::spawn_blocking(move || audit.purge_resolved_blocking(now_ms))
            .await
            .map_err(|e| StoreError::Corrupt {
                what: format!("audit purge task: {e}"),
            })??;
        if purged > 0 {
            self.store.flush_all().await?;
        }
        Ok(purged)
    }

    /// `purge_resolved` without the lock (the caller holds it, or no one else can write).
    pub(super) fn purge_resolved_blocking(&self, now_ms: i64) -> Result<u64, StoreError> {
        let retention = i64::try_from(self.settings.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention);
        let resolved = ViolationState::Resolved.as_str();
        let mut doomed = Vec::new();
        for item in self.tree.scan_prefix(record::all_violations()) {
            let (key, value) = item?;
            let Some(record) = record::readable::<ViolationRecord>(&key, &value) else {
                continue;
            };
            let Some(v) = record.violation.filter(|v| v.state == resolved) else {
                continue;
            };
            let at = v.resolved_time.or(v.received_time).or(v.last_seen);
            let at_ms = at.map_or(0, |t| t.seconds.saturating_mul(1000));
            if at_ms < cutoff {
                doomed.push(key);
            }
        }
        for chunk in doomed.chunks(DELETE_BATCH) {
            let mut batch = sled::Batch::default();
            chunk.iter().for_each(|key| batch.remove(key));
            self.tree.apply_batch(batch)?;
        }
        Ok(doomed.len() as u64)
    }
}

/// Purges resolved violations past the retention every `every` until the task is dropped (the
/// store purged once when it opened).
pub async fn purge_periodically(audit: Arc<ViolationStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match audit.purge_resolved(now_millis()).await {
            Ok(0) => {}
            Ok(n) => info!(
                deleted = n,
                open = audit.open_total(),
                "Resolved violations purged"
            ),
            Err(error) => warn!(%error, "Purging resolved violations failed"),
        }
    }
}
