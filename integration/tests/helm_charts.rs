//! The Helm charts (issue #7): `helm/check.py` lints and renders both charts with default and
//! non-default values through the Helm library, validates every object against the Kubernetes
//! 1.33 schemas (strict), checks that the agent binary accepts the rendered arguments, and
//! runs the rendered workloads through our own Pod Security `restricted` policy. `cargo xtask
//! test` installs the Python packages it needs.

use std::{path::Path, process::Command};

use portcullis_testkit::bin_dir;

#[test]
fn charts_render_validate_and_pass_our_restricted_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("helm/check.py"))
        .arg("--portcullis")
        .arg(bin_dir().join("portcullis"))
        .output()
        .expect("running python3 helm/check.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "helm/check.py failed (run through `cargo xtask test`, which installs \
         helm-python-sdk and kubernetes-validate):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
