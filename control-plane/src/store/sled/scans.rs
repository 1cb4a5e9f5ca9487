//! Image scan results: one record per image in `scans` (keyed by the scan id: its first digest,
//! else its normalised `repository:tag`) and an index `scan_keys` from every digest and
//! `repository:tag` to that id. A re-import of the same image replaces the old record and its
//! index keys in one revision; a key another scan claims later points to the newer scan.

use prost::Message;

use portcullis_policy::reference::ImageReference;
use portcullis_proto::v1::ImageScan;

use super::{
    Change, NewScan, Page, SledStore, StoreError, TreeId, Writer, decode, index_keys, scan_id,
};

const KIND: &str = "image scan";

impl SledStore {
    /// Stores `scan` (its id, revision and import time are set here), replacing a scan with the
    /// same id; the replacement, its index keys and the change-log entry form one revision.
    /// Returns the stored message without its vulnerability list (`find_scan` reads it).
    pub async fn put_scan(&self, scan: impl Into<NewScan>) -> Result<ImageScan, StoreError> {
        let NewScan {
            head: mut scan,
            mut vulnerabilities,
            mut summary,
            ..
        } = scan.into();
        // The list travels encoded, never in the head (it would be stored twice).
        debug_assert!(scan.vulnerabilities.is_empty());
        let identity = scan.image.clone().unwrap_or_default();
        let keys = index_keys(&identity)?;
        let id = scan_id(&identity, &keys)?;
        self.write(|w| {
            if let Some(old) = w.store.scan_by_id(&id)? {
                w.unindex(&old)?;
            }
            scan.id = id.clone();
            scan.import_time = Some(w.timestamp());
            scan.revision = w.next_revision();
            summary.id = id.clone();
            summary.revision = scan.revision;
            for key in &keys {
                w.put(
                    TreeId::ScanKeys,
                    key.as_bytes().to_vec(),
                    id.as_bytes().to_vec(),
                );
            }
            // Fields may come in any order: the head follows the list, which is not copied.
            let mut record = std::mem::take(&mut vulnerabilities);
            scan.encode_raw(&mut record);
            w.put(TreeId::Scans, id.as_bytes().to_vec(), record);
            // The log carries what agents receive (the summary, ids spelled out), not a second
            // copy of the scan.
            let mut numbered = summary.clone();
            w.log(scan.revision, Change::ScanSummaryPut(Box::new(summary)));
            w.number_vulnerabilities(&mut numbered);
            w.put(
                TreeId::ScanSummaries,
                id.as_bytes().to_vec(),
                numbered.encode_to_vec(),
            );
            Ok(scan)
        })
        .await
    }

    /// Deletes the scan that `image` finds (see `find_scan`); returns its id and the revision.
    pub async fn delete_scan(&self, image: &str) -> Result<(String, u64), StoreError> {
        self.write(|w| {
            let scan = w
                .store
                .find_scan(image)?
                .ok_or_else(|| StoreError::NotFound {
                    kind: KIND,
                    name: image.to_owned(),
                })?;
            w.unindex(&scan)?;
            w.delete(TreeId::Scans, scan.id.as_bytes().to_vec());
            w.delete(TreeId::ScanSummaries, scan.id.as_bytes().to_vec());
            let revision = w.take_revision(Change::ScanDeleted(scan.id.clone()));
            Ok((scan.id, revision))
        })
        .await
    }

    /// The scan of `image`: a bare digest, an image reference (by its digest first, then by
    /// its normalised `repository:tag`, `latest` when it names no tag), or a scan id. A key
    /// two scans share finds the one imported last, as agents' indexes do.
    pub fn find_scan(&self, image: &str) -> Result<Option<ImageScan>, StoreError> {
        if let Some(id) = self.scan_key(image)? {
            return self.scan_by_id(&id);
        }
        let Ok(reference) = ImageReference::parse(image) else {
            return self.scan_by_id(image);
        };
        // A digest is what runs: only its own report describes the image (as agents judge
        // it), never the report of the tag beside it.
        if let Some(digest) = reference.digest() {
            return match self.scan_key(digest)? {
                Some(id) => self.scan_by_id(&id),
                None => Ok(None),
            };
        }
        let key = reference
            .effective_tag()
            .map(|tag| format!("{}:{tag}", reference.repository_path()));
        match key.map(|key| self.scan_key(&key)).transpose()?.flatten() {
            Some(id) => self.scan_by_id(&id),
            None => self.scan_by_id(image),
        }
    }

