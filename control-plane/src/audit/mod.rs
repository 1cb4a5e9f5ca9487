//! Audit violations: one record per (cluster, kind, namespace, name, policy), changed only by
//! the agents' `ReportViolations` (each report applied whole: `plan` decides, the backend
//! writes), counted in memory (`counts`) and fanned out to watchers in the order they were
//! stored. Two backends with the same semantics, following the store's: `sled` (the tree
//! `audit`, checksummed records: `record`) and `postgres` (tables every replica shares, each
//! replica following the changes of all).
//!
//! Each cluster has one current audit run (a UUIDv7, so runs compare as text in time order): a
//! report of an earlier run is refused, and one of a later run is accepted only when it starts
//! a resync. A resync's end resolves every open record the resync did not report.
//! `stale` is never stored: it is computed when violations are read, against the policies'
//! current revisions.

mod apply;
mod counts;
mod filter;
mod plan;
mod postgres;
mod record;
mod retention;
mod sled;
mod stale;
mod validate;

use std::{
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use tokio::sync::broadcast;

use portcullis_proto::v1::{Violation, ViolationCount, ViolationFilter};

use crate::store::{Store, StoreError, now_millis};
use counts::Counts;

pub use filter::Matcher;
pub use retention::purge_periodically;
pub use stale::PolicyRevisions;
pub use validate::{Report, ReportError, validate_report};

/// Records deleted (or purged) per sled batch or PostgreSQL statement.
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

impl From<::sled::Error> for AuditError {
    fn from(error: ::sled::Error) -> Self {
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
    backend: Backend,
    published: Arc<Published>,
    settings: AuditSettings,
}

enum Backend {
    Sled(sled::SledAudit),
    Postgres(postgres::PgAudit),
}

/// What both backends publish: the open violations counted, and the changes for watchers.
struct Published {
    counts: RwLock<Counts>,
    changes: broadcast::Sender<Arc<Violation>>,
}

impl Published {
    fn new() -> Self {
        Self {
            counts: RwLock::new(Counts::default()),
            changes: broadcast::channel(WATCH_BACKLOG).0,
        }
    }

    fn read_counts(&self) -> RwLockReadGuard<'_, Counts> {
        // Every change of the counts is complete before the lock is released: usable even
        // after a panic elsewhere.
        self.counts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_counts(&self) -> RwLockWriteGuard<'_, Counts> {
        self.counts.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a stored change to the watchers there are.
    fn send(&self, violation: Violation) {
        if self.changes.receiver_count() > 0 {
            // A watcher that went away meanwhile is fine.
            let _ = self.changes.send(Arc::new(violation));
        }
    }
}

impl ViolationStore {
    /// Opens the store's audit records: in the PostgreSQL database when the store is there,
    /// else in the store's sled database. Counts the open violations, deletes those of
    /// clusters that no longer exist (a crash between deleting a cluster and its violations),
    /// and purges resolved violations past the retention.
    pub async fn open(store: Arc<Store>, settings: AuditSettings) -> Result<Self, StoreError> {
        let published = Arc::new(Published::new());
        let backend = match store.postgres_pool() {
            Some(pool) => {
                let notified = store.notifications(crate::store::postgres::Topic::Violations);
                Backend::Postgres(
                    postgres::PgAudit::open(pool.clone(), notified, published.clone()).await?,
                )
            }
            None => Backend::Sled(sled::SledAudit::open(&store, &published).await?),
        };
        let audit = Self {
            store,
            backend,
            published,
            settings,
        };
        audit.purge_resolved(now_millis()).await?;
        Ok(audit)
    }

    /// Open violations of `cluster` (the fleet view).
    pub fn open_in(&self, cluster: &str) -> u64 {
        self.published.read_counts().open_in(cluster)
    }

    /// Open violations of every cluster.
    pub fn open_total(&self) -> u64 {
        self.published.read_counts().open_total()
    }

    /// Stored violations as they open, change or resolve (without `stale`: see
    /// `PolicyRevisions`), in the order they were stored; on PostgreSQL also those other
    /// replicas stored, within about a second.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Violation>> {
        self.published.changes.subscribe()
    }

    /// Applies a validated report whole; returns once it is durable and sent to watchers.
    pub async fn report(self: &Arc<Self>, report: Report) -> Result<Reported, AuditError> {
        let audit = self.clone();
        // A task of its own: a caller that goes away cannot cut a report off between its
        // write and its broadcast.
        tokio::spawn(async move {
            match &audit.backend {
                Backend::Sled(sled) => sled.report(&audit.store, &audit.published, report).await,
                Backend::Postgres(pg) => pg.report(report).await,
            }
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            what: format!("audit report task: {e}"),
        })?
    }

    /// One page of violations matching `filter` in key order after the key `after`, at most
    /// `limit`, without `stale` (see `list`). Reads only the key range the filter's leading
    /// fields allow (a cluster's records when it names one).
    pub async fn read_page(
        &self,
        filter: &ViolationFilter,
        limit: usize,
        after: Option<Vec<u8>>,
    ) -> Result<ViolationPage, StoreError> {
        match &self.backend {
            Backend::Sled(sled) => sled.read_page(filter, limit, after).await,
            Backend::Postgres(pg) => pg.read_page(filter, limit, after).await,
        }
    }

    /// `read_page`, with each violation's `stale` set against the current policies.
    pub async fn list(
        &self,
        filter: &ViolationFilter,
        limit: usize,
        after: Option<Vec<u8>>,
    ) -> Result<ViolationPage, StoreError> {
        let mut page = self.read_page(filter, limit, after).await?;
        self.mark_stale(&mut page).await?;
        Ok(page)
    }

    /// Sets `stale` on each violation of `page` (see `PolicyRevisions`).
    pub async fn mark_stale(&self, page: &mut ViolationPage) -> Result<(), StoreError> {
        let mut revisions = PolicyRevisions::new(self.store.clone());
        for violation in &mut page.violations {
            revisions.mark(violation).await?;
        }
        Ok(())
    }

    /// Open violations by (cluster, namespace, policy, severity), ordered, and their total;
    /// of one cluster when given.
    pub fn summarize(&self, cluster: Option<&str>) -> (Vec<ViolationCount>, u64) {
        let counts = self.published.read_counts();
        let rows = counts.rows(cluster);
        let total = match cluster {
            Some(cluster) => counts.open_in(cluster),
            None => counts.open_total(),
        };
        (rows, total)
    }
}

#[cfg(test)]
mod tests;
