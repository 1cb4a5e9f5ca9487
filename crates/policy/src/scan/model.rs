//! The normalised scan result of one image, whatever tool produced it: what the control plane
//! stores and the policy engine reads (through `ScanSummary`). Every report format converts to
//! exactly this; nothing here depends on a tool's vocabulary except the raw `status` text.

use std::fmt;
use std::ops::Index;

use super::ScanSummary;
use crate::Severity;

/// Longest vulnerability, rule or signature id accepted (CVE, GHSA and vendor ids are far
/// shorter); bounds what a summary held for every image costs.
pub const MAX_ID_LEN: usize = 256;

/// One scanned image and everything the scanner found in it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageScan {
    pub image: ImageIdentity,
    pub scanner: Scanner,
    /// RFC 3339, as the scanner wrote it (checked for shape).
    pub scanned_at: Option<String>,
    pub os: Option<Os>,
    /// One entry per (vulnerability, package) as the scanner reported it: the same CVE in two
    /// packages appears twice, so counts match the scanner's own totals.
    pub vulnerabilities: Vec<Vulnerability>,
    pub malicious_files: Vec<MaliciousFile>,
    pub baseline_failures: Vec<BaselineFailure>,
    /// Severities that were missing or not recognised; those findings are kept as `Unknown`,
    /// and this count lets an operator see that a scanner speaks a dialect we do not.
    pub unknown_severities: u32,
}

/// Which image a scan describes. Pods match by digest when they pin one (digests name
/// content, so they are the preferred identity); tags are mutable and only a fallback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageIdentity {
    /// Normalised `registry/path` (`docker.io/library/alpine`), as `ImageReference` spells it.
    pub repository: String,
    /// Bare tags (`3.19`) of `repository`, without duplicates.
    pub tags: Vec<String>,
    /// Manifest (or index) digests, `sha256:<hex>`, without duplicates; what a pod spec pins.
    pub digests: Vec<String>,
    /// The image configuration digest (`docker images` ID) when the scanner gave one. It is
    /// not what pod specs reference, so it is kept for display and never matched.
    pub image_id: Option<String>,
}

/// The tool that produced the report, for operators judging the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanner {
    pub name: String,
    /// Empty when the report does not say.
    pub version: String,
}

/// The image's operating system as the scanner detected it (`alpine`, `3.10.2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Os {
    pub family: String,
    pub name: String,
}

/// One vulnerability in one package. Its six texts share one allocation: a report may list
/// 100,000 of these, and as six owned strings each (160 bytes of struct and six small heap
/// blocks) they cost several times the report's own JSON.
#[derive(Clone, PartialEq)]
pub struct Vulnerability {
    /// Id, package, installed version, fixed version, status and published date, in that order.
    text: Box<str>,
    /// Where each of the first five texts ends in `text`; the last one ends with it.
    ends: [u32; 5],
    pub severity: Severity,
    /// Highest CVSS v3 base score the report gives, 0 to 10.
    pub cvss_score: Option<f32>,
}

/// The texts of one vulnerability, to build a `Vulnerability` from.
#[derive(Clone, Copy, Debug, Default)]
pub struct VulnerabilityText<'a> {
    /// `CVE-…`, `GHSA-…` or a vendor id; never empty.
    pub id: &'a str,
    pub package: &'a str,
    pub installed_version: &'a str,
    /// The version(s) that fix it, as the scanner wrote them (`1.2.1, 2.1.3`); empty for none.
    pub fixed_version: &'a str,
    /// The scanner's own fix status word (`fixed`, `affected`, `will_not_fix`, `not-fixed`),
    /// kept verbatim: vocabularies differ between tools. Empty when not given.
    pub status: &'a str,
    /// RFC 3339; empty when not given.
    pub published: &'a str,
}

/// The texts of one vulnerability add up to more than 4 GiB.
#[derive(Debug)]
pub struct TextTooLong;

impl Vulnerability {
    pub fn new(
        text: VulnerabilityText<'_>,
        severity: Severity,
        cvss_score: Option<f32>,
    ) -> Result<Self, TextTooLong> {
        let parts = [
            text.id,
            text.package,
            text.installed_version,
            text.fixed_version,
            text.status,
            text.published,
        ];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if u32::try_from(total).is_err() {
            return Err(TextTooLong);
        }
        let mut joined = String::with_capacity(total);
        let mut ends = [0u32; 5];
        for (i, part) in parts.iter().enumerate() {
            joined.push_str(part);
            if let Some(end) = ends.get_mut(i) {
                // Fits: the total does.
                *end = joined.len() as u32;
            }
        }
        Ok(Self {
            text: joined.into_boxed_str(),
            ends,
            severity,
            cvss_score,
        })
    }

    fn part(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            i => self.ends[i - 1] as usize,
        };
        let end = self.ends.get(i).map_or(self.text.len(), |&e| e as usize);
        &self.text[start..end]
    }

    fn optional(&self, i: usize) -> Option<&str> {
        Some(self.part(i)).filter(|p| !p.is_empty())
    }

    /// `CVE-…`, `GHSA-…` or a vendor id; never empty.
    pub fn id(&self) -> &str {
        self.part(0)
    }

    pub fn package(&self) -> &str {
        self.part(1)
    }

    pub fn installed_version(&self) -> &str {
        self.part(2)
    }

    /// The version(s) that fix it, as the scanner wrote them (`1.2.1, 2.1.3`).
    pub fn fixed_version(&self) -> Option<&str> {
        self.optional(3)
    }

    /// The scanner's own fix status word, verbatim.
    pub fn status(&self) -> Option<&str> {
        self.optional(4)
    }

    /// RFC 3339.
    pub fn published(&self) -> Option<&str> {
        self.optional(5)
    }

    /// A fix exists when the scanner names a fixed version: that is what an operator can
    /// upgrade to, and what `fixable_only` policies count.
    pub fn is_fixable(&self) -> bool {
        self.fixed_version().is_some()
    }
}

