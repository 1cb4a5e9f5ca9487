//! The durable cache of the last good state, in sled: the policies in scope, the image scan
//! summaries and the meta record (epoch, revision, protection settings). Each applied revision
//! is written in one transaction and flushed before it is acknowledged. A cache that cannot be
//! read is moved aside (kept for inspection) and the agent starts empty, to be rebuilt by a
//! resync.
//!
//! Scans can be many (100,000 images, ~100 MB), so a snapshot's scans are not sled values:
//! sled keeps what it was given in memory long after it is on disk, which more than doubled
//! the agent's memory. They are appended as they arrive to a chunk file beside the database
//! (`cache-scans/scans-<n>.chunks`: length-prefixed `SnapshotChunk`s as received, without
//! policies, their summaries referring to the file's vulnerability dictionary), fsynced, and paired
//! with a fresh sled tree `scans-<n>` for the overlay of later deltas (`o` + scan id: the
//! summary, or empty for a delete). The meta record names the current pair, and switching to a
//! new one is part of the snapshot's transaction, so a crash mid-snapshot leaves the previous
//! state whole; files and trees of snapshots that never committed are removed at open.
//!
//! Everything read back is verified: each sled value carries a checksum of its key and bytes
//! (`record`), the chunk file a checksum per chunk and a trailer (`chunks`). Damage is
//! corruption: the cache is moved aside, the agent reports it and resyncs.

mod chunks;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use portcullis_engine::ScanIndex;
use portcullis_policy::scan::{ScanSummary, VulnerabilityDictionary};
use portcullis_proto::v1::{ImageSummary, Policy, ProtectionSettings, SnapshotChunk};
use portcullis_runtime::record;

use crate::{
    state::{AgentState, LoadedPolicy, policy_map},
    sync::apply::ScanWrite,
};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("cache is corrupt: {0}")]
    Corrupt(String),
    #[error("moving the corrupt cache aside: {0}")]
    MoveAside(std::io::Error),
}

const EPOCH: &[u8] = b"epoch";
const REVISION: &[u8] = b"revision";
const PROTECTION: &[u8] = b"protection";
const APPLIED_AT: &[u8] = b"applied_at_ms";
/// The name of the current scans tree.
const SCANS_TREE: &[u8] = b"scans_tree";
const DEFAULT_SCANS_TREE: &str = "scans";
/// Staged snapshot trees are named with this prefix and a sequence number.
const STAGED_PREFIX: &str = "scans-";
/// sled's page cache: the agent holds its state in memory already, so a small one will do
/// (sled's default of 1 GiB would count against the pod's memory limit).
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// The agent's cache.
pub struct Cache {
    /// The database directory (`DIR/cache`).
    path: PathBuf,
    db: sled::Db,
    meta: sled::Tree,
    policies: sled::Tree,
    /// The current scans tree (replaced when a snapshot commits).
    scans: std::sync::Mutex<sled::Tree>,
}

/// The scans of a snapshot being received, written to a tree that becomes current only when
/// the snapshot commits.
pub struct StagedScans {
    name: String,
    tree: sled::Tree,
    path: PathBuf,
    /// Taken when the snapshot commits; with the number of chunks written.
    file: std::sync::Mutex<Option<(std::io::BufWriter<std::fs::File>, u64)>>,
}

/// The directory of chunk files, beside the database directory.
fn chunks_dir(db_path: &Path) -> PathBuf {
    db_path.with_file_name("cache-scans")
}

fn chunk_file(db_path: &Path, name: &str) -> PathBuf {
    chunks_dir(db_path).join(format!("{name}.chunks"))
}

/// A delta's overlay key for scan `id`.
fn overlay_key(id: &str) -> Vec<u8> {
    let mut key = vec![b'o'];
    key.extend_from_slice(id.as_bytes());
    key
}

