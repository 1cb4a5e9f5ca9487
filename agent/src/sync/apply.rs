//! Turning what the control plane sends into the next state: a whole snapshot, or a delta on
//! top of the current state. Pure: validation failures become errors (a NACK), never a
//! half-applied state.

use prost::Message;

use portcullis_policy::{
    engine::ScanIndex,
    scan::{ScanSummary, VulnerabilityDictionary},
};
use portcullis_proto::v1::{
    Delta, ImageSummary, Policy, ProtectionSettings, SnapshotChunk, policy_change, scan_change,
};

use crate::state::{AgentState, LoadedPolicy, insert_policy, policy_map};

/// Why a revision could not be applied.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ApplyError {
    #[error("revision gap: the agent is at {held}, the delta starts at {expected}")]
    Gap { held: u64, expected: u64 },
    #[error("{0}")]
    Invalid(String),
}

/// A scan change as the cache writes it.
#[derive(Debug, PartialEq)]
pub enum ScanWrite {
    /// The id and the encoded `ImageSummary`.
    Put(String, Vec<u8>),
    Delete(String),
}

/// Adds the summaries of one snapshot chunk to `index`, after the chunk's dictionary entries
/// (which its summaries and later chunks' may refer to).
pub fn add_scans(
    index: &mut ScanIndex,
    dictionary: &mut VulnerabilityDictionary,
    chunk: &SnapshotChunk,
) -> Result<(), ApplyError> {
    dictionary.extend(chunk.vulnerability_dictionary.iter().map(String::as_str));
    for message in &chunk.scans {
        let (image, summary) =
            ScanSummary::from_snapshot_proto(message, dictionary).map_err(ApplyError::Invalid)?;
        index.put(&message.id, image, summary, message.revision);
    }
    Ok(())
}

fn put_scan(index: &mut ScanIndex, message: &ImageSummary) -> Result<(), ApplyError> {
    let (image, summary) = ScanSummary::from_proto(message).map_err(ApplyError::Invalid)?;
    index.put(&message.id, image, summary, message.revision);
    Ok(())
}

/// The state a snapshot describes (its scans were gathered with `add_scans`).
pub fn snapshot(
    epoch: &str,
    revision: u64,
    policies: Vec<Policy>,
    scans: ScanIndex,
    protection: Option<ProtectionSettings>,
    now_ms: i64,
) -> Result<AgentState, ApplyError> {
    let loaded = policies
        .into_iter()
        .map(LoadedPolicy::load)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApplyError::Invalid)?;
    Ok(AgentState {
        epoch: epoch.to_owned(),
        revision,
        protection,
        policies: policy_map(loaded),
        scans,
        applied_at_ms: now_ms,
    })
}

