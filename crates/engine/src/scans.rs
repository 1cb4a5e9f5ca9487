//! Image blocking from scan results: the `ScanIndex` that finds an image's `ScanSummary` (by
//! digest when the image names one, else by normalised `repository:tag`), and the checks of `vulnerabilities`,
//! `maliciousFiles`, `baselineFailures` and `unscanned` on one container image. Each finding
//! carries the most it may do: `unscanned: alert` only alerts, even in a `block` policy.

use std::{borrow::Cow, collections::HashMap, fmt::Write, sync::Arc};

use crate::hash::FastHash;
use crate::{
    Action, Finding, ImageRules, UnscannedAction, VulnerabilityRule,
    k8s::PodTemplate,
    reference::{ImageReference, MAX_NAME, MAX_TAG, Parts},
    scan::{ImageIdentity, ImageScan, ScanSummary, SummaryVulnerability},
};

/// Ids listed in a message before the rest are only counted.
const LISTED_IDS: usize = 5;
/// Longest image text quoted in a message: every valid reference fits; a hostile invalid one
/// cannot inflate a denial or a warning.
const MAX_SHOWN_IMAGE: usize = 600;

/// Shards of each map: a change copies one shard (see `ScanIndex`), not the whole map.
const SHARDS: usize = 64;

/// The scan results an agent or the CLI holds, found by the image as a pod spec writes it.
///
/// A digest names content, so an image pinned by digest is found by it alone, whatever
/// repository the scan came from; an image without one is found by its tag (tags are mutable;
/// `nginx` means `docker.io/library/nginx:latest`).
/// Every key of a scan's identity points to the scan; a later put under the same key wins.
///
/// Cloning is cheap and copy-on-write: the maps are split into shards behind `Arc`s, so an
/// agent applying one imported scan to an index of 100,000 copies only the shards it touches
/// while readers keep using the previous index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanIndex {
    /// Digest (`sha256:<hex>`) and normalised `registry/path:tag` keys. They cannot collide:
    /// a normalised repository always has a `/`, a digest never does.
    keys: Shards,
    /// Scan id -> scan.
    ids: Shards,
}

/// One scan in an index.
#[derive(Debug, PartialEq, Eq)]
pub struct IndexedScan {
    /// First digest, else `repository:tag`, as the control plane names scans.
    pub id: Box<str>,
    pub image: ImageIdentity,
    pub summary: ScanSummary,
    /// The control plane's revision of the import (0 for local reports).
    pub revision: u64,
}

impl ScanIndex {
    /// Registers `scan`'s summary under every digest and every tag of its identity.
    pub fn insert(&mut self, scan: &ImageScan) {
        self.insert_summary(&scan.image, scan.summary());
    }

    /// Registers a summary under every digest and every `repository:tag` of `image`, with the
    /// id the control plane would give it (first digest, else `repository:first tag`).
    pub fn insert_summary(&mut self, image: &ImageIdentity, summary: ScanSummary) {
        let id = match (image.digests.first(), image.tags.first()) {
            (Some(digest), _) => digest.clone(),
            (None, Some(tag)) => format!("{}:{tag}", image.repository),
            (None, None) => image.repository.clone(),
        };
        self.put(&id, image.clone(), summary, 0);
    }

    /// Puts the scan `id`, replacing a scan with the same id (and the keys it held). Keys are
    /// normalised again, so an identity spelled `nginx` still matches; tags that do not form a
    /// valid reference with the repository are skipped, as no pod could name them.
    pub fn put(&mut self, id: &str, image: ImageIdentity, summary: ScanSummary, revision: u64) {
        self.remove(id);
        let keys = index_keys(&image);
        let scan = Arc::new(IndexedScan {
            id: id.into(),
            image,
            summary,
            revision,
        });
        for key in keys {
            self.keys.insert(key.into(), Arc::clone(&scan));
        }
        self.ids.insert(id.into(), scan);
    }

    /// Removes the scan `id` and the keys that still find it; returns it.
    pub fn remove(&mut self, id: &str) -> Option<Arc<IndexedScan>> {
        let scan = self.ids.remove(id)?;
        for key in index_keys(&scan.image) {
            if self
                .keys
                .get(&key)
                .is_some_and(|held| Arc::ptr_eq(held, &scan))
            {
                self.keys.remove(&key);
            }
        }
        Some(scan)
    }

