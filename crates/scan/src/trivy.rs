//! Trivy JSON reports (`trivy image --format json`), `SchemaVersion` 2 only. Read: the image
//! identity (`Metadata.RepoDigests`, then `RepoTags`, then `ArtifactName` of a
//! `container_image` when it pins a tag or digest), `Metadata.OS`, `CreatedAt`, and from
//! every `Results[]` entry its `Vulnerabilities`, failed (`FAIL`) `Misconfigurations` and
//! `Secrets`. A vulnerability's `cvss_score` is the highest `V3Score` any vendor in `CVSS`
//! gives. Filesystem, repository and archive scans name no image: they need an override.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use super::document::{self, Capped, TRIVY_SCHEMA};
use super::error::check_id;
use super::error::{keyword, quoted};
use super::identity::{IdentityBuilder, from_override};
use super::severity::{SeverityText, UnknownSeverities};
use super::timestamp::{self, is_rfc3339, not_rfc3339};
use super::{
    BaselineFailure, BaselineKind, ImageScan, Os, ReportFormat, ScanError, Scanner, Vulnerability,
    VulnerabilityText,
};
use crate::Severity;

/// Reads a Trivy report; `image_override`, when given, names the image instead of the report.
pub fn parse(bytes: &[u8], image_override: Option<&str>) -> Result<ImageScan, ScanError> {
    let report: Report = document::parse(bytes, ReportFormat::Trivy)?;
    if report.schema_version != Some(TRIVY_SCHEMA) {
        return Err(document::mismatch(bytes, ReportFormat::Trivy).unwrap_or(
            ScanError::WrongTool {
                expected: ReportFormat::Trivy,
                found: None,
            },
        ));
    }
    let metadata = report.metadata.unwrap_or_default();
    let image = match image_override {
        Some(text) => from_override(text, metadata.image_id)?,
        None => {
            let mut builder = IdentityBuilder::default();
            for (i, text) in metadata.repo_digests.iter().flatten().enumerate() {
                builder.reference(|| format!("Metadata.RepoDigests[{i}]"), text)?;
            }
            for (i, text) in metadata.repo_tags.iter().flatten().enumerate() {
                builder.reference(|| format!("Metadata.RepoTags[{i}]"), text)?;
            }
            let kind = report.artifact_type.as_deref().unwrap_or("");
            let name = report.artifact_name.as_deref().unwrap_or("");
            if kind == "container_image" {
                builder.fallback_name(name);
            }
            builder.image_id(metadata.image_id);
            builder.finish().ok_or_else(|| ScanError::NoImageIdentity {
                artifact: match kind {
                    "" => format!("an artifact {}", quoted(name)),
                    "container_image" => format!("an image {} named by no tag", quoted(name)),
                    kind => format!("a {} artifact {}", keyword(kind), quoted(name)),
                },
            })?
        }
    };
    let scanned_at = timestamp::optional("CreatedAt", report.created_at)?;
    let mut unknown = UnknownSeverities::default();
    let mut vulnerabilities = Vec::new();
    let mut baseline_failures = Vec::new();
    for (r, result) in report.results.into_iter().flatten().enumerate() {
        let at = |list: &str, i: usize, field: &str| format!("Results[{r}].{list}[{i}].{field}");
        let found = result.vulnerabilities.unwrap_or_default().0;
        vulnerabilities.reserve(found.len());
        for (i, v) in found.into_iter().enumerate() {
            let TrivyVulnerability {
                mut vulnerability,
                severity,
            } = v;
            check_id(
                || at("Vulnerabilities", i, "VulnerabilityID"),
                vulnerability.id(),
            )?;
            if let Some(date) = vulnerability.published().filter(|d| !is_rfc3339(d)) {
                let path = at("Vulnerabilities", i, "PublishedDate");
                return Err(ScanError::invalid(path, not_rfc3339(date)));
            }
            vulnerability.severity = unknown.resolve(severity);
            vulnerabilities.push(vulnerability);
        }
        let misconfigurations = result.misconfigurations.unwrap_or_default().0;
        for (i, m) in misconfigurations.into_iter().enumerate() {
            if !m.status.eq_ignore_ascii_case("FAIL") {
                continue;
            }
            let id = if m.id.is_empty() { m.avd_id } else { m.id };
            check_id(|| at("Misconfigurations", i, "ID"), &id)?;
            baseline_failures.push(BaselineFailure {
                id,
                severity: unknown.resolve(m.severity),
                title: m.title,
                kind: BaselineKind::Misconfiguration,
            });
        }
        for (i, s) in result.secrets.unwrap_or_default().0.into_iter().enumerate() {
            check_id(|| at("Secrets", i, "RuleID"), &s.rule_id)?;
            baseline_failures.push(BaselineFailure {
                id: s.rule_id,
                severity: unknown.resolve(s.severity),
                title: s.title,
                kind: BaselineKind::Secret,
            });
        }
    }
    Ok(ImageScan {
        image,
        scanner: Scanner {
            name: "trivy".to_owned(),
            version: report.trivy.and_then(|t| t.version).unwrap_or_default(),
        },
        scanned_at,
        os: metadata.os.filter(|os| !os.family.is_empty()).map(|os| Os {
            family: os.family,
            name: os.name,
        }),
        vulnerabilities,
        malicious_files: Vec::new(),
        baseline_failures,
        unknown_severities: unknown.count(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Report {
    schema_version: Option<u64>,
    trivy: Option<Tool>,
    created_at: Option<String>,
    artifact_name: Option<String>,
    artifact_type: Option<String>,
    metadata: Option<Metadata>,
    results: Option<Vec<TrivyResult>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tool {
    version: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Metadata {
    #[serde(rename = "OS")]
    os: Option<MetadataOs>,
    #[serde(rename = "ImageID")]
    image_id: Option<String>,
    repo_tags: Option<Vec<String>>,
    repo_digests: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MetadataOs {
    #[serde(default)]
    family: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TrivyResult {
    vulnerabilities: Option<Capped<TrivyVulnerability>>,
    misconfigurations: Option<Capped<Misconfiguration>>,
    secrets: Option<Capped<Secret>>,
}

/// One entry of `Vulnerabilities`, compact as soon as it is read (see `Vulnerability`): the
/// list of a report is never held as owned strings per field. Severity is resolved, and the
/// id and date checked, with the entry's path afterwards.
struct TrivyVulnerability {
    vulnerability: Vulnerability,
    severity: Option<SeverityText>,
}

/// The fields read of an entry, borrowed from the report where JSON escapes allow.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawVulnerability<'a> {
    #[serde(rename = "VulnerabilityID", borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    pkg_name: Cow<'a, str>,
    #[serde(default, borrow)]
    installed_version: Cow<'a, str>,
    #[serde(borrow)]
    fixed_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    severity: Option<SeverityText>,
    #[serde(rename = "CVSS")]
    cvss: Option<HighestV3Score>,
    #[serde(borrow)]
    published_date: Option<Cow<'a, str>>,
}

impl<'de> Deserialize<'de> for TrivyVulnerability {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawVulnerability::deserialize(deserializer)?;
        let text = VulnerabilityText {
            id: &raw.id,
            package: &raw.pkg_name,
            installed_version: &raw.installed_version,
            fixed_version: raw.fixed_version.as_deref().unwrap_or_default(),
            status: raw.status.as_deref().unwrap_or_default(),
            published: raw.published_date.as_deref().unwrap_or_default(),
        };
        let vulnerability = Vulnerability::new(text, Severity::Unknown, raw.cvss.and_then(|c| c.0))
            .map_err(|_| de::Error::custom("its texts add up to more than 4 GiB"))?;
        Ok(Self {
            vulnerability,
            severity: raw.severity,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Misconfiguration {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "AVDID", default)]
    avd_id: String,
    #[serde(default)]
    title: String,
    severity: Option<SeverityText>,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Secret {
    #[serde(rename = "RuleID")]
    rule_id: String,
    #[serde(default)]
    title: String,
    severity: Option<SeverityText>,
}

/// The highest `V3Score` of a `CVSS` map keyed by vendor, read without keeping the map.
struct HighestV3Score(Option<f32>);

#[derive(Deserialize)]
struct VendorScore {
    #[serde(rename = "V3Score")]
    v3_score: Option<f32>,
}

impl<'de> Deserialize<'de> for HighestV3Score {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Vendors;
        impl<'de> Visitor<'de> for Vendors {
            type Value = HighestV3Score;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of CVSS scores by vendor")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut highest: Option<f32> = None;
                while let Some((IgnoredAny, vendor)) =
                    map.next_entry::<IgnoredAny, VendorScore>()?
                {
                    if let Some(score) = vendor.v3_score {
                        if !(0.0..=10.0).contains(&score) {
                            let reason = format!("V3Score {score} is outside 0 to 10");
                            return Err(de::Error::custom(reason));
                        }
                        highest = Some(highest.map_or(score, |h| h.max(score)));
                    }
                }
                Ok(HighestV3Score(highest))
            }
        }
        deserializer.deserialize_map(Vendors)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::Severity;

    const DIGEST: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";

    /// A container-image report with these results.
    fn mk_report(results: Value) -> Value {
        json!({
            "SchemaVersion": 2,
            "Trivy": {"Version": "0.50.0"},
            "CreatedAt": "2024-05-01T12:00:00Z",
            "ArtifactName": "alpine:3.19",
            "ArtifactType": "container_image",
            "Metadata": {
                "OS": {"Family": "alpine", "Name": "3.19.1"},
                "ImageID": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                "RepoTags": ["alpine:3.19", "registry.example.com/mirror/alpine:3.19"],
                "RepoDigests": [format!("alpine@{DIGEST}")],
            },
            "Results": results,
        })
    }

    fn mk_vuln(id: &str, severity: &str) -> Value {
        json!({
            "VulnerabilityID": id, "PkgName": "openssl", "InstalledVersion": "3.1.4-r0",
            "FixedVersion": "3.1.4-r1", "Status": "fixed", "Severity": severity,
            "CVSS": {"nvd": {"V2Score": 9.3, "V3Score": 7.5}, "redhat": {"V3Score": 8.1}},
            "PublishedDate": "2024-01-09T17:15:00Z",
        })
    }

    fn parse_value(report: &Value, image: Option<&str>) -> Result<ImageScan, ScanError> {
        parse(report.to_string().as_bytes(), image)
    }

    #[test]
    fn escaped_texts_are_read_unescaped() {
        // Unescaped texts are borrowed from the report, escaped ones decoded: both read alike.
        let report = r#"{"SchemaVersion": 2, "ArtifactName": "alpine:3.19",
            "ArtifactType": "container_image", "Results": [{"Target": "alpine",
            "Vulnerabilities": [{"VulnerabilityID": "CVE-2024-0727", "PkgName": "lib\"ssl\u00e9",
            "InstalledVersion": "3.1\/4", "FixedVersion": "", "Severity": "LOW"}]}]}"#;
        let scan = parse(report.as_bytes(), None).unwrap();
        let v = &scan.vulnerabilities[0];
        assert_eq!(v.id(), "CVE-2024-0727");
        assert_eq!(v.package(), "lib\"ssl\u{e9}");
        assert_eq!(v.installed_version(), "3.1/4");
        assert_eq!(
            (v.fixed_version(), v.status(), v.published()),
            (None, None, None)
        );
        assert_eq!(v.severity, Severity::Low);
    }

    #[test]
    fn a_container_report_reads_identity_findings_and_scores() {
        let report = mk_report(json!([
            {"Target": "alpine", "Vulnerabilities": [mk_vuln("CVE-2024-0727", "MEDIUM")]},
            {"Target": "Dockerfile", "Misconfigurations": [
                {"ID": "DS002", "AVDID": "AVD-DS-0002", "Title": "root user", "Severity": "HIGH", "Status": "FAIL"},
                {"ID": "DS001", "Title": "latest tag", "Severity": "MEDIUM", "Status": "PASS"},
            ]},
            {"Target": "app/.env", "Secrets": [{"RuleID": "github-pat", "Title": "GitHub PAT", "Severity": "CRITICAL"}]},
            {"Target": "Java", "Vulnerabilities": null},
        ]));
        let scan = parse_value(&report, None).unwrap();
        assert_eq!(scan.image.repository, "docker.io/library/alpine");
        assert_eq!(scan.image.tags, ["3.19"]);
        assert_eq!(scan.image.digests, [DIGEST]);
        assert!(scan.image.image_id.is_some());
        assert_eq!(
            scan.scanner,
            Scanner {
                name: "trivy".into(),
                version: "0.50.0".into()
            }
        );
        assert_eq!(scan.scanned_at.as_deref(), Some("2024-05-01T12:00:00Z"));
        assert_eq!(scan.os.as_ref().map(|o| o.name.as_str()), Some("3.19.1"));
        let v = &scan.vulnerabilities[0];
        assert_eq!(
            (v.severity, v.cvss_score, v.is_fixable()),
            (Severity::Medium, Some(8.1), true)
        );
        let failures: Vec<_> = scan
            .baseline_failures
            .iter()
            .map(|b| (b.id.as_str(), b.kind))
            .collect();
        assert_eq!(
            failures,
            [
                ("DS002", BaselineKind::Misconfiguration),
                ("github-pat", BaselineKind::Secret)
            ]
        );
        assert_eq!(scan.unknown_severities, 0);
    }

    #[test]
    fn the_override_wins() {
        let report = mk_report(json!([]));
        let scan = parse_value(&report, Some("registry.example.com/team/app:1.4")).unwrap();
        assert_eq!(scan.image.repository, "registry.example.com/team/app");
        assert_eq!(
            (scan.image.tags, scan.image.digests),
            (vec!["1.4".to_owned()], vec![])
        );
    }

    #[test]
    fn a_report_naming_no_image_needs_an_override() {
        let mut report = mk_report(json!([]));
        report["ArtifactType"] = json!("filesystem");
        report["ArtifactName"] = json!("/src/app");
        report.as_object_mut().unwrap().remove("Metadata");
        let error = parse_value(&report, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no image identity: the report is for a filesystem artifact \"/src/app\"; \
             name the image it describes"
        );
        assert!(parse_value(&report, Some("app:1")).is_ok());
        // An archive scan: ArtifactName is a path, not a reference.
        report["ArtifactType"] = json!("container_image");
        report["ArtifactName"] = json!("images/app.tar");
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            matches!(error, ScanError::NoImageIdentity { .. }),
            "{error:?}"
        );
        report["ArtifactName"] = json!("ghcr.io/org/app:2.0");
        assert_eq!(parse_value(&report, None).unwrap().image.tags, ["2.0"]);
    }

    #[test]
    fn unknown_severities_are_kept_and_counted() {
        let report = mk_report(json!([{"Vulnerabilities": [
            mk_vuln("CVE-1", "IMPORTANT"), mk_vuln("CVE-2", "unknown"), mk_vuln("CVE-3", "high"),
        ], "Secrets": [{"RuleID": "key", "Severity": "SEVERE"}]}]));
        let scan = parse_value(&report, None).unwrap();
        let severities: Vec<_> = scan.vulnerabilities.iter().map(|v| v.severity).collect();
        assert_eq!(
            severities,
            [Severity::Unknown, Severity::Unknown, Severity::High]
        );
        assert_eq!(scan.baseline_failures[0].severity, Severity::Unknown);
        assert_eq!(scan.unknown_severities, 2);
    }

    #[test]
    fn only_schema_version_2_is_read() {
        for (version, shown) in [(json!(1), "1"), (json!(3), "3"), (json!("2"), "\"2\"")] {
            let mut report = mk_report(json!([]));
            report["SchemaVersion"] = version;
            let error = parse_value(&report, None).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("unsupported Trivy report: SchemaVersion is {shown}; only 2 is supported")
            );
        }
        // A shape that no longer fits is still reported as the version problem.
        let mut report = mk_report(json!({"not": "a list"}));
        report["SchemaVersion"] = json!(3);
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            matches!(error, ScanError::UnsupportedSchema { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn other_documents_are_named() {
        let not_json = parse(b"{\"SchemaVersion\": 2,", None).unwrap_err();
        assert!(
            matches!(not_json, ScanError::NotJson { line: 1, .. }),
            "{not_json:?}"
        );
        let grype = json!({"matches": [], "source": {"type": "image"}, "descriptor": {}});
        let error = parse_value(&grype, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "this looks like a Grype report, not a Trivy report"
        );
        let error = parse_value(&json!({"kind": "Pod"}), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "this does not look like a Trivy report: expected a JSON object with \
             \"SchemaVersion\": 2, \"ArtifactName\" and \"Results\""
        );
        let native = json!({"format": "portcullis-scan/v1", "scanner": {}});
        let error = parse_value(&native, None).unwrap_err();
        assert!(matches!(
            error,
            ScanError::WrongTool {
                found: Some(ReportFormat::Native),
                ..
            }
        ));
    }

    #[test]
    fn bad_fields_name_their_path() {
        let mut vuln = mk_vuln("CVE-1", "LOW");
        vuln["CVSS"]["nvd"]["V3Score"] = json!(12.0);
        let error =
            parse_value(&mk_report(json!([{"Vulnerabilities": [vuln]}])), None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Results[0].Vulnerabilities[0].CVSS")
                && error.to_string().contains("V3Score 12 is outside 0 to 10"),
            "{error}"
        );
        let mut vuln = mk_vuln("CVE-1", "LOW");
        vuln["PkgName"] = json!(42);
        let error =
            parse_value(&mk_report(json!([{"Vulnerabilities": [vuln]}])), None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Results[0].Vulnerabilities[0].PkgName: invalid type"),
            "{error}"
        );
        let mut vuln = mk_vuln("", "LOW");
        vuln["PublishedDate"] = json!("yesterday");
        let error =
            parse_value(&mk_report(json!([{}, {"Vulnerabilities": [vuln]}])), None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Results[1].Vulnerabilities[0].VulnerabilityID: empty id"
        );
        let mut report = mk_report(json!([]));
        report["Metadata"]["RepoTags"] = json!(["Alpine:3"]);
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Metadata.RepoTags[0]: invalid image reference"),
            "{error}"
        );
        report["CreatedAt"] = json!("May 1st");
        let error = parse_value(&report, Some("alpine:3")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "CreatedAt: \"May 1st\" is not an RFC 3339 date-time"
        );
    }
}
