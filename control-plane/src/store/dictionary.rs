//! Vulnerability ids by number (tree `vulnerability_ids`: number, big-endian u32 -> id). The
//! stored image summaries (`scan_summaries`) list their vulnerabilities as these numbers, so a
//! snapshot sends each id once (`SnapshotChunk.vulnerability_dictionary`) and every summary as
//! it is stored. Numbers are given in order from 0 and never change or go away: a number in a
//! summary always means the same id. The ids of scans deleted since stay (tens of thousands of
//! short ids across a fleet's images).

use std::collections::HashMap;

use portcullis_proto::v1::ImageSummary;

use super::{Store, StoreError, TreeId, Writer};

/// The numbers given so far, in memory for imports (read and changed under the store's writer
/// lock).
#[derive(Debug, Default)]
pub(super) struct Dictionary {
    numbers: HashMap<String, u32>,
}

impl Dictionary {
    /// Reads the tree, checking that its numbers run from 0 without a gap.
    pub(super) fn load(tree: &sled::Tree) -> Result<Self, StoreError> {
        let mut numbers = HashMap::with_capacity(tree.len());
        for (expected, entry) in tree.iter().enumerate() {
            let (key, value) = entry?;
            let corrupt = |what: String| StoreError::Corrupt {
                what: format!("vulnerability id number {expected}: {what}"),
            };
            let number = <[u8; 4]>::try_from(key.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| corrupt(format!("a key of {} bytes", key.len())))?;
            if number as usize != expected {
                return Err(corrupt(format!("found number {number} in its place")));
            }
            let id = String::from_utf8(value.to_vec())
                .map_err(|_| corrupt("the id is not UTF-8".into()))?;
            numbers.insert(id, number);
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
        let mut staged = Vec::new();
        dictionary.number(summary, &mut self.new_ids, |number, id| {
            staged.push((number, id.to_owned()));
        });
        drop(dictionary);
        for (number, id) in staged {
            self.put(
                TreeId::VulnerabilityIds,
                number.to_be_bytes().to_vec(),
                id.into_bytes(),
            );
        }
    }
}

/// Reads vulnerability ids by number, for snapshots (on their own thread, without the store).
#[derive(Clone)]
pub struct VulnerabilityIds {
    tree: sled::Tree,
}

impl VulnerabilityIds {
    /// A reader of `tree` alone, for tests of what reads it.
    #[cfg(test)]
    pub fn from_tree(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// The ids numbered `from` and up, in order, as far as the store has them now.
    pub fn from(&self, from: u32) -> Result<Vec<String>, StoreError> {
        let mut ids = Vec::new();
        for (offset, entry) in self.tree.range(from.to_be_bytes()..).enumerate() {
            let (key, value) = entry?;
            let expected = from as usize + offset;
            if key.as_ref() != (expected as u32).to_be_bytes() {
                return Err(StoreError::Corrupt {
                    what: format!("vulnerability id number {expected} is missing"),
                });
            }
            ids.push(
                String::from_utf8(value.to_vec()).map_err(|_| StoreError::Corrupt {
                    what: format!("vulnerability id number {expected} is not UTF-8"),
                })?,
            );
        }
        Ok(ids)
    }
}

impl Store {
    /// The reader of vulnerability ids by number.
    pub fn vulnerability_ids(&self) -> VulnerabilityIds {
        VulnerabilityIds {
            tree: self.vulnerability_ids.clone(),
        }
    }

    /// Rebuilds every scan's stored summary from its scan (numbering ids as needed), for a
    /// store written by an older format. Runs at open, before anything else uses the store.
    pub(super) fn rebuild_summaries(&self) -> Result<(), StoreError> {
        use prost::Message;
        self.scan_summaries.clear()?;
        let mut dictionary = self.dictionary.lock().unwrap_or_else(|e| e.into_inner());
        for entry in self.scans.iter() {
            let (id, value) = entry?;
            let scan: portcullis_proto::v1::ImageScan = super::decode("image scan", &value)?;
            let mut summary = portcullis_policy::scan::summary_of_stored(&scan);
            let mut new = NewIds::default();
            let mut staged = Vec::new();
            dictionary.number(&mut summary, &mut new, |number, id| {
                staged.push((number, id.to_owned()));
            });
            for (number, id) in staged {
                self.vulnerability_ids
                    .insert(number.to_be_bytes(), id.as_bytes())?;
            }
            dictionary.publish(new);
            self.scan_summaries.insert(id, summary.encode_to_vec())?;
        }
        drop(dictionary);
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::mk_scan_of;

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
    fn stored(store: &Store) -> Vec<(String, Vec<String>)> {
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
    async fn numbers_survive_a_restart_and_stores_of_format_1_are_renumbered() {
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put_scan(mk_scan_of("1", &["CVE-2", "CVE-1"]))
            .await
            .unwrap();
        drop(store);
        // After a restart, numbering goes on where it was.
        let store = crate::store::test_support::reopen(dir.path());
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

        // The same scans as a store of format 1 keeps them: summaries with ids, no numbers.
        {
            let db = sled::open(super::super::format::sled_path(dir.path())).unwrap();
            db.drop_tree("vulnerability_ids").unwrap();
            let scans = db.open_tree("scans").unwrap();
            let summaries = db.open_tree("scan_summaries").unwrap();
            for entry in scans.iter() {
                let (id, value) = entry.unwrap();
                let scan = portcullis_proto::v1::ImageScan::decode(value.as_ref()).unwrap();
                let summary = portcullis_policy::scan::summary_of_stored(&scan);
                summaries.insert(id, summary.encode_to_vec()).unwrap();
            }
            db.flush().unwrap();
        }
        std::fs::write(dir.path().join("FORMAT"), "1\n").unwrap();
        let store = crate::store::test_support::reopen(dir.path());
        assert_eq!(stored(&store), expected);
        let format = std::fs::read_to_string(dir.path().join("FORMAT")).unwrap();
        assert_eq!(format.trim(), "2");
        assert!(!dir.path().join("FORMAT.new").exists());
        // And it goes on from the rebuilt numbers.
        store.put_scan(mk_scan_of("3", &["CVE-4"])).await.unwrap();
        assert_eq!(store.vulnerability_ids().from(3).unwrap(), ["CVE-4"]);
    }

    #[test]
    fn a_gap_in_the_tree_is_corruption_naming_the_number() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("vulnerability_ids").unwrap();
        tree.insert(0u32.to_be_bytes(), "CVE-1").unwrap();
        tree.insert(2u32.to_be_bytes(), "CVE-3").unwrap();
        let error = Dictionary::load(&tree).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("vulnerability id number 1: found number 2"),
            "{error}"
        );
        let reader = VulnerabilityIds { tree: tree.clone() };
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
