//! Every shared scanner sample (`tests/scans/`, real Trivy and Grype output) imports, with
//! per-severity counts that match both an independent count of the raw JSON and totals
//! pinned here; plus the rejections an operator meets most: another tool's report, a
//! report naming no image, an oversized report.

use std::fs;
use std::path::{Path, PathBuf};

use portcullis_policy::Severity;
use portcullis_policy::scan::{BaselineKind, ImageScan, SeverityCounts};
use portcullis_scan::{ReportFormat, ScanError, detect_format, parse_report};
use serde_json::Value;

const LIMIT: usize = 1024 * 1024;
/// For samples that name no image: Dockerfile and secret scans of a repository, Grype's
/// `unknown` source and its placeholder `userInput` without tags or digests.
const OVERRIDE: &str = "registry.example.com/samples/app:1.0";

/// Counts per severity: Unknown, Low, Medium, High, Critical.
type Counts = [u32; 5];

/// File, the override it needs, then pinned counts of vulnerabilities and of baseline
/// failures.
#[rustfmt::skip]
const SAMPLES: &[(&str, Option<&str>, Counts, Counts)] = &[
    ("trivy/alpine-310.json", None, [0, 0, 4, 0, 0], [0; 5]),
    ("trivy/amazon-2.json", None, [0, 1, 1, 0, 0], [0; 5]),
    ("trivy/centos-7.json", None, [0, 2, 1, 0, 0], [0; 5]),
    ("trivy/debian-buster.json", None, [0, 1, 0, 0, 1], [0; 5]),
    ("trivy/distroless-base.json", None, [0, 2, 2, 0, 0], [0; 5]),
    ("trivy/dockerfile.json", Some(OVERRIDE), [0; 5], [0, 0, 0, 1, 0]),
    ("trivy/secrets.json", Some(OVERRIDE), [0; 5], [0, 0, 0, 1, 1]),
    ("trivy/spring4shell-jre11.json", None, [0, 0, 0, 0, 1], [0; 5]),
    ("trivy/ubuntu-1804-ignore-unfixed.json", None, [0, 0, 4, 0, 0], [0; 5]),
    ("grype/empty.json", Some(OVERRIDE), [0; 5], [0; 5]),
    // Identified by its manifest digest alone.
    ("grype/image.json", None, [0, 1, 0, 0, 1], [0; 5]),
];

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scans")
}

fn read(sample: &str) -> Vec<u8> {
    fs::read(samples_dir().join(sample)).unwrap_or_else(|e| panic!("{sample}: {e}"))
}

fn format_of(sample: &str) -> ReportFormat {
    let tool = sample.split('/').next().unwrap();
    ReportFormat::from_name(tool).unwrap()
}

fn import(sample: &str, image: Option<&str>) -> ImageScan {
    parse_report(format_of(sample), &read(sample), image, LIMIT)
        .unwrap_or_else(|e| panic!("{sample}: {e}"))
}

/// Severity counts straight from the raw JSON, without the parser under test.
fn raw_counts(sample: &str) -> (SeverityCounts, SeverityCounts) {
    let json: Value = serde_json::from_slice(&read(sample)).unwrap();
    let mut vulnerabilities = SeverityCounts::default();
    let mut baseline = SeverityCounts::default();
    let add = |counts: &mut SeverityCounts, word: &Value| {
        let index = match word.as_str().unwrap_or("").to_ascii_uppercase().as_str() {
            "CRITICAL" => 4,
            "HIGH" => 3,
            "MEDIUM" => 2,
            "LOW" | "NEGLIGIBLE" => 1,
            _ => 0,
        };
        counts.0[index] += 1;
    };
    let list = |v: &Value, key: &str| v[key].as_array().cloned().unwrap_or_default();
    match format_of(sample) {
        ReportFormat::Trivy => {
            for result in list(&json, "Results") {
                for v in list(&result, "Vulnerabilities") {
                    add(&mut vulnerabilities, &v["Severity"]);
                }
                for m in list(&result, "Misconfigurations") {
                    if m["Status"] == "FAIL" {
                        add(&mut baseline, &m["Severity"]);
                    }
                }
                for s in list(&result, "Secrets") {
                    add(&mut baseline, &s["Severity"]);
                }
            }
        }
        ReportFormat::Grype => {
            for m in list(&json, "matches") {
                add(&mut vulnerabilities, &m["vulnerability"]["severity"]);
            }
        }
        ReportFormat::Native => unreachable!("no native samples"),
    }
    (vulnerabilities, baseline)
}

