//! How violations sit in the `audit` tree: the keys (ordered as `ListViolations` lists, and
//! unambiguous whatever the names hold) and the values, prost records sealed with a CRC-32 of
//! their key and bytes, so a damaged value or one under another key reads as corruption.
//!
//! Keys: `v` then the escaped cluster, namespace, kind, name and policy of a violation; `r`
//! then a cluster's name for its audit run. Each escaped part is the string with every 0x00
//! written as 0x00 0xff, ended by 0x00 0x01: parts compare as the strings do, and no part can
//! run into the next.

use portcullis_proto::v1::Violation;
use prost::Message;

use crate::store::StoreError;

const VIOLATION: u8 = b'v';
const RUN: u8 = b'r';
const ESCAPE: u8 = 0xff;
const END: u8 = 0x01;

/// A stored violation and the audit run (and resync of it) that last touched it.
#[derive(Clone, PartialEq, Message)]
pub struct ViolationRecord {
    #[prost(message, optional, tag = "1")]
    pub violation: Option<Violation>,
    #[prost(string, tag = "2")]
    pub run: String,
    /// The cluster's resync counter (`RunRecord::resync`) when it was touched.
    #[prost(uint64, tag = "3")]
    pub resync: u64,
}

/// A cluster's current audit run, and how many resyncs were started (each `resync_start`).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct RunRecord {
    #[prost(string, tag = "1")]
    pub run: String,
    #[prost(uint64, tag = "2")]
    pub resync: u64,
}

fn push_part(key: &mut Vec<u8>, part: &str) {
    for &byte in part.as_bytes() {
        key.push(byte);
        if byte == 0 {
            key.push(ESCAPE);
        }
    }
    key.extend_from_slice(&[0, END]);
}

/// The prefix of every violation key.
pub fn all_violations() -> Vec<u8> {
    vec![VIOLATION]
}

/// The prefix of the keys of `parts` (cluster, namespace, kind, name, policy, from the left).
pub fn violation_prefix(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 2).sum::<usize>());
    key.push(VIOLATION);
    for part in parts {
        push_part(&mut key, part);
    }
    key
}

/// The first key after every key that starts with the violation prefix `prefix` (as one
/// `violation_prefix` makes: it ends with a part's end or is `all_violations`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![VIOLATION + 1]
}

/// The key of `violation`'s record in `cluster`.
pub fn violation_key(cluster: &str, v: &Violation) -> Vec<u8> {
    violation_prefix(&[cluster, &v.namespace, &v.kind, &v.name, &v.policy])
}

pub fn run_key(cluster: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + cluster.len());
    key.push(RUN);
    key.extend_from_slice(cluster.as_bytes());
    key
}

/// The cluster a violation key belongs to.
pub fn cluster_of(key: &[u8]) -> Result<String, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: format!("audit key {}: not a violation key", hex::encode(key)),
    };
    let body = key.strip_prefix(&[VIOLATION]).ok_or_else(corrupt)?;
    let mut part = Vec::new();
    let mut bytes = body.iter();
    while let Some(&byte) = bytes.next() {
        if byte != 0 {
            part.push(byte);
            continue;
        }
        match bytes.next() {
            Some(&ESCAPE) => part.push(0),
            Some(&END) => return String::from_utf8(part).map_err(|_| corrupt()),
            _ => break,
        }
    }
    Err(corrupt())
}

/// The cluster of a run key.
pub fn run_cluster(key: &[u8]) -> Result<String, StoreError> {
    key.strip_prefix(&[RUN])
        .and_then(|name| String::from_utf8(name.to_vec()).ok())
        .ok_or_else(|| StoreError::Corrupt {
            what: format!(
                "audit key {}: neither a violation nor a run",
                hex::encode(key)
            ),
        })
}

/// `record` as stored under `key`: its bytes, then their checksum.
pub fn seal(key: &[u8], record: &impl Message) -> Vec<u8> {
    portcullis_runtime::record::seal(key, &record.encode_to_vec())
}

