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
use tonic::Status;

/// The message of a parsed report; the server sets id, revision and import time.
pub fn to_proto(scan: &scan::ImageScan) -> ImageScan {
    let counts = scan.counts_by_severity();
    ImageScan {
        id: String::new(),
        image: Some(scan::identity_to_proto(&scan.image)),
        scanner: Some(ScanTool {
            name: scan.scanner.name.clone(),
            version: scan.scanner.version.clone(),
        }),
        scanned_at: scan.scanned_at.clone().unwrap_or_default(),
        os: scan.os.as_ref().map(|os| ScanOs {
            family: os.family.clone(),
            name: os.name.clone(),
        }),
        vulnerabilities: scan
            .vulnerabilities
            .iter()
            .map(|v| ScanVulnerability {
                id: v.id.clone(),
                severity: v.severity.as_str().into(),
                package: v.package.clone(),
                installed_version: v.installed_version.clone(),
                fixed_version: v.fixed_version.clone().unwrap_or_default(),
                status: v.status.clone().unwrap_or_default(),
                cvss_score: v.cvss_score,
                published: v.published.clone().unwrap_or_default(),
            })
            .collect(),
        malicious_files: scan
            .malicious_files
            .iter()
            .map(|m| MaliciousFile {
                path: m.path.clone(),
                signature: m.signature.clone(),
            })
            .collect(),
        baseline_failures: scan
            .baseline_failures
            .iter()
            .map(|b| BaselineFailure {
                id: b.id.clone(),
                severity: b.severity.as_str().into(),
                title: b.title.clone(),
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
    }
}

/// Which scans a `ListImageScans` request selects.
pub struct ScanFilter {
    repository: Option<Glob>,
    min_severity: Option<Severity>,
    has_malware: Option<bool>,
}

impl ScanFilter {
    /// Validates the request's filters, naming the field on error. An exact repository is
    /// normalised the way pod specs are (`nginx` is `docker.io/library/nginx`).
    pub fn new(
        repository: &str,
        min_severity: &str,
        has_malware: Option<bool>,
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
        Ok(Self {
            repository,
            min_severity,
            has_malware,
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
        match self.has_malware {
            Some(wanted) => wanted != scan.malicious_files.is_empty(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let exact = ScanFilter::new("nginx", "", None).unwrap();
        assert!(exact.matches(&nginx) && !exact.matches(&app));
        let glob = ScanFilter::new("registry.example.com/*", "", None).unwrap();
        assert!(!glob.matches(&nginx) && glob.matches(&app));
        let high = ScanFilter::new("", "high", None).unwrap();
        assert!(high.matches(&nginx) && !high.matches(&app));
        assert!(
            !ScanFilter::new("", "critical", None)
                .unwrap()
                .matches(&nginx)
        );
        let malware = ScanFilter::new("", "", Some(true)).unwrap();
        assert!(!malware.matches(&nginx) && malware.matches(&app));
        let err = ScanFilter::new("", "severe", None).err().unwrap();
        assert!(err.message().starts_with("min_severity: "), "{err:?}");
    }
}