impl fmt::Debug for Vulnerability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vulnerability")
            .field("id", &self.id())
            .field("severity", &self.severity)
            .field("package", &self.package())
            .field("installed_version", &self.installed_version())
            .field("fixed_version", &self.fixed_version())
            .field("status", &self.status())
            .field("cvss_score", &self.cvss_score)
            .field("published", &self.published())
            .finish()
    }
}

/// A file a malware scanner (ClamAV and the like) flagged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaliciousFile {
    pub path: String,
    /// The signature that matched (`Unix.Trojan.Mirai-7100807-0`): what operators look up.
    pub signature: String,
}

/// A failed image baseline check: a misconfiguration (FAIL) or an embedded secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaselineFailure {
    /// The check or rule id (`DS-0002`, `aws-access-key-id`).
    pub id: String,
    pub severity: Severity,
    pub title: String,
    pub kind: BaselineKind,
}

/// Policies treat both kinds alike; the kind tells an operator where to look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaselineKind {
    Misconfiguration,
    Secret,
}

/// Finding counts indexed by `Severity as usize` (Unknown, Low, Medium, High, Critical).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeverityCounts(pub [u32; 5]);

impl SeverityCounts {
    pub fn add(&mut self, severity: Severity) {
        let slot = &mut self.0[severity as usize];
        *slot = slot.saturating_add(1);
    }

    /// All findings, every severity.
    pub fn total(&self) -> u32 {
        self.0.iter().fold(0, |sum, n| sum.saturating_add(*n))
    }

    /// Findings a `severity >= threshold` policy would count.
    pub fn at_or_above(&self, threshold: Severity) -> u32 {
        self.0[threshold as usize..]
            .iter()
            .fold(0, |sum, n| sum.saturating_add(*n))
    }
}

impl Index<Severity> for SeverityCounts {
    type Output = u32;

    fn index(&self, severity: Severity) -> &u32 {
        &self.0[severity as usize]
    }
}

impl FromIterator<Severity> for SeverityCounts {
    fn from_iter<I: IntoIterator<Item = Severity>>(severities: I) -> Self {
        let mut counts = Self::default();
        severities.into_iter().for_each(|s| counts.add(s));
        counts
    }
}

impl ImageScan {
    /// Vulnerabilities per severity, one per (vulnerability, package) entry, as scanners
    /// total them in their own output.
    pub fn counts_by_severity(&self) -> SeverityCounts {
        self.vulnerabilities.iter().map(|v| v.severity).collect()
    }

    /// The compact form the agents hold per image (see `ScanSummary`).
    pub fn summary(&self) -> ScanSummary {
        ScanSummary::new(
            self.counts_by_severity(),
            self.vulnerabilities
                .iter()
                .map(|v| (v.id(), v.severity, v.is_fixable())),
            self.malicious_files.iter().map(|m| m.signature.as_str()),
            self.baseline_failures.iter().map(|b| b.id.as_str()),
        )
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A vulnerability with the fields tests vary.
    pub fn mk_vuln(id: &str, severity: Severity, fixed: Option<&str>) -> Vulnerability {
        let text = VulnerabilityText {
            id,
            package: "pkg",
            installed_version: "1.0",
            fixed_version: fixed.unwrap_or_default(),
            ..VulnerabilityText::default()
        };
        Vulnerability::new(text, severity, None).unwrap()
    }

    #[test]
    fn texts_are_read_back_as_given() {
        let text = VulnerabilityText {
            id: "CVE-2024-0727",
            package: "openssl",
            installed_version: "3.1.4-r0",
            fixed_version: "3.1.4-r1",
            status: "",
            published: "2024-01-09T17:15:00Z",
        };
        let v = Vulnerability::new(text, Severity::High, Some(7.5)).unwrap();
        assert_eq!(
            (v.id(), v.package(), v.installed_version()),
            ("CVE-2024-0727", "openssl", "3.1.4-r0")
        );
        assert_eq!(v.fixed_version(), Some("3.1.4-r1"));
        assert_eq!(v.status(), None);
        assert_eq!(v.published(), Some("2024-01-09T17:15:00Z"));
        // Multi-byte texts keep their boundaries.
        let text = VulnerabilityText {
            id: "CVE-é",
            package: "ü",
            status: "ñ",
            ..VulnerabilityText::default()
        };
        let v = Vulnerability::new(text, Severity::Low, None).unwrap();
        assert_eq!((v.id(), v.package(), v.status()), ("CVE-é", "ü", Some("ñ")));
        assert_eq!((v.installed_version(), v.published()), ("", None));
    }

    #[test]
    fn fixable_means_a_fixed_version_is_named() {
        assert!(mk_vuln("CVE-1", Severity::Low, Some("1.1")).is_fixable());
        assert!(!mk_vuln("CVE-1", Severity::Low, Some("")).is_fixable());
        assert!(!mk_vuln("CVE-1", Severity::Low, None).is_fixable());
    }

    #[test]
    fn counts_index_by_severity() {
        let counts: SeverityCounts = [Severity::High, Severity::High, Severity::Unknown]
            .into_iter()
            .collect();
        assert_eq!(counts, SeverityCounts([1, 0, 0, 2, 0]));
        assert_eq!(counts[Severity::High], 2);
        assert_eq!(counts.total(), 3);
        assert_eq!(counts.at_or_above(Severity::Medium), 2);
        assert_eq!(counts.at_or_above(Severity::Unknown), 3);
    }
}