/// The record stored under `key`, verified.
pub fn open<M: Message + Default>(key: &[u8], stored: &[u8]) -> Result<M, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt {
        what: format!("audit record {}: {what}", hex::encode(key)),
    };
    let bytes = portcullis_runtime::record::open(key, stored).map_err(corrupt)?;
    M::decode(bytes).map_err(|e| corrupt(e.to_string()))
}

/// A stored record, or `None` (logged) when it cannot be read back: a damaged record is
/// skipped by readers and overwritten by the next report of its key, never taken for data.
pub fn readable<M: prost::Message + Default>(key: &[u8], stored: &[u8]) -> Option<M> {
    match open(key, stored) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::warn!(%error, "Unreadable audit record skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(namespace: &str, kind: &str, name: &str, policy: &str) -> Violation {
        Violation {
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
            policy: policy.into(),
            ..Default::default()
        }
    }

    #[test]
    fn keys_sort_by_cluster_namespace_kind_name_policy_and_never_collide() {
        // Each pair is in list order; parts with NULs, escapes and prefixes of each other.
        let ordered = [
            ("a", mk("", "Pod", "x", "p")),
            ("a", mk("ns", "Deployment", "x", "p")),
            ("a", mk("ns", "Pod", "x", "p")),
            ("a", mk("ns", "Pod", "x\0", "p")),
            ("a", mk("ns", "Pod", "x\0\u{1}", "p")),
            ("a", mk("ns", "Pod", "x\u{1}", "p")),
            ("a", mk("ns", "Pod", "xy", "")),
            ("a", mk("ns", "Pod", "xy", "p")),
            ("a", mk("ns\0", "Pod", "x", "p")),
            ("a\0", mk("", "", "", "")),
            ("ab", mk("", "", "", "")),
            ("b", mk("", "", "", "")),
        ];
        let keys: Vec<Vec<u8>> = ordered.iter().map(|(c, v)| violation_key(c, v)).collect();
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1], "{:?} !< {:?}", pair[0], pair[1]);
        }
        // Moving a byte between parts makes another key.
        assert_ne!(
            violation_key("a", &mk("b\0", "c", "", "")),
            violation_key("a", &mk("b", "\0c", "", ""))
        );
        for (cluster, v) in &ordered {
            let key = violation_key(cluster, v);
            assert_eq!(cluster_of(&key).unwrap(), *cluster);
            assert!(key.starts_with(&violation_prefix(&[cluster])));
        }
        // Every key of a prefix sorts before its end; the next cluster's after it.
        for (cluster, v) in &ordered {
            let key = violation_key(cluster, v);
            assert!(key < prefix_end(&violation_prefix(&[cluster])));
            assert!(key < prefix_end(&all_violations()));
        }
        assert!(violation_key("a\0", &mk("", "", "", "")) >= prefix_end(&violation_prefix(&["a"])));
        // A cluster's prefix holds none of another cluster's keys.
        assert!(!violation_key("ab", &mk("", "", "", "")).starts_with(&violation_prefix(&["a"])));
        assert!(cluster_of(b"vabc").is_err());
        assert!(cluster_of(&run_key("a")).is_err());
        assert_eq!(run_cluster(&run_key("a\0")).unwrap(), "a\0");
        assert!(run_cluster(b"x").is_err());
    }

    #[test]
    fn sealed_records_detect_every_flipped_byte_and_another_key() {
        let record = RunRecord {
            run: "0190f3a0-0000-7000-8000-000000000000".into(),
            resync: 3,
        };
        let sealed = seal(b"ra", &record);
        assert_eq!(open::<RunRecord>(b"ra", &sealed).unwrap(), record);
        assert!(open::<RunRecord>(b"rb", &sealed).is_err());
        for at in 0..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[at] ^= 0x40;
            assert!(open::<RunRecord>(b"ra", &damaged).is_err(), "byte {at}");
        }
        assert!(open::<RunRecord>(b"ra", &sealed[..3]).is_err());
    }
}
