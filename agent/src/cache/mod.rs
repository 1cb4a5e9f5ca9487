//! The durable cache of the last good state, in sled: the policies in scope and the meta record
//! (epoch, revision, protection settings). Each applied revision is written in one transaction
//! and flushed before it is acknowledged. A cache that cannot be read is moved aside (kept for
//! inspection) and the agent starts empty, to be rebuilt by a resync.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use portcullis_proto::v1::{Policy, ProtectionSettings};

use crate::state::{AgentState, LoadedPolicy};

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

/// The agent's cache.
pub struct Cache {
    db: sled::Db,
    meta: sled::Tree,
    policies: sled::Tree,
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
            Err(error) => {
                let aside = corrupt_path(dir);
                std::fs::rename(&path, &aside).map_err(CacheError::MoveAside)?;
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
        let db = sled::Config::new().path(path).open()?;
        let cache = Self {
            meta: db.open_tree("meta")?,
            policies: db.open_tree("policies")?,
            db,
        };
        let state = cache.load()?;
        Ok((cache, state))
    }

    fn load(&self) -> Result<AgentState, CacheError> {
        let corrupt = |what: String| CacheError::Corrupt(what);
        let epoch = match self.meta.get(EPOCH)? {
            Some(bytes) => String::from_utf8(bytes.to_vec())
                .map_err(|_| corrupt("epoch is not UTF-8".into()))?,
            None => String::new(),
        };
        let revision = read_i64(&self.meta, REVISION)? as u64;
        let applied_at_ms = read_i64(&self.meta, APPLIED_AT)?;
        let protection = self
            .meta
            .get(PROTECTION)?
            .map(|bytes| ProtectionSettings::decode(bytes.as_ref()))
            .transpose()
            .map_err(|e| corrupt(format!("protection settings: {e}")))?;
        let mut policies = BTreeMap::new();
        for entry in self.policies.iter() {
            let (key, value) = entry?;
            let proto = Policy::decode(value.as_ref())
                .map_err(|e| corrupt(format!("policy {}: {e}", String::from_utf8_lossy(&key))))?;
            if proto.name.as_bytes() != key.as_ref() {
                return Err(corrupt(format!(
                    "policy stored under {:?} is named {:?}",
                    String::from_utf8_lossy(&key),
                    proto.name
                )));
            }
            let loaded = LoadedPolicy::load(proto).map_err(corrupt)?;
            policies.insert(loaded.proto.name.clone(), Arc::new(loaded));
        }
        if epoch.is_empty() && !policies.is_empty() {
            return Err(corrupt("policies without an epoch".into()));
        }
        Ok(AgentState {
            epoch,
            revision,
            protection,
            policies,
            applied_at_ms,
        })
    }

    /// Writes `next` over `previous` in one transaction (only the policies that changed), and
    /// flushes. After it returns, a restarted agent loads `next`.
    pub async fn persist(
        &self,
        previous: &AgentState,
        next: &AgentState,
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
                written.push((name.as_bytes().to_vec(), policy.proto.encode_to_vec()));
            }
        }
        let protection = next.protection.as_ref().map(Message::encode_to_vec);
        let result: Result<(), TransactionError<()>> =
            (&self.meta, &self.policies).transaction(|(meta, policies)| {
                for key in &removed {
                    policies.remove(key.as_slice())?;
                }
                for (key, value) in &written {
                    policies.insert(key.as_slice(), value.as_slice())?;
                }
                meta.insert(EPOCH, next.epoch.as_bytes())?;
                meta.insert(REVISION, &(next.revision as i64).to_be_bytes())?;
                meta.insert(APPLIED_AT, &next.applied_at_ms.to_be_bytes())?;
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
        // sled's blocking flush on a blocking thread (its flush_async was seen to hang).
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| CacheError::Corrupt(format!("flush task: {e}")))??;
        Ok(())
    }
}

fn read_i64(tree: &sled::Tree, key: &[u8]) -> Result<i64, CacheError> {
    match tree.get(key)? {
        None => Ok(0),
        Some(bytes) => {
            let array: [u8; 8] = bytes.as_ref().try_into().map_err(|_| {
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
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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
            applied_at_ms: 42,
        }
    }

    #[tokio::test]
    async fn persisted_state_is_loaded_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opened = Cache::open_or_recover(dir.path()).unwrap();
        assert!(!opened.state.is_loaded());
        let first = mk_state(3, &["a", "b"]);
        opened.cache.persist(&opened.state, &first).await.unwrap();
        let mut second = first.clone();
        second.revision = 4;
        second.policies.remove("a");
        second.policies.insert("c".into(), mk_policy("c"));
        opened.cache.persist(&first, &second).await.unwrap();
        drop(opened);

        let reopened = Cache::open_or_recover(dir.path()).unwrap();
        assert!(reopened.recovered.is_none());
        let state = reopened.state;
        assert_eq!(
            (state.epoch.as_str(), state.revision, state.applied_at_ms),
            ("e1", 4, 42)
        );
        assert_eq!(state.policies.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(state.protection, second.protection);
    }

    #[tokio::test]
    async fn corrupt_cache_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opened = Cache::open_or_recover(dir.path()).unwrap();
            opened
                .cache
                .persist(&opened.state, &mk_state(1, &["a"]))
                .await
                .unwrap();
            opened
                .cache
                .policies
                .insert("a", b"\xff\xff not a policy".as_slice())
                .unwrap();
            opened.cache.db.flush().unwrap();
        }
        let opened = Cache::open_or_recover(dir.path()).unwrap();
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
