//! Grype JSON reports (`grype <image> -o json`). Read: `matches[]` (the vulnerability's id,
//! severity, fix versions and state, CVSS v3 base scores; the artifact's name and version),
//! `source.target` of an `image` source (`repoDigests`, `tags`, `manifestDigest`, `imageID`,
//! and `userInput` when it pins a tag or digest), `descriptor` and `distro`. Grype's
//! `Negligible` severity counts as Low. A directory or file source names no image: it needs
//! an override.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor, value::MapAccessDeserializer};

use super::document::{self, Capped};
use super::error::check_id;
use super::error::{keyword, quoted};
use super::identity::{IdentityBuilder, from_override};
use super::severity::{SeverityText, UnknownSeverities};
use super::timestamp;
use super::{ImageScan, Os, ReportFormat, ScanError, Scanner, Vulnerability, VulnerabilityText};

/// `userInput` prefixes naming where Grype read the image from, followed by the image name.
const NAME_SCHEMES: [&str; 4] = ["docker:", "podman:", "registry:", "containerd:"];
/// `userInput` prefixes followed by a path (`docker-archive:app.tar` would otherwise parse
/// as the image `docker-archive` with tag `app.tar`).
const PATH_SCHEMES: [&str; 7] = [
    "docker-archive:",
    "oci-archive:",
    "oci-dir:",
    "singularity:",
    "dir:",
    "file:",
    "sbom:",
];

/// Reads a Grype report; `image_override`, when given, names the image instead of the report.
pub fn parse(bytes: &[u8], image_override: Option<&str>) -> Result<ImageScan, ScanError> {
    let report: Report = document::parse(bytes, ReportFormat::Grype)?;
    let shaped = report.descriptor.is_some() || report.source.is_some();
    let Some(Capped(matches)) = report.matches.filter(|_| shaped) else {
        return Err(document::mismatch(bytes, ReportFormat::Grype).unwrap_or(
            ScanError::WrongTool {
                expected: ReportFormat::Grype,
                found: None,
            },
        ));
    };
    let source = report.source.unwrap_or_default();
    let target = match source.target {
        Some(Target::Image(target)) if source.kind == "image" => Some(target),
        _ => None,
    };
    let image = match (image_override, target) {
        (Some(text), target) => from_override(text, target.and_then(|t| t.image_id))?,
        (None, Some(target)) => image_identity(target)?,
        (None, None) => {
            return Err(ScanError::NoImageIdentity {
                artifact: format!("a {} source", keyword(&source.kind)),
            });
        }
    };
    let descriptor = report.descriptor.unwrap_or_default();
    let mut unknown = UnknownSeverities::default();
    let mut vulnerabilities = Vec::with_capacity(matches.len());
    for (i, found) in matches.into_iter().enumerate() {
        let (v, artifact) = (found.vulnerability, found.artifact);
        check_id(|| format!("matches[{i}].vulnerability.id"), &v.id)?;
        let fix = v.fix.unwrap_or_default();
        let versions = fix.versions.unwrap_or_default();
        let fixed = versions.join(", ");
        let text = VulnerabilityText {
            id: &v.id,
            package: &artifact.name,
            installed_version: &artifact.version,
            fixed_version: &fixed,
            status: fix.state.as_deref().unwrap_or_default(),
            published: "",
        };
        let cvss_score = v
            .cvss
            .into_iter()
            .flatten()
            .filter_map(v3_score)
            .reduce(f32::max);
        let vulnerability = Vulnerability::new(text, unknown.resolve(v.severity), cvss_score)
            .map_err(|e| super::error::too_long(e, format!("matches[{i}]")))?;
        vulnerabilities.push(vulnerability);
    }
    Ok(ImageScan {
        image,
        scanner: Scanner {
            name: descriptor.name.unwrap_or_else(|| "grype".to_owned()),
            version: descriptor.version.unwrap_or_default(),
        },
        scanned_at: timestamp::optional("descriptor.timestamp", descriptor.timestamp)?,
        os: report.distro.filter(|d| !d.name.is_empty()).map(|d| Os {
            family: d.name,
            name: d.version,
        }),
        vulnerabilities,
        malicious_files: Vec::new(),
        baseline_failures: Vec::new(),
        unknown_severities: unknown.count(),
    })
}

