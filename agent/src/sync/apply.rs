//! Turning what the control plane sends into the next state: a whole snapshot, or a delta on
//! top of the current state. Pure: validation failures become errors (a NACK), never a
//! half-applied state.

use std::sync::Arc;

use prost::Message;

use portcullis_engine::ScanIndex;
use portcullis_policy::{
    SharedRules,
    scan::{ScanSummary, VulnerabilityDictionary},
};
use portcullis_proto::v1::{
    Delta, ImageSummary, Policy, ProtectionSettings, SnapshotChunk, policy_change, scan_change,
};

use crate::state::{AgentState, LoadedPolicy, policy_map};

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
    // Rule sets of the enforced policies by fingerprint, made once for the whole delta (and
    // only if it puts a policy): each put shares its rule sets with an equal enforced one (the
    // engine then checks them once) in one lookup, however many policies the delta holds.
    let mut shared: Option<SharedRules> = None;
    for change in delta.changes {
        match change.change {
            Some(policy_change::Change::Put(proto)) => {
                let mut loaded = LoadedPolicy::load(proto).map_err(ApplyError::Invalid)?;
                let shared = shared.get_or_insert_with(|| {
                    let mut shared = SharedRules::default();
                    for enforced in next.policies.values() {
                        shared.record(&enforced.policy);
                    }
                    shared
                });
                shared.share(&mut loaded.policy);
                next.policies
                    .insert(loaded.proto.name.clone(), Arc::new(loaded));
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

    #[test]
    fn a_delta_of_many_puts_shares_rule_sets_with_the_enforced_ones_and_among_its_own() {
        let state = snapshot("e", 1, vec![mk_policy("a")], ScanIndex::default(), None, 1).unwrap();
        let other_rules = |name: &str| Policy {
            rules: Some(Rules {
                resource: Some(ResourceRules {
                    read_only_root_filesystem: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..mk_policy(name)
        };
        // Thousands of puts: half with the enforced policy's rules, half with others.
        let mut changes = Vec::new();
        for i in 0..2_000 {
            let name = format!("p-{i:04}");
            let policy = if i % 2 == 0 {
                mk_policy(&name)
            } else {
                other_rules(&name)
            };
            changes.push(PolicyChange {
                change: Some(policy_change::Change::Put(policy)),
            });
        }
        // A put replacing the enforced policy itself, with the other rules.
        changes.push(PolicyChange {
            change: Some(policy_change::Change::Put(other_rules("a"))),
        });
        let change = Delta {
            prev_revision: 1,
            revision: 2,
            changes,
            ..Default::default()
        };
        let next = delta(&state, change, 2).unwrap().0;
        assert_eq!(next.policies.len(), 2_001);
        let resource = |state: &AgentState, name: &str| {
            Arc::clone(state.policies[name].policy.rules.resource.as_ref().unwrap())
        };
        let enforced = resource(&state, "a");
        let other = resource(&next, "p-0001");
        assert!(!Arc::ptr_eq(&enforced, &other));
        for i in 0..2_000 {
            let held = resource(&next, &format!("p-{i:04}"));
            let expected = if i % 2 == 0 { &enforced } else { &other };
            assert!(Arc::ptr_eq(&held, expected), "p-{i:04}");
        }
        assert!(Arc::ptr_eq(&resource(&next, "a"), &other));
        // The state it was applied to still enforces its own rules.
        assert!(Arc::ptr_eq(&resource(&state, "a"), &enforced));
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
