//! A `ScanSummary` on the wire (`portcullis.v1.ImageSummary`): how the control plane sends each
//! image's summary to agents and how agents cache it. Severity and the fixable flag travel as
//! one byte per vulnerability, next to the sorted ids.

use portcullis_proto::v1 as proto;

use super::{ImageIdentity, ImageScan, ScanSummary, SeverityCounts};
use crate::Severity;

/// The flag bit of a vulnerability with a fixed version.
const FIXABLE: u8 = 8;
/// Longest list the agent accepts in one summary, so a hostile message cannot ask for
/// unbounded memory per image.
const MAX_ENTRIES: usize = 1_000_000;

impl ScanSummary {
    /// The wire form of this summary for the scan `id` of `image`.
    pub fn to_proto(&self, id: &str, image: &ImageIdentity, revision: u64) -> proto::ImageSummary {
        let vulnerabilities = self.vulnerabilities();
        let mut ids = Vec::with_capacity(vulnerabilities.len());
        let mut flags = Vec::with_capacity(vulnerabilities.len());
        for v in vulnerabilities {
            ids.push(v.id.to_owned());
            flags.push(v.severity as u8 | if v.fixable { FIXABLE } else { 0 });
        }
        proto::ImageSummary {
            id: id.to_owned(),
            image: Some(identity_to_proto(image)),
            counts: Some(counts_to_proto(self.counts())),
            vulnerability_ids: ids,
            vulnerability_flags: flags,
            malware: self.malware().iter().map(|s| s.to_string()).collect(),
            baseline_failures: self
                .baseline_failures()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            revision,
        }
    }

    /// Reads a summary from the wire, checking what a peer could get wrong.
    pub fn from_proto(message: &proto::ImageSummary) -> Result<(ImageIdentity, Self), String> {
        let context = |reason: String| format!("image summary {:?}: {reason}", message.id);
        if message.id.is_empty() {
            return Err(context("empty id".into()));
        }
        let ids = &message.vulnerability_ids;
        let flags = &message.vulnerability_flags;
        if ids.len() != flags.len() {
            return Err(context(format!(
                "{} vulnerability ids but {} flags",
                ids.len(),
                flags.len()
            )));
        }
        if ids.len() > MAX_ENTRIES {
            return Err(context(format!(
                "{} vulnerabilities; at most {MAX_ENTRIES} are accepted",
                ids.len()
            )));
        }
        let mut vulnerabilities = Vec::with_capacity(ids.len());
        for (id, &flag) in ids.iter().zip(flags) {
            let severity = severity_from_rank(flag & !FIXABLE)
                .ok_or_else(|| context(format!("vulnerability {id:?} has flags {flag}")))?;
            vulnerabilities.push((id.as_str(), severity, flag & FIXABLE != 0));
        }
        let image = message
            .image
            .as_ref()
            .map(identity_from_proto)
            .ok_or_else(|| context("no image identity".into()))?;
        let summary = Self::new(
            message
                .counts
                .as_ref()
                .map(counts_from_proto)
                .unwrap_or_default(),
            vulnerabilities,
            message.malware.iter().map(String::as_str),
            message.baseline_failures.iter().map(String::as_str),
        );
        Ok((image, summary))
    }
}

/// The summary message of a stored scan message (as the control plane keeps scans).
pub fn summary_of_stored(scan: &proto::ImageScan) -> proto::ImageSummary {
    let fixable = |v: &proto::ScanVulnerability| !v.fixed_version.is_empty();
    let summary = ScanSummary::new(
        scan.counts
            .as_ref()
            .map(counts_from_proto)
            .unwrap_or_default(),
        scan.vulnerabilities
            .iter()
            .map(|v| (v.id.as_str(), severity_from_name(&v.severity), fixable(v))),
        scan.malicious_files.iter().map(|m| m.signature.as_str()),
        scan.baseline_failures.iter().map(|b| b.id.as_str()),
    );
    let image = scan
        .image
        .as_ref()
        .map(identity_from_proto)
        .unwrap_or_default();
    summary.to_proto(&scan.id, &image, scan.revision)
}

impl ImageScan {
    /// The summary message of this parsed scan under `id`.
    pub fn summary_proto(&self, id: &str, revision: u64) -> proto::ImageSummary {
        self.summary().to_proto(id, &self.image, revision)
    }
}

fn severity_from_rank(rank: u8) -> Option<Severity> {
    [
        Severity::Unknown,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ]
    .get(usize::from(rank))
    .copied()
}

