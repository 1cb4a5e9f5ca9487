//! Policy records: create, replace (optimistic concurrency on the revision), apply several at
//! once, delete, read and list. Callers validate policies first; the store only keeps them.

use prost::Message;

use portcullis_proto::v1::Policy;

use super::{
    ApplyOutcome, Change, Page, SledStore, StoreError, TreeId, Writer, check_revision, decode,
    list_page, same_spec,
};

const KIND: &str = "policy";

impl SledStore {
    /// Stores a new policy; `AlreadyExists` when the name is taken.
    pub async fn create_policy(&self, policy: Policy) -> Result<Policy, StoreError> {
        self.write(|w| {
            if w.store.get_policy(&policy.name)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: KIND,
                    name: policy.name.clone(),
                });
            }
            Ok(w.put_policy(policy, None))
        })
        .await
    }

    /// Replaces a policy that is at `policy.revision`; `Conflict` otherwise.
    pub async fn update_policy(&self, policy: Policy) -> Result<Policy, StoreError> {
        self.write(|w| {
            let current =
                w.store
                    .get_policy(&policy.name)?
                    .ok_or_else(|| StoreError::NotFound {
                        kind: KIND,
                        name: policy.name.clone(),
                    })?;
            check_revision(&policy.name, policy.revision, current.revision)?;
            if same_spec(&current, &policy) {
                return Ok(current);
            }
            Ok(w.put_policy(policy, Some(current)))
        })
        .await
    }

    /// Creates or replaces every policy in one atomic write: all or none. A policy with a
    /// non-zero revision is replaced only at that revision. Unchanged policies keep their
    /// revision.
    pub async fn apply_policies(
        &self,
        policies: Vec<Policy>,
    ) -> Result<Vec<(Policy, ApplyOutcome)>, StoreError> {
        self.write(|w| {
            let mut plan = Vec::with_capacity(policies.len());
            for policy in policies {
                let current = w.store.get_policy(&policy.name)?;
                if let Some(current) = &current {
                    if policy.revision != 0 {
                        check_revision(&policy.name, policy.revision, current.revision)?;
                    }
                } else if policy.revision != 0 {
                    return Err(StoreError::NotFound {
                        kind: KIND,
                        name: policy.name.clone(),
                    });
                }
                plan.push((policy, current));
            }
            let mut results = Vec::with_capacity(plan.len());
            for (policy, current) in plan {
                let result = match current {
                    Some(current) if same_spec(&current, &policy) => {
                        (current, ApplyOutcome::Unchanged)
                    }
                    Some(current) => (w.put_policy(policy, Some(current)), ApplyOutcome::Updated),
                    None => (w.put_policy(policy, None), ApplyOutcome::Created),
                };
                results.push(result);
            }
            Ok(results)
        })
        .await
    }

    /// Deletes a policy (at `expected_revision` when non-zero); returns the deletion's revision.
    pub async fn delete_policy(
        &self,
        name: &str,
        expected_revision: u64,
    ) -> Result<u64, StoreError> {
        self.write(|w| {
            let current = w
                .store
                .get_policy(name)?
                .ok_or_else(|| StoreError::NotFound {
                    kind: KIND,
                    name: name.to_owned(),
                })?;
            if expected_revision != 0 {
                check_revision(name, expected_revision, current.revision)?;
            }
            w.delete(TreeId::Policies, name.as_bytes().to_vec());
            Ok(w.take_revision(Change::PolicyDeleted(name.to_owned())))
        })
        .await
    }

    pub fn get_policy(&self, name: &str) -> Result<Option<Policy>, StoreError> {
        self.policies
            .get(name.as_bytes())?
            .map(|bytes| decode("policy", &bytes))
            .transpose()
    }

    /// Policies in name order, after `after`.
    pub fn list_policies(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Policy>, StoreError> {
        list_page(&self.policies, after, limit, |bytes| {
            decode("policy", bytes)
        })
    }

    /// Every policy, in name order (snapshots).
    pub fn all_policies(&self) -> Result<Vec<Policy>, StoreError> {
        Ok(self.list_policies(None, usize::MAX)?.items)
    }
}

