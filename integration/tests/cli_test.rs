//! `portcullis test` and `portcullis explain`: the engine offline, on manifest files, with exit
//! codes a pipeline can gate on.

use std::{path::Path, process::Command};

use portcullis_testkit::bin_dir;

fn path(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(relative)
        .display()
        .to_string()
}

fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_dir().join("portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn blocked_manifests_exit_1_with_findings() {
    let (code, stdout, _) = portcullis(&[
        "test",
        "-p",
        &path("../examples/policies.yaml"),
        "-f",
        &path("tests/data/manifests"),
        "-o",
        "json",
    ]);
    assert_eq!(code, 1, "{stdout}");
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let verdicts: Vec<(&str, &str)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("compliant", "allow"),
            ("privileged", "block"),
            ("web", "block"),
            ("web", "alert"),
            ("settings", "skipped")
        ]
    );
    let deployment = &results[2];
    assert!(
        deployment["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["policy"] == "no-privileged"
                && f["path"] == "spec.template.spec.containers[1].securityContext.privileged"
                && f["value"] == "true")
    );
}

#[test]
fn compliant_manifests_exit_0_and_explain_says_why() {
    let compliant = path("tests/data/manifests/compliant.yaml");
    let (code, stdout, _) = portcullis(&[
        "test",
        "-p",
        &path("../examples/policies.yaml"),
        "-f",
        &compliant,
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("Pod/demo/compliant") && stdout.contains("allow"),
        "{stdout}"
    );

    let (code, stdout, _) = portcullis(&[
        "explain",
        "-p",
        &path("../examples/policies.yaml"),
        "-f",
        &compliant,
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("policy no-high-vulns: does not apply"),
        "{stdout}"
    );
    assert!(stdout.contains("policy no-privileged: applies"), "{stdout}");
    let (code, stdout, _) = portcullis(&[
        "test",
        "--verbose",
        "--cluster",
        "prod-1",
        "-p",
        &path("../examples/policies.yaml"),
        "-f",
        &compliant,
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("policy no-high-vulns: applies"), "{stdout}");
}

#[test]
fn bad_inputs_exit_2_with_the_reason() {
    let (code, _, stderr) = portcullis(&[
        "test",
        "-p",
        &path("tests/data/invalid-policy.yaml"),
        "-f",
        &path("tests/data/manifests"),
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("invalid policies") && stderr.contains("rules.resource.hostPorts"),
        "{stderr}"
    );
    let (code, _, stderr) = portcullis(&[
        "test",
        "-p",
        &path("../examples/policies.yaml"),
        "-f",
        &path("tests/data/not-yaml.yaml"),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("line"), "{stderr}");
}

/// The decision and the (rule, path) of each finding of the only object in `test -o json`.
fn only_result(stdout: &str) -> (String, Vec<(String, String, String)>) {
    let results: serde_json::Value = serde_json::from_str(stdout).unwrap();
    let [result] = results.as_array().unwrap().as_slice() else {
        panic!("{stdout}")
    };
    let findings = result["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let text = |key: &str| f[key].as_str().unwrap().to_owned();
            (text("rule"), text("path"), text("message"))
        })
        .collect();
    (result["decision"].as_str().unwrap().to_owned(), findings)
}

#[test]
fn scan_reports_block_vulnerable_images_unless_whitelisted() {
    let report = path("../crates/scan/tests/scans/trivy/debian-buster.json");
    let deployment = path("tests/data/scans/debian-deployment.yaml");
    let test = |policy: &str, extra: &[&str]| {
        let policy = path(policy);
        let mut args = vec!["test", "-p", &policy, "-f", &deployment, "-o", "json"];
        args.extend_from_slice(extra);
        portcullis(&args)
    };
    let (code, stdout, stderr) = test("tests/data/scans/no-high-vulns.yaml", &["--scan", &report]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let (decision, findings) = only_result(&stdout);
    assert_eq!(decision, "block");
    assert_eq!(
        findings,
        [(
            "vulnerabilities".to_owned(),
            "spec.template.spec.containers[0].image".to_owned(),
            "image ghcr.io/aquasecurity/trivy-test-images:debian-buster has 1 vulnerability at \
             or above high: CVE-2019-18224"
                .to_owned()
        )]
    );

    // The format can be named instead of detected.
    let (code, _, _) = test(
        "tests/data/scans/no-high-vulns.yaml",
        &["--scan", &report, "--scan-format", "trivy"],
    );
    assert_eq!(code, 1);

    let (code, stdout, stderr) = test(
        "tests/data/scans/no-high-vulns-whitelisted.yaml",
        &["--scan", &report],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(only_result(&stdout), ("allow".to_owned(), Vec::new()));
}

#[test]
fn unscanned_block_blocks_images_without_a_report() {
    let policy = path("tests/data/scans/unscanned-block.yaml");
    let report = path("../crates/scan/tests/scans/trivy/debian-buster.json");
    let (code, stdout, stderr) = portcullis(&[
        "test",
        "-p",
        &policy,
        "-f",
        &path("tests/data/scans/unscanned-pod.yaml"),
        "--scan",
        &report,
        "-o",
        "json",
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let (decision, findings) = only_result(&stdout);
    assert_eq!(decision, "block");
    assert_eq!(
        findings,
        [(
            "unscanned".to_owned(),
            "spec.containers[0].image".to_owned(),
            "image registry.example.com/team/app:1.0 has no scan result (unscanned: block)"
                .to_owned()
        )]
    );

    // The scanned image is admitted by the same policy.
    let (code, stdout, stderr) = portcullis(&[
        "test",
        "-p",
        &policy,
        "-f",
        &path("tests/data/scans/debian-deployment.yaml"),
        "--scan",
        &report,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn scan_reports_that_name_no_image_exit_2_naming_the_file() {
    let report = path("../crates/scan/tests/scans/trivy/dockerfile.json");
    let (code, _, stderr) = portcullis(&[
        "test",
        "-p",
        &path("tests/data/scans/no-high-vulns.yaml"),
        "-f",
        &path("tests/data/scans/debian-deployment.yaml"),
        "--scan",
        &report,
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("scan report {report}: no image identity")),
        "{stderr}"
    );
    let (code, _, stderr) = portcullis(&[
        "test",
        "-p",
        &path("tests/data/scans/no-high-vulns.yaml"),
        "-f",
        &path("tests/data/scans/debian-deployment.yaml"),
        "--scan",
        &path("../crates/scan/tests/scans/trivy/debian-buster.json"),
        "--scan-format",
        "sarif",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("trivy, grype, native"), "{stderr}");
}