/// How a revision's scans reach the cache.
pub enum ScanPersist<'a> {
    /// A delta's changes, into the current tree.
    Changes(&'a [ScanWrite]),
    /// A snapshot's staged tree, which replaces the current one.
    Replace(StagedScans),
}

/// What opening found.
pub struct Opened {
    pub cache: Cache,
    pub state: AgentState,
    /// Set when a corrupt cache was moved aside: where to, and why.
    pub recovered: Option<String>,
}

impl Cache {
    /// Opens the cache in `dir/cache` and loads its state; a corrupt cache is moved aside to
    /// `dir/cache.corrupt-<unix seconds>` and replaced by an empty one.
    pub fn open_or_recover(dir: &Path) -> Result<Opened, CacheError> {
        let path = dir.join("cache");
        match Self::open(&path) {
            Ok((cache, state)) => Ok(Opened {
                cache,
                state,
                recovered: None,
            }),
            // Only a cache that cannot be read is moved aside; an I/O error (another
            // process holding the lock, a full disk) must not discard a good cache.
            Err(error @ (CacheError::Sled(sled::Error::Io(_)) | CacheError::MoveAside(_))) => {
                Err(error)
            }
            Err(error) => {
                let aside = corrupt_path(dir);
                std::fs::rename(&path, &aside).map_err(CacheError::MoveAside)?;
                let chunks = chunks_dir(&path);
                if chunks.exists() {
                    std::fs::rename(&chunks, aside.join("cache-scans"))
                        .map_err(CacheError::MoveAside)?;
                }
                let note = format!("{error}; moved aside to {}", aside.display());
                let (cache, state) = Self::open(&path)?;
                Ok(Opened {
                    cache,
                    state,
                    recovered: Some(note),
                })
            }
        }
    }