fn baseline_counts(scan: &ImageScan) -> SeverityCounts {
    scan.baseline_failures.iter().map(|b| b.severity).collect()
}

#[test]
fn every_sample_is_listed() {
    let mut on_disk = Vec::new();
    for tool in ["trivy", "grype"] {
        for entry in fs::read_dir(samples_dir().join(tool)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".json") {
                on_disk.push(format!("{tool}/{name}"));
            }
        }
    }
    on_disk.sort();
    let mut listed: Vec<_> = SAMPLES.iter().map(|s| s.0.to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}

#[test]
fn every_sample_imports_with_the_counts_of_its_raw_json() {
    for &(sample, image, pinned, pinned_baseline) in SAMPLES {
        let scan = import(sample, image);
        let (raw, raw_baseline) = raw_counts(sample);
        assert_eq!(scan.counts_by_severity(), raw, "{sample}");
        assert_eq!(baseline_counts(&scan), raw_baseline, "{sample}");
        assert_eq!(
            scan.counts_by_severity(),
            SeverityCounts(pinned),
            "{sample}"
        );
        assert_eq!(
            baseline_counts(&scan),
            SeverityCounts(pinned_baseline),
            "{sample}"
        );
        assert_eq!(
            scan.summary().counts(),
            scan.counts_by_severity(),
            "{sample}"
        );
        assert_eq!(scan.unknown_severities, 0, "{sample}");
        assert_eq!(
            detect_format(&read(sample)),
            Some(format_of(sample)),
            "{sample}"
        );
    }
}

#[test]
fn samples_naming_no_image_need_the_override() {
    for &(sample, image, ..) in SAMPLES {
        let result = parse_report(format_of(sample), &read(sample), None, LIMIT);
        match image {
            Some(_) => assert!(
                matches!(result, Err(ScanError::NoImageIdentity { .. })),
                "{sample}: {result:?}"
            ),
            None => assert!(result.is_ok(), "{sample}: {result:?}"),
        }
    }
    let scan = import("trivy/dockerfile.json", Some(OVERRIDE));
    assert_eq!(scan.image.repository, "registry.example.com/samples/app");
    assert_eq!(scan.image.tags, ["1.0"]);
    assert_eq!(scan.baseline_failures[0].id, "DS-0002");
    assert_eq!(
        scan.baseline_failures[0].kind,
        BaselineKind::Misconfiguration
    );
}

#[test]
fn trivy_samples_keep_identity_os_and_fixability() {
    let scan = import("trivy/alpine-310.json", None);
    assert_eq!(
        scan.image.repository,
        "ghcr.io/aquasecurity/trivy-test-images"
    );
    assert_eq!(scan.image.tags, ["alpine-310"]);
    assert!(scan.image.digests.is_empty());
    assert_eq!(
        scan.image.image_id.as_deref(),
        Some("sha256:961769676411f082461f9ef46626dd7a2d1e2b2a38e6a44364bcbecf51e66dd4")
    );
    let os = scan.os.as_ref().unwrap();
    assert_eq!((os.family.as_str(), os.name.as_str()), ("alpine", "3.10.2"));
    assert_eq!(
        scan.scanned_at.as_deref(),
        Some("2021-08-25T12:20:30.000000005Z")
    );
    assert_eq!(
        (scan.scanner.name.as_str(), scan.scanner.version.as_str()),
        ("trivy", "dev")
    );
    let first = &scan.vulnerabilities[0];
    assert_eq!(first.id(), "CVE-2019-1549");
    assert_eq!(first.cvss_score, Some(5.3));
    assert_eq!(first.published(), Some("2019-09-10T17:15:00Z"));

    // Same CVE in two packages: counted twice, summarised once.
    let summary = scan.summary();
    let distinct: Vec<_> = summary
        .vulnerabilities()
        .map(|v| (v.id, v.severity, v.fixable))
        .collect();
    assert_eq!(
        distinct,
        [
            ("CVE-2019-1549", Severity::Medium, true),
            ("CVE-2019-1551", Severity::Medium, true)
        ]
    );

    let distroless = import("trivy/distroless-base.json", None).summary();
    assert_eq!(
        distroless.vulnerability("CVE-2019-1551").map(|v| v.fixable),
        Some(false)
    );
    assert_eq!(
        distroless.vulnerability("CVE-2019-1563").map(|v| v.fixable),
        Some(true)
    );

    let centos = import("trivy/centos-7.json", None);
    let bash = centos
        .vulnerabilities
        .iter()
        .find(|v| v.package() == "bash")
        .unwrap();
    assert_eq!(
        (bash.status(), bash.is_fixable()),
        (Some("will_not_fix"), false)
    );

    let secrets = import("trivy/secrets.json", Some(OVERRIDE));
    assert_eq!(
        secrets.summary().baseline_failures(),
        [Box::from("aws-access-key-id"), "mysecret".into()]
    );
    assert!(
        secrets
            .baseline_failures
            .iter()
            .all(|b| b.kind == BaselineKind::Secret)
    );
}

