//! The scan edge: the domain's normalised `ImageScan` as the `portcullis.v1.ImageScan` message,
//! and the filter of `ListImageScans`. Severities and baseline kinds become lower-case words.

use portcullis_policy::{
    Glob, Severity,
    reference::ImageReference,
    scan::{self, BaselineKind},
};
use portcullis_proto::v1::{
    BaselineFailure, ImageScan, MaliciousFile, ScanOs, ScanTool, ScanVulnerability,
};
use prost::{Message, encoding};
use tonic::Status;

use crate::store::{NewScan, VULNERABILITIES_FIELD};

/// A parsed report as the store takes it; the server sets id, revision and import time. The
/// summary is taken first, then the findings are encoded one at a time: a report of many
/// small findings is never held as a list of messages of owned strings.
pub fn new_scan(scan: scan::ImageScan) -> NewScan {
    let summary = scan.summary_proto("", 0);
    let vulnerability_count = scan.vulnerabilities.len();
    let counts = scan.counts_by_severity();
    let head = ImageScan {
        id: String::new(),
        image: Some(scan::identity_to_proto(&scan.image)),
        scanner: Some(ScanTool {
            name: scan.scanner.name,
            version: scan.scanner.version,
        }),
        scanned_at: scan.scanned_at.unwrap_or_default(),
        os: scan.os.map(|os| ScanOs {
            family: os.family,
            name: os.name,
        }),
        vulnerabilities: Vec::new(),
        malicious_files: scan
            .malicious_files
            .into_iter()
            .map(|m| MaliciousFile {
                path: m.path,
                signature: m.signature,
            })
            .collect(),
        baseline_failures: scan
            .baseline_failures
            .into_iter()
            .map(|b| BaselineFailure {
                id: b.id,
                severity: b.severity.as_str().into(),
                title: b.title,
                kind: match b.kind {
                    BaselineKind::Misconfiguration => "misconfiguration",
                    BaselineKind::Secret => "secret",
                }
                .into(),
            })
            .collect(),
        counts: Some(scan::counts_to_proto(counts)),
        unknown_severities: scan.unknown_severities,
        revision: 0,
        import_time: None,
    };
    // Sized once, exactly, with room for the head the store appends (its id is one of the
    // identity's names, plus a revision and a timestamp): no copy of the list on growth.
    let list_len: usize = scan.vulnerabilities.iter().map(entry_len).sum();
    let mut vulnerabilities = Vec::with_capacity(list_len + 2 * head.encoded_len() + 64);
    for v in &scan.vulnerabilities {
        let message = vulnerability_message(v);
        encoding::message::encode(VULNERABILITIES_FIELD, &message, &mut vulnerabilities);
    }
    NewScan {
        head,
        vulnerabilities,
        vulnerability_count,
        summary,
    }
}

/// The encoded length of `v` as a list entry, computed from its texts without building the
/// message (the sizing pass allocates nothing; a test holds it to prost's own count).
fn entry_len(v: &scan::Vulnerability) -> usize {
    let text = |tag: u32, text: &str| match text.len() {
        0 => 0,
        n => encoding::key_len(tag) + encoding::encoded_len_varint(n as u64) + n,
    };
    let body = text(1, v.id())
        + text(2, v.severity.as_str())
        + text(3, v.package())
        + text(4, v.installed_version())
        + text(5, v.fixed_version().unwrap_or_default())
        + text(6, v.status().unwrap_or_default())
        + v.cvss_score.map_or(0, |_| encoding::key_len(7) + 4)
        + text(8, v.published().unwrap_or_default());
    encoding::key_len(VULNERABILITIES_FIELD) + encoding::encoded_len_varint(body as u64) + body
}

fn vulnerability_message(v: &scan::Vulnerability) -> ScanVulnerability {
    ScanVulnerability {
        id: v.id().into(),
        severity: v.severity.as_str().into(),
        package: v.package().into(),
        installed_version: v.installed_version().into(),
        fixed_version: v.fixed_version().unwrap_or_default().into(),
        status: v.status().unwrap_or_default().into(),
        cvss_score: v.cvss_score,
        published: v.published().unwrap_or_default().into(),
    }
}

/// Which scans a `ListImageScans` request selects.
pub struct ScanFilter {
    repository: Option<Glob>,
    min_severity: Option<Severity>,
    has_malware: Option<bool>,
    vulnerability: Option<String>,
}

/// Longest vulnerability id a filter accepts (real ids are a few dozen characters).
const MAX_VULNERABILITY_ID: usize = 128;

