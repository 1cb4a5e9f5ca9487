//! Deleting violations: a deleted cluster's, and resolved ones past the retention.

use std::{sync::Arc, time::Duration};

use portcullis_proto::v1::Violation;
use tracing::{info, warn};

use super::{Backend, ViolationStore};
use crate::store::{StoreError, now_millis};

/// When a resolved violation counts as resolved for the retention (unix ms, whole seconds).
pub fn resolved_at_ms(v: &Violation) -> i64 {
    let at = v.resolved_time.or(v.received_time).or(v.last_seen);
    at.map_or(0, |t| t.seconds.saturating_mul(1000))
}

impl ViolationStore {
    /// Deletes every violation of `cluster` and its run (the cluster was deleted); returns
    /// how many violations.
    pub async fn delete_cluster(&self, cluster: &str) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sled(sled) => {
                sled.delete_cluster(&self.store, &self.published, cluster)
                    .await
            }
            Backend::Postgres(pg) => pg.delete_cluster(cluster).await,
        }
    }

    /// Deletes resolved violations resolved before `now_ms` minus the retention; returns
    /// how many.
    pub async fn purge_resolved(&self, now_ms: i64) -> Result<u64, StoreError> {
        let retention = i64::try_from(self.settings.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(retention);
        match &self.backend {
            Backend::Sled(sled) => sled.purge_resolved(&self.store, cutoff).await,
            Backend::Postgres(pg) => pg.purge_resolved(cutoff).await,
        }
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
