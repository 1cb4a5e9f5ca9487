//! The native scan format, `portcullis-scan/v1`: how scanners without a report format of
//! their own (ClamAV and other malware scanners, in-house baseline checks) feed us. Strict:
//! unknown fields anywhere are rejected, so a typo is an error rather than a silent gap.
//!
//! ```json
//! {
//!   "format": "portcullis-scan/v1",
//!   "image": {
//!     "repository": "registry.example.com/team/app",
//!     "tags": ["1.4.2"],
//!     "digests": ["sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac"]
//!   },
//!   "scanner": {"name": "clamav", "version": "1.3.1"},
//!   "scannedAt": "2024-05-01T12:00:00Z",
//!   "os": {"family": "debian", "name": "12.5"},
//!   "vulnerabilities": [{
//!     "id": "CVE-2024-0727", "severity": "medium", "package": "openssl",
//!     "installedVersion": "3.0.11-1~deb12u2", "fixedVersion": "3.0.13-1~deb12u1",
//!     "status": "fixed", "cvssScore": 5.5, "published": "2024-01-26T09:15:00Z"
//!   }],
//!   "maliciousFiles": [
//!     {"path": "/usr/local/bin/kworker", "signature": "Unix.Coinminer.Generic-7151250-0"}
//!   ],
//!   "baselineFailures": [{
//!     "id": "DS-0002", "severity": "high", "title": "Image user should not be 'root'",
//!     "kind": "misconfiguration"
//!   }]
//! }
//! ```
//!
//! - `format` (required): exactly `portcullis-scan/v1`.
//! - `image`: required unless the importer names the image (an override, which wins).
//!   `repository` (required) is a repository without tag or digest, normalised as pods are
//!   (`alpine` is `docker.io/library/alpine`); `tags` (bare, `1.4.2`) and `digests`
//!   (`sha256:<hex>`) are lists, and together must name at least one tag or digest.
//! - `scanner` (required): `name` (non-empty), `version` (optional).
//! - `scannedAt`, `vulnerabilities[].published`: RFC 3339 date-times, optional.
//! - `os`: optional; `family` and `name` both required when present.
//! - `vulnerabilities[]`: `id`, `severity`, `package`, `installedVersion` required;
//!   `fixedVersion` (present and non-empty = fixable), `status`, `cvssScore` (CVSS v3 base
//!   score, 0 to 10) optional.
//! - `maliciousFiles[]`: `path` and `signature`, both required and non-empty.
//! - `baselineFailures[]`: `id`, `severity` and `kind` (`misconfiguration` or `secret`)
//!   required, `title` optional.
//! - Severities: `critical`, `high`, `medium`, `low`, `unknown`, in any case (`negligible`
//!   counts as low). Any other word is kept as `unknown` and counted in `unknown_severities`.
//! - Lists may be omitted; optional fields may be `null`. Ids are at most 256 bytes.

use serde::Deserialize;

use super::document::{self, Capped, NATIVE_FORMAT};
use super::error::check_id;
use super::identity::{IdentityBuilder, from_override};
use super::severity::{SeverityText, UnknownSeverities};
use super::timestamp::{self, is_rfc3339, not_rfc3339};
use super::{
    BaselineFailure, BaselineKind, ImageIdentity, ImageScan, MaliciousFile, Os, ReportFormat,
    ScanError, Scanner, Vulnerability, VulnerabilityText,
};

