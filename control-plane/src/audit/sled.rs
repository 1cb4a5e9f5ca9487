//! The audit store on sled (one process): the tree `audit` of the store's database, keys and
//! checksummed records as `record` lays them out. One writer at a time: a report's reads, its
//! batch, its flush and its broadcast are one step, so watchers see each record's changes in
//! order. Counts move by the difference of every write.

use std::{collections::HashMap, ops::Bound};

use tokio::sync::Mutex;
use tracing::warn;

use portcullis_proto::v1::ViolationFilter;
use portcullis_proto::words::ViolationState;

use super::counts::Counts;
use super::plan::Plan;
use super::record::{self, RunRecord, ViolationRecord};
use super::{
    AuditError, DELETE_BATCH, Matcher, Published, Report, Reported, ViolationPage,
    retention::resolved_at_ms,
};
use crate::store::{Store, StoreError, now_millis, timestamp_from_millis};

pub struct SledAudit {
    tree: ::sled::Tree,
    writer: Mutex<()>,
}

fn task_failed(what: &str, error: tokio::task::JoinError) -> StoreError {
    StoreError::Corrupt {
        what: format!("audit {what} task: {error}"),
    }
}

impl SledAudit {
    /// Opens the tree, counts the open violations into `published`, and deletes those of
    /// clusters that no longer exist (a crash between deleting a cluster and its violations).
    pub async fn open(store: &Store, published: &Published) -> Result<Self, StoreError> {
        let tree = store.db().open_tree("audit")?;
        let mut counts = Counts::default();
        let mut exists: HashMap<String, bool> = HashMap::new();
        let mut orphans = Vec::new();
        let mut corrupt: Vec<::sled::IVec> = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            let is_violation = key.first() == Some(&b'v');
            let cluster = if is_violation {
                record::cluster_of(&key)?
            } else {
                record::run_cluster(&key)?
            };
            let known = match exists.get(&cluster) {
                Some(known) => *known,
                None => {
                    let known = store.get_cluster(&cluster).await?.is_some();
                    exists.insert(cluster.clone(), known);
                    known
                }
            };
            if !known {
                orphans.push(key);
                continue;
            }
            let readable = if is_violation {
                record::open::<ViolationRecord>(&key, &value)
                    .map(|record| counts.change(None, record.violation.as_ref()))
            } else {
                record::open::<RunRecord>(&key, &value).map(drop)
            };
            if let Err(error) = readable {
                // Derived data: dropped, and the cluster's run with it, so its agent's next
                // report is answered `resync_required` and the resync restores what was lost.
                warn!(%error, %cluster, "Unreadable audit record dropped; the cluster's agent will resync");
                corrupt.push(key);
                corrupt.push(record::run_key(&cluster).into());
            }
        }
        *published.write_counts() = counts;
        for key in corrupt {
            tree.remove(key)?;
        }
        for chunk in orphans.chunks(DELETE_BATCH) {
            let mut batch = ::sled::Batch::default();
            chunk.iter().for_each(|key| batch.remove(key));
            tree.apply_batch(batch)?;
        }
        if !orphans.is_empty() {
            warn!(
                records = orphans.len(),
                "Audit records of deleted clusters removed"
            );
        }
        Ok(Self {
            tree,
            writer: Mutex::new(()),
        })
    }

    /// The tree, for tests that damage records.
    #[cfg(test)]
    pub fn tree(&self) -> &::sled::Tree {
        &self.tree
    }

    /// Applies `report` whole; returns once it is durable and sent to watchers.
    pub async fn report(
        &self,
        store: &Store,
        published: &std::sync::Arc<Published>,
        report: Report,
    ) -> Result<Reported, AuditError> {
        let _writer = self.writer.lock().await;
        // The agent's token was checked before: a cluster missing now was deleted meanwhile,
        // and must not get records again.
        if store.get_cluster(&report.cluster).await?.is_none() {
            return Err(StoreError::NotFound {
                kind: "cluster",
                name: report.cluster.clone(),
            }
            .into());
        }
        let tree = self.tree.clone();
        let counted = published.clone();
        let plan = tokio::task::spawn_blocking(move || apply_report(&tree, &counted, report))
            .await
            .map_err(|e| task_failed("report", e))??;
        let Some(plan) = plan else {
            return Ok(Reported {
                resync_required: true,
                ..Default::default()
            });
        };
        if plan.writes_anything() {
            store.flush_all().await?;
        }
        for violation in plan.changed() {
            published.send(violation.clone());
        }
        Ok(plan.reported)
    }

    /// One page of violations matching `filter` after `after` (see `ViolationStore::list`).
    pub async fn read_page(
        &self,
        filter: &ViolationFilter,
        limit: usize,
        after: Option<Vec<u8>>,
    ) -> Result<ViolationPage, StoreError> {
        let tree = self.tree.clone();
        let filter = filter.clone();
        tokio::task::spawn_blocking(move || read_page(&tree, &filter, limit, after))
            .await
            .map_err(|e| task_failed("listing", e))?
    }

    /// Deletes every violation of `cluster` and its run; returns how many violations.
    pub async fn delete_cluster(
        &self,
        store: &Store,
        published: &Published,
        cluster: &str,
    ) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        let tree = self.tree.clone();
        let name = cluster.to_owned();
        let deleted = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let mut keys: Vec<::sled::IVec> = Vec::new();
            for item in tree.scan_prefix(record::violation_prefix(&[&name])) {
                keys.push(item?.0);
            }
            let mut batch = ::sled::Batch::default();
            keys.iter().for_each(|key| batch.remove(key));
            batch.remove(record::run_key(&name));
            tree.apply_batch(batch)?;
            Ok(keys.len() as u64)
        })
        .await
        .map_err(|e| task_failed("delete", e))??;
        published.write_counts().remove_cluster(cluster);
        store.flush_all().await?;
        Ok(deleted)
    }

    /// Deletes resolved violations resolved before `cutoff_ms`; returns how many.
    pub async fn purge_resolved(&self, store: &Store, cutoff_ms: i64) -> Result<u64, StoreError> {
        let _writer = self.writer.lock().await;
        let tree = self.tree.clone();
        let purged = tokio::task::spawn_blocking(move || purge_resolved(&tree, cutoff_ms))
            .await
            .map_err(|e| task_failed("purge", e))??;
        if purged > 0 {
            store.flush_all().await?;
        }
        Ok(purged)
    }
}