#[test]
fn grype_samples_keep_fixes_scores_and_distro() {
    let scan = import("grype/image.json", Some(OVERRIDE));
    assert_eq!(
        scan.image.image_id.as_deref(),
        Some("sha256:ab5608d634db2716a297adbfa6a5dd5d8f8f5a7d0cab73649ea7fbb8c8da544f")
    );
    let low = &scan.vulnerabilities[0];
    assert_eq!(
        (low.id(), low.package(), low.installed_version()),
        ("CVE-1999-0001", "package-1", "1.1.1")
    );
    assert_eq!(low.fixed_version(), Some("1.2.1, 2.1.3, 3.4.0"));
    assert_eq!((low.status(), low.cvss_score), (Some("fixed"), Some(8.2)));
    let critical = &scan.vulnerabilities[1];
    assert_eq!((critical.is_fixable(), critical.status()), (false, None));
    let os = scan.os.as_ref().unwrap();
    assert_eq!((os.family.as_str(), os.name.as_str()), ("centos", "8.0"));
    assert_eq!(scan.scanned_at, None);
    let empty = import("grype/empty.json", Some(OVERRIDE));
    assert_eq!(
        (empty.scanner.name.as_str(), empty.vulnerabilities.len()),
        ("grype", 0)
    );
}

#[test]
fn another_tool_s_report_is_named() {
    let cases = [
        (
            "grype/image.json",
            ReportFormat::Trivy,
            "this looks like a Grype report, not a Trivy report",
        ),
        (
            "trivy/alpine-310.json",
            ReportFormat::Grype,
            "this looks like a Trivy report, not a Grype report",
        ),
        (
            "trivy/secrets.json",
            ReportFormat::Native,
            "this looks like a Trivy report, not a Portcullis native report",
        ),
        (
            "grype/empty.json",
            ReportFormat::Native,
            "this looks like a Grype report, not a Portcullis native report",
        ),
    ];
    for (sample, format, message) in cases {
        let error = parse_report(format, &read(sample), Some(OVERRIDE), LIMIT).unwrap_err();
        assert_eq!(error.to_string(), message, "{sample}");
    }
    for format in ReportFormat::ALL {
        let error = parse_report(
            format,
            br#"{"apiVersion": "v1", "kind": "Pod"}"#,
            None,
            LIMIT,
        );
        assert!(
            matches!(error, Err(ScanError::WrongTool { found: None, .. })),
            "{format}: {error:?}"
        );
        let error = parse_report(format, b"<html>", None, LIMIT).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("report is not JSON: line 1, column 1: "),
            "{error}"
        );
    }
}

#[test]
fn trivy_schema_versions_other_than_2_are_refused() {
    for version in [1, 3] {
        let mut json: Value = serde_json::from_slice(&read("trivy/alpine-310.json")).unwrap();
        json["SchemaVersion"] = version.into();
        let error = parse_report(
            ReportFormat::Trivy,
            json.to_string().as_bytes(),
            None,
            LIMIT,
        );
        assert_eq!(
            error.unwrap_err().to_string(),
            format!("unsupported Trivy report: SchemaVersion is {version}; only 2 is supported")
        );
    }
}

#[test]
fn unknown_severities_in_a_real_report_are_kept_and_counted() {
    let mut json: Value = serde_json::from_slice(&read("trivy/debian-buster.json")).unwrap();
    json["Results"][0]["Vulnerabilities"][0]["Severity"] = "IMPORTANT".into();
    let scan = parse_report(
        ReportFormat::Trivy,
        json.to_string().as_bytes(),
        None,
        LIMIT,
    )
    .unwrap();
    assert_eq!(scan.vulnerabilities.len(), 2);
    assert_eq!(scan.counts_by_severity(), SeverityCounts([1, 0, 0, 0, 1]));
    assert_eq!(scan.unknown_severities, 1);
}

