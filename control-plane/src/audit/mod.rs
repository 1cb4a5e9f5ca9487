//! Audit violations: one record per (cluster, kind, namespace, name, policy) in the sled tree
//! `audit` (see `record`), changed only by the agents' `ReportViolations` (each report applied
//! whole, in one sled batch, then flushed), counted in memory (`counts`) and fanned out to
//! watchers in the order they were stored.
//!
//! Each cluster has one current audit run (a UUIDv7, so runs compare as text in time order): a
//! report of an earlier run is refused, and one of a later run is accepted only when it starts
//! a resync. A resync's end resolves every open record the resync did not report.
//! `stale` is never stored: it is computed when violations are read, against the policies'
//! current revisions.

mod apply;
mod counts;
mod filter;
mod record;
mod retention;
mod stale;
mod validate;

use std::{
    collections::{HashMap, HashSet},
    ops::Bound,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use tokio::sync::{Mutex, broadcast};
use tracing::warn;

use portcullis_proto::v1::{Violation, ViolationCount, ViolationFilter};
use portcullis_proto::words::ViolationState;

use crate::store::{Store, StoreError, now_millis, timestamp_from_millis};
use apply::{Outcome, Touch, apply, resolve_unreported};
use counts::Counts;
use record::{RunRecord, ViolationRecord};

pub use filter::Matcher;
pub use retention::purge_periodically;
pub use stale::PolicyRevisions;
pub use validate::{Report, ReportError, validate_report};

/// Records deleted (or purged) per sled batch.
const DELETE_BATCH: usize = 10_000;
/// Changes a watcher may fall behind before it is ended.
const WATCH_BACKLOG: usize = 4096;

#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// Resolved violations are deleted this long after they were resolved.
    pub retention: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// What a report did (`ReportViolationsResponse`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub opened: u32,
    pub changed: u32,
    pub resolved: u32,
    pub unchanged: u32,
    /// The run is not the cluster's current one and the report starts no resync: nothing
    /// was stored.
    pub resync_required: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(
        "audit run {run} of cluster {cluster:?} is superseded by a later audit run ({current})"
    )]
    Superseded {
        cluster: String,
        run: String,
        current: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for AuditError {
    fn from(error: sled::Error) -> Self {
        Self::Store(error.into())
    }
}

/// One page of violations in key order, each with its key (to resume after).
#[derive(Debug, Default)]
pub struct ViolationPage {
    pub violations: Vec<Violation>,
    pub keys: Vec<Vec<u8>>,
    /// More violations match after the last one.
    pub more: bool,
}

pub struct ViolationStore {
    store: Arc<Store>,
    tree: sled::Tree,
    counts: RwLock<Counts>,
    /// Serialises writers: a report's reads, its batch, its flush and its broadcast are one
    /// step, so watchers see each record's changes in order.
    writer: Mutex<()>,
    changes: broadcast::Sender<Arc<Violation>>,
    settings: AuditSettings,
}

impl ViolationStore {
    /// Opens the tree, counts the open violations, deletes those of clusters that no longer
    /// exist (a crash between deleting a cluster and its violations), and purges resolved
    /// violations past the retention.
    pub fn open(store: Arc<Store>, settings: AuditSettings) -> Result<Self, StoreError> {
        let tree = store.db().open_tree("audit")?;
        let mut counts = Counts::default();
        let mut exists: HashMap<String, bool> = HashMap::new();
        let mut orphans = Vec::new();
        let mut corrupt: Vec<sled::IVec> = Vec::new();
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
                    let known = store.get_cluster(&cluster)?.is_some();
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
        for key in corrupt {
            tree.remove(key)?;
        }
        for chunk in orphans.chunks(DELETE_BATCH) {
            let mut batch = sled::Batch::default();
            chunk.iter().for_each(|key| batch.remove(key));
            tree.apply_batch(batch)?;
        }
        if !orphans.is_empty() {
            warn!(
                records = orphans.len(),
                "Audit records of deleted clusters removed"
            );
        }
        let audit = Self {
            store,
            tree,
            counts: RwLock::new(counts),
            writer: Mutex::new(()),
            changes: broadcast::channel(WATCH_BACKLOG).0,
            settings,
        };
        audit.purge_resolved_blocking(now_millis())?;
        Ok(audit)
    }

    fn read_counts(&self) -> RwLockReadGuard<'_, Counts> {
        // Every change of the counts is complete before the lock is released: usable even
        // after a panic elsewhere.
        self.counts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_counts(&self) -> RwLockWriteGuard<'_, Counts> {
        self.counts.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Open violations of `cluster` (the fleet view).
    pub fn open_in(&self, cluster: &str) -> u64 {
        self.read_counts().open_in(cluster)
    }

    /// Open violations of every cluster.
    pub fn open_total(&self) -> u64 {
        self.read_counts().open_total()
    }

    /// Stored violations as they open, change or resolve (without `stale`: see
    /// `PolicyRevisions`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Violation>> {
        self.changes.subscribe()
    }

    /// Applies a validated report whole; returns once it is durable and sent to watchers.
    pub async fn report(self: &Arc<Self>, report: Report) -> Result<Reported, AuditError> {
        let audit = self.clone();
        // A task of its own: a caller that goes away cannot cut a report off between its
        // write and its broadcast.
        tokio::spawn(async move { audit.report_whole(report).await })
            .await
            .map_err(|e| StoreError::Corrupt {
                what: format!("audit report task: {e}"),
            })?
    }

    async fn report_whole(self: &Arc<Self>, report: Report) -> Result<Reported, AuditError> {
        let _writer = self.writer.lock().await;
        let audit = self.clone();
        let applied = tokio::task::spawn_blocking(move || audit.apply_report(report))
            .await
            .map_err(|e| StoreError::Corrupt {
                what: format!("audit report task: {e}"),
            })??;
        if applied.wrote {
            self.store.flush_all().await?;
        }
        if self.changes.receiver_count() > 0 {
            for violation in applied.changed {
                // A watcher that went away meanwhile is fine.
                let _ = self.changes.send(Arc::new(violation));
            }
        }
        Ok(applied.reported)
    }

    /// The report's writes in one batch. The caller holds `writer`.
    fn apply_report(&self, report: Report) -> Result<Applied, AuditError> {
        let cluster = report.cluster.as_str();
        let run_key = record::run_key(cluster);
        let stored_run = match self.tree.get(&run_key)? {
            Some(bytes) => record::readable::<RunRecord>(&run_key, &bytes),
            None => None,
        };
        // The agent's token was checked before: a cluster missing now was deleted meanwhile,
        // and must not get records again.
        if self.store.get_cluster(cluster)?.is_none() {
            return Err(StoreError::NotFound {
                kind: "cluster",
                name: cluster.to_owned(),
            }
            .into());
        }
        let superseded = |current: &RunRecord| AuditError::Superseded {
            cluster: cluster.to_owned(),
            run: report.run.clone(),
            current: current.run.clone(),
        };
        let resync_required = || Applied {
            reported: Reported {
                resync_required: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let run = match (report.resync_start, stored_run) {
            (true, Some(current)) if report.run < current.run => return Err(superseded(&current)),
            (true, current) => RunRecord {
                run: report.run.clone(),
                resync: current.map_or(0, |c| c.resync) + 1,
            },
            (false, None) => return Ok(resync_required()),
            (false, Some(current)) if report.run > current.run => return Ok(resync_required()),
            (false, Some(current)) if report.run < current.run => return Err(superseded(&current)),
            (false, Some(current)) => current,
        };
        let touch = Touch {
            run: run.run.clone(),
            resync: run.resync,
            now: timestamp_from_millis(now_millis()),
        };
        let mut applied = Applied::default();
        applied.reported.unchanged = report.superseded;
        let mut batch = sled::Batch::default();
        if report.resync_start {
            batch.insert(run_key.as_slice(), record::seal(&run_key, &run));
            applied.wrote = true;
        }
        // (before, after) of every record written, for the counts.
        let mut moved: Vec<(Option<Violation>, Violation)> = Vec::new();
        let mut reported_keys = HashSet::with_capacity(report.violations.len());
        for (key, violation) in report.violations {
            let stored = match self.tree.get(&key)? {
                Some(bytes) => record::readable::<ViolationRecord>(&key, &bytes),
                None => None,
            };
            let (outcome, written) = apply(stored.as_ref(), violation, &touch);
            applied.count(outcome);
            if let Some(written) = written {
                batch.insert(key.as_slice(), record::seal(&key, &written));
                applied.wrote = true;
                let after = written.violation.unwrap_or_default();
                if outcome != Outcome::Unchanged {
                    applied.changed.push(after.clone());
                }
                moved.push((stored.and_then(|s| s.violation), after));
            }
            reported_keys.insert(key);
        }
        if report.resync_end {
            let open = ViolationState::Open.as_str();
            for item in self.tree.scan_prefix(record::violation_prefix(&[cluster])) {
                let (key, value) = item?;
                if reported_keys.contains(key.as_ref()) {
                    continue;
                }
                let Some(stored) = record::readable::<ViolationRecord>(&key, &value) else {
                    continue;
                };
                if touch.touched(&stored) {
                    continue;
                }
                let Some(before) = stored.violation.filter(|v| v.state == open) else {
                    continue;
                };
                let written = resolve_unreported(before.clone(), &touch);
                batch.insert(&key, record::seal(&key, &written));
                applied.wrote = true;
                applied.count(Outcome::Resolved);
                let after = written.violation.unwrap_or_default();
                applied.changed.push(after.clone());
                moved.push((Some(before), after));
            }
        }
        if applied.wrote {
            self.tree.apply_batch(batch)?;
            let mut counts = self.write_counts();
            for (before, after) in &moved {
                counts.change(before.as_ref(), Some(after));
            }
        }
        Ok(applied)
    }

    /// Violations matching `filter` in key order, after the key `after`, at most `limit`,
    /// `stale` computed against the current policies. Reads only the key range the filter's
    /// leading fields allow (a cluster's records when it names one).
    pub fn list(
        &self,
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
        for item in self.tree.range((start, Bound::Unbounded)) {
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
        let mut revisions = PolicyRevisions::new(self.store.clone());
        for violation in &mut page.violations {
            revisions.mark(violation)?;
        }
        Ok(page)
    }

    /// Open violations by (cluster, namespace, policy, severity), ordered, and their total;
    /// of one cluster when given.
    pub fn summarize(&self, cluster: Option<&str>) -> (Vec<ViolationCount>, u64) {
        let counts = self.read_counts();
        let rows = counts.rows(cluster);
        let total = match cluster {
            Some(cluster) => counts.open_in(cluster),
            None => counts.open_total(),
        };
        (rows, total)
    }
}

/// What `apply_report` did.
#[derive(Default)]
struct Applied {
    reported: Reported,
    /// Records opened, changed or resolved, for watchers.
    changed: Vec<Violation>,
    /// Anything was written (also a confirmation or a new resync).
    wrote: bool,
}

impl Applied {
    fn count(&mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Opened => &mut self.reported.opened,
            Outcome::Changed => &mut self.reported.changed,
            Outcome::Resolved => &mut self.reported.resolved,
            Outcome::Unchanged => &mut self.reported.unchanged,
        };
        *counter += 1;
    }
}

#[cfg(test)]
mod tests;