    /// The scan with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<IndexedScan>> {
        self.ids.get(id)
    }

    /// Every scan, in no particular order.
    pub fn scans(&self) -> impl Iterator<Item = &Arc<IndexedScan>> {
        self.ids.values()
    }

    /// How many scans the index holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The scan of `image` as written in a pod spec: by its digest when it has one (and only
    /// by it: a tag beside a digest says nothing of what runs), else by its repository and tag
    /// (no tag means `latest`). `None` for an image never scanned or not a valid reference.
    ///
    /// O(1): one parse of the reference and at most two hash lookups. It allocates only to
    /// normalise a Docker Hub short name (`nginx:1.25`) or an upper-case registry; the key is
    /// built on the stack.
    pub fn lookup(&self, image: &str) -> Option<&ScanSummary> {
        self.lookup_scan(image).map(|scan| &scan.summary)
    }

    /// Like `lookup`, with the scan's id and identity.
    pub fn lookup_scan(&self, image: &str) -> Option<&IndexedScan> {
        if self.is_empty() {
            return None;
        }
        let parts = Parts::parse(image).ok()?;
        // The runtime pulls the digest and ignores the tag beside it, so only a report for that
        // digest may judge the image: a clean tag's report must not vouch for any digest.
        if let Some(digest) = parts.digest {
            return self.keys.get(digest).map(|s| &**s);
        }
        let tag = parts.effective_tag()?;
        let repository = parts.repository_path();
        let mut key = KeyBuffer::default();
        self.keys.get(key.join(&repository, tag)?).map(|s| &**s)
    }

    /// Whether no scan is registered (every image is unscanned).
    pub fn is_empty(&self) -> bool {
        self.ids.len() == 0
    }
}

/// The keys a pod can find `image` by: its digests and its normalised `repository:tag`s.
fn index_keys(image: &ImageIdentity) -> Vec<String> {
    let mut keys = image.digests.clone();
    for tag in &image.tags {
        if let Ok(reference) = ImageReference::parse(&format!("{}:{tag}", image.repository))
            && reference.digest().is_none()
        {
            keys.push(reference.normalized().to_owned());
        }
    }
    keys
}

type Shard = HashMap<Box<str>, Arc<IndexedScan>, FastHash>;

/// A map split into `SHARDS` copy-on-write parts by a fixed hash of the key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Shards {
    /// Empty until the first insert.
    shards: Vec<Arc<Shard>>,
    len: usize,
}

impl Shards {
    fn slot(key: &str) -> usize {
        use std::hash::BuildHasher;
        // Middle bits: the maps inside use the low ones for buckets and the top seven as
        // tags, and a shard whose keys all share their tag bits probes far more.
        (FastHash.hash_one(key) >> 32) as usize % SHARDS
    }

    fn get(&self, key: &str) -> Option<&Arc<IndexedScan>> {
        self.shards.get(Self::slot(key))?.get(key)
    }

    fn insert(&mut self, key: Box<str>, value: Arc<IndexedScan>) {
        if self.shards.is_empty() {
            self.shards = (0..SHARDS).map(|_| Arc::default()).collect();
        }
        let shard = Arc::make_mut(&mut self.shards[Self::slot(&key)]);
        if shard.insert(key, value).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, key: &str) -> Option<Arc<IndexedScan>> {
        let shard = self.shards.get_mut(Self::slot(key))?;
        if !shard.contains_key(key) {
            return None;
        }
        let removed = Arc::make_mut(shard).remove(key);
        self.len -= usize::from(removed.is_some());
        removed
    }

    fn values(&self) -> impl Iterator<Item = &Arc<IndexedScan>> {
        self.shards.iter().flat_map(|shard| shard.values())
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// `repository:tag` on the stack: references are bounded, so a lookup needs no heap.
struct KeyBuffer {
    bytes: [u8; MAX_NAME + 1 + MAX_TAG],
}

impl Default for KeyBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; MAX_NAME + 1 + MAX_TAG],
        }
    }
}

impl KeyBuffer {
    /// `repository:tag`, or `None` past the bounds (a parsed reference never is).
    fn join(&mut self, repository: &str, tag: &str) -> Option<&str> {
        let end = repository.len() + 1 + tag.len();
        let out = self.bytes.get_mut(..end)?;
        let (name, rest) = out.split_at_mut(repository.len());
        name.copy_from_slice(repository.as_bytes());
        rest[0] = b':';
        rest[1..].copy_from_slice(tag.as_bytes());
        std::str::from_utf8(&self.bytes[..end]).ok()
    }
}

