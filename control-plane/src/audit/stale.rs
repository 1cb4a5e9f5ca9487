//! `Violation.stale`, computed when violations are read (never stored, so always current):
//! the policy is unknown or deleted, or at another revision than the agent judged with.

use std::{collections::HashMap, sync::Arc};

use portcullis_proto::v1::Violation;

use crate::store::{Store, StoreError};

/// Marks violations `stale` against the policies' current revisions, reading each policy
/// once per store revision.
pub struct PolicyRevisions {
    store: Arc<Store>,
    at: u64,
    known: HashMap<String, Option<u64>>,
}

impl PolicyRevisions {
    /// Policies remembered at most (a watcher may see many names no policy has).
    const MAX_KNOWN: usize = 4096;

    pub fn new(store: Arc<Store>) -> Self {
        Self {
            at: store.revision(),
            store,
            known: HashMap::new(),
        }
    }

    /// Sets `violation.stale`: its policy is unknown or deleted, or at another revision than
    /// the one the agent judged with.
    pub async fn mark(&mut self, violation: &mut Violation) -> Result<(), StoreError> {
        let revision = self.store.revision();
        if revision != self.at || self.known.len() >= Self::MAX_KNOWN {
            self.known.clear();
            self.at = revision;
        }
        let current = match self.known.get(&violation.policy) {
            Some(current) => *current,
            None => {
                let current = self
                    .store
                    .get_policy(&violation.policy)
                    .await?
                    .map(|p| p.revision);
                self.known.insert(violation.policy.clone(), current);
                current
            }
        };
        violation.stale = current != Some(violation.policy_revision);
        Ok(())
    }
}
