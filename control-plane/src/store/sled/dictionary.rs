//! Vulnerability ids by number (tree `vulnerability_ids`). The ids one write numbers are one
//! block: key `B` + the first number (big-endian u32), value the ids, each after its length
//! (u16, little-endian); an import of a report with 100,000 new ids is one value, not 100,000
//! sled entries (which cost sled about 5 KB each in memory). The
//! stored image summaries (`scan_summaries`) list their vulnerabilities as these numbers, so a
//! snapshot sends each id once (`SnapshotChunk.vulnerability_dictionary`) and every summary as
//! it is stored. Numbers are given in order from 0 and never change or go away: a number in a
//! summary always means the same id. The ids of scans deleted since stay (tens of thousands of
//! short ids across a fleet's images).

use std::collections::HashMap;

use portcullis_proto::v1::ImageSummary;

use super::{SledStore, StoreError, TreeId, Writer};

/// The numbers given so far, in memory for imports (read and changed under the store's writer
/// lock).
#[derive(Debug, Default)]
pub(super) struct Dictionary {
    numbers: HashMap<String, u32>,
}

impl Dictionary {
    /// Reads the tree, checking that its numbers run from 0 without a gap.
    pub(super) fn load(tree: &sled::Tree) -> Result<Self, StoreError> {
        let mut numbers = HashMap::new();
        let mut expected = 0u32;
        for entry in tree.iter() {
            let (key, value) = entry?;
            let corrupt = |what: String| StoreError::Corrupt {
                what: format!("vulnerability id number {expected}: {what}"),
            };
            let (first, ids) = decode_entry(&key, &value).map_err(corrupt)?;
            if first != expected {
                return Err(corrupt(format!("found number {first} in its place")));
            }
            for id in ids {
                numbers.insert(id, expected);
                expected += 1;
            }
        }
        Ok(Self { numbers })
    }

    fn len(&self) -> u32 {
        self.numbers.len() as u32
    }

    /// Takes the numbers a committed write gave.
    pub(super) fn publish(&mut self, new: NewIds) {
        self.numbers.extend(new.numbers);
    }

    /// Numbers `summary`'s vulnerabilities (its ids become refs), staging new numbers in
    /// `new` and, through `stage`, the tree entries that record them.
    pub(super) fn number(
        &self,
        summary: &mut ImageSummary,
        new: &mut NewIds,
        mut stage: impl FnMut(u32, &str),
    ) {
        let ids = std::mem::take(&mut summary.vulnerability_ids);
        summary.vulnerability_refs = ids
            .into_iter()
            .map(|id| {
                if let Some(&number) = self.numbers.get(&id).or_else(|| new.numbers.get(&id)) {
                    return number;
                }
                let number = self.len() + new.numbers.len() as u32;
                stage(number, &id);
                new.numbers.insert(id, number);
                number
            })
            .collect();
    }
}

/// Numbers given by a write that has not committed yet.
#[derive(Debug, Default)]
pub(super) struct NewIds {
    numbers: HashMap<String, u32>,
}

impl NewIds {
    pub(super) fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }
}

impl Writer<'_> {
    /// Numbers `summary`'s vulnerabilities for storing; ids seen for the first time get the
    /// next numbers, recorded in this write's transaction.
    pub(super) fn number_vulnerabilities(&mut self, summary: &mut ImageSummary) {
        let dictionary = self
            .store
            .dictionary
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut staged: Vec<(u32, String)> = Vec::new();
        dictionary.number(summary, &mut self.new_ids, |number, id| {
            staged.push((number, id.to_owned()));
        });
        drop(dictionary);
        // The new ids get consecutive numbers: one block.
        if let Some(&(first, _)) = staged.first() {
            let block = encode_block(staged.iter().map(|(_, id)| id.as_str()));
            self.put(TreeId::VulnerabilityIds, block_key(first).to_vec(), block);
        }
    }
}

/// The key of the block whose first number is `first`.
fn block_key(first: u32) -> [u8; 5] {
    let [a, b, c, d] = first.to_be_bytes();
    [b'B', a, b, c, d]
}

