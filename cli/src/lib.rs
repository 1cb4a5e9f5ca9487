//! `portcullis`, the operator command line: policies, clusters, image scans, events and audit
//! violations on a control plane, and offline tests of manifests against policies.

pub mod args;
pub mod client;
pub mod commands;
pub mod files;
pub mod output;

use args::{Cli, Command};

use std::process::ExitCode;

/// Runs a parsed command line; the exit code says whether `test` found anything blocked.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Policy(command) => commands::policy::run(command, &cli.connection).await?,
        Command::Cluster(command) => commands::cluster::run(command, &cli.connection).await?,
        Command::Scan(command) => commands::scan::run(command, &cli.connection).await?,
        Command::Events(command) => commands::events::run(command, &cli.connection).await?,
        Command::Audit(command) => commands::audit::run(command, &cli.connection).await?,
        Command::Test(args) => return commands::test::run(args, false),
        Command::Explain(args) => return commands::test::run(args, true),
    }
    Ok(ExitCode::SUCCESS)
}
