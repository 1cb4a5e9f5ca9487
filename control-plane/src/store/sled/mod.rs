//! The embedded backend: the control plane's durable state in sled: policies, clusters, agent token hashes, image
//! scan results, and the change log. Every mutation takes the next global revision and is
//! written in one atomic sled transaction together with its change-log entry; the store is
//! flushed before the caller gets an answer, and only then is the revision published to
//! watchers. The store has an `epoch` (fixed at creation) so agents can tell a reset store
//! from the one they synced with.

mod changelog;
mod clusters;
mod dictionary;
mod format;
mod policies;
mod scans;
mod snapshot;

use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};
use tokio::sync::{Mutex, watch};

pub use dictionary::SledVulnerabilityIds;
pub use format::CURRENT_FORMAT;

use super::{
    ApplyOutcome, Change, ChangeRecord, ChangesSince, NewScan, Page, StoreError, StoreSnapshot,
    check_revision, index_keys, records, same_spec, scan_id,
};

/// Which tree an operation of a write touches.
#[derive(Clone, Copy, Debug)]
enum TreeId {
    Policies,
    Clusters,
    Tokens,
    Changes,
    Scans,
    ScanKeys,
    ScanSummaries,
    VulnerabilityIds,
}

const META_EPOCH: &[u8] = b"epoch";
const META_REVISION: &[u8] = b"revision";
const META_COMPACTED: &[u8] = b"compacted_through";

/// The store. Cheap to share behind an `Arc`.
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    policies: sled::Tree,
    clusters: sled::Tree,
    tokens: sled::Tree,
    changes: sled::Tree,
    /// Scan id -> `ImageScan` (prost).
    scans: sled::Tree,
    /// Every digest and normalised `repository:tag` of a scan -> its id.
    scan_keys: sled::Tree,
    /// Scan id -> `ImageSummary` (prost) with its vulnerabilities as numbers
    /// (`vulnerability_refs`): what agents receive, kept so a snapshot reads no full report.
    scan_summaries: sled::Tree,
    /// Vulnerability id number -> id (see `dictionary`).
    vulnerability_ids: sled::Tree,
    /// The numbers of `vulnerability_ids`, for imports.
    dictionary: std::sync::Mutex<dictionary::Dictionary>,
    epoch: String,
    /// The last revision written to sled (maybe not yet flushed).
    written: AtomicU64,
    /// Serialises writers so revisions are assigned and committed in order.
    write_lock: Mutex<()>,
    /// One flush at a time (see `make_durable`).
    flush_lock: Mutex<()>,
    /// The last revision that is durable; agents' streams watch it.
    durable: watch::Sender<u64>,
}

/// sled's page cache (its default is 1 GiB, held as long as the process lives): reads past it
/// come from the operating system's file cache, which the kernel can reclaim.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Opens (or creates) the store in `dir`, refusing a data dir of a newer format.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        format::check_or_init(dir)?;
        let existed = format::sled_path(dir).exists();
        let db = sled::Config::new()
            .path(format::sled_path(dir))
            .cache_capacity(SLED_CACHE_BYTES)
            .open()?;
        // Before the release, FORMAT said 1 for a layout without the numbered vulnerability
        // dictionary; refused by name rather than served half-read.
        if existed
            && !db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == b"vulnerability_ids")
        {
            return Err(StoreError::PreRelease {
                dir: dir.display().to_string(),
                what: "a store without the vulnerability dictionary",
            });
        }
        let meta = db.open_tree("meta")?;
        let epoch = match meta.get(META_EPOCH)? {
            Some(bytes) => String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "epoch is not UTF-8".into(),
            })?,
            None => {
                let epoch = uuid::Uuid::new_v4().to_string();
                meta.insert(META_EPOCH, epoch.as_bytes())?;
                db.flush()?;
                epoch
            }
        };
        let revision = read_u64(&meta, META_REVISION)?;
        let vulnerability_ids = db.open_tree("vulnerability_ids")?;
        let (durable, _) = watch::channel(revision);
        let store = Self {
            policies: db.open_tree("policies")?,
            clusters: db.open_tree("clusters")?,
            tokens: db.open_tree("tokens")?,
            changes: db.open_tree("changes")?,
            scans: db.open_tree("scans")?,
            scan_keys: db.open_tree("scan_keys")?,
            scan_summaries: db.open_tree("scan_summaries")?,
            dictionary: std::sync::Mutex::new(dictionary::Dictionary::load(&vulnerability_ids)?),
            vulnerability_ids,
            meta,
            db,
            epoch,
            written: AtomicU64::new(revision),
            write_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            durable,
        };
        Ok(store)
    }

    /// The id of this store's history; a new store gets a new epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The last durable revision.
    pub fn revision(&self) -> u64 {
        *self.durable.borrow()
    }

    /// A receiver that sees every newly durable revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Runs `build` under the writer lock, commits what it staged in one transaction, flushes,
    /// and publishes the new revision. A build that stages no change writes nothing.
    async fn write<T>(
        &self,
        build: impl FnOnce(&mut Writer<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.write_lock.lock().await;
        let mut writer = Writer {
            store: self,
            revision: self.written.load(Ordering::Acquire),
            now: now_millis(),
            ops: Vec::new(),
            new_ids: dictionary::NewIds::default(),
        };
        let out = build(&mut writer)?;
        let Writer {
            revision,
            ops,
            new_ids,
            ..
        } = writer;
        if ops.is_empty() {
            return Ok(out);
        }
        self.commit(revision, &ops)?;
        if !new_ids.is_empty() {
            // Only numbers that are in the tree now; the next write numbers on from them.
            self.dictionary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .publish(new_ids);
        }
        self.written.store(revision, Ordering::Release);
        drop(guard);
        self.make_durable(revision).await?;
        Ok(out)
    }

    /// Flushes until `revision` is on disk, then publishes it. One flush runs at a time and
    /// covers every write committed before it, so concurrent writers share flushes (group
    /// commit). The flush is sled's blocking `flush` on a blocking thread: sled's
    /// `flush_async` was seen to hang under concurrent writers.
    async fn make_durable(&self, revision: u64) -> Result<(), StoreError> {
        let _flushing = self.flush_lock.lock().await;
        if *self.durable.borrow() >= revision {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        self.flush().await?;
        self.durable.send_if_modified(|durable| {
            let newer = target > *durable;
            if newer {
                *durable = target;
            }
            newer
        });
        Ok(())
    }

    /// The database, for stores that live beside this one (events, audit).
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// sled's blocking flush on a blocking thread (see `make_durable`).
    async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Corrupt {
                what: format!("flush task: {e}"),
            })??;
        Ok(())
    }

    fn commit(&self, revision: u64, ops: &[Op]) -> Result<(), StoreError> {
        let trees = (
            &self.meta,
            &self.policies,
            &self.clusters,
            &self.tokens,
            &self.changes,
            &self.scans,
            &self.scan_keys,
            &self.scan_summaries,
            &self.vulnerability_ids,
        );
        let result: Result<(), TransactionError<()>> = trees.transaction(
            |(
                meta,
                policies,
                clusters,
                tokens,
                changes,
                scans,
                scan_keys,
                scan_summaries,
                vulnerability_ids,
            )| {
                for op in ops {
                    let tree = match op.tree {
                        TreeId::Policies => policies,
                        TreeId::Clusters => clusters,
                        TreeId::Tokens => tokens,
                        TreeId::Changes => changes,
                        TreeId::Scans => scans,
                        TreeId::ScanKeys => scan_keys,
                        TreeId::ScanSummaries => scan_summaries,
                        TreeId::VulnerabilityIds => vulnerability_ids,
                    };
                    match &op.value {
                        Some(value) => tree.insert(op.key.as_slice(), value.clone())?,
                        None => tree.remove(op.key.as_slice())?,
                    };
                }
                meta.insert(META_REVISION, &revision.to_be_bytes())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(())) => Err(StoreError::Corrupt {
                what: "transaction aborted".into(),
            }),
        }
    }
}

