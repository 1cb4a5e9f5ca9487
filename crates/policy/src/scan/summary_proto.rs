//! A `ScanSummary` on the wire (`portcullis.v1.ImageSummary`): how the control plane sends each
//! image's summary to agents and how agents cache it. Severity and the fixable flag travel as
//! one byte per vulnerability, next to the sorted ids.

use portcullis_proto::v1 as proto;

use super::{ImageIdentity, ImageScan, ScanSummary, SeverityCounts, VulnerabilityDictionary};
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
            vulnerability_refs: Vec::new(),
        }
    }

    /// Reads a summary from the wire, checking what a peer could get wrong. Its
    /// vulnerabilities must be spelled out (`vulnerability_ids`); a snapshot's summaries may
    /// refer to its dictionary instead (`from_snapshot_proto`).
    pub fn from_proto(message: &proto::ImageSummary) -> Result<(ImageIdentity, Self), String> {
        Self::read_proto(message, None)
    }

    /// Reads a summary of a snapshot, whose vulnerabilities may be numbers in the snapshot's
    /// `dictionary` (the entries of its chunks so far).
    pub fn from_snapshot_proto(
        message: &proto::ImageSummary,
        dictionary: &mut VulnerabilityDictionary,
    ) -> Result<(ImageIdentity, Self), String> {
        Self::read_proto(message, Some(dictionary))
    }

    fn read_proto(
        message: &proto::ImageSummary,
        dictionary: Option<&mut VulnerabilityDictionary>,
    ) -> Result<(ImageIdentity, Self), String> {
        let context = |reason: String| format!("image summary {:?}: {reason}", message.id);
        if message.id.is_empty() {
            return Err(context("empty id".into()));
        }
        let ids = &message.vulnerability_ids;
        let refs = &message.vulnerability_refs;
        let flags = &message.vulnerability_flags;
        let (count, what) = match (ids.is_empty(), refs.is_empty()) {
            (_, true) => (ids.len(), "vulnerability ids"),
            (true, false) => (refs.len(), "vulnerability refs"),
            (false, false) => {
                return Err(context(format!(
                    "both vulnerability ids ({}) and refs ({}); a summary has one or the other",
                    ids.len(),
                    refs.len()
                )));
            }
        };
        if count != flags.len() {
            return Err(context(format!("{count} {what} but {} flags", flags.len())));
        }
        if count > MAX_ENTRIES {
            return Err(context(format!(
                "{count} vulnerabilities; at most {MAX_ENTRIES} are accepted"
            )));
        }
        if let Some(at) = flags
            .iter()
            .position(|&flag| severity_from_rank(flag & !FIXABLE).is_none())
        {
            let which = match ids.get(at) {
                Some(id) => format!("{id:?}"),
                None => format!("ref {}", refs[at]),
            };
            return Err(context(format!(
                "vulnerability {which} has flags {}",
                flags[at]
            )));
        }
        let decode = |flag: u8| {
            (
                severity_from_rank(flag & !FIXABLE).unwrap_or(Severity::Unknown),
                flag & FIXABLE != 0,
            )
        };
        let image = message
            .image
            .as_ref()
            .map(identity_from_proto)
            .ok_or_else(|| context("no image identity".into()))?;
        let counts = message
            .counts
            .as_ref()
            .map(counts_from_proto)
            .unwrap_or_default();
        let malware = message.malware.iter().map(String::as_str);
        let baseline_failures = message.baseline_failures.iter().map(String::as_str);
        if refs.is_empty() {
            let vulnerabilities = ids.iter().zip(flags).map(|(id, &flag)| {
                let (severity, fixable) = decode(flag);
                (id.as_str(), severity, fixable)
            });
            return Ok((
                image,
                Self::new(counts, vulnerabilities, malware, baseline_failures),
            ));
        }
        let Some(dictionary) = dictionary else {
            return Err(context(
                "vulnerability refs outside a snapshot (only a snapshot has a dictionary)".into(),
            ));
        };
        let resolved = dictionary
            .resolve(refs.iter().zip(flags).map(|(&wire, &flag)| {
                let (severity, fixable) = decode(flag);
                (wire, severity, fixable)
            }))
            .map_err(context)?;
        let summary = Self::from_interned(counts, resolved, malware, baseline_failures);
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
    fn snapshot_summaries_with_refs_read_like_ones_with_ids() {
        let summary = ScanSummary::new(
            SeverityCounts([1, 0, 2, 1, 1]),
            [
                ("proto-CVE-2", Severity::Critical, true),
                ("proto-CVE-1", Severity::Medium, false),
                ("proto-GHSA-1", Severity::Unknown, true),
            ],
            ["Eicar"],
            ["DS-0002"],
        );
        let with_ids = summary.to_proto("sha256:aa", &mk_identity(), 7);
        let mut dictionary = VulnerabilityDictionary::default();
        dictionary.extend(["proto-GHSA-1", "proto-CVE-1", "proto-CVE-2"].into_iter());
        let mut with_refs = with_ids.clone();
        with_refs.vulnerability_ids.clear();
        with_refs.vulnerability_refs = vec![1, 2, 0];
        let (image, back) = ScanSummary::from_snapshot_proto(&with_refs, &mut dictionary).unwrap();
        assert_eq!(back, summary);
        assert_eq!(image, mk_identity());
        // Summaries with ids read the same in a snapshot.
        let (_, back) = ScanSummary::from_snapshot_proto(&with_ids, &mut dictionary).unwrap();
        assert_eq!(back, summary);
    }

    #[test]
    fn malformed_refs_are_refused_with_the_reason() {
        let mut dictionary = VulnerabilityDictionary::default();
        dictionary.extend(["proto-CVE-7"].into_iter());
        let good = proto::ImageSummary {
            vulnerability_refs: vec![0],
            vulnerability_flags: vec![3],
            ..ScanSummary::default().to_proto("x", &mk_identity(), 1)
        };
        let mut both = good.clone();
        both.vulnerability_ids.push("proto-CVE-7".into());
        let mut uneven = good.clone();
        uneven.vulnerability_refs.push(0);
        let mut outside = good.clone();
        outside.vulnerability_refs = vec![1];
        let mut bad_flag = good.clone();
        bad_flag.vulnerability_flags = vec![6];
        for (message, expected) in [
            (both, "both vulnerability ids (1) and refs (1)"),
            (uneven, "2 vulnerability refs but 1 flags"),
            (
                outside,
                "vulnerability ref 1 is not in the snapshot's dictionary of 1 ids",
            ),
            (bad_flag, "vulnerability ref 0 has flags 6"),
        ] {
            let error = ScanSummary::from_snapshot_proto(&message, &mut dictionary).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        // Outside a snapshot there is no dictionary to refer to.
        let error = ScanSummary::from_proto(&good).unwrap_err();
        assert!(
            error.contains("vulnerability refs outside a snapshot"),
            "{error}"
        );
        assert!(ScanSummary::from_snapshot_proto(&good, &mut dictionary).is_ok());
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