    fn open(path: &Path) -> Result<(Self, AgentState), CacheError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()?;
        let meta = db.open_tree("meta")?;
        let scans_name = match read_meta(&meta, SCANS_TREE)? {
            Some(name) => String::from_utf8(name)
                .map_err(|_| CacheError::Corrupt("scans tree name is not UTF-8".into()))?,
            None => DEFAULT_SCANS_TREE.to_owned(),
        };
        // Trees and chunk files of snapshots that never committed.
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            let stale = name.starts_with(STAGED_PREFIX) || name == DEFAULT_SCANS_TREE;
            if stale && name != scans_name {
                db.drop_tree(name.as_bytes())?;
            }
        }
        let current_file = chunk_file(path, &scans_name);
        if let Ok(entries) = std::fs::read_dir(chunks_dir(path)) {
            for entry in entries.flatten() {
                if entry.path() != current_file {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let cache = Self {
            path: path.to_owned(),
            policies: db.open_tree("policies")?,
            scans: std::sync::Mutex::new(db.open_tree(scans_name.as_bytes())?),
            meta,
            db,
        };
        let state = cache.load()?;
        Ok((cache, state))
    }

    /// The database, for the event outbox beside the cache.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    fn current_scans(&self) -> sled::Tree {
        self.scans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A fresh tree for the scans of a snapshot about to arrive.
    pub fn stage_scans(&self) -> Result<StagedScans, CacheError> {
        let current = self.current_scans();
        let name = loop {
            let n = self.db.generate_id()?;
            let name = format!("{STAGED_PREFIX}{n}");
            if name.as_bytes() != current.name().as_ref() {
                break name;
            }
        };
        let tree = self.db.open_tree(name.as_bytes())?;
        tree.clear()?;
        let io = |e: std::io::Error| CacheError::Corrupt(format!("writing the scan chunks: {e}"));
        std::fs::create_dir_all(chunks_dir(&self.path)).map_err(io)?;
        let path = chunk_file(&self.path, &name);
        let file = std::fs::File::create(&path).map_err(io)?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        chunks::write_header(&mut file).map_err(io)?;
        Ok(StagedScans {
            name,
            tree,
            path,
            file: std::sync::Mutex::new(Some((file, 0))),
        })
    }

    /// Writes one chunk of a snapshot's scans (its summaries and dictionary entries) to its
    /// staged chunk file (not yet durable or current).
    pub fn stage_chunk(
        &self,
        staged: &StagedScans,
        chunk: &SnapshotChunk,
    ) -> Result<(), CacheError> {
        // The chunk without its policies (the meta tree keeps those), encoded without copying
        // the scans, after its length.
        let scans = &chunk.scans;
        let ids = &chunk.vulnerability_dictionary;
        let mut bytes = Vec::with_capacity(
            scans.iter().map(|s| s.encoded_len() + 8).sum::<usize>()
                + ids.iter().map(|id| id.len() + 8).sum::<usize>(),
        );
        for summary in scans {
            prost::encoding::message::encode(2, summary, &mut bytes);
        }
        prost::encoding::string::encode_repeated(3, ids, &mut bytes);
        let mut guard = staged.file.lock().unwrap_or_else(|e| e.into_inner());
        let (file, count) = guard
            .as_mut()
            .ok_or_else(|| CacheError::Corrupt("the snapshot was already committed".into()))?;
        chunks::write_chunk(file, &bytes)
            .map_err(|e| CacheError::Corrupt(format!("writing the scan chunks: {e}")))?;
        *count += 1;
        Ok(())
    }

    /// Drops the tree and the chunk file of a snapshot that was abandoned.
    pub fn discard(&self, staged: StagedScans) {
        let _ = self.db.drop_tree(staged.name.as_bytes());
        let _ = std::fs::remove_file(&staged.path);
    }

    fn load(&self) -> Result<AgentState, CacheError> {
        let corrupt = |what: String| CacheError::Corrupt(what);
        let epoch = match read_meta(&self.meta, EPOCH)? {
            Some(bytes) => {
                String::from_utf8(bytes).map_err(|_| corrupt("epoch is not UTF-8".into()))?
            }
            None => String::new(),
        };
        let revision = read_i64(&self.meta, REVISION)? as u64;
        let applied_at_ms = read_i64(&self.meta, APPLIED_AT)?;
        let protection = read_meta(&self.meta, PROTECTION)?
            .map(|bytes| ProtectionSettings::decode(bytes.as_slice()))
            .transpose()
            .map_err(|e| corrupt(format!("protection settings: {e}")))?;
        let mut policies = Vec::new();
        for entry in self.policies.iter() {
            let (key, value) = entry?;
            let value = record::open(&key, &value).map_err(corrupt)?;
            let proto = Policy::decode(value)
                .map_err(|e| corrupt(format!("policy {}: {e}", String::from_utf8_lossy(&key))))?;
            if proto.name.as_bytes() != key.as_ref() {
                return Err(corrupt(format!(
                    "policy stored under {:?} is named {:?}",
                    String::from_utf8_lossy(&key),
                    proto.name
                )));
            }
            policies.push(LoadedPolicy::load(proto).map_err(corrupt)?);
        }
        let policies = policy_map(policies);
        if epoch.is_empty() && !policies.is_empty() {
            return Err(corrupt("policies without an epoch".into()));
        }
        let mut scans = ScanIndex::default();
        let tree = self.current_scans();
        // The snapshot's chunks, in order; then the deltas' overlay by id.
        let name = String::from_utf8_lossy(&tree.name()).into_owned();
        let path = chunk_file(&self.path, &name);
        match std::fs::File::open(&path) {
            Ok(file) => read_chunks(file, &mut scans)
                .map_err(|e| corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == DEFAULT_SCANS_TREE => {}
            Err(e) => return Err(corrupt(format!("{}: {e}", path.display()))),
        }
        for entry in tree.scan_prefix(b"o") {
            let (key, value) = entry?;
            let value = record::open(&key, &value).map_err(corrupt)?;
            let id = String::from_utf8(key[1..].to_vec())
                .map_err(|_| corrupt("scan id is not UTF-8".into()))?;
            if value.is_empty() {
                scans.remove(&id);
                continue;
            }
            let message = ImageSummary::decode(value)
                .map_err(|e| corrupt(format!("image summary {id}: {e}")))?;
            if message.id != id {
                return Err(corrupt(format!(
                    "image summary stored under {id:?} has id {:?}",
                    message.id
                )));
            }
            let (image, summary) = ScanSummary::from_proto(&message).map_err(corrupt)?;
            scans.put(&message.id, image, summary, message.revision);
        }
        Ok(AgentState {
            epoch,
            revision,
            protection,
            policies,
            scans,
            applied_at_ms,
        })
    }

    /// Writes `next` over `previous` in one transaction (only the policies that changed), and
    /// flushes. After it returns, a restarted agent loads `next`.
    pub async fn persist(
        &self,
        previous: &AgentState,
        next: &AgentState,
        scans: ScanPersist<'_>,
    ) -> Result<(), CacheError> {
        let mut removed = Vec::new();
        for name in previous.policies.keys() {
            if !next.policies.contains_key(name) {
                removed.push(name.as_bytes().to_vec());
            }
        }
        let mut written = Vec::new();
        for (name, policy) in &next.policies {
            let unchanged = previous
                .policies
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(old, policy));
            if !unchanged {
                let key = name.as_bytes().to_vec();
                let value = record::seal(&key, &policy.proto.encode_to_vec());
                written.push((key, value));
            }
        }
        let protection = next
            .protection
            .as_ref()
            .map(|p| record::seal(PROTECTION, &p.encode_to_vec()));
        let meta_values = [
            (EPOCH, record::seal(EPOCH, next.epoch.as_bytes())),
            (
                REVISION,
                record::seal(REVISION, &(next.revision as i64).to_be_bytes()),
            ),
            (
                APPLIED_AT,
                record::seal(APPLIED_AT, &next.applied_at_ms.to_be_bytes()),
            ),
        ];
        let (scans_tree, changes, replaced_by) = match scans {
            ScanPersist::Changes(changes) => (self.current_scans(), changes, None),
            ScanPersist::Replace(staged) => {
                // The chunk file is complete and durable before the meta names it.
                let (mut file, count) = staged
                    .file
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .ok_or_else(|| {
                        CacheError::Corrupt("the snapshot was already committed".into())
                    })?;
                let path = staged.path.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    chunks::write_trailer(&mut file, count)?;
                    let file = file.into_inner().map_err(|e| e.into_error())?;
                    file.sync_all()?;
                    if let Some(dir) = path.parent() {
                        std::fs::File::open(dir)?.sync_all()?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| CacheError::Corrupt(format!("sync task: {e}")))?
                .map_err(|e| CacheError::Corrupt(format!("syncing the scan chunks: {e}")))?;
                let tree = staged.tree.clone();
                (self.current_scans(), &[][..], Some((staged, tree)))
            }
        };
        let result: Result<(), TransactionError<()>> = (&self.meta, &self.policies, &scans_tree)
            .transaction(|(meta, policies, scans)| {
                for change in changes {
                    let (key, value) = match change {
                        ScanWrite::Put(id, bytes) => (overlay_key(id), bytes.as_slice()),
                        ScanWrite::Delete(id) => (overlay_key(id), &[] as &[u8]),
                    };
                    let sealed = record::seal(&key, value);
                    scans.insert(key, sealed)?;
                }
                if let Some((staged, _)) = &replaced_by {
                    meta.insert(SCANS_TREE, record::seal(SCANS_TREE, staged.name.as_bytes()))?;
                }
                for key in &removed {
                    policies.remove(key.as_slice())?;
                }
                for (key, value) in &written {
                    policies.insert(key.as_slice(), value.as_slice())?;
                }
                for (key, value) in &meta_values {
                    meta.insert(*key, value.as_slice())?;
                }
                match &protection {
                    Some(bytes) => meta.insert(PROTECTION, bytes.as_slice())?,
                    None => meta.remove(PROTECTION)?,
                };
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match result {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => return Err(e.into()),
            Err(TransactionError::Abort(())) => {
                return Err(CacheError::Corrupt("transaction aborted".into()));
            }
        }
        self.flush().await?;
        if let Some((staged, tree)) = replaced_by {
            let old = std::mem::replace(
                &mut *self.scans.lock().unwrap_or_else(|e| e.into_inner()),
                tree,
            );
            drop(staged);
            // The meta record no longer names the old tree and file; a crash before these
            // removals only leaves them for the next open to remove.
            let old_name = String::from_utf8_lossy(&old.name()).into_owned();
            self.db.drop_tree(old.name())?;
            let _ = std::fs::remove_file(chunk_file(&self.path, &old_name));
        }
        Ok(())
    }

    /// sled's blocking flush on a blocking thread (its flush_async was seen to hang).
    async fn flush(&self) -> Result<(), CacheError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| CacheError::Corrupt(format!("flush task: {e}")))??;
        Ok(())
    }
}

/// Reads a chunk file's `SnapshotChunk`s into `scans` (summaries may refer to the entries of
/// the file's dictionary, gathered from its chunks in order), verifying every checksum.
fn read_chunks(file: std::fs::File, scans: &mut ScanIndex) -> Result<(), String> {
    read_scan_chunks(std::io::BufReader::with_capacity(1 << 20, file), scans)
}

/// The reader of a scan chunk file (public for the fuzz target): every chunk's summaries
/// into `scans`, or why the bytes are not a whole, intact chunk file.
#[doc(hidden)]
pub fn read_scan_chunks(
    mut reader: impl std::io::Read,
    scans: &mut ScanIndex,
) -> Result<(), String> {
    let mut dictionary = VulnerabilityDictionary::default();
    chunks::read(&mut reader, |bytes| {
        let chunk = SnapshotChunk::decode(bytes).map_err(|e| e.to_string())?;
        crate::sync::apply::add_scans(scans, &mut dictionary, &chunk).map_err(|e| e.to_string())
    })
}

/// A meta value, verified.
fn read_meta(tree: &sled::Tree, key: &[u8]) -> Result<Option<Vec<u8>>, CacheError> {
    match tree.get(key)? {
        None => Ok(None),
        Some(stored) => record::open(key, &stored)
            .map(|value| Some(value.to_vec()))
            .map_err(CacheError::Corrupt),
    }
}

fn read_i64(tree: &sled::Tree, key: &[u8]) -> Result<i64, CacheError> {
    match read_meta(tree, key)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_slice().try_into().map_err(|_| {
                CacheError::Corrupt(format!(
                    "meta {} is not 8 bytes",
                    String::from_utf8_lossy(key)
                ))
            })?;
            Ok(i64::from_be_bytes(array))
        }
    }
}

