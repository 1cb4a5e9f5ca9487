//! Image scan results end to end: every fixture report imported through the CLI with the
//! parser's counts, replacement on re-import, lookup by tag and digest, list filters, refusal
//! of bad reports with nothing stored, and ImportReport through grpcurl (base64 bytes).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::Value;

use portcullis_policy::{Severity, scan::ImageScan};
use portcullis_scan::{DEFAULT_MAX_REPORT_BYTES, ReportFormat};
use portcullis_testkit::{ControlPlane, failure, json, success};

/// Reports that name no image, and the image the test names for them.
const OVERRIDES: [(&str, &str); 4] = [
    (
        "trivy/dockerfile.json",
        "registry.example.com/dockerfile:1.0",
    ),
    ("trivy/secrets.json", "registry.example.com/secrets:1.0"),
    ("grype/image.json", "registry.example.com/grype-image:1.0"),
    ("grype/empty.json", "registry.example.com/grype-empty:1.0"),
];

const VIEWER: &str = "viewer-token-0123456789";

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/scan/tests/scans")
}

/// Every fixture report (`trivy/x.json`), in name order.
fn reports() -> Vec<String> {
    let mut names = Vec::new();
    for tool in ["trivy", "grype"] {
        for entry in fs::read_dir(fixtures().join(tool)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                names.push(format!("{tool}/{name}"));
            }
        }
    }
    names.sort();
    names
}

fn override_for(report: &str) -> Option<&'static str> {
    OVERRIDES
        .iter()
        .find(|(name, _)| *name == report)
        .map(|(_, image)| *image)
}

/// What the domain parser makes of a fixture.
fn parsed(report: &str) -> ImageScan {
    let bytes = fs::read(fixtures().join(report)).unwrap();
    let format = if report.starts_with("trivy/") {
        ReportFormat::Trivy
    } else {
        ReportFormat::Grype
    };
    portcullis_scan::parse_report(
        format,
        &bytes,
        override_for(report),
        DEFAULT_MAX_REPORT_BYTES,
    )
    .unwrap()
}

fn import(cp: &ControlPlane, report: &str) -> Value {
    let path = fixtures().join(report).display().to_string();
    let mut args = vec!["scan", "import", path.as_str(), "-o", "json"];
    if let Some(image) = override_for(report) {
        args.extend(["--image", image]);
    }
    json(&cp.admin_cli(&args))
}

fn count(scan: &Value, severity: &str) -> u64 {
    scan["counts"][severity].as_u64().unwrap_or(0)
}

fn assert_counts(report: &str, scan: &Value, expected: &ImageScan) {
    let counts = expected.counts_by_severity();
    for severity in [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Unknown,
    ] {
        assert_eq!(
            count(scan, severity.as_str()),
            u64::from(counts[severity]),
            "{report}: {severity} count in {scan}"
        );
    }
}

