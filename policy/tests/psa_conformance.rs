//! Conformance with Kubernetes Pod Security Admission: every upstream fixture in `tests/psa`
//! (see its README) is evaluated at its level and version. A `pass` pod must give no finding; a
//! `fail` pod must give a finding from the check the file is named after. All mismatches are
//! collected and listed, and the number of files checked is asserted, so the test can never
//! pass by checking nothing.

use std::fs;
use std::path::{Path, PathBuf};

use portcullis_policy::k8s::{PodFinding, pod_template};
use portcullis_policy::{Kind, LATEST_PSS_MINOR, PodSecurityLevel, PodSecurityVersion, pss};

/// The fixtures of v1.0 ..= v1.35, both levels (the shared folder's count).
const EXPECTED_FILES: usize = 4241;

#[test]
fn upstream_fixtures_conform() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/psa/testdata");
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for level in PodSecurityLevel::ALL {
        let mut versions = 0;
        for version_dir in sorted_entries(&root.join(level.as_str())) {
            let version = parse_version(&version_dir);
            versions += 1;
            for (outcome, expect_pass) in [("pass", true), ("fail", false)] {
                for file in sorted_entries(&version_dir.join(outcome)) {
                    checked += 1;
                    let rel = file
                        .strip_prefix(&root)
                        .unwrap_or(&file)
                        .display()
                        .to_string();
                    if let Err(problem) = check_fixture(&file, *level, version, expect_pass) {
                        mismatches.push(format!("{rel}: {problem}"));
                    }
                }
            }
        }
        assert_eq!(versions, LATEST_PSS_MINOR as usize + 1, "{level} versions");
    }
    assert!(
        mismatches.is_empty(),
        "{} of {checked} fixtures do not conform:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(checked, EXPECTED_FILES, "fixture files checked");
}

#[test]
fn latest_is_the_newest_version() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/psa/testdata");
    let newest = format!("v1.{LATEST_PSS_MINOR}");
    for level in PodSecurityLevel::ALL {
        for outcome in ["pass", "fail"] {
            for file in sorted_entries(&root.join(level.as_str()).join(&newest).join(outcome)) {
                let workload = load(&file).expect("fixture parses");
                let latest = pss::check(*level, PodSecurityVersion::Latest, &workload);
                let pinned = pss::check(
                    *level,
                    PodSecurityVersion::Minor(LATEST_PSS_MINOR),
                    &workload,
                );
                assert_eq!(latest, pinned, "{}", file.display());
            }
        }
    }
}

/// `Ok` when the fixture gives what its folder and name expect.
fn check_fixture(
    file: &Path,
    level: PodSecurityLevel,
    version: PodSecurityVersion,
    expect_pass: bool,
) -> Result<(), String> {
    let pod = load(file)?;
    let findings = pss::check(level, version, &pod);
    if expect_pass {
        if findings.is_empty() {
            return Ok(());
        }
        return Err(format!("expected no finding, got {}", describe(&findings)));
    }
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let check = stem.trim_end_matches(|c: char| c.is_ascii_digit());
    let named = findings.iter().any(|f| {
        f.finding
            .rule
            .strip_prefix("podSecurity/")
            .is_some_and(|id| id.to_ascii_lowercase() == check)
    });
    if named {
        Ok(())
    } else if findings.is_empty() {
        Err(format!("expected a {check} finding, got none"))
    } else {
        Err(format!(
            "expected a {check} finding, got {}",
            describe(&findings)
        ))
    }
}

/// Reads a fixture (a Pod, or any kind with a pod template) into its pod.
fn load(file: &Path) -> Result<portcullis_policy::k8s::PodTemplate, String> {
    let text = fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let object: serde_json::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("invalid YAML: {e}"))?;
    let kind_name = object["kind"].as_str().unwrap_or_default();
    let kind = Kind::from_name(kind_name).ok_or_else(|| format!("unknown kind {kind_name:?}"))?;
    let workload = pod_template(kind, &object)
        .map_err(|e| format!("does not parse: {e}"))?
        .ok_or_else(|| format!("kind {kind_name} has no pod"))?;
    Ok(workload.pod)
}

fn describe(findings: &[PodFinding]) -> String {
    let items: Vec<String> = findings
        .iter()
        .map(|f| format!("{} at {}", f.finding.rule, f.finding.path))
        .collect();
    items.join("; ")
}

/// `v1.N` -> `Minor(N)`.
fn parse_version(dir: &Path) -> PodSecurityVersion {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let minor = name
        .strip_prefix("v1.")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected version folder {}", dir.display()));
    PodSecurityVersion::Minor(minor)
}

/// The entries of a folder, sorted so failures list in a stable order.
fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable folder entry").path())
        .collect();
    paths.sort();
    paths
}