fn corrupt_path(dir: &Path) -> PathBuf {
    let secs = portcullis_runtime::clock::now_secs();
    let mut n = 0;
    loop {
        let candidate = dir.join(if n == 0 {
            format!("cache.corrupt-{secs}")
        } else {
            format!("cache.corrupt-{secs}-{n}")
        });
        if !candidate.exists() {
            return candidate;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::v1::{ResourceRules, Rules};

    fn mk_policy(name: &str) -> Arc<LoadedPolicy> {
        let proto = Policy {
            name: name.into(),
            rules: Some(Rules {
                resource: Some(ResourceRules {
                    privileged: Some(Default::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Arc::new(LoadedPolicy::load(proto).unwrap())
    }

    fn mk_state(revision: u64, names: &[&str]) -> AgentState {
        AgentState {
            epoch: "e1".into(),
            revision,
            protection: Some(ProtectionSettings {
                enabled: true,
                failure_policy: "ignore".into(),
                timeout_seconds: 10,
            }),
            policies: names
                .iter()
                .map(|n| (n.to_string(), mk_policy(n)))
                .collect(),
            scans: ScanIndex::default(),
            applied_at_ms: 42,
        }
    }

    #[tokio::test]
    async fn persisted_state_is_loaded_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opened = Cache::open_or_recover(dir.path()).unwrap();
        assert!(!opened.state.is_loaded());
        let first = mk_state(3, &["a", "b"]);
        opened
            .cache
            .persist(&opened.state, &first, ScanPersist::Changes(&[]))
            .await
            .unwrap();
        let mut second = first.clone();
        second.revision = 4;
        second.policies.remove("a");
        second.policies.insert("c".into(), mk_policy("c"));
        opened
            .cache
            .persist(&first, &second, ScanPersist::Changes(&[]))
            .await
            .unwrap();
        drop(opened);

        let reopened = open_again(dir.path());
        assert!(reopened.recovered.is_none());
        let state = reopened.state;
        assert_eq!(
            (state.epoch.as_str(), state.revision, state.applied_at_ms),
            ("e1", 4, 42)
        );
        assert_eq!(state.policies.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(state.protection, second.protection);
    }

    fn mk_summary(id: &str) -> ImageSummary {
        ImageSummary {
            id: id.into(),
            image: Some(portcullis_proto::v1::ImageIdentity {
                repository: "docker.io/library/app".into(),
                tags: vec![id.into()],
                ..Default::default()
            }),
            vulnerability_ids: vec!["CVE-1".into()],
            vulnerability_flags: vec![4],
            ..Default::default()
        }
    }

    fn chunk_of(scans: Vec<ImageSummary>, dictionary: &[&str]) -> SnapshotChunk {
        SnapshotChunk {
            scans,
            vulnerability_dictionary: dictionary.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn with_scans(mut state: AgentState, ids: &[&str]) -> AgentState {
        state.scans = ScanIndex::default();
        let summaries: Vec<ImageSummary> = ids.iter().map(|id| mk_summary(id)).collect();
        crate::sync::apply::add_scans(
            &mut state.scans,
            &mut VulnerabilityDictionary::default(),
            &chunk_of(summaries, &[]),
        )
        .unwrap();
        state
    }

    /// A summary of a snapshot whose vulnerabilities are numbers in its dictionary.
    fn mk_summary_refs(id: &str, refs: &[u32]) -> ImageSummary {
        ImageSummary {
            vulnerability_ids: Vec::new(),
            vulnerability_refs: refs.to_vec(),
            vulnerability_flags: vec![4; refs.len()],
            ..mk_summary(id)
        }
    }

    fn vulnerabilities(state: &AgentState, image: &str) -> Vec<&'static str> {
        let summary = state.scans.lookup(image).expect(image);
        summary.vulnerabilities().map(|v| v.id).collect()
    }

    fn scan_ids(state: &AgentState) -> Vec<String> {
        let mut ids: Vec<String> = state.scans.scans().map(|s| s.id.to_string()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn snapshot_scans_replace_the_old_ones_and_deltas_change_them() {
        let dir = tempfile::tempdir().unwrap();
        let opened = Cache::open_or_recover(dir.path()).unwrap();
        let cache = opened.cache;
        // A first snapshot with two scans, staged in two chunks whose summaries refer to the
        // snapshot's dictionary (the second chunk to an entry of the first).
        let first = with_scans(mk_state(1, &["a"]), &["1", "2"]);
        let staged = cache.stage_scans().unwrap();
        let chunk = chunk_of(
            vec![mk_summary_refs("1", &[1])],
            &["cache-CVE-9", "cache-CVE-1"],
        );
        cache.stage_chunk(&staged, &chunk).unwrap();
        let chunk = chunk_of(vec![mk_summary_refs("2", &[0, 1])], &[]);
        cache.stage_chunk(&staged, &chunk).unwrap();
        cache
            .persist(&opened.state, &first, ScanPersist::Replace(staged))
            .await
            .unwrap();
        // A delta: "3" imported, "1" deleted.
        let second = with_scans(mk_state(2, &["a"]), &["2", "3"]);
        let writes = [
            ScanWrite::Put("3".into(), mk_summary("3").encode_to_vec()),
            ScanWrite::Delete("1".into()),
        ];
        cache
            .persist(&first, &second, ScanPersist::Changes(&writes))
            .await
            .unwrap();
        // A snapshot abandoned halfway leaves nothing behind.
        let abandoned = cache.stage_scans().unwrap();
        cache
            .stage_chunk(&abandoned, &chunk_of(vec![mk_summary("9")], &[]))
            .unwrap();
        drop((cache, abandoned));

        let reopened = open_again(dir.path());
        assert_eq!(reopened.recovered, None);
        assert_eq!(scan_ids(&reopened.state), ["2", "3"]);
        assert_eq!(
            vulnerabilities(&reopened.state, "app:2"),
            ["cache-CVE-1", "cache-CVE-9"]
        );
        assert_eq!(vulnerabilities(&reopened.state, "app:3"), ["CVE-1"]);
        let trees: Vec<String> = reopened
            .cache
            .db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| n.starts_with("scans"))
            .collect();
        assert_eq!(trees.len(), 1, "{trees:?}");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("cache-scans"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files,
            [format!("{}.chunks", trees[0])],
            "the abandoned file is gone"
        );

        // A second snapshot replaces every scan.
        let third = with_scans(mk_state(5, &["a"]), &["7"]);
        let staged = reopened.cache.stage_scans().unwrap();
        reopened
            .cache
            .stage_chunk(&staged, &chunk_of(vec![mk_summary("7")], &[]))
            .unwrap();
        reopened
            .cache
            .persist(&reopened.state, &third, ScanPersist::Replace(staged))
            .await
            .unwrap();
        drop(reopened);
        let again = open_again(dir.path());
        assert_eq!(scan_ids(&again.state), ["7"]);
        assert_eq!(again.state.revision, 5);
    }

    /// `Cache::open_or_recover` after a test dropped a cache or database in `dir`: sled lets
    /// go of its lock when its last handle (a background flush) is gone, which a loaded
    /// machine can delay.
    fn open_again(dir: &Path) -> Opened {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match Cache::open_or_recover(dir) {
                Ok(opened) => return opened,
                Err(CacheError::Sled(sled::Error::Io(_)))
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => panic!("reopening the cache: {error}"),
            }
        }
    }

    /// `sled::open` with the same patience.
    fn sled_again(path: &Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match sled::open(path) {
                Ok(db) => return db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(error) => panic!("reopening {}: {error}", path.display()),
            }
        }
    }

    /// A cache holding a policy, protection settings, a two-chunk snapshot of scans and a
    /// delta's overlay, closed.
    async fn full_cache(dir: &Path) {
        let opened = Cache::open_or_recover(dir).unwrap();
        let cache = opened.cache;
        let first = with_scans(mk_state(1, &["a"]), &["1", "2"]);
        let staged = cache.stage_scans().unwrap();
        let chunk = chunk_of(vec![mk_summary_refs("1", &[1])], &["CVE-9", "CVE-1"]);
        cache.stage_chunk(&staged, &chunk).unwrap();
        let chunk = chunk_of(vec![mk_summary_refs("2", &[0])], &[]);
        cache.stage_chunk(&staged, &chunk).unwrap();
        cache
            .persist(&opened.state, &first, ScanPersist::Replace(staged))
            .await
            .unwrap();
        let second = with_scans(mk_state(2, &["a"]), &["2", "3"]);
        let writes = [ScanWrite::Put("3".into(), mk_summary("3").encode_to_vec())];
        cache
            .persist(&first, &second, ScanPersist::Changes(&writes))
            .await
            .unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// A flipped byte at every position of the scan chunk file is found at open: the cache
    /// is moved aside and nothing of it is served (a changed vulnerability id once turned a
    /// `block` into an `allow`).
    #[tokio::test]
    async fn a_flipped_byte_anywhere_in_the_chunk_file_is_corruption() {
        let pristine = tempfile::tempdir().unwrap();
        full_cache(pristine.path()).await;
        let chunks_dir = pristine.path().join("cache-scans");
        let file = std::fs::read_dir(&chunks_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let name = file.file_name();
        let bytes = std::fs::read(file.path()).unwrap();
        {
            let opened = open_again(pristine.path());
            assert_eq!(opened.recovered, None);
            assert_eq!(scan_ids(&opened.state), ["1", "2", "3"]);
        }
        for at in 0..bytes.len() {
            let work = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), work.path());
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            std::fs::write(work.path().join("cache-scans").join(&name), damaged).unwrap();
            let opened = open_again(work.path());
            let note = opened
                .recovered
                .unwrap_or_else(|| panic!("byte {at} not detected"));
            assert!(note.contains("cache is corrupt"), "{note}");
            assert!(!opened.state.is_loaded(), "byte {at}");
        }
    }

    /// A flipped byte in any stored value (policy, overlay summary, meta record) is found.
    #[tokio::test]
    async fn a_flipped_byte_in_any_stored_value_is_corruption() {
        let pristine = tempfile::tempdir().unwrap();
        full_cache(pristine.path()).await;
        let mut values = Vec::new();
        {
            let db = sled_again(&pristine.path().join("cache"));
            for tree in ["meta", "policies"] {
                for entry in db.open_tree(tree).unwrap().iter() {
                    let (key, value) = entry.unwrap();
                    values.push((tree.to_owned(), key.to_vec(), value.len()));
                }
            }
            let scans = db
                .tree_names()
                .into_iter()
                .find(|n| n.starts_with(b"scans-"))
                .unwrap();
            for entry in db.open_tree(&scans).unwrap().iter() {
                let (key, value) = entry.unwrap();
                values.push((
                    String::from_utf8_lossy(&scans).into_owned(),
                    key.to_vec(),
                    value.len(),
                ));
            }
        }
        assert!(values.len() >= 7, "{values:?}");
        for (tree, key, len) in values {
            for at in 0..len {
                let work = tempfile::tempdir().unwrap();
                copy_dir(pristine.path(), work.path());
                {
                    let db = sled_again(&work.path().join("cache"));
                    let tree = db.open_tree(&tree).unwrap();
                    let mut value = tree.get(&key).unwrap().unwrap().to_vec();
                    value[at] ^= 0x01;
                    tree.insert(&key, value).unwrap();
                    db.flush().unwrap();
                }
                let opened = open_again(work.path());
                assert!(
                    opened.recovered.is_some(),
                    "{tree} {:?} byte {at} not detected",
                    String::from_utf8_lossy(&key)
                );
            }
        }
    }

    #[test]
    fn a_locked_cache_is_an_error_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let _held = Cache::open_or_recover(dir.path()).unwrap();
        let error = Cache::open_or_recover(dir.path()).err().expect("locked");
        assert!(error.to_string().contains("lock"), "{error}");
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("cache.corrupt-")
            });
        assert!(!aside, "a locked cache must not be moved aside");
    }

    #[tokio::test]
    async fn corrupt_cache_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opened = Cache::open_or_recover(dir.path()).unwrap();
            opened
                .cache
                .persist(
                    &opened.state,
                    &mk_state(1, &["a"]),
                    ScanPersist::Changes(&[]),
                )
                .await
                .unwrap();
            opened
                .cache
                .policies
                .insert("a", b"\xff\xff not a policy".as_slice())
                .unwrap();
            opened.cache.db.flush().unwrap();
        }
        let opened = open_again(dir.path());
        let note = opened.recovered.expect("recovered");
        assert!(
            note.contains("cache is corrupt") && note.contains("cache.corrupt-"),
            "{note}"
        );
        assert!(!opened.state.is_loaded());
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("cache.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
    }
}
