//! `cargo xtask`: developer tasks.
//!
//! - `up`: build, then run the control plane and one agent on this machine with embedded
//!   defaults (data in `.portcullis/`; `--postgres`: the store in a local PostgreSQL), and
//!   print what to try next.
//! - `test`: install what the tests need (grpcurl, the chart tools, skopeo, PostgreSQL), then
//!   run every test of the workspace.
//! - `bench`: benchmark programs against release binaries; results go to BENCHMARKS.md.
//! - `fuzz`: the coverage-guided fuzz targets of `fuzz/`, each for a time, on its corpus.
//! - `chaos`: a fault campaign (SIGKILLs under load) against the real binaries.

mod bench;
mod chaos;
mod fuzz;
mod image;
mod test;
mod up;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane and one agent locally with embedded defaults (data in .portcullis/).
    Up(up::UpArgs),
    /// Benchmarks (not tests): results go to BENCHMARKS.md.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// (Used by `bench webhook`, from the release build.) HTTPS load on the webhook.
    #[command(hide = true)]
    BenchLoadgen(bench::loadgen::LoadArgs),
    /// A fault campaign: the control plane and agents SIGKILLed under load; nothing lost.
    Chaos(chaos::ChaosArgs),
    /// Run the fuzz targets of fuzz/ (cargo fuzz, libFuzzer) on their corpora.
    Fuzz(fuzz::FuzzArgs),
    /// OCI images of the agent, the control plane and the CLI, from the built binaries.
    Image(image::ImageArgs),
    /// Install test tools (grpcurl, PostgreSQL, ...) and run every test of the workspace.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Up(args) => up::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Image(args) => image::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Test { args } => test::run(&args),
        Command::Bench(bench) => bench::run(bench),
        Command::BenchLoadgen(args) => bench::loadgen::run(args),
    }
}