    /// Scans in id order after `after` that `keep` accepts, at most `limit`.
    pub fn list_scans(
        &self,
        after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&ImageScan) -> bool,
    ) -> Result<Page<ImageScan>, StoreError> {
        let iter = match after {
            Some(after) => self.scans.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.scans.iter(),
        };
        let mut items = Vec::with_capacity(limit.min(1024));
        for entry in iter {
            let (_, value) = entry?;
            let scan: ImageScan = decode("image scan", &value)?;
            if !keep(&scan) {
                continue;
            }
            if items.len() == limit {
                return Ok(Page { items, more: true });
            }
            items.push(scan);
        }
        Ok(Page { items, more: false })
    }

    /// Every scan's summary message, encoded, in id order, its vulnerabilities numbered (see
    /// `vulnerability_ids`; for snapshots; not a consistent view: see `snapshot`).
    pub fn scan_summaries(
        &self,
    ) -> impl Iterator<Item = Result<sled::IVec, StoreError>> + Send + use<> {
        self.scan_summaries
            .iter()
            .values()
            .map(|v| v.map_err(StoreError::from))
    }

    fn scan_by_id(&self, id: &str) -> Result<Option<ImageScan>, StoreError> {
        self.scans
            .get(id.as_bytes())?
            .map(|bytes| decode("image scan", &bytes))
            .transpose()
    }

    fn scan_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.scan_keys
            .get(key.as_bytes())?
            .map(|id| {
                String::from_utf8(id.to_vec()).map_err(|_| StoreError::Corrupt {
                    what: "scan index holds a non-UTF-8 id".into(),
                })
            })
            .transpose()
    }
}