struct Op {
    tree: TreeId,
    key: Vec<u8>,
    /// Shared, not copied, by every attempt of the transaction.
    value: Option<sled::IVec>,
}

/// Stages one write: the revisions it takes and the operations it commits.
struct Writer<'a> {
    store: &'a SledStore,
    /// The last revision taken so far.
    revision: u64,
    now: i64,
    ops: Vec<Op>,
    /// Vulnerability ids this write numbered for the first time.
    new_ids: dictionary::NewIds,
}

impl Writer<'_> {
    /// Takes the next revision for `change` and stages its change-log entry.
    fn take_revision(&mut self, change: Change) -> u64 {
        let revision = self.next_revision();
        self.log(revision, change);
        revision
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Stages the change-log entry of `revision`.
    fn log(&mut self, revision: u64, change: Change) {
        let record = ChangeRecord {
            revision,
            unix_millis: self.now,
            change: Some(change),
        };
        self.put(
            TreeId::Changes,
            revision.to_be_bytes().to_vec(),
            record.encode_to_vec(),
        );
    }

    fn put(&mut self, tree: TreeId, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(Op {
            tree,
            key,
            value: Some(value.into()),
        });
    }

    fn delete(&mut self, tree: TreeId, key: Vec<u8>) {
        self.ops.push(Op {
            tree,
            key,
            value: None,
        });
    }

    fn timestamp(&self) -> pbjson_types::Timestamp {
        timestamp_from_millis(self.now)
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match tree.get(key)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: format!("meta key {} is not a u64", String::from_utf8_lossy(key)),
            })?;
            Ok(u64::from_be_bytes(array))
        }
    }
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("{what}: {e}"),
    })
}

use super::{now_millis, timestamp_from_millis};

/// Lists values of `tree` in key order, starting after `after`.
fn list_page<T>(
    tree: &sled::Tree,
    after: Option<&str>,
    limit: usize,
    mut decode_item: impl FnMut(&[u8]) -> Result<T, StoreError>,
) -> Result<Page<T>, StoreError> {
    let iter = match after {
        Some(after) => tree.range::<&[u8], _>((
            std::ops::Bound::Excluded(after.as_bytes()),
            std::ops::Bound::Unbounded,
        )),
        None => tree.iter(),
    };
    let mut items = Vec::with_capacity(limit.min(1024));
    for entry in iter {
        let (_, value) = entry?;
        if items.len() == limit {
            return Ok(Page { items, more: true });
        }
        items.push(decode_item(&value)?);
    }
    Ok(Page { items, more: false })
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::SledStore;
    pub use crate::store::test_support::mk_scan_of;

    /// A store in a fresh temporary directory (kept alive by the returned guard).
    /// Opens the store in `dir` again after a test dropped it. sled releases its lock only
    /// when its last handle (a background flush) is gone, which a loaded machine can delay.
    pub fn reopen(dir: &std::path::Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match SledStore::open(dir) {
                Ok(store) => return store,
                Err(error) if std::time::Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => panic!("reopening the store: {error}"),
            }
        }
    }

    pub fn temp_store() -> (SledStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        (store, dir)
    }
}
