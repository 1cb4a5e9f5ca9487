//! `cargo xtask fuzz`: the coverage-guided fuzz targets of `fuzz/` (cargo fuzz, libFuzzer),
//! each for a time, on its committed corpus (`fuzz/corpus/TARGET`, grown by each run). Installs
//! cargo-fuzz from crates.io when missing. The targets are built without a sanitizer (the
//! code under test forbids `unsafe`; what is hunted is panics, disagreements between readers,
//! and work or memory out of proportion), with the pinned toolchain (`RUSTC_BOOTSTRAP` lets
//! cargo fuzz pass its flags to it).
//!
//! A crash is written to `fuzz/artifacts/TARGET/` and fails the command; reproduce it with
//! `cargo xtask fuzz --target TARGET --seconds 0 -- fuzz/artifacts/TARGET/crash-…`.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

/// Every target, in the order they run.
pub const TARGETS: [&str; 7] = [
    "admission_review",
    "admission_object",
    "policy_file",
    "trivy_report",
    "grype_report",
    "native_report",
    "cache_chunks",
];

/// The cargo-fuzz this project is checked with.
const CARGO_FUZZ: &str = "0.13.2";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target (libFuzzer's -max_total_time); 0 runs only the given inputs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only this target (repeatable); default: all.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Fuzzing processes per target (libFuzzer's -fork); 1 runs in-process.
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// Afterwards, shrink each corpus to the inputs that keep its coverage (`cargo fuzz cmin`),
    /// as committed.
    #[arg(long)]
    minimize: bool,
    /// Inputs to run instead of the corpus (a crash to reproduce).
    #[arg(last = true)]
    inputs: Vec<String>,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let fuzz_dir = root.join("fuzz");
    ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for target in &args.targets {
            if !TARGETS.contains(&target.as_str()) {
                bail!(
                    "unknown fuzz target {target:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        println!("xtask: fuzzing {target} for {} s", args.seconds);
        let mut command = Command::new(env!("CARGO"));
        command
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", "--release", target]);
        if args.inputs.is_empty() {
            command.arg(&corpus);
        } else {
            command.args(&args.inputs);
        }
        command.args([
            "--",
            &format!("-max_total_time={}", args.seconds),
            // Inputs past 64 KiB find nothing the corpus's smaller ones do not, and bloat it.
            "-max_len=65536",
            // Memory and time out of proportion are findings too.
            "-rss_limit_mb=2048",
            "-timeout=10",
        ]);
        if args.jobs > 1 {
            command.arg(format!("-fork={}", args.jobs));
        }
        if args.seconds == 0 && args.inputs.is_empty() {
            command.arg("-runs=0");
        }
        let status = command
            .status()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        if !status.success() {
            bail!("fuzz target {target} failed ({status}); see fuzz/artifacts/{target}/");
        }
        if args.minimize {
            let status = Command::new(env!("CARGO"))
                .current_dir(&fuzz_dir)
                .env("RUSTC_BOOTSTRAP", "1")
                .args(["fuzz", "cmin", "--sanitizer", "none", "--release", target])
                .arg(&corpus)
                .status()
                .with_context(|| format!("minimizing the corpus of {target}"))?;
            if !status.success() {
                bail!("cargo fuzz cmin {target} failed ({status})");
            }
        }
    }
    Ok(())
}

/// cargo-fuzz, installed from crates.io when missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if installed {
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz {CARGO_FUZZ} (cargo install)");
    let status = Command::new(env!("CARGO"))
        .args(["install", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(())
}