impl Writer<'_> {
    /// Stages the removal of `scan`'s index keys that still point to it (a newer scan may have
    /// taken a tag since).
    fn unindex(&mut self, scan: &ImageScan) -> Result<(), StoreError> {
        let identity = scan.image.clone().unwrap_or_default();
        for key in index_keys(&identity)? {
            if self.store.scan_key(&key)?.as_deref() == Some(scan.id.as_str()) {
                self.delete(TreeId::ScanKeys, key.into_bytes());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ChangesSince, sled::test_support::temp_store};
    use portcullis_policy::scan::summary_of_stored;
    use portcullis_proto::v1::{ImageIdentity, ImageSummary};

    const DIGEST_A: &str =
        "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DIGEST_B: &str =
        "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn mk_scan(repository: &str, tags: &[&str], digests: &[&str]) -> ImageScan {
        ImageScan {
            image: Some(ImageIdentity {
                repository: repository.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                digests: digests.iter().map(|d| d.to_string()).collect(),
                image_id: String::new(),
            }),
            ..Default::default()
        }
    }

    fn keys(store: &SledStore) -> Vec<(String, String)> {
        store
            .scan_keys
            .iter()
            .map(|e| {
                let (k, v) = e.unwrap();
                (
                    String::from_utf8(k.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn reimport_replaces_in_one_revision_and_drops_old_keys() {
        let (store, _dir) = temp_store();
        let first = store
            .put_scan(mk_scan(
                "docker.io/library/nginx",
                &["1.25", "1"],
                &[DIGEST_A],
            ))
            .await
            .unwrap();
        assert_eq!((first.id.as_str(), first.revision), (DIGEST_A, 1));
        let second = store
            .put_scan(mk_scan("docker.io/library/nginx", &["1.25"], &[DIGEST_A]))
            .await
            .unwrap();
        assert_eq!((second.id.as_str(), second.revision), (DIGEST_A, 2));
        assert_eq!(store.revision(), 2);
        assert_eq!(
            keys(&store),
            [
                (
                    "docker.io/library/nginx:1.25".to_owned(),
                    DIGEST_A.to_owned()
                ),
                (DIGEST_A.to_owned(), DIGEST_A.to_owned()),
            ]
        );
        assert_eq!(
            store.list_scans(None, 10, |_| true).unwrap().items,
            std::slice::from_ref(&second)
        );
        let ChangesSince::Changes(changes) = store.changes_since(1, 10).unwrap() else {
            panic!("log compacted");
        };
        assert_eq!(changes.len(), 1);
        // The log holds the summary agents receive, not a second copy of the scan.
        assert_eq!(
            changes[0].change,
            Some(Change::ScanSummaryPut(Box::new(summary_of_stored(&second))))
        );
    }

    #[tokio::test]
    async fn the_list_is_stored_whole_and_answered_without() {
        let (store, _dir) = temp_store();
        let mut scan = mk_scan("docker.io/library/nginx", &["1.25"], &[DIGEST_A]);
        scan.vulnerabilities = (0..3)
            .map(|i| portcullis_proto::v1::ScanVulnerability {
                id: format!("CVE-2024-{i}"),
                severity: "high".into(),
                package: "openssl".into(),
                fixed_version: if i == 1 { "3.1".into() } else { String::new() },
                cvss_score: (i == 2).then_some(7.5),
                ..Default::default()
            })
            .collect();
        let stored = store.put_scan(scan.clone()).await.unwrap();
        assert!(stored.vulnerabilities.is_empty());
        let found = store.find_scan(DIGEST_A).unwrap().unwrap();
        assert_eq!(found.vulnerabilities, scan.vulnerabilities);
        assert_eq!(
            ImageScan {
                vulnerabilities: Vec::new(),
                ..found
            },
            stored
        );
        // Agents receive every id, with the fixable flag.
        let summary = ImageSummary::decode(&*store.scan_summaries().next().unwrap().unwrap());
        assert_eq!(summary.unwrap().vulnerability_flags.len(), 3);
    }

    #[tokio::test]
    async fn lookup_by_digest_tag_and_short_name() {
        let (store, _dir) = temp_store();
        store
            .put_scan(mk_scan("docker.io/library/nginx", &["1.25"], &[DIGEST_A]))
            .await
            .unwrap();
        store
            .put_scan(mk_scan("registry.example.com/app", &["latest"], &[]))
            .await
            .unwrap();
        for image in [
            DIGEST_A,
            "nginx:1.25",
            "docker.io/library/nginx:1.25",
            &format!("nginx@{DIGEST_A}"),
        ] {
            let found = store.find_scan(image).unwrap().expect(image);
            assert_eq!(found.id, DIGEST_A, "{image}");
        }
        let app = store
            .find_scan("registry.example.com/app")
            .unwrap()
            .unwrap();
        assert_eq!(app.id, "registry.example.com/app:latest");
        assert!(store.find_scan("nginx:1.26").unwrap().is_none());
        assert!(store.find_scan("not a reference").unwrap().is_none());
    }

    #[tokio::test]
    async fn a_moved_tag_survives_deleting_the_older_scan() {
        let (store, _dir) = temp_store();
        store
            .put_scan(mk_scan("docker.io/library/nginx", &["1.25"], &[DIGEST_A]))
            .await
            .unwrap();
        store
            .put_scan(mk_scan("docker.io/library/nginx", &["1.25"], &[DIGEST_B]))
            .await
            .unwrap();
        assert_eq!(store.find_scan("nginx:1.25").unwrap().unwrap().id, DIGEST_B);
        let (id, revision) = store.delete_scan(DIGEST_A).await.unwrap();
        assert_eq!((id.as_str(), revision), (DIGEST_A, 3));
        assert_eq!(store.find_scan("nginx:1.25").unwrap().unwrap().id, DIGEST_B);
        store.delete_scan("nginx:1.25").await.unwrap();
        assert!(keys(&store).is_empty());
        assert!(store.scans.is_empty());
        assert!(matches!(
            store.delete_scan("nginx:1.25").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn nothing_is_stored_for_a_scan_without_identity() {
        let (store, _dir) = temp_store();
        let err = store.put_scan(mk_scan("", &["1"], &[])).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
        assert_eq!(store.revision(), 0);
        assert!(store.scans.is_empty() && store.scan_keys.is_empty());
    }
}
