//! The change log: one entry per revision, read back in order by agents that resume, and
//! compacted past a horizon. A reader asking for revisions the log no longer holds is told to
//! take a snapshot instead.

use super::{ChangeRecord, ChangesSince, META_COMPACTED, SledStore, StoreError, decode, read_u64};

impl SledStore {
    /// The changes after `revision`, at most `limit` of them.
    pub fn changes_since(&self, revision: u64, limit: usize) -> Result<ChangesSince, StoreError> {
        if revision > self.revision() || revision < self.compacted_through()? {
            return Ok(ChangesSince::SnapshotNeeded);
        }
        let durable = self.revision();
        let mut out = Vec::new();
        let start = (revision + 1).to_be_bytes();
        for entry in self.changes.range(start..) {
            let (_, value) = entry?;
            let record: ChangeRecord = decode("change", &value)?;
            if record.revision > durable || out.len() == limit {
                break;
            }
            // A gap means compaction removed entries while we read: fall back to a snapshot.
            if record.revision != revision + 1 + out.len() as u64 {
                return Ok(ChangesSince::SnapshotNeeded);
            }
            out.push(record);
        }
        if out.is_empty() && durable > revision {
            return Ok(ChangesSince::SnapshotNeeded);
        }
        Ok(ChangesSince::Changes(out))
    }

    /// The highest revision the log has dropped; a reader at or past it can resume.
    pub fn compacted_through(&self) -> Result<u64, StoreError> {
        read_u64(&self.meta, META_COMPACTED)
    }

    /// Drops log entries more than `keep` revisions behind the head. Returns how many.
    pub async fn compact(&self, keep: u64) -> Result<usize, StoreError> {
        let _guard = self.write_lock.lock().await;
        let head = self.written.load(std::sync::atomic::Ordering::Acquire);
        let through = head.saturating_sub(keep);
        if through <= self.compacted_through()? {
            return Ok(0);
        }
        // Mark first, then delete: a reader never believes in entries that are going away.
        self.meta.insert(META_COMPACTED, &through.to_be_bytes())?;
        let mut batch = sled::Batch::default();
        let mut dropped = 0;
        for key in self.changes.range(..(through + 1).to_be_bytes()).keys() {
            batch.remove(key?);
            dropped += 1;
        }
        self.changes.apply_batch(batch)?;
        drop(_guard);
        self.flush().await?;
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Change, sled::test_support::temp_store};
    use portcullis_proto::v1::Policy;

    async fn put(store: &SledStore, name: &str) {
        let policy = Policy {
            name: name.into(),
            ..Default::default()
        };
        store.apply_policies(vec![policy]).await.unwrap();
    }

    fn revisions(changes: ChangesSince) -> Vec<u64> {
        match changes {
            ChangesSince::Changes(c) => c.iter().map(|r| r.revision).collect(),
            ChangesSince::SnapshotNeeded => panic!("snapshot needed"),
        }
    }

    #[tokio::test]
    async fn changes_since_returns_ordered_entries_with_objects() {
        let (store, _dir) = temp_store();
        for name in ["a", "b", "c"] {
            put(&store, name).await;
        }
        store.delete_policy("a", 0).await.unwrap();
        assert_eq!(
            revisions(store.changes_since(1, 100).unwrap()),
            vec![2, 3, 4]
        );
        assert_eq!(revisions(store.changes_since(1, 2).unwrap()), vec![2, 3]);
        assert_eq!(
            revisions(store.changes_since(4, 100).unwrap()),
            Vec::<u64>::new()
        );
        let ChangesSince::Changes(c) = store.changes_since(3, 10).unwrap() else {
            panic!()
        };
        assert_eq!(c[0].change, Some(Change::PolicyDeleted("a".into())));
        assert_eq!(
            store.changes_since(9, 10).unwrap(),
            ChangesSince::SnapshotNeeded
        );
    }

    #[tokio::test]
    async fn compaction_forces_snapshot_for_old_readers() {
        let (store, _dir) = temp_store();
        for name in ["a", "b", "c", "d", "e"] {
            put(&store, name).await;
        }
        assert_eq!(store.compact(2).await.unwrap(), 3);
        assert_eq!(store.compacted_through().unwrap(), 3);
        assert_eq!(
            store.changes_since(2, 10).unwrap(),
            ChangesSince::SnapshotNeeded
        );
        assert_eq!(revisions(store.changes_since(3, 10).unwrap()), vec![4, 5]);
        assert_eq!(store.compact(2).await.unwrap(), 0);
    }
}