/// The stored list (`scan get`) holds every finding of the report, field for field.
fn assert_vulnerabilities(report: &str, scan: &Value, expected: &ImageScan) {
    let stored = scan["vulnerabilities"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(stored.len(), expected.vulnerabilities.len(), "{report}");
    let text = |v: &Value, field: &str| v[field].as_str().unwrap_or_default().to_owned();
    for (v, want) in stored.iter().zip(&expected.vulnerabilities) {
        let got = [
            text(v, "id"),
            text(v, "severity"),
            text(v, "package"),
            text(v, "installedVersion"),
            text(v, "fixedVersion"),
            text(v, "status"),
            text(v, "published"),
        ];
        let want_text = [
            want.id(),
            want.severity.as_str(),
            want.package(),
            want.installed_version(),
            want.fixed_version().unwrap_or_default(),
            want.status().unwrap_or_default(),
            want.published().unwrap_or_default(),
        ];
        assert_eq!(got, want_text, "{report}");
        let score = v["cvssScore"].as_f64().map(|s| s as f32);
        assert_eq!(score, want.cvss_score, "{report}: {}", want.id());
    }
}

fn list(cp: &ControlPlane, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["scan", "list", "-o", "json"];
    args.extend(filters);
    json(&cp.admin_cli(&args)).as_array().unwrap().clone()
}

fn ids(scans: &[Value]) -> BTreeSet<String> {
    scans
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn imports_every_fixture_and_serves_lookups_and_filters() {
    let cp = ControlPlane::start();
    let mut imported = Vec::new();
    for report in reports() {
        let expected = parsed(&report);
        let scan = import(&cp, &report);
        assert_counts(&report, &scan, &expected);
        // The import answers without the list; the stored scan has all of it.
        assert!(scan.get("vulnerabilities").is_none(), "{report}");
        let id = scan["id"].as_str().unwrap();
        let stored = json(&cp.admin_cli(&["scan", "get", id, "-o", "json"]));
        assert_counts(&report, &stored, &expected);
        assert_vulnerabilities(&report, &stored, &expected);
        assert_eq!(
            scan["image"]["repository"].as_str(),
            Some(expected.image.repository.as_str()),
            "{report}"
        );
        imported.push((report, expected, scan));
    }
    let all = list(&cp, &[]);
    let imported_ids: BTreeSet<String> = imported
        .iter()
        .map(|(_, _, s)| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids(&all), imported_ids);
    assert!(all.iter().all(|s| s.get("vulnerabilities").is_none()));

    // Re-importing the same image (here pinned by digest) replaces its result, in one revision.
    let report = "trivy/alpine-310.json";
    let expected = parsed(report);
    let by_tag = format!("{}:{}", expected.image.repository, expected.image.tags[0]);
    let pinned = format!("{by_tag}@{DIGEST}");
    let path = fixtures().join(report).display().to_string();
    let import_pinned =
        || json(&cp.admin_cli(&["scan", "import", &path, "--image", &pinned, "-o", "json"]));
    let first = import_pinned();
    assert_eq!(first["id"], DIGEST);
    let before = cp.revision();
    let again = import_pinned();
    assert_eq!(cp.revision(), before + 1);
    assert_eq!(again["id"], DIGEST);
    assert_ne!(again["revision"], first["revision"]);
    let all = list(&cp, &[]);
    assert_eq!(all.len(), imported_ids.len() + 1);
    for image in [by_tag.as_str(), DIGEST, pinned.as_str()] {
        let got = json(&cp.admin_cli(&["scan", "get", image, "-o", "json"]));
        assert_eq!(got["id"], DIGEST, "{image}");
        assert_eq!(got["revision"], again["revision"], "{image}");
        assert_counts(report, &got, &expected);
    }
    let table = success(&cp.admin_cli(&["scan", "get", &by_tag]));
    assert!(table.starts_with("IMAGE "), "{table}");
    assert!(
        table.contains("CRITICAL") && table.contains("MALWARE"),
        "{table}"
    );

    // Filters select what the parser's results say they should.
    let critical: BTreeSet<String> = imported
        .iter()
        .filter(|(_, e, _)| e.counts_by_severity()[Severity::Critical] > 0)
        .map(|(_, _, s)| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!critical.is_empty());
    let mut critical_now = critical.clone();
    if expected.counts_by_severity()[Severity::Critical] > 0 {
        critical_now.insert(DIGEST.to_owned());
    }
    assert_eq!(
        ids(&list(&cp, &["--min-severity", "critical"])),
        critical_now
    );
    let example: BTreeSet<String> = imported
        .iter()
        .filter(|(_, e, _)| e.image.repository.starts_with("registry.example.com/"))
        .map(|(_, _, s)| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(example.len(), OVERRIDES.len());
    let globbed = list(&cp, &["--repository", "registry.example.com/*"]);
    assert_eq!(ids(&globbed), example);
    let exact = list(&cp, &["--repository", &expected.image.repository]);
    assert!(ids(&exact).contains(DIGEST));
    assert!(list(&cp, &["--malware"]).is_empty());

    // Delete by digest; the result is gone.
    success(&cp.admin_cli(&["scan", "delete", DIGEST]));
    let gone = failure(&cp.admin_cli(&["scan", "get", DIGEST]));
    assert!(gone.contains("NotFound"), "{gone}");
    assert_eq!(list(&cp, &[]).len(), all.len() - 1);
}

#[test]
fn bad_reports_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    fs::write(
        &tokens,
        format!("tokens:\n- {{name: dashboard, role: viewer, token: {VIEWER}}}\n"),
    )
    .unwrap();
    let cp = ControlPlane::start_with(&[
        "--max-report-bytes",
        "30000",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let alpine = fixtures().join("trivy/alpine-310.json");
    let mut schema_v1: Value = serde_json::from_slice(&fs::read(&alpine).unwrap()).unwrap();
    schema_v1["SchemaVersion"] = 1.into();
    let schema_v1 = write("v1.json", &serde_json::to_vec(&schema_v1).unwrap());
    let not_json = write("not.json", b"this is not json");
    let grype = fixtures().join("grype/image.json").display().to_string();
    let dockerfile = fixtures()
        .join("trivy/dockerfile.json")
        .display()
        .to_string();
    let mut padded = fs::read(&alpine).unwrap();
    padded.resize(40_000, b' ');
    let padded = write("padded.json", &padded);
    let huge = write("huge.json", &vec![b' '; 200_000]);

    let cases: [(&[&str], &str); 6] = [
        (&[&not_json], "report is not JSON"),
        (&["--format", "trivy", &grype], "looks like a Grype report"),
        (&[&schema_v1], "SchemaVersion"),
        (&[&dockerfile], "no image identity"),
        (&[&padded], "the limit is 30000 bytes (--max-report-bytes)"),
        (&[&huge], "--max-report-bytes"),
    ];
    for (args, expected) in cases {
        let mut command = vec!["scan", "import"];
        command.extend(args);
        let error = failure(&cp.admin_cli(&command));
        assert!(error.contains(expected), "{args:?}: {error}");
        assert!(
            ["InvalidArgument", "ResourceExhausted", "OutOfRange"]
                .iter()
                .any(|code| error.contains(code)),
            "{args:?}: {error}"
        );
    }
    // Viewers read; only admins import and delete.
    let alpine = fixtures()
        .join("trivy/alpine-310.json")
        .display()
        .to_string();
    let denied = failure(&cp.cli(VIEWER, &["scan", "import", &alpine]));
    assert!(denied.contains("PermissionDenied"), "{denied}");
    let denied = failure(&cp.cli(VIEWER, &["scan", "delete", "alpine"]));
    assert!(denied.contains("PermissionDenied"), "{denied}");
    success(&cp.cli(VIEWER, &["scan", "list"]));

    assert!(list(&cp, &[]).is_empty());
    assert_eq!(cp.revision(), 0);
}

#[test]
fn grpcurl_imports_a_base64_report() {
    let cp = ControlPlane::start();
    let token = cp.admin_token();
    let report = "trivy/alpine-310.json";
    let bytes = fs::read(fixtures().join(report)).unwrap();
    let body = serde_json::json!({"format": "trivy", "report": STANDARD.encode(&bytes)});
    let scan = json(&cp.grpcurl(
        Some(&token),
        &[
            "-d",
            &body.to_string(),
            "--",
            "portcullis.v1.ScanService/ImportReport",
        ],
    ));
    assert_counts(report, &scan, &parsed(report));
    let services = success(&cp.grpcurl(Some(&token), &["list"]));
    assert!(services.lines().any(|l| l == "portcullis.v1.ScanService"));
    let health = success(&cp.grpcurl(
        None,
        &[
            "-d",
            r#"{"service": "portcullis.v1.ScanService"}"#,
            "--",
            "grpc.health.v1.Health/Check",
        ],
    ));
    assert!(health.contains("SERVING"), "{health}");
}