/// Reads a native report; `image_override`, when given, names the image instead of `image`.
pub fn parse(bytes: &[u8], image_override: Option<&str>) -> Result<ImageScan, ScanError> {
    let report: Report = document::parse(bytes, ReportFormat::Native)?;
    if report.format != NATIVE_FORMAT {
        return Err(document::mismatch(bytes, ReportFormat::Native).unwrap_or(
            ScanError::WrongTool {
                expected: ReportFormat::Native,
                found: None,
            },
        ));
    }
    let image = match (image_override, report.image) {
        (Some(text), _) => from_override(text, None)?,
        (None, Some(image)) => image_identity(image)?,
        (None, None) => {
            return Err(ScanError::NoImageIdentity {
                artifact: "a native report without \"image\"".to_owned(),
            });
        }
    };
    if report.scanner.name.is_empty() {
        return Err(ScanError::invalid("scanner.name", "empty scanner name"));
    }
    let mut unknown = UnknownSeverities::default();
    let mut vulnerabilities = Vec::with_capacity(report.vulnerabilities.0.len());
    for (i, v) in report.vulnerabilities.0.into_iter().enumerate() {
        let at = |field: &str| format!("vulnerabilities[{i}].{field}");
        check_id(|| at("id"), &v.id)?;
        if let Some(score) = v.cvss_score.filter(|s| !(0.0..=10.0).contains(s)) {
            return Err(ScanError::invalid(
                at("cvssScore"),
                format!("{score} is outside 0 to 10"),
            ));
        }
        if let Some(date) = v.published.as_deref().filter(|d| !is_rfc3339(d)) {
            return Err(ScanError::invalid(at("published"), not_rfc3339(date)));
        }
        let text = VulnerabilityText {
            id: &v.id,
            package: &v.package,
            installed_version: &v.installed_version,
            fixed_version: v.fixed_version.as_deref().unwrap_or_default(),
            status: v.status.as_deref().unwrap_or_default(),
            published: v.published.as_deref().unwrap_or_default(),
        };
        let severity = unknown.resolve(Some(v.severity));
        let vulnerability = Vulnerability::new(text, severity, v.cvss_score)
            .map_err(|e| super::error::too_long(e, format!("vulnerabilities[{i}]")))?;
        vulnerabilities.push(vulnerability);
    }
    let mut malicious_files = Vec::with_capacity(report.malicious_files.0.len());
    for (i, m) in report.malicious_files.0.into_iter().enumerate() {
        if m.path.is_empty() {
            return Err(ScanError::invalid(
                format!("maliciousFiles[{i}].path"),
                "empty path",
            ));
        }
        check_id(|| format!("maliciousFiles[{i}].signature"), &m.signature)?;
        malicious_files.push(MaliciousFile {
            path: m.path,
            signature: m.signature,
        });
    }
    let mut baseline_failures = Vec::with_capacity(report.baseline_failures.0.len());
    for (i, b) in report.baseline_failures.0.into_iter().enumerate() {
        check_id(|| format!("baselineFailures[{i}].id"), &b.id)?;
        baseline_failures.push(BaselineFailure {
            id: b.id,
            severity: unknown.resolve(Some(b.severity)),
            title: b.title.unwrap_or_default(),
            kind: match b.kind {
                Kind::Misconfiguration => BaselineKind::Misconfiguration,
                Kind::Secret => BaselineKind::Secret,
            },
        });
    }
    Ok(ImageScan {
        image,
        scanner: Scanner {
            name: report.scanner.name,
            version: report.scanner.version.unwrap_or_default(),
        },
        scanned_at: timestamp::optional("scannedAt", report.scanned_at)?,
        os: report.os.map(|os| Os {
            family: os.family,
            name: os.name,
        }),
        vulnerabilities,
        malicious_files,
        baseline_failures,
        unknown_severities: unknown.count(),
    })
}

