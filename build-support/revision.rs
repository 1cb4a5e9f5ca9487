// The build script of each binary crate (`include!`d by their build.rs): makes the git
// revision the binary is built from available as `PORTCULLIS_REVISION`, for `--version`.
// `PORTCULLIS_REVISION` in the environment wins (a build from a source archive without .git);
// otherwise `git rev-parse HEAD`; otherwise "unknown".

use std::{path::PathBuf, process::Command};

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_REVISION");
    let revision = std::env::var("PORTCULLIS_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PORTCULLIS_REVISION={revision}");
    // Build again when HEAD moves: HEAD itself, the branch it names, and packed refs (only
    // files that exist: a missing one would make cargo rerun this every time).
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watched.push(PathBuf::from(&dir).join("HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        watched.push(common.join("packed-refs"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(common.join(branch));
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
