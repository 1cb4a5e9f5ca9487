//! `--version` of every binary names the version and the git revision it was built from
//! (issue #18), so an image, a crash report or a fleet view can be traced to its source.

use std::process::Command;

use portcullis_testkit::{bin_dir, success};

#[test]
fn every_binary_names_its_version_and_revision() {
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    for binary in ["portcullis", "portcullis-agent", "portcullis-control-plane"] {
        let out = success(
            &Command::new(bin_dir().join(binary))
                .arg("--version")
                .output()
                .unwrap(),
        );
        assert_eq!(
            out.trim(),
            format!(
                "{binary} {} (revision {revision})",
                env!("CARGO_PKG_VERSION")
            ),
        );
    }
}