#[test]
fn an_oversized_report_is_refused_before_parsing() {
    let bytes = read("trivy/alpine-310.json");
    let error = parse_report(ReportFormat::Trivy, &bytes, None, 1000).unwrap_err();
    assert_eq!(
        error,
        ScanError::TooLarge {
            size: bytes.len(),
            limit: 1000
        }
    );
    assert_eq!(
        error.to_string(),
        format!(
            "report is {} bytes; the limit is 1000 bytes (--max-report-bytes)",
            bytes.len()
        )
    );
    assert!(parse_report(ReportFormat::Trivy, &bytes, None, bytes.len()).is_ok());
}

/// 5,000 findings of 1,000 ids (16 MB of JSON; about 30 ms in release).
#[test]
fn a_large_report_imports() {
    let mut json: Value = serde_json::from_slice(&read("trivy/alpine-310.json")).unwrap();
    let template = json["Results"][0]["Vulnerabilities"][0].clone();
    let many: Vec<Value> = (0..5_000)
        .map(|i| {
            let mut v = template.clone();
            v["VulnerabilityID"] = format!("CVE-2024-{:05}", i % 1_000).into();
            v
        })
        .collect();
    json["Results"][0]["Vulnerabilities"] = many.into();
    let bytes = json.to_string();
    let scan = parse_report(ReportFormat::Trivy, bytes.as_bytes(), None, 64 * LIMIT).unwrap();
    assert_eq!(scan.counts_by_severity()[Severity::Medium], 5_000);
    assert_eq!(scan.summary().vulnerabilities().len(), 1_000);
}

/// A Grype report of an image scanned without a name (its target has no tag and no repo
/// digest, only `manifestDigest`, as for an OCI layout) is identified by that digest, and a pod
/// pinning it finds the report.
#[test]
fn grype_manifest_digest_alone_identifies_the_image() {
    let digest = "sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5";
    let scan = parse_report(ReportFormat::Grype, &read("grype/image.json"), None, LIMIT)
        .expect("a manifest digest is an identity");
    assert_eq!(scan.image.digests, [digest]);
    assert_eq!(scan.image.repository, "");
    assert!(scan.image.tags.is_empty());
    let mut index = portcullis_engine::ScanIndex::default();
    index.insert(&scan);
    assert!(
        index
            .lookup(&format!("registry.example.com/app@{digest}"))
            .is_some()
    );
    assert!(index.lookup("registry.example.com/app:1").is_none());
}

/// A report listing more findings than any image has (a million fake vulnerabilities once
/// took 6 GB to import) is refused while it is read, in every format, naming the limit.
#[test]
fn reports_past_the_findings_limit_are_refused_while_read() {
    use portcullis_scan::MAX_FINDINGS;
    let vulnerability = |i: usize| {
        format!(
            r#"{{"VulnerabilityID":"CVE-2024-{i:07}","PkgName":"p","InstalledVersion":"1","Severity":"LOW"}}"#
        )
    };
    let trivy = |n: usize| {
        let list: Vec<String> = (0..n).map(vulnerability).collect();
        format!(
            r#"{{"SchemaVersion":2,"ArtifactName":"registry.example.com/app:1","ArtifactType":"container_image",
            "Metadata":{{"RepoTags":["registry.example.com/app:1"]}},
            "Results":[{{"Target":"t","Vulnerabilities":[{}]}},{{"Target":"u","Vulnerabilities":[{}]}}]}}"#,
            list.join(","),
            vulnerability(n)
        )
    };
    // At the limit in all (two results): read.
    let at_limit = parse_report(
        ReportFormat::Trivy,
        trivy(MAX_FINDINGS - 1).as_bytes(),
        None,
        64 << 20,
    )
    .unwrap();
    assert_eq!(at_limit.vulnerabilities.len(), MAX_FINDINGS);
    // One more, across the results: refused with the limit.
    let error = parse_report(
        ReportFormat::Trivy,
        trivy(MAX_FINDINGS).as_bytes(),
        None,
        64 << 20,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("more than 100000 findings"), "{error}");
    let native = format!(
        r#"{{"format":"portcullis-scan/v1","image":{{"repository":"alpine","tags":["3"]}},"scanner":{{"name":"s"}},
        "maliciousFiles":[{}]}}"#,
        (0..=MAX_FINDINGS)
            .map(|i| format!(r#"{{"path":"/f{i}","signature":"s"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let error = parse_report(ReportFormat::Native, native.as_bytes(), None, 64 << 20)
        .unwrap_err()
        .to_string();
    assert!(error.contains("more than 100000 findings"), "{error}");
}