/// The report's writes in one batch, the counts moved (`None`: the agent must resync). The
/// caller holds `writer`.
fn apply_report(
    tree: &::sled::Tree,
    published: &Published,
    report: Report,
) -> Result<Option<Plan>, AuditError> {
    let run_key = record::run_key(&report.cluster);
    let stored_run = match tree.get(&run_key)? {
        Some(bytes) => record::readable::<RunRecord>(&run_key, &bytes),
        None => None,
    };
    let now = timestamp_from_millis(now_millis());
    let Some(mut plan) = Plan::new(&report, stored_run, now)? else {
        return Ok(None);
    };
    let cluster_prefix = record::violation_prefix(&[&report.cluster]);
    let resync_end = report.resync_end;
    for (key, violation) in report.violations {
        let stored = match tree.get(&key)? {
            Some(bytes) => record::readable::<ViolationRecord>(&key, &bytes),
            None => None,
        };
        plan.apply(key, stored, violation);
    }
    if resync_end {
        for item in tree.scan_prefix(cluster_prefix) {
            let (key, value) = item?;
            if plan.was_reported(&key) {
                continue;
            }
            if let Some(stored) = record::readable::<ViolationRecord>(&key, &value) {
                plan.resolve_unreported(key.to_vec(), stored);
            }
        }
    }
    if plan.writes_anything() {
        let mut batch = ::sled::Batch::default();
        if let Some(run) = &plan.run {
            batch.insert(run_key.as_slice(), record::seal(&run_key, run));
        }
        for write in &plan.writes {
            batch.insert(
                write.key.as_slice(),
                record::seal(&write.key, &write.record),
            );
        }
        tree.apply_batch(batch)?;
        let mut counts = published.write_counts();
        for write in &plan.writes {
            counts.change(write.before.as_ref(), write.record.violation.as_ref());
        }
    }
    Ok(Some(plan))
}

/// One page of violations matching `filter` in key order after `after`, reading only the key
/// range the filter's leading fields allow (a cluster's records when it names one).
fn read_page(
    tree: &::sled::Tree,
    filter: &ViolationFilter,
    limit: usize,
    after: Option<Vec<u8>>,
) -> Result<ViolationPage, StoreError> {
    let matcher = Matcher::new(filter);
    let prefix = matcher.key_prefix();
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix.clone()),
    };
    let mut page = ViolationPage::default();
    // Decoded at most a response's budget: a page of 1,000 large records is cut here, not
    // after all of them were read.
    let mut bytes = 0;
    for item in tree.range((start, Bound::Unbounded)) {
        let (key, value) = item?;
        if !key.starts_with(&prefix) {
            break;
        }
        if !page.violations.is_empty()
            && bytes + value.len() > portcullis_proto::limits::RESPONSE_BUDGET_BYTES
        {
            page.more = true;
            break;
        }
        let Some(record) = record::readable::<ViolationRecord>(&key, &value) else {
            continue;
        };
        let Some(violation) = record.violation.filter(|v| matcher.matches(v)) else {
            continue;
        };
        if page.violations.len() == limit {
            page.more = true;
            break;
        }
        bytes += value.len();
        page.violations.push(violation);
        page.keys.push(key.to_vec());
    }
    Ok(page)
}

/// Deletes resolved violations resolved before `cutoff_ms`, in batches; returns how many.
pub fn purge_resolved(tree: &::sled::Tree, cutoff_ms: i64) -> Result<u64, StoreError> {
    let resolved = ViolationState::Resolved.as_str();
    let mut doomed = Vec::new();
    for item in tree.scan_prefix(record::all_violations()) {
        let (key, value) = item?;
        let Some(record) = record::readable::<ViolationRecord>(&key, &value) else {
            continue;
        };
        let Some(v) = record.violation.filter(|v| v.state == resolved) else {
            continue;
        };
        if resolved_at_ms(&v) < cutoff_ms {
            doomed.push(key);
        }
    }
    for chunk in doomed.chunks(DELETE_BATCH) {
        let mut batch = ::sled::Batch::default();
        chunk.iter().for_each(|key| batch.remove(key));
        tree.apply_batch(batch)?;
    }
    Ok(doomed.len() as u64)
}