/// A stored severity word; anything else counts as `unknown`, as at import.
fn severity_from_name(name: &str) -> Severity {
    Severity::from_policy_name(name).unwrap_or(Severity::Unknown)
}

pub fn identity_to_proto(image: &ImageIdentity) -> proto::ImageIdentity {
    proto::ImageIdentity {
        repository: image.repository.clone(),
        tags: image.tags.clone(),
        digests: image.digests.clone(),
        image_id: image.image_id.clone().unwrap_or_default(),
    }
}

pub fn identity_from_proto(image: &proto::ImageIdentity) -> ImageIdentity {
    ImageIdentity {
        repository: image.repository.clone(),
        tags: image.tags.clone(),
        digests: image.digests.clone(),
        image_id: Some(image.image_id.clone()).filter(|i| !i.is_empty()),
    }
}

/// Counts per severity as the wire names them.
pub fn counts_to_proto(counts: SeverityCounts) -> proto::SeverityCounts {
    proto::SeverityCounts {
        critical: counts[Severity::Critical],
        high: counts[Severity::High],
        medium: counts[Severity::Medium],
        low: counts[Severity::Low],
        unknown: counts[Severity::Unknown],
    }
}

fn counts_from_proto(counts: &proto::SeverityCounts) -> SeverityCounts {
    SeverityCounts([
        counts.unknown,
        counts.low,
        counts.medium,
        counts.high,
        counts.critical,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_identity() -> ImageIdentity {
        ImageIdentity {
            repository: "docker.io/library/nginx".into(),
            tags: vec!["1.25".into()],
            digests: vec!["sha256:aa".into()],
            image_id: None,
        }
    }

    #[test]
    fn summaries_round_trip_through_the_wire_form() {
        let summary = ScanSummary::new(
            SeverityCounts([1, 0, 2, 1, 1]),
            [
                ("CVE-2", Severity::Critical, true),
                ("CVE-1", Severity::Medium, false),
                ("GHSA-1", Severity::Unknown, true),
            ],
            ["Eicar"],
            ["DS-0002"],
        );
        let message = summary.to_proto("sha256:aa", &mk_identity(), 7);
        assert_eq!(message.vulnerability_ids, ["CVE-1", "CVE-2", "GHSA-1"]);
        assert_eq!(message.vulnerability_flags, [2, 4 | 8, 8]);
        assert_eq!(message.revision, 7);
        let (image, back) = ScanSummary::from_proto(&message).unwrap();
        assert_eq!(back, summary);
        assert_eq!(image, mk_identity());
    }

    #[test]
    fn malformed_summaries_are_refused_with_the_reason() {
        let good = ScanSummary::default().to_proto("x", &mk_identity(), 1);
        let mut uneven = good.clone();
        uneven.vulnerability_ids.push("CVE-1".into());
        let mut bad_flag = uneven.clone();
        bad_flag.vulnerability_flags.push(5);
        let mut no_id = good.clone();
        no_id.id.clear();
        let mut no_image = good;
        no_image.image = None;
        for (message, expected) in [
            (uneven, "1 vulnerability ids but 0 flags"),
            (bad_flag, "\"CVE-1\" has flags 5"),
            (no_id, "empty id"),
            (no_image, "no image identity"),
        ] {
            let error = ScanSummary::from_proto(&message).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn stored_scans_summarise_like_parsed_ones() {
        let stored = proto::ImageScan {
            id: "sha256:aa".into(),
            image: Some(identity_to_proto(&mk_identity())),
            vulnerabilities: vec![
                proto::ScanVulnerability {
                    id: "CVE-1".into(),
                    severity: "high".into(),
                    fixed_version: "1.2".into(),
                    ..Default::default()
                },
                proto::ScanVulnerability {
                    id: "CVE-1".into(),
                    severity: "weird".into(),
                    ..Default::default()
                },
            ],
            malicious_files: vec![proto::MaliciousFile {
                path: "/x".into(),
                signature: "Eicar".into(),
            }],
            revision: 3,
            ..Default::default()
        };
        let message = summary_of_stored(&stored);
        assert_eq!(message.vulnerability_ids, ["CVE-1"]);
        assert_eq!(message.vulnerability_flags, [3 | 8]);
        assert_eq!(message.malware, ["Eicar"]);
        assert_eq!((message.id.as_str(), message.revision), ("sha256:aa", 3));
    }
}