/// The scan of each image of one object (containers' and image volumes'), looked up once (on the first policy that
/// reads scans) and shared by every policy.
pub(super) struct ContainerScans<'s> {
    index: &'s ScanIndex,
    found: Option<Vec<Option<&'s ScanSummary>>>,
}

impl<'s> ContainerScans<'s> {
    pub(super) fn new(index: &'s ScanIndex) -> Self {
        Self { index, found: None }
    }

    /// The scan of the `ordinal`-th image of `pod.images()`.
    pub(super) fn get(&mut self, pod: &PodTemplate, ordinal: usize) -> Option<&'s ScanSummary> {
        let index = self.index;
        self.found
            .get_or_insert_with(|| pod.images().map(|(_, image)| index.lookup(image)).collect())
            .get(ordinal)
            .copied()
            .flatten()
    }
}

/// Whether any of `rules` reads scan results (otherwise no lookup is made).
pub(super) fn reads_scans(rules: &ImageRules) -> bool {
    rules.vulnerabilities.is_some()
        || rules.malicious_files
        || rules.baseline_failures
        || rules.unscanned != UnscannedAction::Allow
}

/// Findings of the scan rules for one container image (`image` as written, at field `path`),
/// each with the most it may do: `Block`, except `unscanned: alert`, which only alerts.
pub(super) fn check(
    rules: &ImageRules,
    image: &str,
    scan: Option<&ScanSummary>,
    path: &str,
) -> Vec<(Finding, Action)> {
    let shown = shown(image);
    let Some(scan) = scan else {
        let action = match rules.unscanned {
            UnscannedAction::Allow => return Vec::new(),
            UnscannedAction::Alert => Action::Alert,
            UnscannedAction::Block => Action::Block,
        };
        let message = format!(
            "image {shown} has no scan result (unscanned: {})",
            rules.unscanned.as_str()
        );
        return vec![(Finding::new("unscanned", path, image, message), action)];
    };
    let mut findings = Vec::new();
    if let Some(rule) = &rules.vulnerabilities
        && let Some((message, ids)) = vulnerability_message(rule, &shown, scan)
    {
        let finding = Finding::new("vulnerabilities", path, image, message).with_ids(ids);
        findings.push((finding, Action::Block));
    }
    let mut push = |rule: &str, message: String| {
        findings.push((Finding::new(rule, path, image, message), Action::Block));
    };
    if rules.malicious_files && !scan.malware().is_empty() {
        let signatures = scan.malware();
        push(
            "maliciousFiles",
            format!(
                "image {shown} has malicious files matching {}: {}",
                counted(signatures.len(), "signature", "signatures"),
                listed(signatures.iter().map(|s| &**s)),
            ),
        );
    }
    if rules.baseline_failures && !scan.baseline_failures().is_empty() {
        let failures = scan.baseline_failures();
        push(
            "baselineFailures",
            format!(
                "image {shown} has {} (misconfigurations or embedded secrets): {}",
                counted(
                    failures.len(),
                    "failed baseline check",
                    "failed baseline checks"
                ),
                listed(failures.iter().map(|s| &**s)),
            ),
        );
    }
    findings
}

/// What the rule finds in `scan`, if anything: the vulnerabilities at or above the threshold
/// (fixable ones only if asked), less the ignored ids, highest severity first; then the ids of
/// `block` the threshold did not already count. The message, and every id it counts.
fn vulnerability_message<'s>(
    rule: &VulnerabilityRule,
    image: &str,
    scan: &'s ScanSummary,
) -> Option<(String, Vec<&'s str>)> {
    let counts = |v: &SummaryVulnerability<'_>| {
        rule.severity
            .is_some_and(|threshold| v.severity >= threshold)
            && (v.fixable || !rule.fixable_only)
            && !rule.ignore.iter().any(|id| id == v.id)
    };
    let mut over: Vec<SummaryVulnerability<'_>> = match rule.severity {
        Some(_) => scan.vulnerabilities().filter(counts).collect(),
        None => Vec::new(),
    };
    over.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    let mut named: Vec<&str> = rule
        .block
        .iter()
        .filter_map(|id| scan.vulnerability(id))
        .filter(|v| !counts(v))
        .map(|v| v.id)
        .collect();
    named.sort_unstable();
    named.dedup();
    if over.is_empty() && named.is_empty() {
        return None;
    }
    let mut message = format!("image {image} has ");
    if let Some(threshold) = rule.severity.filter(|_| !over.is_empty()) {
        let fix = if rule.fixable_only { " with a fix" } else { "" };
        let _ = write!(
            message,
            "{} at or above {threshold}{fix}: {}",
            counted(over.len(), "vulnerability", "vulnerabilities"),
            listed(over.iter().map(|v| v.id)),
        );
        if !named.is_empty() {
            message.push_str("; and ");
        }
    }
    if !named.is_empty() {
        let _ = write!(
            message,
            "{} named in vulnerabilities.block: {}",
            counted(named.len(), "vulnerability", "vulnerabilities"),
            listed(named.iter().copied()),
        );
    }
    let ids = over.iter().map(|v| v.id).chain(named).collect();
    Some((message, ids))
}

