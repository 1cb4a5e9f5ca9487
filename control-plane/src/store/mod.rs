//! The control plane's durable state: policies, clusters, agent token hashes, protection
//! settings, image scan results with the vulnerability dictionary, and the change log. One
//! interface, two backends with the same semantics: sled (embedded, the default, one process)
//! and PostgreSQL (several replicas on one database). Every change takes the next global
//! revision, gapless and in commit order, written with its change-log entry in one transaction;
//! a revision is published to watchers (agents' streams) only once it is durable. The store has
//! an `epoch` (fixed at creation) so agents can tell a reset store from the one they synced with.

#[cfg(test)]
pub(crate) mod conformance;
pub mod postgres;
mod records;
mod rules;
pub mod sled;

use portcullis_proto::v1::{Cluster, ImageScan, Policy, ProtectionSettings};
use tokio::sync::watch;

pub use portcullis_runtime::clock::{now_millis, timestamp_from_millis};
pub use records::{Change, ChangeRecord};
pub use rules::{ApplyOutcome, ChangesSince, NewScan, StoreSnapshot, VULNERABILITIES_FIELD};
pub(crate) use rules::{check_revision, index_keys, same_spec, scan_id};

/// Errors of the store. The gRPC layer maps them to status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {name:?} is at revision {current}, not {expected}: read it again and retry")]
    Conflict {
        kind: &'static str,
        name: String,
        expected: u64,
        current: u64,
    },
    #[error(
        "data dir {dir} was written by store format version {found}; this build supports up to \
         version {supported}: run a newer portcullis-control-plane"
    )]
    NewerFormat {
        dir: String,
        found: u32,
        supported: u32,
    },
    /// A data dir from before the first release, whose layout no build reads.
    #[error(
        "data dir {dir} holds {what} from before the first release, which this build does not \
         read: move it aside and start with a new data dir"
    )]
    PreRelease { dir: String, what: &'static str },
    /// The caller's input cannot be stored; the gRPC layer answers InvalidArgument.
    #[error("{what}")]
    Invalid { what: String },
    #[error("store is corrupt: {what}")]
    Corrupt { what: String },
    /// The database cannot be reached (PostgreSQL): the call may succeed on another replica
    /// or later; the gRPC layer answers Unavailable.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A PostgreSQL database whose schema a newer build wrote.
    #[error(
        "database schema version {found} is newer than this build's {supported}: run a newer \
         portcullis-control-plane"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("database: {0}")]
    Database(String),
    #[error("sled: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One page of a listing: the items, and whether more follow the last one.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub more: bool,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Sled(Box<sled::SledStore>),
    Postgres(postgres::PgStore),
}

/// Every image summary of a snapshot, encoded, vulnerabilities numbered, in id order.
pub type ScanSummaries = Box<dyn Iterator<Item = Result<Vec<u8>, StoreError>> + Send>;

/// Reads vulnerability ids by number, for snapshots (on a blocking thread).
#[derive(Clone)]
pub enum VulnerabilityIds {
    Sled(sled::SledVulnerabilityIds),
    Postgres(postgres::PgVulnerabilityIds),
}

impl VulnerabilityIds {
    /// The ids numbered `from` and up, in order, as far as the store has them now. Blocking:
    /// call it from a blocking thread.
    pub fn from(&self, from: u32) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Sled(ids) => ids.from(from),
            Self::Postgres(ids) => ids.from(from),
        }
    }
}

/// Calls the same method on whichever backend the store has.
macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sled($store) => $call,
            Backend::Postgres($store) => $call,
        }
    };
}

