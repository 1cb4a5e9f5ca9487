//! The command line. Every flag can also be set by a `PORTCULLIS_…` environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::Subcommand;

portcullis_runtime::command_line!(
    "portcullis-control-plane",
    "Portcullis control plane",
    Command
);

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the gRPC API (TLS) and the admin HTTP endpoints.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Data directory: the sled store, generated TLS material, the bootstrap admin token.
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "portcullis-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL instead of the embedded sled store:
    /// `postgres://user[:password]@host[:port]/database[?sslmode=disable|prefer|require]`.
    /// Several control-plane replicas may then serve at once. TLS (`prefer`, `require`)
    /// always verifies the server's certificate (system roots and `--database-ca`).
    #[arg(long, env = "PORTCULLIS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A file holding the database password (overrides a password in the URL).
    #[arg(
        long,
        env = "PORTCULLIS_DATABASE_PASSWORD_FILE",
        requires = "database_url"
    )]
    pub database_password_file: Option<PathBuf>,
    /// PEM certificates to verify the database server's TLS certificate with.
    #[arg(long, env = "PORTCULLIS_DATABASE_CA", requires = "database_url")]
    pub database_ca: Option<PathBuf>,
    /// Connections this replica keeps to the database.
    #[arg(long, env = "PORTCULLIS_DATABASE_POOL_SIZE", default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=1000))]
    pub database_pool_size: usize,
    /// gRPC listen address (TLS).
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Admin HTTP listen address: /livez, /readyz, /metrics.
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Server certificate chain (PEM). Without it a local CA and certificate are generated in
    /// DATA_DIR/tls (clients trust DATA_DIR/tls/ca.crt).
    #[arg(long, env = "PORTCULLIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "PORTCULLIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra subject alternative name for the generated certificate (repeatable).
    #[arg(long = "tls-san", env = "PORTCULLIS_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// Operator tokens: YAML `tokens: [{name, role: admin|viewer, token | sha256}]`.
    #[arg(long, env = "PORTCULLIS_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Where the generated bootstrap admin token is kept [default: DATA_DIR/admin.token].
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Change-log entries kept behind the head; agents further behind get a snapshot.
    #[arg(long, env = "PORTCULLIS_CHANGELOG_KEEP", default_value_t = 100_000)]
    pub changelog_keep: u64,
    /// Seconds between change-log compactions.
    #[arg(long, env = "PORTCULLIS_COMPACTION_INTERVAL", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub compaction_interval: u64,
    /// Seconds between heartbeats on an idle agent Sync stream.
    #[arg(long, env = "PORTCULLIS_HEARTBEAT_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval: u64,
    /// Largest scan report `ImportReport` accepts, in bytes; larger ones are refused whole.
    #[arg(
        long,
        env = "PORTCULLIS_MAX_REPORT_BYTES",
        default_value_t = portcullis_scan::DEFAULT_MAX_REPORT_BYTES
    )]
    pub max_report_bytes: usize,
    /// Minutes without a request after which a web console session ends.
    #[arg(long, env = "PORTCULLIS_CONSOLE_IDLE_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub console_idle_minutes: u64,
    /// Hours after sign-in at which a web console session ends, however busy.
    #[arg(long, env = "PORTCULLIS_CONSOLE_SESSION_HOURS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=168))]
    pub console_session_hours: u64,
    /// Events older than this many hours are deleted.
    #[arg(long, env = "PORTCULLIS_EVENT_MAX_AGE_HOURS", default_value_t = 30 * 24)]
    pub event_max_age_hours: u64,
    /// At most this many events are kept; the oldest are deleted first.
    #[arg(long, env = "PORTCULLIS_EVENT_MAX_COUNT", default_value_t = 1_000_000)]
    pub event_max_count: u64,
    /// Events one `ReportEvents` call may carry; larger batches are refused whole.
    #[arg(long, env = "PORTCULLIS_EVENT_MAX_BATCH", default_value_t = 1000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub event_max_batch: usize,
    /// Resolved audit violations are deleted this many days after they were resolved (at
    /// start, then hourly).
    #[arg(long, env = "PORTCULLIS_VIOLATION_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub violation_retention_days: u64,
    /// Seconds to drain streams and in-flight requests on SIGTERM.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,
}

impl ServeArgs {
    pub fn admin_token_path(&self) -> PathBuf {
        self.admin_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.token"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults_and_tls_pairing() {
        let cli = Cli::try_parse_from(["cp", "serve"]).unwrap();
        let Command::Serve(args) = cli.command;
        assert_eq!(args.listen.port(), 8443);
        assert_eq!(args.admin_listen.port(), 9090);
        assert_eq!(args.max_report_bytes, 128 * 1024 * 1024);
        assert_eq!(args.violation_retention_days, 30);
        assert!(Cli::try_parse_from(["cp", "serve", "--tls-cert", "c.pem"]).is_err());
        let cli =
            Cli::try_parse_from(["cp", "serve", "--tls-san", "a,b", "--tls-san", "c"]).unwrap();
        let Command::Serve(args) = cli.command;
        assert_eq!(args.tls_sans, ["a", "b", "c"]);
    }

    #[test]
    fn settings_out_of_range_are_refused_with_the_flag_and_range() {
        for flag in [
            "--event-max-batch",
            "--heartbeat-interval",
            "--compaction-interval",
            "--violation-retention-days",
        ] {
            let error = Cli::try_parse_from(["cp", "serve", flag, "0"])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(flag) && error.contains("0 is not in"),
                "{error}"
            );
        }
    }
}