/// `current` with `delta` applied, and the scan writes for the cache. Unchanged policies and
/// scan shards are shared with `current`.
pub fn delta(
    current: &AgentState,
    delta: Delta,
    now_ms: i64,
) -> Result<(AgentState, Vec<ScanWrite>), ApplyError> {
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
                insert_policy(&mut next.policies, policy);
            }
            Some(policy_change::Change::Deleted(name)) => {
                next.policies.remove(&name);
            }
            None => {}
        }
    }
    let mut writes = Vec::with_capacity(delta.scan_changes.len());
    for change in delta.scan_changes {
        match change.change {
            Some(scan_change::Change::Put(message)) => {
                put_scan(&mut next.scans, &message)?;
                writes.push(ScanWrite::Put(message.id.clone(), message.encode_to_vec()));
            }
            Some(scan_change::Change::Deleted(id)) => {
                next.scans.remove(&id);
                writes.push(ScanWrite::Delete(id));
            }
            None => {}
        }
    }
    if delta.protection.is_some() {
        next.protection = delta.protection;
    }
    next.revision = delta.revision;
    next.applied_at_ms = now_ms;
    Ok((next, writes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::v1::{PolicyChange, ResourceRules, Rules};
    use std::sync::Arc;

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
        let state = snapshot(
            "e",
            5,
            vec![mk_policy("a"), mk_policy("b")],
            ScanIndex::default(),
            None,
            1,
        )
        .unwrap();
        let next = delta(
            &state,
            Delta {
                prev_revision: 5,
                revision: 7,
                changes: vec![put("c"), deleted("a"), deleted("zz")],
                ..Default::default()
            },
            2,
        )
        .unwrap()
        .0;
        assert_eq!(next.revision, 7);
        assert_eq!(next.policies.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert!(Arc::ptr_eq(&state.policies["b"], &next.policies["b"]));
        assert_eq!(state.revision, 5, "the old state is untouched");
        // Equal rule sets are held once, whether they came in the snapshot or in a delta.
        let resource = |state: &AgentState, name: &str| {
            Arc::clone(state.policies[name].policy.rules.resource.as_ref().unwrap())
        };
        assert!(Arc::ptr_eq(&resource(&state, "a"), &resource(&state, "b")));
        assert!(Arc::ptr_eq(&resource(&next, "b"), &resource(&next, "c")));
    }

    fn mk_summary(id: &str, cve: &str) -> ImageSummary {
        ImageSummary {
            id: id.into(),
            image: Some(portcullis_proto::v1::ImageIdentity {
                repository: "docker.io/library/nginx".into(),
                tags: vec![id.into()],
                ..Default::default()
            }),
            vulnerability_ids: vec![cve.into()],
            vulnerability_flags: vec![4],
            revision: 3,
            ..Default::default()
        }
    }

    fn scan_put(summary: ImageSummary) -> portcullis_proto::v1::ScanChange {
        portcullis_proto::v1::ScanChange {
            change: Some(scan_change::Change::Put(summary)),
        }
    }

    #[test]
    fn scan_changes_update_the_index_and_name_their_cache_writes() {
        let mut scans = ScanIndex::default();
        let chunk = SnapshotChunk {
            scans: vec![mk_summary("1", "CVE-1"), mk_summary("2", "CVE-2")],
            ..Default::default()
        };
        add_scans(&mut scans, &mut VulnerabilityDictionary::default(), &chunk).unwrap();
        let state = snapshot("e", 5, vec![], scans, None, 1).unwrap();
        assert_eq!(state.scans.len(), 2);
        let removal = portcullis_proto::v1::ScanChange {
            change: Some(scan_change::Change::Deleted("1".into())),
        };
        let (next, writes) = delta(
            &state,
            Delta {
                prev_revision: 5,
                revision: 6,
                scan_changes: vec![scan_put(mk_summary("2", "CVE-9")), removal],
                ..Default::default()
            },
            2,
        )
        .unwrap();
        assert!(next.scans.lookup("nginx:1").is_none());
        let found = next.scans.lookup("nginx:2").unwrap();
        assert!(found.vulnerability("CVE-9").is_some());
        assert_eq!(writes.len(), 2);
        assert!(matches!(&writes[0], ScanWrite::Put(id, bytes) if id == "2" && !bytes.is_empty()));
        assert_eq!(writes[1], ScanWrite::Delete("1".into()));
        assert!(
            state.scans.lookup("nginx:1").is_some(),
            "the old state is untouched"
        );
    }

    #[test]
    fn a_malformed_scan_summary_fails_the_revision() {
        let state = snapshot("e", 1, vec![], ScanIndex::default(), None, 0).unwrap();
        let mut bad = mk_summary("1", "CVE-1");
        bad.vulnerability_flags.clear();
        let err = delta(
            &state,
            Delta {
                prev_revision: 1,
                revision: 2,
                scan_changes: vec![scan_put(bad.clone())],
                ..Default::default()
            },
            0,
        )
        .unwrap_err();
        assert!(
            matches!(err, ApplyError::Invalid(m) if m.contains("1 vulnerability ids but 0 flags"))
        );
        let chunk = SnapshotChunk {
            scans: vec![bad],
            ..Default::default()
        };
        let mut dictionary = VulnerabilityDictionary::default();
        assert!(add_scans(&mut ScanIndex::default(), &mut dictionary, &chunk).is_err());
    }

    #[test]
    fn refs_resolve_through_the_snapshot_dictionary_and_nowhere_else() {
        let mut refs = mk_summary("1", "CVE-1");
        refs.vulnerability_ids.clear();
        refs.vulnerability_refs = vec![1];
        // Numbers name the entries of this and earlier chunks of the snapshot.
        let mut scans = ScanIndex::default();
        let mut dictionary = VulnerabilityDictionary::default();
        let first = SnapshotChunk {
            vulnerability_dictionary: vec!["apply-CVE-0".into(), "apply-CVE-1".into()],
            ..Default::default()
        };
        let second = SnapshotChunk {
            scans: vec![refs.clone()],
            ..Default::default()
        };
        add_scans(&mut scans, &mut dictionary, &first).unwrap();
        add_scans(&mut scans, &mut dictionary, &second).unwrap();
        let found = scans.lookup("nginx:1").unwrap();
        assert!(found.vulnerability("apply-CVE-1").is_some());
        // A number the snapshot never sent fails it.
        let err = add_scans(
            &mut ScanIndex::default(),
            &mut VulnerabilityDictionary::default(),
            &second,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ApplyError::Invalid(m) if m.contains("vulnerability ref 1 is not in the snapshot's dictionary of 0 ids")),
            "{err}"
        );
        // A delta has no dictionary: a summary with refs fails it.
        let state = snapshot("e", 1, vec![], ScanIndex::default(), None, 0).unwrap();
        let err = delta(
            &state,
            Delta {
                prev_revision: 1,
                revision: 2,
                scan_changes: vec![scan_put(refs)],
                ..Default::default()
            },
            0,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ApplyError::Invalid(m) if m.contains("vulnerability refs outside a snapshot")),
            "{err}"
        );
    }

    #[test]
    fn a_gap_is_refused() {
        let state = snapshot("e", 5, vec![], ScanIndex::default(), None, 1).unwrap();
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
            snapshot(
                "e",
                1,
                vec![mk_policy("a"), bad.clone()],
                ScanIndex::default(),
                None,
                0
            ),
            Err(ApplyError::Invalid(_))
        ));
        let state = snapshot("e", 1, vec![], ScanIndex::default(), None, 0).unwrap();
        let change = PolicyChange {
            change: Some(policy_change::Change::Put(bad)),
        };
        let err = delta(
            &state,
            Delta {
                prev_revision: 1,
                revision: 2,
                changes: vec![put("ok"), change],
                ..Default::default()
            },
            0,
        );
        assert!(matches!(err, Err(ApplyError::Invalid(msg)) if msg.contains("\"bad\"")));
    }
}
