//! Consistent snapshots for agents: every policy and the cluster's record as of one revision.

use std::time::Duration;

use super::{SledStore, StoreError, StoreSnapshot};

impl SledStore {
    /// Reads every policy and `cluster` at one revision (no write can interleave), then waits
    /// until that revision is durable so an agent never holds state the store could lose.
    /// Scans are read afterwards, without the lock (`scan_summaries`): a scan changed after
    /// the revision may show its newer state, which the deltas that follow repeat, as scan
    /// changes are idempotent puts and deletes by id.
    pub async fn snapshot(&self, cluster: &str) -> Result<StoreSnapshot, StoreError> {
        let (revision, policies, cluster) = {
            let _guard = self.write_lock.lock().await;
            let revision = self.written.load(std::sync::atomic::Ordering::Acquire);
            (revision, self.all_policies()?, self.get_cluster(cluster)?)
        };
        let mut durable = self.subscribe();
        let wait = durable.wait_for(|d| *d >= revision);
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(StoreError::Corrupt {
                    what: format!("revision {revision} did not become durable"),
                });
            }
        }
        Ok(StoreSnapshot {
            epoch: self.epoch.clone(),
            revision,
            policies,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::store::sled::test_support::temp_store;
    use portcullis_proto::v1::Policy;

    #[tokio::test]
    async fn snapshot_has_every_policy_at_the_head_revision() {
        let (store, _dir) = temp_store();
        for name in ["a", "b"] {
            let policy = Policy {
                name: name.into(),
                ..Default::default()
            };
            store.create_policy(policy).await.unwrap();
        }
        let snapshot = store.snapshot("c1").await.unwrap();
        assert_eq!(snapshot.revision, 2);
        assert_eq!(snapshot.policies.len(), 2);
        assert!(snapshot.cluster.is_none());
        assert_eq!(snapshot.epoch, store.epoch());
    }
}
