//! Conformance with Kubernetes Pod Security Admission: every upstream fixture in `tests/psa`
//! (see its README) is admitted through `engine::evaluate`, the webhook's own path (its JSON
//! read by the direct reader), under a policy of the fixture's level and version. A `pass` pod
//! must give no finding; a `fail` pod must give a finding from the check the file is named
//! after. All mismatches are collected and listed, and the number of files checked is
//! asserted, so the test can never pass by checking nothing.

use std::fs;
use std::path::{Path, PathBuf};

use portcullis_engine::k8s::direct_reader_agrees;
use portcullis_engine::{self as engine, AdmissionInput, Operation, Outcome, ScanIndex};
use portcullis_policy::{Kind, LATEST_PSS_MINOR, PodSecurityLevel, Policy, parse_policy_documents};

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
            let version = policy(*level, &version_name(&version_dir));
            versions += 1;
            for (outcome, expect_pass) in [("pass", true), ("fail", false)] {
                for file in sorted_entries(&version_dir.join(outcome)) {
                    checked += 1;
                    let rel = file
                        .strip_prefix(&root)
                        .unwrap_or(&file)
                        .display()
                        .to_string();
                    if let Err(problem) = check_fixture(&file, &version, expect_pass) {
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
        let (latest, pinned) = (policy(*level, "latest"), policy(*level, &newest));
        for outcome in ["pass", "fail"] {
            for file in sorted_entries(&root.join(level.as_str()).join(&newest).join(outcome)) {
                let latest = rules(&file, &latest).expect("fixture is admitted");
                let pinned = rules(&file, &pinned).expect("fixture is admitted");
                assert_eq!(latest, pinned, "{}", file.display());
            }
        }
    }
}

/// A policy that blocks what Pod Security `level` forbids at `version` (`v1.N` or `latest`).
fn policy(level: PodSecurityLevel, version: &str) -> Policy {
    let text = format!(
        "name: psa\naction: block\nrules:\n  resource:\n    podSecurity: {{level: {}, version: {version}}}\n",
        level.as_str()
    );
    let proto = parse_policy_documents(&text)
        .expect("policy parses")
        .remove(0);
    Policy::try_from(&proto).expect("policy is valid")
}

/// `Ok` when the fixture gives what its folder and name expect.
fn check_fixture(file: &Path, policy: &Policy, expect_pass: bool) -> Result<(), String> {
    let findings = rules(file, policy)?;
    if expect_pass {
        if findings.is_empty() {
            return Ok(());
        }
        return Err(format!("expected no finding, got {}", findings.join("; ")));
    }
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let check = stem.trim_end_matches(|c: char| c.is_ascii_digit());
    let named = findings.iter().any(|f| {
        f.split(' ')
            .next()
            .and_then(|rule| rule.strip_prefix("podSecurity/"))
            .is_some_and(|id| id.to_ascii_lowercase() == check)
    });
    if named {
        Ok(())
    } else if findings.is_empty() {
        Err(format!("expected a {check} finding, got none"))
    } else {
        Err(format!(
            "expected a {check} finding, got {}",
            findings.join("; ")
        ))
    }
}

/// The findings (`rule at path`) of creating the fixture (a Pod, or any kind with a pod
/// template) through `engine::evaluate`.
fn rules(file: &Path, policy: &Policy) -> Result<Vec<String>, String> {
    let text = fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))?;
    let object: serde_json::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("invalid YAML: {e}"))?;
    let kind_name = object["kind"].as_str().unwrap_or_default();
    let kind = Kind::from_name(kind_name).ok_or_else(|| format!("unknown kind {kind_name:?}"))?;
    // As the API server sends it: compact JSON, which the direct reader reads itself (not
    // through its fallback to serde).
    let raw = serde_json::to_string(&object).map_err(|e| e.to_string())?;
    if direct_reader_agrees(kind, &raw) != Ok(true) {
        return Err("not read by the webhook's direct reader".into());
    }
    let input = AdmissionInput {
        operation: Operation::Create,
        kind: kind.as_str(),
        sub_resource: "",
        namespace: "psa",
        name: "fixture",
        object: Some(&raw),
        old_object: None,
    };
    let decision = engine::evaluate(&input, "conformance", [policy], &ScanIndex::default());
    if let Outcome::Invalid(reason) = decision.outcome {
        return Err(format!("does not parse: {reason}"));
    }
    Ok(decision
        .findings
        .iter()
        .map(|f| format!("{} at {}", f.finding.rule, f.finding.path))
        .collect())
}

/// `v1.N`: the folder's name, checked.
fn version_name(dir: &Path) -> String {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(
        name.strip_prefix("v1.")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "unexpected version folder {}",
        dir.display()
    );
    name.to_owned()
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
