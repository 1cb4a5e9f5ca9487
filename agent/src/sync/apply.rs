//! Turning what the control plane sends into the next state: a whole snapshot, or a delta on
//! top of the current state. Pure: validation failures become errors (a NACK), never a
//! half-applied state.

use std::{collections::BTreeMap, sync::Arc};

use portcullis_proto::v1::{Delta, Policy, ProtectionSettings, policy_change};

use crate::state::{AgentState, LoadedPolicy};

/// Why a revision could not be applied.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ApplyError {
    #[error("revision gap: the agent is at {held}, the delta starts at {expected}")]
    Gap { held: u64, expected: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// The state a snapshot describes.
pub fn snapshot(
    epoch: &str,
    revision: u64,
    policies: Vec<Policy>,
    protection: Option<ProtectionSettings>,
    now_ms: i64,
) -> Result<AgentState, ApplyError> {
    let mut loaded = BTreeMap::new();
    for proto in policies {
        let policy = LoadedPolicy::load(proto).map_err(ApplyError::Invalid)?;
        loaded.insert(policy.proto.name.clone(), Arc::new(policy));
    }
    Ok(AgentState {
        epoch: epoch.to_owned(),
        revision,
        protection,
        policies: loaded,
        applied_at_ms: now_ms,
    })
}

/// `current` with `delta` applied. Unchanged policies are shared with `current`.
pub fn delta(current: &AgentState, delta: Delta, now_ms: i64) -> Result<AgentState, ApplyError> {
    if delta.prev_revision != current.revision {
        return Err(ApplyError::Gap {
            held: current.revision,
            expected: delta.prev_revision,
        });
    }
    let mut next = current.clone();
    for change in delta.changes {
        match change.change {
            Some(policy_change::Change::Put(proto)) => {
                let policy = LoadedPolicy::load(proto).map_err(ApplyError::Invalid)?;
                next.policies
                    .insert(policy.proto.name.clone(), Arc::new(policy));
            }
            Some(policy_change::Change::Deleted(name)) => {
                next.policies.remove(&name);
            }
            None => {}
        }
    }
    if delta.protection.is_some() {
        next.protection = delta.protection;
    }
    next.revision = delta.revision;
    next.applied_at_ms = now_ms;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::v1::{PolicyChange, ResourceRules, Rules};

    fn mk_policy(name: &str) -> Policy {
        Policy {
            name: name.into(),
            rules: Some(Rules {
                resource: Some(ResourceRules {
                    privileged: Some(Default::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn put(name: &str) -> PolicyChange {
        PolicyChange {
            change: Some(policy_change::Change::Put(mk_policy(name))),
        }
    }

    fn deleted(name: &str) -> PolicyChange {
        PolicyChange {
            change: Some(policy_change::Change::Deleted(name.into())),
        }
    }

    #[test]
    fn deltas_apply_in_order_and_share_unchanged_policies() {
        let state = snapshot("e", 5, vec![mk_policy("a"), mk_policy("b")], None, 1).unwrap();
        let next = delta(
            &state,
            Delta {
                prev_revision: 5,
                revision: 7,
                changes: vec![put("c"), deleted("a"), deleted("zz")],
                protection: None,
            },
            2,
        )
        .unwrap();
        assert_eq!(next.revision, 7);
        assert_eq!(next.policies.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert!(Arc::ptr_eq(&state.policies["b"], &next.policies["b"]));
        assert_eq!(state.revision, 5, "the old state is untouched");
    }

    #[test]
    fn a_gap_is_refused() {
        let state = snapshot("e", 5, vec![], None, 1).unwrap();
        let err = delta(
            &state,
            Delta {
                prev_revision: 6,
                revision: 8,
                ..Default::default()
            },
            2,
        )
        .unwrap_err();
        assert_eq!(
            err,
            ApplyError::Gap {
                held: 5,
                expected: 6
            }
        );
    }

    #[test]
    fn an_invalid_policy_fails_the_whole_revision() {
        let mut bad = mk_policy("bad");
        bad.action = "explode".into();
        assert!(matches!(
            snapshot("e", 1, vec![mk_policy("a"), bad.clone()], None, 0),
            Err(ApplyError::Invalid(_))
        ));
        let state = snapshot("e", 1, vec![], None, 0).unwrap();
        let change = PolicyChange {
            change: Some(policy_change::Change::Put(bad)),
        };
        let err = delta(
            &state,
            Delta {
                prev_revision: 1,
                revision: 2,
                changes: vec![put("ok"), change],
                protection: None,
            },
            0,
        );
        assert!(matches!(err, Err(ApplyError::Invalid(msg)) if msg.contains("\"bad\"")));
    }
}