/// A block's value: each id after its length.
fn encode_block<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        // Ids are at most a few hundred bytes (checked at import); a longer one is cut to
        // what its length field can say rather than written unreadably.
        let bytes = &id.as_bytes()[..id.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// One entry of the tree: its first number and its ids.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<(u32, Vec<String>), String> {
    let utf8 = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| "an id is not UTF-8".to_owned())
    };
    match key {
        [b'B', a, b, c, d] => {
            let mut ids = Vec::new();
            let mut rest = value;
            while !rest.is_empty() {
                let (length, tail) = rest
                    .split_first_chunk::<2>()
                    .ok_or("a block ends inside a length")?;
                let length = u16::from_le_bytes(*length) as usize;
                let id = tail.get(..length).ok_or("a block ends inside an id")?;
                ids.push(utf8(id)?);
                rest = &tail[length..];
            }
            if ids.is_empty() {
                return Err("an empty block".into());
            }
            Ok((u32::from_be_bytes([*a, *b, *c, *d]), ids))
        }
        _ => Err(format!("a key of {} bytes", key.len())),
    }
}

/// Reads vulnerability ids by number, for snapshots (on their own thread, without the store).
#[derive(Clone)]
pub struct SledVulnerabilityIds {
    tree: sled::Tree,
}

impl SledVulnerabilityIds {
    /// A reader of `tree` alone, for tests of what reads it.
    #[cfg(test)]
    pub fn from_tree(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Writes `ids`, numbered from `first`, into `tree` as one block, for tests.
    #[cfg(test)]
    pub fn put_block(tree: &sled::Tree, first: u32, ids: &[&str]) {
        tree.insert(block_key(first), encode_block(ids.iter().copied()))
            .unwrap();
    }

    /// The ids numbered `from` and up, in order, as far as the store has them now.
    pub fn from(&self, from: u32) -> Result<Vec<String>, StoreError> {
        // Start at the last block starting at or before `from`.
        let start = match self.tree.range(block_key(0)..=block_key(from)).next_back() {
            Some(entry) => entry?.0.to_vec(),
            None => block_key(from).to_vec(),
        };
        let mut ids = Vec::new();
        let mut expected: Option<u32> = None;
        for entry in self.tree.range(start..) {
            let (key, value) = entry?;
            let missing = |number: u32| StoreError::Corrupt {
                what: format!("vulnerability id number {number} is missing"),
            };
            let (first, block) =
                decode_entry(&key, &value).map_err(|what| StoreError::Corrupt {
                    what: format!("vulnerability ids from {from}: {what}"),
                })?;
            match expected {
                None if first > from => return Err(missing(from)),
                Some(next) if first != next => return Err(missing(next)),
                _ => {}
            }
            for (n, id) in (first..).zip(block) {
                if n >= from {
                    ids.push(id);
                }
                expected = Some(n + 1);
            }
        }
        Ok(ids)
    }
}

impl SledStore {
    /// The reader of vulnerability ids by number.
    pub fn vulnerability_ids(&self) -> SledVulnerabilityIds {
        SledVulnerabilityIds {
            tree: self.vulnerability_ids.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::test_support::mk_scan_of;

    fn mk_summary(ids: &[&str]) -> ImageSummary {
        ImageSummary {
            id: "x".into(),
            vulnerability_ids: ids.iter().map(|s| s.to_string()).collect(),
            vulnerability_flags: vec![0; ids.len()],
            ..Default::default()
        }
    }

    #[test]
    fn ids_get_numbers_in_order_and_keep_them() {
        let mut dictionary = Dictionary::default();
        let mut new = NewIds::default();
        let mut staged = Vec::new();
        let mut first = mk_summary(&["CVE-1", "CVE-2"]);
        dictionary.number(&mut first, &mut new, |n, id| {
            staged.push((n, id.to_owned()))
        });
        // The same write numbers another summary: its ids seen in this write keep their number.
        let mut second = mk_summary(&["CVE-2", "CVE-3"]);
        dictionary.number(&mut second, &mut new, |n, id| {
            staged.push((n, id.to_owned()))
        });
        assert_eq!(first.vulnerability_refs, [0, 1]);
        assert_eq!(second.vulnerability_refs, [1, 2]);
        assert!(first.vulnerability_ids.is_empty());
        assert_eq!(
            staged,
            [
                (0, "CVE-1".into()),
                (1, "CVE-2".into()),
                (2, "CVE-3".into())
            ]
        );
        dictionary.publish(new);
        // A later write: only the unseen id is new.
        let mut new = NewIds::default();
        staged.clear();
        let mut third = mk_summary(&["CVE-0", "CVE-3"]);
        dictionary.number(&mut third, &mut new, |n, id| {
            staged.push((n, id.to_owned()))
        });
        assert_eq!(third.vulnerability_refs, [3, 2]);
        assert_eq!(staged, [(3, "CVE-0".into())]);
    }

    /// Each stored summary's id and its vulnerabilities, spelled out through the dictionary.
    fn stored(store: &SledStore) -> Vec<(String, Vec<String>)> {
        use prost::Message;
        let ids = store.vulnerability_ids().from(0).unwrap();
        store
            .scan_summaries()
            .map(|value| {
                let summary = ImageSummary::decode(value.unwrap().as_ref()).unwrap();
                assert!(summary.vulnerability_ids.is_empty());
                let named = summary
                    .vulnerability_refs
                    .iter()
                    .map(|&n| ids[n as usize].clone())
                    .collect();
                (summary.id, named)
            })
            .collect()
    }

    #[tokio::test]
    async fn numbers_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store
            .put_scan(mk_scan_of("1", &["CVE-2", "CVE-1"]))
            .await
            .unwrap();
        drop(store);
        // After a restart, numbering goes on where it was.
        let store = crate::store::sled::test_support::reopen(dir.path());
        store
            .put_scan(mk_scan_of("2", &["CVE-3", "CVE-1"]))
            .await
            .unwrap();
        assert_eq!(
            store.vulnerability_ids().from(0).unwrap(),
            ["CVE-1", "CVE-2", "CVE-3"]
        );
        let expected = vec![
            (
                "docker.io/library/nginx:1".to_owned(),
                vec!["CVE-1".into(), "CVE-2".into()],
            ),
            (
                "docker.io/library/nginx:2".to_owned(),
                vec!["CVE-1".into(), "CVE-3".into()],
            ),
        ];
        assert_eq!(stored(&store), expected);
        drop(store);
        let store = crate::store::sled::test_support::reopen(dir.path());
        assert_eq!(stored(&store), expected);
        // And it goes on from the numbers it read back.
        store.put_scan(mk_scan_of("3", &["CVE-4"])).await.unwrap();
        assert_eq!(store.vulnerability_ids().from(3).unwrap(), ["CVE-4"]);
    }

    /// The new ids of one write are one block; reads start anywhere inside a block.
    #[tokio::test]
    async fn new_ids_are_one_block_per_write() {
        let (store, _dir) = crate::store::sled::test_support::temp_store();
        let ids: Vec<String> = (0..1000).map(|i| format!("CVE-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        store.put_scan(mk_scan_of("1", &refs)).await.unwrap();
        store
            .put_scan(mk_scan_of("2", &["CVE-5", "NEW-X"]))
            .await
            .unwrap();
        assert_eq!(store.vulnerability_ids.len(), 2, "one block per write");
        let all = store.vulnerability_ids().from(0).unwrap();
        assert_eq!(all.len(), 1001);
        assert_eq!(
            (all[0].as_str(), all.last().unwrap().as_str()),
            ("CVE-0", "NEW-X")
        );
        let reader = store.vulnerability_ids();
        assert_eq!(reader.from(1).unwrap().len(), 1000);
        assert_eq!(reader.from(500).unwrap().len(), 501);
        assert_eq!(reader.from(1000).unwrap(), ["NEW-X"]);
        assert!(reader.from(1001).unwrap().is_empty());
        // The numbering read back at open is the same.
        let loaded = Dictionary::load(&store.vulnerability_ids).unwrap();
        assert_eq!(loaded.numbers.len(), 1001);
        assert_eq!(loaded.numbers["NEW-X"], 1000);
        // A damaged block is corruption.
        let (key, value) = store.vulnerability_ids.last().unwrap().unwrap();
        store
            .vulnerability_ids
            .insert(key, &value[..value.len() - 1])
            .unwrap();
        assert!(Dictionary::load(&store.vulnerability_ids).is_err());
        assert!(reader.from(0).is_err());
    }

    #[test]
    fn a_gap_in_the_tree_is_corruption_naming_the_number() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("vulnerability_ids").unwrap();
        tree.insert(block_key(0), encode_block(["CVE-1"].into_iter()))
            .unwrap();
        tree.insert(block_key(2), encode_block(["CVE-3"].into_iter()))
            .unwrap();
        let error = Dictionary::load(&tree).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("vulnerability id number 1: found number 2"),
            "{error}"
        );
        let reader = SledVulnerabilityIds { tree: tree.clone() };
        assert_eq!(reader.from(2).unwrap(), ["CVE-3"]);
        let error = reader.from(0).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("vulnerability id number 1 is missing"),
            "{error}"
        );
    }
}
