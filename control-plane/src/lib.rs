//! The Portcullis control plane: the durable store of policies and clusters, the operator gRPC
//! services, authentication, TLS, and admin HTTP.

pub mod admin;
pub mod api;
pub mod args;
pub mod audit;
pub mod auth;
pub mod console;
pub mod events;
pub mod fleet;
pub mod listen;
pub mod server;
pub mod store;
pub mod sync;
pub mod tls;

use args::{Cli, Command};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => server::serve(args).await,
    }
}
