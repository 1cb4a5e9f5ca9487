//! `portcullis test` and `portcullis explain`: the engine offline, on manifest files, with exit
//! codes a pipeline can gate on.

use std::{path::Path, process::Command};

use portcullis_integration::bin_dir;

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