fn image_identity(image: Image) -> Result<ImageIdentity, ScanError> {
    let mut builder = IdentityBuilder::default();
    builder.repository(|| "image.repository".to_owned(), &image.repository)?;
    for (i, tag) in image.tags.iter().enumerate() {
        builder.tag(|| format!("image.tags[{i}]"), tag)?;
    }
    for (i, digest) in image.digests.iter().enumerate() {
        builder.digest(|| format!("image.digests[{i}]"), digest)?;
    }
    if image.tags.is_empty() && image.digests.is_empty() {
        let reason = "at least one tag or digest is required: a scan applies to one image";
        return Err(ScanError::invalid("image", reason));
    }
    Ok(builder.finish().expect("the repository was set above"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Report {
    format: String,
    image: Option<Image>,
    scanner: NativeScanner,
    scanned_at: Option<String>,
    os: Option<NativeOs>,
    #[serde(default)]
    vulnerabilities: Capped<NativeVulnerability>,
    #[serde(default)]
    malicious_files: Capped<NativeMaliciousFile>,
    #[serde(default)]
    baseline_failures: Capped<NativeBaselineFailure>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    repository: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    digests: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeScanner {
    name: String,
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeOs {
    family: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NativeVulnerability {
    id: String,
    severity: SeverityText,
    package: String,
    installed_version: String,
    fixed_version: Option<String>,
    status: Option<String>,
    cvss_score: Option<f32>,
    published: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeMaliciousFile {
    path: String,
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeBaselineFailure {
    id: String,
    severity: SeverityText,
    title: Option<String>,
    kind: Kind,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Misconfiguration,
    Secret,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::Severity;

    const DIGEST: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";

    /// The example of the module documentation.
    fn mk_report() -> Value {
        json!({
            "format": "portcullis-scan/v1",
            "image": {"repository": "registry.example.com/team/app", "tags": ["1.4.2"], "digests": [DIGEST]},
            "scanner": {"name": "clamav", "version": "1.3.1"},
            "scannedAt": "2024-05-01T12:00:00Z",
            "os": {"family": "debian", "name": "12.5"},
            "vulnerabilities": [{
                "id": "CVE-2024-0727", "severity": "medium", "package": "openssl",
                "installedVersion": "3.0.11-1~deb12u2", "fixedVersion": "3.0.13-1~deb12u1",
                "status": "fixed", "cvssScore": 5.5, "published": "2024-01-26T09:15:00Z"
            }],
            "maliciousFiles": [{"path": "/usr/local/bin/kworker", "signature": "Unix.Coinminer.Generic-7151250-0"}],
            "baselineFailures": [{
                "id": "DS-0002", "severity": "high", "title": "Image user should not be 'root'",
                "kind": "misconfiguration"
            }]
        })
    }

    fn parse_value(report: &Value, image: Option<&str>) -> Result<ImageScan, ScanError> {
        parse(report.to_string().as_bytes(), image)
    }

    #[test]
    fn the_documented_example_reads_fully() {
        let scan = parse_value(&mk_report(), None).unwrap();
        assert_eq!(
            scan.image,
            ImageIdentity {
                repository: "registry.example.com/team/app".into(),
                tags: vec!["1.4.2".into()],
                digests: vec![DIGEST.into()],
                image_id: None,
            }
        );
        assert_eq!(
            scan.scanner,
            Scanner {
                name: "clamav".into(),
                version: "1.3.1".into()
            }
        );
        assert_eq!(scan.vulnerabilities[0].severity, Severity::Medium);
        assert_eq!(scan.vulnerabilities[0].cvss_score, Some(5.5));
        assert_eq!(
            scan.malicious_files[0].signature,
            "Unix.Coinminer.Generic-7151250-0"
        );
        assert_eq!(
            scan.baseline_failures[0].kind,
            BaselineKind::Misconfiguration
        );
        assert_eq!(
            scan.summary().malware(),
            [Box::from("Unix.Coinminer.Generic-7151250-0")]
        );
    }

    #[test]
    fn a_minimal_malware_report_reads() {
        let report = json!({
            "format": "portcullis-scan/v1",
            "image": {"repository": "alpine", "tags": ["3.19"]},
            "scanner": {"name": "clamav"},
            "maliciousFiles": [{"path": "/tmp/eicar", "signature": "Eicar-Signature"}],
        });
        let scan = parse_value(&report, None).unwrap();
        assert_eq!(scan.image.repository, "docker.io/library/alpine");
        assert_eq!(
            (scan.vulnerabilities.len(), scan.malicious_files.len()),
            (0, 1)
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let mut report = mk_report();
        report["vulnerabilities"][0]["cvss"] = json!(5.5);
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("vulnerabilities[0].cvss: unknown field `cvss`, expected one of"),
            "{error}"
        );
        let mut report = mk_report();
        report["scanDate"] = json!("2024-05-01T12:00:00Z");
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("scanDate: unknown field `scanDate`"),
            "{error}"
        );
    }

    #[test]
    fn unknown_severities_are_kept_and_counted() {
        let mut report = mk_report();
        report["vulnerabilities"][0]["severity"] = json!("severe");
        report["baselineFailures"][0]["severity"] = json!("CRITICAL");
        let scan = parse_value(&report, None).unwrap();
        assert_eq!(scan.vulnerabilities[0].severity, Severity::Unknown);
        assert_eq!(scan.baseline_failures[0].severity, Severity::Critical);
        assert_eq!(scan.unknown_severities, 1);
    }

    #[test]
    fn the_image_is_required_and_checked() {
        let mut report = mk_report();
        report.as_object_mut().unwrap().remove("image");
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            matches!(error, ScanError::NoImageIdentity { .. }),
            "{error:?}"
        );
        assert_eq!(
            parse_value(&report, Some("app:1")).unwrap().image.tags,
            ["1"]
        );
        for (image, expected) in [
            (
                json!({"repository": "app"}),
                "image: at least one tag or digest is required",
            ),
            (
                json!({"repository": "app:1", "tags": ["1"]}),
                "image.repository: expected a repository",
            ),
            (
                json!({"repository": "app", "tags": ["a b"]}),
                "image.tags[0]: invalid image reference",
            ),
            (
                json!({"repository": "app", "digests": ["sha256:x"]}),
                "image.digests[0]: invalid image",
            ),
        ] {
            let mut report = mk_report();
            report["image"] = image;
            let error = parse_value(&report, None).unwrap_err();
            assert!(error.to_string().starts_with(expected), "{error}");
        }
    }

    #[test]
    fn bad_values_name_their_path() {
        let cases = [
            (
                "/vulnerabilities/0/cvssScore",
                json!(10.5),
                "vulnerabilities[0].cvssScore: 10.5 is outside",
            ),
            (
                "/vulnerabilities/0/published",
                json!("2024"),
                "vulnerabilities[0].published: \"2024\" is not",
            ),
            (
                "/maliciousFiles/0/path",
                json!(""),
                "maliciousFiles[0].path: empty path",
            ),
            (
                "/baselineFailures/0/kind",
                json!("vuln"),
                "baselineFailures[0].kind: unknown variant",
            ),
            (
                "/scanner/name",
                json!(""),
                "scanner.name: empty scanner name",
            ),
            (
                "/scannedAt",
                json!("now"),
                "scannedAt: \"now\" is not an RFC 3339",
            ),
        ];
        for (pointer, value, expected) in cases {
            let mut report = mk_report();
            *report.pointer_mut(pointer).unwrap() = value;
            let error = parse_value(&report, None).unwrap_err();
            assert!(
                error.to_string().starts_with(expected),
                "{pointer}: {error}"
            );
        }
    }

    #[test]
    fn other_versions_and_tools_are_named() {
        let mut report = mk_report();
        report["format"] = json!("portcullis-scan/v2");
        report["newField"] = json!(true);
        let error = parse_value(&report, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unsupported Portcullis native report: format is \"portcullis-scan/v2\"; \
             only \"portcullis-scan/v1\" is supported"
        );
        let trivy = json!({"SchemaVersion": 2, "ArtifactName": "x", "Results": []});
        let error = parse_value(&trivy, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "this looks like a Trivy report, not a Portcullis native report"
        );
        let error = parse_value(&json!({"image": "alpine"}), None).unwrap_err();
        assert!(
            matches!(error, ScanError::WrongTool { found: None, .. }),
            "{error:?}"
        );
    }
}