/// The image as written, cut to `MAX_SHOWN_IMAGE` characters.
fn shown(image: &str) -> Cow<'_, str> {
    match image.char_indices().nth(MAX_SHOWN_IMAGE) {
        Some((end, _)) => Cow::Owned(format!("{}...", &image[..end])),
        None => Cow::Borrowed(image),
    }
}

/// `1 vulnerability`, `3 vulnerabilities`.
fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The first `LISTED_IDS` ids, then how many more: `A, B, C, D, E and 7 more`.
fn listed<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = ids.len();
    let mut text = String::new();
    for (i, id) in ids.take(LISTED_IDS).enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(id);
    }
    if total > LISTED_IDS {
        let _ = write!(text, " and {} more", total - LISTED_IDS);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Severity;
    use crate::scan::SeverityCounts;

    const D1: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
    const D2: &str = "sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5";

    /// A summary whose only vulnerability is `id` (so tests can tell summaries apart).
    fn mk_summary(id: &str) -> ScanSummary {
        ScanSummary::new(
            SeverityCounts::default(),
            [(id, Severity::High, true)],
            [],
            [],
        )
    }

    fn mk_identity(repository: &str, tags: &[&str], digests: &[&str]) -> ImageIdentity {
        ImageIdentity {
            repository: repository.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            digests: digests.iter().map(|d| (*d).to_owned()).collect(),
            image_id: None,
        }
    }

    /// The id of the summary `image` finds.
    fn found(index: &ScanIndex, image: &str) -> Option<String> {
        let summary = index.lookup(image)?;
        Some(summary.vulnerabilities().next().unwrap().id.to_owned())
    }

    #[test]
    fn digests_are_looked_up_first_whatever_the_repository() {
        let mut index = ScanIndex::default();
        let tagged = mk_identity("docker.io/library/nginx", &["1.25"], &[]);
        index.insert_summary(&tagged, mk_summary("BY-TAG"));
        let pinned = mk_identity("mirror.example.com/nginx", &[], &[D1]);
        index.insert_summary(&pinned, mk_summary("BY-DIGEST"));
        assert_eq!(
            found(&index, &format!("nginx:1.25@{D1}")).as_deref(),
            Some("BY-DIGEST")
        );
        assert_eq!(
            found(&index, &format!("other.io/x@{D1}")).as_deref(),
            Some("BY-DIGEST")
        );
        // An unknown digest never falls back to the tag beside it: the runtime pulls the
        // digest, whatever the tag's report says.
        assert_eq!(found(&index, &format!("nginx:1.25@{D2}")), None);
        assert_eq!(found(&index, "nginx:1.25").as_deref(), Some("BY-TAG"));
        assert_eq!(found(&index, &format!("nginx@{D2}")), None);
    }

    #[test]
    fn tags_match_whatever_the_spelling_and_no_tag_means_latest() {
        let mut index = ScanIndex::default();
        let identity = mk_identity("docker.io/library/nginx", &["1.25", "latest"], &[D1]);
        index.insert_summary(&identity, mk_summary("NGINX"));
        let team = mk_identity("registry.example.com/team/app", &["2.0"], &[]);
        index.insert_summary(&team, mk_summary("APP"));
        for image in [
            "nginx:1.25",
            "docker.io/nginx:1.25",
            "index.docker.io/library/nginx:1.25",
            "docker.io/library/nginx:1.25",
            "nginx",
            "nginx:latest",
        ] {
            assert_eq!(found(&index, image).as_deref(), Some("NGINX"), "{image}");
        }
        assert_eq!(
            found(&index, "Registry.Example.com/team/app:2.0").as_deref(),
            Some("APP")
        );
        for image in [
            "nginx:1.26",
            "user/nginx:1.25",
            "registry.example.com/team/app",
            "Nginx",
        ] {
            assert_eq!(found(&index, image), None, "{image}");
        }
    }

    #[test]
    fn identities_are_normalised_and_later_inserts_win() {
        let mut index = ScanIndex::default();
        assert!(index.is_empty() && index.lookup("nginx").is_none());
        index.insert_summary(&mk_identity("nginx", &["1"], &[]), mk_summary("OLD"));
        index.insert_summary(
            &mk_identity("nginx", &["1", "-bad"], &[]),
            mk_summary("NEW"),
        );
        assert_eq!(
            found(&index, "docker.io/library/nginx:1").as_deref(),
            Some("NEW")
        );
        assert!(!index.is_empty());
    }

    #[test]
    fn removing_a_scan_frees_only_the_keys_it_still_holds() {
        let mut index = ScanIndex::default();
        index.put(
            "a",
            mk_identity("nginx", &["1.25"], &[D1]),
            mk_summary("A"),
            1,
        );
        index.put(
            "b",
            mk_identity("nginx", &["1.25"], &[D2]),
            mk_summary("B"),
            2,
        );
        assert_eq!(found(&index, "nginx:1.25").as_deref(), Some("B"));
        let before = index.clone();
        assert_eq!(index.remove("a").map(|s| s.revision), Some(1));
        assert!(index.remove("a").is_none());
        assert_eq!(found(&index, &format!("nginx@{D1}")), None);
        assert_eq!(found(&index, "nginx:1.25").as_deref(), Some("B"));
        assert_eq!(
            (index.len(), index.get("b").map(|s| s.revision)),
            (1, Some(2))
        );
        // A clone taken before is untouched (copy on write).
        assert_eq!(before.len(), 2);
        assert_eq!(found(&before, &format!("nginx@{D1}")).as_deref(), Some("A"));
        // A put under an existing id replaces the scan and drops its old keys.
        index.put(
            "b",
            mk_identity("nginx", &["1.26"], &[D2]),
            mk_summary("B2"),
            3,
        );
        assert_eq!(found(&index, "nginx:1.25"), None);
        assert_eq!(found(&index, "nginx:1.26").as_deref(), Some("B2"));
        assert_eq!(index.scans().count(), 1);
        index.remove("b");
        assert!(index.is_empty() && index.lookup(&format!("x@{D2}")).is_none());
    }

    #[test]
    fn the_key_buffer_holds_the_longest_reference() {
        let repository = format!("localhost/{}a", "a/".repeat(122));
        let tag = "t".repeat(MAX_TAG);
        let mut index = ScanIndex::default();
        index.insert_summary(&mk_identity(&repository, &[&tag], &[]), mk_summary("LONG"));
        assert_eq!(
            found(&index, &format!("{repository}:{tag}")).as_deref(),
            Some("LONG")
        );
        assert_eq!(
            KeyBuffer::default().join(&repository, &format!("{tag}x")),
            None
        );
    }

    #[test]
    fn lists_name_the_first_ids_and_count_the_rest() {
        let ids = ["A", "B", "C", "D", "E", "F", "G"];
        assert_eq!(listed(ids[..1].iter().copied()), "A");
        assert_eq!(listed(ids[..5].iter().copied()), "A, B, C, D, E");
        assert_eq!(listed(ids.iter().copied()), "A, B, C, D, E and 2 more");
        assert_eq!(counted(1, "file", "files"), "1 file");
        assert_eq!(counted(2, "file", "files"), "2 files");
    }

    #[test]
    fn long_images_are_cut_in_messages() {
        let rules = ImageRules {
            unscanned: UnscannedAction::Block,
            ..ImageRules::default()
        };
        let image = "x".repeat(10_000);
        let [(finding, Action::Block)] = &check(&rules, &image, None, "p")[..] else {
            panic!("expected one blocking finding")
        };
        assert_eq!(finding.value, image);
        assert!(
            finding.message.len() < MAX_SHOWN_IMAGE + 60,
            "{}",
            finding.message
        );
        assert_eq!(shown("nginx:1.25"), "nginx:1.25");
    }
}