fn image_identity(target: ImageTarget) -> Result<super::ImageIdentity, ScanError> {
    let mut builder = IdentityBuilder::default();
    for (i, text) in target.repo_digests.iter().flatten().enumerate() {
        builder.reference(|| format!("source.target.repoDigests[{i}]"), text)?;
    }
    for (i, text) in target.tags.iter().flatten().enumerate() {
        builder.reference(|| format!("source.target.tags[{i}]"), text)?;
    }
    let user_input = target.user_input.unwrap_or_default();
    if !PATH_SCHEMES
        .iter()
        .any(|scheme| user_input.starts_with(scheme))
    {
        let name = NAME_SCHEMES
            .iter()
            .find_map(|scheme| user_input.strip_prefix(scheme))
            .unwrap_or(&user_input);
        builder.fallback_name(name);
    }
    if let Some(digest) = target.manifest_digest.filter(|d| !d.is_empty()) {
        builder.digest(|| "source.target.manifestDigest".to_owned(), &digest)?;
    }
    builder.image_id(target.image_id);
    builder.finish().ok_or_else(|| ScanError::NoImageIdentity {
        artifact: format!("an image {} named by no tag", quoted(&user_input)),
    })
}

/// A CVSS v3 base score; v2 and v4 scores are on other scales and are left out.
fn v3_score(cvss: Cvss) -> Option<f32> {
    cvss.version
        .is_some_and(|v| v.starts_with('3'))
        .then_some(cvss.metrics?.base_score?)
}

#[derive(Deserialize)]
struct Report {
    matches: Option<Capped<Match>>,
    source: Option<Source>,
    descriptor: Option<Descriptor>,
    distro: Option<Distro>,
}

#[derive(Deserialize)]
struct Match {
    vulnerability: GrypeVulnerability,
    artifact: Artifact,
}

#[derive(Deserialize)]
struct GrypeVulnerability {
    id: String,
    severity: Option<SeverityText>,
    fix: Option<Fix>,
    cvss: Option<Vec<Cvss>>,
}

#[derive(Default, Deserialize)]
struct Fix {
    versions: Option<Vec<String>>,
    state: Option<String>,
}