impl ScanFilter {
    /// Validates the request's filters, naming the field on error. An exact repository is
    /// normalised the way pod specs are (`nginx` is `docker.io/library/nginx`).
    pub fn new(
        repository: &str,
        min_severity: &str,
        has_malware: Option<bool>,
        vulnerability: &str,
    ) -> Result<Self, Status> {
        let repository = match repository {
            "" => None,
            text => {
                let glob = Glob::new(text).map_err(|e| {
                    Status::invalid_argument(format!("repository: invalid glob {text:?}: {e}"))
                })?;
                let normalised = glob
                    .is_literal()
                    .then(|| ImageReference::parse(text).ok())
                    .flatten()
                    .filter(|r| r.tag().is_none() && r.digest().is_none());
                match normalised {
                    Some(reference) => Some(
                        Glob::new(reference.repository_path())
                            .map_err(|e| Status::internal(e.to_string()))?,
                    ),
                    None => Some(glob),
                }
            }
        };
        let min_severity = match min_severity {
            "" => None,
            "unknown" => Some(Severity::Unknown),
            name => Some(Severity::from_policy_name(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "min_severity: {name:?} is not one of critical, high, medium, low, unknown"
                ))
            })?),
        };
        let vulnerability = match vulnerability.trim() {
            "" => None,
            id if id.len() > MAX_VULNERABILITY_ID || !id.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(Status::invalid_argument(format!(
                    "vulnerability: {:?} is not a vulnerability id (printable ASCII, at most \
                     {MAX_VULNERABILITY_ID} characters)",
                    id.chars().take(MAX_VULNERABILITY_ID).collect::<String>()
                )));
            }
            id => Some(id.to_owned()),
        };
        Ok(Self {
            repository,
            min_severity,
            has_malware,
            vulnerability,
        })
    }

    /// Whether `scan` passes every filter.
    pub fn matches(&self, scan: &ImageScan) -> bool {
        let repository = scan.image.as_ref().map_or("", |i| i.repository.as_str());
        if let Some(glob) = &self.repository
            && !glob.matches(repository)
        {
            return false;
        }
        if let Some(threshold) = self.min_severity {
            let counts = scan.counts.unwrap_or_default();
            let at_or_above = [
                (Severity::Critical, counts.critical),
                (Severity::High, counts.high),
                (Severity::Medium, counts.medium),
                (Severity::Low, counts.low),
                (Severity::Unknown, counts.unknown),
            ]
            .into_iter()
            .filter(|(severity, _)| *severity >= threshold)
            .any(|(_, n)| n > 0);
            if !at_or_above {
                return false;
            }
        }
        if let Some(wanted) = self.has_malware
            && wanted == scan.malicious_files.is_empty()
        {
            return false;
        }
        match &self.vulnerability {
            Some(id) => scan
                .vulnerabilities
                .iter()
                .any(|v| v.id.eq_ignore_ascii_case(id)),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_sized_as_prost_encodes_it() {
        let long = "x".repeat(300);
        for (fixed, status, cvss, published) in [
            ("", "", None, ""),
            ("1.2.1, 2.1.3", "fixed", Some(7.5), "2024-01-09T17:15:00Z"),
            (long.as_str(), "", Some(0.0), ""),
        ] {
            let text = scan::VulnerabilityText {
                id: "CVE-2024-0727",
                package: "openssl",
                installed_version: "3.1.4-r0",
                fixed_version: fixed,
                status,
                published,
            };
            let v =
                scan::Vulnerability::new(text, portcullis_policy::Severity::High, cvss).unwrap();
            assert_eq!(
                entry_len(&v),
                encoding::message::encoded_len(VULNERABILITIES_FIELD, &vulnerability_message(&v))
            );
        }
    }
    use portcullis_proto::v1::{ImageIdentity, SeverityCounts};

    fn mk_scan(repository: &str, high: u32, malware: bool) -> ImageScan {
        ImageScan {
            image: Some(ImageIdentity {
                repository: repository.into(),
                ..Default::default()
            }),
            counts: Some(SeverityCounts {
                high,
                ..Default::default()
            }),
            malicious_files: if malware {
                vec![MaliciousFile::default()]
            } else {
                vec![]
            },
            ..Default::default()
        }
    }

    #[test]
    fn filters_combine() {
        let nginx = mk_scan("docker.io/library/nginx", 1, false);
        let app = mk_scan("registry.example.com/app", 0, true);
        let exact = ScanFilter::new("nginx", "", None, "").unwrap();
        assert!(exact.matches(&nginx) && !exact.matches(&app));
        let glob = ScanFilter::new("registry.example.com/*", "", None, "").unwrap();
        assert!(!glob.matches(&nginx) && glob.matches(&app));
        let high = ScanFilter::new("", "high", None, "").unwrap();
        assert!(high.matches(&nginx) && !high.matches(&app));
        assert!(
            !ScanFilter::new("", "critical", None, "")
                .unwrap()
                .matches(&nginx)
        );
        let malware = ScanFilter::new("", "", Some(true), "").unwrap();
        assert!(!malware.matches(&nginx) && malware.matches(&app));
        let err = ScanFilter::new("", "severe", None, "").err().unwrap();
        assert!(err.message().starts_with("min_severity: "), "{err:?}");
    }

    #[test]
    fn by_vulnerability_id() {
        let mut log4j = mk_scan("docker.io/library/app", 1, false);
        log4j.vulnerabilities = vec![portcullis_proto::v1::ScanVulnerability {
            id: "CVE-2021-44228".into(),
            ..Default::default()
        }];
        let clean = mk_scan("docker.io/library/nginx", 0, false);
        let filter = ScanFilter::new("", "", None, " cve-2021-44228 ").unwrap();
        assert!(filter.matches(&log4j) && !filter.matches(&clean));
        let other = ScanFilter::new("", "", None, "CVE-2021-4422").unwrap();
        assert!(!other.matches(&log4j), "exact, not a prefix");
        for bad in ["CVE 1".to_owned(), "x".repeat(129), "CVE-\u{7}".to_owned()] {
            let err = ScanFilter::new("", "", None, &bad).err().unwrap();
            assert!(err.message().starts_with("vulnerability: "), "{err:?}");
        }
    }
}