impl Store {
    /// The embedded store in `dir` (see `sled::SledStore::open`).
    pub fn open_sled(dir: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sled(Box::new(sled::SledStore::open(dir)?)),
        })
    }

    /// The PostgreSQL store (see `postgres::PgStore::connect`).
    pub async fn connect_postgres(settings: &postgres::PgSettings) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(postgres::PgStore::connect(settings).await?),
        })
    }

    /// The sled database, beside which events and audit violations keep their trees. Only
    /// their sled backends call it: with PostgreSQL they open their PostgreSQL backends.
    pub(crate) fn db(&self) -> &::sled::Db {
        match &self.backend {
            Backend::Sled(store) => store.db(),
            Backend::Postgres(_) => unreachable!("the sled database of a PostgreSQL store"),
        }
    }

    /// Makes everything written to `db()` so far durable.
    pub(crate) async fn flush_all(&self) -> Result<(), StoreError> {
        let db = self.db().clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Corrupt {
                what: format!("flush task: {e}"),
            })??;
        Ok(())
    }

    /// Which backend this is, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sled(_) => "sled",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The PostgreSQL connection pool, when the store is PostgreSQL's (events and audit keep
    /// their tables in the same database).
    pub(crate) fn postgres_pool(&self) -> Option<&deadpool_postgres::Pool> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(store) => Some(store.pool()),
        }
    }

    /// Notifications of `topic` from every replica, when the store is PostgreSQL's.
    pub(crate) fn notifications(&self, topic: postgres::Topic) -> Option<watch::Receiver<u64>> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(store) => Some(store.notifications(topic)),
        }
    }

    /// The id of this store's history; a new store gets a new epoch.
    pub fn epoch(&self) -> &str {
        each!(self, s => s.epoch())
    }

    /// The last durable revision (on PostgreSQL: the last this replica has seen committed).
    pub fn revision(&self) -> u64 {
        each!(self, s => s.revision())
    }

    /// A receiver that sees every newly durable revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        each!(self, s => s.subscribe())
    }

    /// Whether the store can serve now (PostgreSQL: the database answers).
    pub fn is_available(&self) -> bool {
        match &self.backend {
            Backend::Sled(_) => true,
            Backend::Postgres(store) => store.is_available(),
        }
    }

    /// Follows whether the store can serve (sled: always; the sender is gone at once, so a
    /// receiver's `changed` never returns Ok).
    pub fn availability(&self) -> watch::Receiver<bool> {
        match &self.backend {
            Backend::Sled(_) => watch::channel(true).1,
            Backend::Postgres(store) => store.availability(),
        }
    }

    /// Stores a new policy; `AlreadyExists` when the name is taken.
    pub async fn create_policy(&self, policy: Policy) -> Result<Policy, StoreError> {
        each!(self, s => s.create_policy(policy).await)
    }

    /// Replaces a policy that is at `policy.revision`; `Conflict` otherwise.
    pub async fn update_policy(&self, policy: Policy) -> Result<Policy, StoreError> {
        each!(self, s => s.update_policy(policy).await)
    }

    /// Creates or replaces every policy in one atomic write: all or none. A policy with a
    /// non-zero revision is replaced only at that revision. Unchanged policies keep their
    /// revision.
    pub async fn apply_policies(
        &self,
        policies: Vec<Policy>,
    ) -> Result<Vec<(Policy, ApplyOutcome)>, StoreError> {
        each!(self, s => s.apply_policies(policies).await)
    }

    /// Deletes a policy (at `expected_revision` when non-zero); returns the deletion's revision.
    pub async fn delete_policy(
        &self,
        name: &str,
        expected_revision: u64,
    ) -> Result<u64, StoreError> {
        each!(self, s => s.delete_policy(name, expected_revision).await)
    }

    pub async fn get_policy(&self, name: &str) -> Result<Option<Policy>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.get_policy(name),
            Backend::Postgres(s) => s.get_policy(name).await,
        }
    }

    /// Policies in name order, after `after`.
    pub async fn list_policies(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Policy>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.list_policies(after, limit),
            Backend::Postgres(s) => s.list_policies(after, limit).await,
        }
    }

    /// Registers `cluster` with the SHA-256 of its agent token.
    pub async fn register_cluster(
        &self,
        cluster: Cluster,
        token_sha256: [u8; 32],
    ) -> Result<Cluster, StoreError> {
        each!(self, s => s.register_cluster(cluster, token_sha256).await)
    }

    /// Replaces a cluster's protection settings.
    pub async fn set_protection(
        &self,
        name: &str,
        protection: ProtectionSettings,
    ) -> Result<Cluster, StoreError> {
        each!(self, s => s.set_protection(name, protection).await)
    }

    /// Deletes a cluster and revokes its token; returns the deletion's revision.
    pub async fn delete_cluster(&self, name: &str) -> Result<u64, StoreError> {
        each!(self, s => s.delete_cluster(name).await)
    }

    pub async fn get_cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.get_cluster(name),
            Backend::Postgres(s) => s.get_cluster(name).await,
        }
    }

    /// Clusters in name order, after `after`.
    pub async fn list_clusters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Cluster>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.list_clusters(after, limit),
            Backend::Postgres(s) => s.list_clusters(after, limit).await,
        }
    }

    /// The cluster whose agent token has this SHA-256, if any.
    pub async fn cluster_for_token(
        &self,
        token_sha256: &[u8; 32],
    ) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.cluster_for_token(token_sha256),
            Backend::Postgres(s) => s.cluster_for_token(token_sha256).await,
        }
    }

    /// Stores `scan` (its id, revision and import time are set here), replacing a scan with the
    /// same id; the replacement, its index keys and the change-log entry form one revision.
    /// Returns the stored message without its vulnerability list (`find_scan` reads it).
    pub async fn put_scan(&self, scan: impl Into<NewScan>) -> Result<ImageScan, StoreError> {
        let scan = scan.into();
        // Ids are text in the dictionary (PostgreSQL's text holds no NUL byte): refused the
        // same on both backends.
        if let Some(id) = scan
            .summary
            .vulnerability_ids
            .iter()
            .find(|id| id.contains('\0'))
        {
            return Err(StoreError::Invalid {
                what: format!("vulnerability id {id:?}: contains a NUL byte"),
            });
        }
        each!(self, s => s.put_scan(scan).await)
    }

    /// Deletes the scan that `image` finds (see `find_scan`); returns its id and the revision.
    pub async fn delete_scan(&self, image: &str) -> Result<(String, u64), StoreError> {
        each!(self, s => s.delete_scan(image).await)
    }

    /// The scan of `image`: a bare digest, an image reference (by its digest first, then by
    /// its normalised `repository:tag`, `latest` when it names no tag), or a scan id. A key
    /// two scans share finds the one imported last, as agents' indexes do.
    pub async fn find_scan(&self, image: &str) -> Result<Option<ImageScan>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.find_scan(image),
            Backend::Postgres(s) => s.find_scan(image).await,
        }
    }

    /// Scans in id order after `after` that `keep` accepts, at most `limit`.
    pub async fn list_scans(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl FnMut(&ImageScan) -> bool + Send,
    ) -> Result<Page<ImageScan>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.list_scans(after, limit, keep),
            Backend::Postgres(s) => s.list_scans(after, limit, keep).await,
        }
    }

    /// Every scan's summary message, encoded, in id order (for snapshots: not a consistent
    /// view, see `snapshot`). Blocking: iterate on a blocking thread.
    pub fn scan_summaries(&self) -> ScanSummaries {
        match &self.backend {
            Backend::Sled(s) => Box::new(s.scan_summaries().map(|v| v.map(|v| v.to_vec()))),
            Backend::Postgres(s) => Box::new(s.scan_summaries()),
        }
    }

    /// The reader of vulnerability ids by number.
    pub fn vulnerability_ids(&self) -> VulnerabilityIds {
        match &self.backend {
            Backend::Sled(s) => VulnerabilityIds::Sled(s.vulnerability_ids()),
            Backend::Postgres(s) => VulnerabilityIds::Postgres(s.vulnerability_ids()),
        }
    }

    /// The changes after `revision`, at most `limit` of them.
    pub async fn changes_since(
        &self,
        revision: u64,
        limit: usize,
    ) -> Result<ChangesSince, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.changes_since(revision, limit),
            Backend::Postgres(s) => s.changes_since(revision, limit).await,
        }
    }

    /// The highest revision the log has dropped; a reader at or past it can resume.
    pub async fn compacted_through(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.compacted_through(),
            Backend::Postgres(s) => s.compacted_through().await,
        }
    }

    /// Drops log entries more than `keep` revisions behind the head. Returns how many.
    pub async fn compact(&self, keep: u64) -> Result<usize, StoreError> {
        each!(self, s => s.compact(keep).await)
    }

    /// Every policy and `cluster` as of one durable revision (see the backends).
    pub async fn snapshot(&self, cluster: &str) -> Result<StoreSnapshot, StoreError> {
        each!(self, s => s.snapshot(cluster).await)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Store;
    use portcullis_proto::v1::{ImageIdentity, ImageScan, ScanVulnerability};

    /// A scan of `docker.io/library/nginx:<tag>` with `cves`, each high and fixable.
    pub fn mk_scan_of(tag: &str, cves: &[&str]) -> ImageScan {
        ImageScan {
            image: Some(ImageIdentity {
                repository: "docker.io/library/nginx".into(),
                tags: vec![tag.into()],
                ..Default::default()
            }),
            vulnerabilities: cves
                .iter()
                .map(|cve| ScanVulnerability {
                    id: cve.to_string(),
                    severity: "high".into(),
                    fixed_version: "2".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Opens the sled store in `dir` again after a test dropped it (see `sled::test_support`).
    pub fn reopen(dir: &std::path::Path) -> Store {
        Store {
            backend: super::Backend::Sled(Box::new(super::sled::test_support::reopen(dir))),
        }
    }

    /// A sled store in a fresh temporary directory (kept alive by the returned guard).
    pub fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        (store, dir)
    }
}
