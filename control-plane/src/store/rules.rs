//! What every backend decides the same way: policy revisions and outcomes, a scan's id and
//! index keys, the shapes of snapshots and change-log reads.

use portcullis_policy::{reference::ImageReference, scan::summary_of_stored};
use portcullis_proto::v1::{Cluster, ImageIdentity, ImageScan, ImageSummary, Policy};

use super::{ChangeRecord, StoreError};

/// What `apply_policies` did with one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Updated,
    Unchanged,
}

impl ApplyOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Updated => "updated",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

pub(crate) fn check_revision(name: &str, expected: u64, current: u64) -> Result<(), StoreError> {
    if expected == current {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            kind: "policy",
            name: name.to_owned(),
            expected,
            current,
        })
    }
}

/// Whether two policies say the same thing (server-set fields aside).
pub(crate) fn same_spec(a: &Policy, b: &Policy) -> bool {
    let strip = |p: &Policy| Policy {
        revision: 0,
        create_time: None,
        update_time: None,
        ..p.clone()
    };
    strip(a) == strip(b)
}

/// `ImageScan.vulnerabilities`, the field a `NewScan`'s encoded list holds entries of.
pub const VULNERABILITIES_FIELD: u32 = 6;

/// A scan to store: its message without the vulnerability list, the list already encoded (the
/// message's field entries, which follow the rest of the record), and the summary agents
/// receive. A report of 100,000 findings is held here as a few MB of bytes instead of a list of
/// owned strings several times the report's size.
#[derive(Debug, Default)]
pub struct NewScan {
    pub head: ImageScan,
    pub vulnerabilities: Vec<u8>,
    pub vulnerability_count: usize,
    /// Its id and revision are set when the scan is stored.
    pub summary: ImageSummary,
}

impl From<ImageScan> for NewScan {
    /// A scan message as it stands (its list encoded, its summary derived from it).
    fn from(mut head: ImageScan) -> Self {
        let summary = summary_of_stored(&head);
        let list = std::mem::take(&mut head.vulnerabilities);
        let mut vulnerabilities = Vec::new();
        for v in &list {
            prost::encoding::message::encode(VULNERABILITIES_FIELD, v, &mut vulnerabilities);
        }
        Self {
            head,
            vulnerabilities,
            vulnerability_count: list.len(),
            summary,
        }
    }
}

/// Every digest, then every normalised `repository:tag` of `identity` (tags that do not form a
/// valid reference are skipped: no pod could name them).
pub(crate) fn index_keys(identity: &ImageIdentity) -> Result<Vec<String>, StoreError> {
    // A digest alone identifies an image (one scanned from an OCI layout has no name); tags
    // need the repository they belong to.
    if identity.repository.is_empty() && identity.digests.is_empty() {
        return Err(StoreError::Invalid {
            what: "image: a repository or a digest is required".into(),
        });
    }
    let mut keys: Vec<String> = identity.digests.clone();
    let tags = if identity.repository.is_empty() {
        &[][..]
    } else {
        &identity.tags[..]
    };
    for tag in tags {
        if let Ok(reference) = ImageReference::parse(&format!("{}:{tag}", identity.repository))
            && reference.digest().is_none()
        {
            keys.push(reference.normalized().to_owned());
        }
    }
    keys.dedup();
    Ok(keys)
}

/// The first digest, else the first `repository:tag`, else the repository.
pub(crate) fn scan_id(identity: &ImageIdentity, keys: &[String]) -> Result<String, StoreError> {
    Ok(identity
        .digests
        .first()
        .or(keys.first())
        .cloned()
        .unwrap_or_else(|| identity.repository.clone()))
}

/// The state an agent starts from.
#[derive(Debug)]
pub struct StoreSnapshot {
    pub epoch: String,
    pub revision: u64,
    pub policies: Vec<Policy>,
    pub cluster: Option<Cluster>,
}

/// What `changes_since` found.
#[derive(Debug, PartialEq)]
pub enum ChangesSince {
    /// Every change after the asked revision, in order, without gaps (maybe none).
    Changes(Vec<ChangeRecord>),
    /// The log no longer reaches back that far (or the asked revision is from the future):
    /// the reader needs a snapshot.
    SnapshotNeeded,
}

/// How `find_scan` looks `image` up: the index keys to try in order (the first found names
/// the scan), and the scan id to read when none is found. `image` may be a bare digest, an
/// image reference (its digest first, else its normalised `repository:tag`, `latest` when it
/// names no tag), or a scan id. A digest is what runs: only its own report describes the
/// image (as agents judge it), never the report of the tag beside it.
pub(crate) fn scan_lookups(image: &str) -> (Vec<String>, Option<String>) {
    let mut keys = vec![image.to_owned()];
    let Ok(reference) = ImageReference::parse(image) else {
        return (keys, Some(image.to_owned()));
    };
    if let Some(digest) = reference.digest() {
        keys.push(digest.to_owned());
        return (keys, None);
    }
    if let Some(tag) = reference.effective_tag() {
        keys.push(format!("{}:{tag}", reference.repository_path()));
    }
    (keys, Some(image.to_owned()))
}
