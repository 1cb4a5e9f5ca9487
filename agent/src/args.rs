//! The command line. Every flag can also be set by a `PORTCULLIS_…` environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "portcullis-agent",
    version,
    about = "Portcullis per-cluster agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sync from the control plane and enforce.
    Run(RunArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Run without Kubernetes (no webhook configuration or certificates are programmed).
    #[arg(long, env = "PORTCULLIS_STANDALONE")]
    pub standalone: bool,
    /// This agent's cluster, as registered on the control plane.
    #[arg(long, env = "PORTCULLIS_CLUSTER")]
    pub cluster: String,
    /// Control plane URL.
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE")]
    pub control_plane: String,
    /// File holding the cluster's agent token (re-read at every reconnect).
    #[arg(long, env = "PORTCULLIS_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// CA certificate (PEM) of the control plane [default: the system roots].
    #[arg(long, env = "PORTCULLIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Directory of the durable cache.
    #[arg(
        long,
        env = "PORTCULLIS_DATA_DIR",
        default_value = "portcullis-agent-data"
    )]
    pub data_dir: PathBuf,
    /// Admin HTTP listen address: /livez, /readyz, /metrics, /state.
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Heartbeats missed in a row before the Sync stream counts as dead.
    #[arg(long, env = "PORTCULLIS_HEARTBEAT_MISSES", default_value_t = 3)]
    pub heartbeat_misses: u32,
    /// Longest wait between reconnect attempts, in seconds.
    #[arg(long, env = "PORTCULLIS_RECONNECT_MAX", default_value_t = 30)]
    pub reconnect_max: u64,
    /// Seconds between periodic status reports.
    #[arg(long, env = "PORTCULLIS_STATUS_INTERVAL", default_value_t = 30)]
    pub status_interval: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_standalone_command() {
        let cli = Cli::try_parse_from([
            "portcullis-agent",
            "run",
            "--standalone",
            "--cluster",
            "c1",
            "--control-plane",
            "https://127.0.0.1:8443",
            "--token-file",
            "t",
            "--ca-file",
            "ca.crt",
            "--data-dir",
            "d",
            "--admin-listen",
            "127.0.0.1:9091",
        ])
        .unwrap();
        let Command::Run(args) = cli.command;
        assert!(args.standalone);
        assert_eq!(args.admin_listen.port(), 9091);
        assert!(Cli::try_parse_from(["portcullis-agent", "run", "--standalone"]).is_err());
    }
}
