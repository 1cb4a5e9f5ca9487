//! `portcullis`, the operator command line: policies and clusters on a control plane.

pub mod args;
pub mod client;
pub mod commands;
pub mod output;

use args::{Cli, Command};

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Policy(command) => commands::policy::run(command, &cli.connection).await,
        Command::Cluster(command) => commands::cluster::run(command, &cli.connection).await,
    }
}