impl Writer<'_> {
    /// Stages `policy` under the next revision, keeping the creation time of `current`.
    fn put_policy(&mut self, mut policy: Policy, current: Option<Policy>) -> Policy {
        let now = self.timestamp();
        policy.create_time = current.and_then(|c| c.create_time).or(Some(now));
        policy.update_time = Some(now);
        policy.revision = self.next_revision();
        self.log(policy.revision, Change::PolicyPut(Box::new(policy.clone())));
        self.put(
            TreeId::Policies,
            policy.name.as_bytes().to_vec(),
            policy.encode_to_vec(),
        );
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::test_support::temp_store;

    fn mk_policy(name: &str) -> Policy {
        Policy {
            name: name.into(),
            action: "block".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn create_takes_next_revision_and_is_readable() {
        let (store, _dir) = temp_store();
        let a = store.create_policy(mk_policy("a")).await.unwrap();
        let b = store.create_policy(mk_policy("b")).await.unwrap();
        assert_eq!((a.revision, b.revision), (1, 2));
        assert_eq!(store.revision(), 2);
        assert!(a.create_time.is_some());
        assert_eq!(store.get_policy("a").unwrap().unwrap(), a);
        let err = store.create_policy(mk_policy("a")).await.unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }));
        assert_eq!(store.revision(), 2, "a failed write takes no revision");
    }

    #[tokio::test]
    async fn update_checks_revision() {
        let (store, _dir) = temp_store();
        let a = store.create_policy(mk_policy("a")).await.unwrap();
        let mut changed = a.clone();
        changed.description = "new".into();
        let updated = store.update_policy(changed.clone()).await.unwrap();
        assert_eq!(updated.revision, 2);
        assert_eq!(updated.create_time, a.create_time);
        // Stale: still says revision 1.
        let err = store.update_policy(changed).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 1,
                    current: 2,
                    ..
                }
            ),
            "{err}"
        );
        let err = store.update_policy(mk_policy("missing")).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }));
    }

    #[tokio::test]
    async fn apply_is_all_or_nothing_and_skips_unchanged() {
        let (store, _dir) = temp_store();
        store.create_policy(mk_policy("a")).await.unwrap();
        let mut stale = mk_policy("a");
        stale.revision = 7;
        let err = store
            .apply_policies(vec![mk_policy("b"), stale])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        assert!(
            store.get_policy("b").unwrap().is_none(),
            "nothing half-applied"
        );

        let mut changed = mk_policy("c");
        changed.description = "x".into();
        let out = store
            .apply_policies(vec![mk_policy("a"), changed])
            .await
            .unwrap();
        let outcomes: Vec<_> = out
            .iter()
            .map(|(p, o)| (p.name.as_str(), *o, p.revision))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("a", ApplyOutcome::Unchanged, 1),
                ("c", ApplyOutcome::Created, 2)
            ]
        );
    }

    #[tokio::test]
    async fn delete_and_list_pages() {
        let (store, _dir) = temp_store();
        for name in ["c", "a", "b"] {
            store.create_policy(mk_policy(name)).await.unwrap();
        }
        let page = store.list_policies(None, 2).unwrap();
        let names: Vec<_> = page.items.iter().map(|p| p.name.as_str()).collect();
        assert_eq!((names, page.more), (vec!["a", "b"], true));
        let page = store.list_policies(Some("b"), 2).unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(!page.more);

        let err = store.delete_policy("a", 9).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        assert_eq!(store.delete_policy("a", 0).await.unwrap(), 4);
        assert!(store.get_policy("a").unwrap().is_none());
    }

    #[test]
    fn concurrent_writers_all_commit_and_share_flushes() {
        // On its own runtime and thread: a deadlock blocks the workers, so only a timeout
        // from outside the runtime can report it.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let revision = runtime.block_on(async {
                let (store, _dir) = temp_store();
                let store = std::sync::Arc::new(store);
                let writers: Vec<_> = (0..64)
                    .map(|i| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            store.create_policy(mk_policy(&format!("p{i}"))).await
                        })
                    })
                    .collect();
                for writer in writers {
                    writer.await.unwrap().unwrap();
                }
                assert_eq!(store.list_policies(None, 100).unwrap().items.len(), 64);
                store.revision()
            });
            let _ = done_tx.send(revision);
        });
        let revision = done_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("concurrent writers hung");
        assert_eq!(revision, 64);
    }

    #[tokio::test]
    async fn writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = {
            let store = SledStore::open(dir.path()).unwrap();
            store.create_policy(mk_policy("a")).await.unwrap();
            store.epoch().to_owned()
        };
        let store = crate::store::sled::test_support::reopen(dir.path());
        assert_eq!(store.epoch(), epoch);
        assert_eq!(store.revision(), 1);
        assert_eq!(store.get_policy("a").unwrap().unwrap().revision, 1);
    }
}