#[derive(Deserialize)]
struct Cvss {
    version: Option<String>,
    metrics: Option<Metrics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metrics {
    #[serde(default, deserialize_with = "score")]
    base_score: Option<f32>,
}

#[derive(Deserialize)]
struct Artifact {
    name: String,
    #[serde(default)]
    version: String,
}

#[derive(Default, Deserialize)]
struct Source {
    #[serde(rename = "type", default)]
    kind: String,
    target: Option<Target>,
}

/// An image source's target is an object; directory and file sources give a path string.
enum Target {
    Image(ImageTarget),
    Other,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageTarget {
    user_input: Option<String>,
    #[serde(rename = "imageID")]
    image_id: Option<String>,
    manifest_digest: Option<String>,
    tags: Option<Vec<String>>,
    repo_digests: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
struct Descriptor {
    name: Option<String>,
    version: Option<String>,
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct Distro {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: String,
}

fn score<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<Option<f32>, D::Error> {
    match Option::<f32>::deserialize(deserializer)? {
        Some(s) if !(0.0..=10.0).contains(&s) => Err(de::Error::custom(format!(
            "CVSS base score {s} is outside 0 to 10"
        ))),
        s => Ok(s),
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;
        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = Target;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an image target object or a path")
            }

            fn visit_str<E: de::Error>(self, _path: &str) -> Result<Target, E> {
                Ok(Target::Other)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Target, A::Error> {
                ImageTarget::deserialize(MapAccessDeserializer::new(map)).map(Target::Image)
            }
        }
        deserializer.deserialize_any(TargetVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::Severity;

    const DIGEST: &str = "sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5";

    /// An image report with these matches.
    fn mk_report(matches: Value) -> Value {
        json!({
            "matches": matches,
            "source": {"type": "image", "target": {
                "userInput": "docker:nginx:1.25",
                "imageID": "sha256:ab5608d634db2716a297adbfa6a5dd5d8f8f5a7d0cab73649ea7fbb8c8da544f",
                "manifestDigest": DIGEST,
                "tags": [],
                "repoDigests": [],
            }},
            "distro": {"name": "debian", "version": "12"},
            "descriptor": {"name": "grype", "version": "0.74.0", "timestamp": "2024-05-01T12:00:00.123+02:00"},
        })
    }

    fn mk_match(id: &str, severity: &str, fixed: &[&str]) -> Value {
        json!({
            "vulnerability": {
                "id": id, "severity": severity,
                "fix": {"versions": fixed, "state": if fixed.is_empty() { "not-fixed" } else { "fixed" }},
                "cvss": [
                    {"version": "2.0", "metrics": {"baseScore": 9.9}},
                    {"version": "3.1", "metrics": {"baseScore": 7.5}},
                    {"version": "3.0", "metrics": {"baseScore": 8.1}},
                ],
            },
            "artifact": {"name": "libssl3", "version": "3.0.11-1"},
        })
    }

    fn parse_value(report: &Value, image: Option<&str>) -> Result<ImageScan, ScanError> {
        parse(report.to_string().as_bytes(), image)
    }

    #[test]
    fn an_image_report_reads_identity_and_matches() {
        let report = mk_report(json!([
            mk_match("CVE-2024-1", "Negligible", &["3.0.13-1", "3.1.5-1"]),
            mk_match("GHSA-xxxx", "High", &[]),
        ]));
        let scan = parse_value(&report, None).unwrap();
        assert_eq!(scan.image.repository, "docker.io/library/nginx");
        assert_eq!(scan.image.tags, ["1.25"]);
        assert_eq!(scan.image.digests, [DIGEST]);
        assert_eq!(scan.scanner.version, "0.74.0");
        assert_eq!(scan.os.as_ref().map(|o| o.family.as_str()), Some("debian"));
        let v = &scan.vulnerabilities[0];
        assert_eq!((v.severity, v.cvss_score), (Severity::Low, Some(8.1)));
        assert_eq!(v.fixed_version(), Some("3.0.13-1, 3.1.5-1"));
        assert_eq!(
            (v.package(), v.installed_version()),
            ("libssl3", "3.0.11-1")
        );
        let v = &scan.vulnerabilities[1];
        assert_eq!((v.is_fixable(), v.status()), (false, Some("not-fixed")));
        assert_eq!(scan.unknown_severities, 0);
    }

    #[test]
    fn repo_digests_and_tags_beat_user_input() {
        let mut report = mk_report(json!([]));
        report["source"]["target"]["repoDigests"] = json!([format!("ghcr.io/org/app@{DIGEST}")]);
        report["source"]["target"]["tags"] = json!(["ghcr.io/org/app:2"]);
        let scan = parse_value(&report, None).unwrap();
        assert_eq!(scan.image.repository, "ghcr.io/org/app");
        assert_eq!(
            (scan.image.tags, scan.image.digests),
            (vec!["2".to_owned()], vec![DIGEST.to_owned()])
        );
    }

    #[test]
    fn sources_naming_no_image_need_an_override() {
        let mut report = mk_report(json!([]));
        report["source"]["target"]["userInput"] = json!("docker-archive:app.tar");
        // The manifest digest alone identifies the image (what a pod pinning it pulls).
        let scan = parse_value(&report, None).unwrap();
        assert_eq!(
            (scan.image.repository.as_str(), &scan.image.digests[..]),
            ("", &[DIGEST.to_owned()][..])
        );
        // Without it, nothing does.
        report["source"]["target"]
            .as_object_mut()
            .unwrap()
            .remove("manifestDigest");
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            matches!(error, ScanError::NoImageIdentity { .. }),
            "{error:?}"
        );
        report["source"] = json!({"type": "directory", "target": "/src"});
        let error = parse_value(&report, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no image identity: the report is for a directory source; name the image it describes"
        );
        let scan = parse_value(&report, Some("app@".to_owned() + DIGEST).as_deref()).unwrap();
        assert_eq!(scan.image.digests, [DIGEST]);
    }

    #[test]
    fn unknown_severities_are_kept_and_counted() {
        let mut unrated = mk_match("CVE-3", "x", &[]);
        unrated["vulnerability"]
            .as_object_mut()
            .unwrap()
            .remove("severity");
        let report = mk_report(json!([
            mk_match("CVE-1", "Moderate", &[]),
            mk_match("CVE-2", "Unknown", &[]),
            unrated
        ]));
        let scan = parse_value(&report, None).unwrap();
        assert!(
            scan.vulnerabilities
                .iter()
                .all(|v| v.severity == Severity::Unknown)
        );
        assert_eq!(scan.unknown_severities, 2);
    }

    #[test]
    fn other_documents_are_named() {
        let trivy = json!({"SchemaVersion": 2, "ArtifactName": "alpine", "Results": []});
        let error = parse_value(&trivy, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "this looks like a Trivy report, not a Grype report"
        );
        let error = parse_value(&json!({"matches": []}), None).unwrap_err();
        assert!(
            matches!(error, ScanError::WrongTool { found: None, .. }),
            "{error:?}"
        );
        let error = parse(b"matches: []", None).unwrap_err();
        assert!(
            matches!(
                error,
                ScanError::NotJson {
                    line: 1,
                    column: 1,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn bad_fields_name_their_path() {
        let mut bad = mk_match("CVE-1", "Low", &[]);
        bad["vulnerability"]["cvss"][1]["metrics"]["baseScore"] = json!(-1);
        let error = parse_value(
            &mk_report(json!([mk_match("CVE-0", "Low", &[]), bad])),
            None,
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with(
                "matches[1].vulnerability.cvss[1].metrics.baseScore: CVSS base score -1"
            ),
            "{error}"
        );
        let mut report = mk_report(json!([]));
        report["source"]["target"]["manifestDigest"] = json!("sha256:nothex");
        let error = parse_value(&report, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("source.target.manifestDigest: invalid image reference"),
            "{error}"
        );
    }
}
