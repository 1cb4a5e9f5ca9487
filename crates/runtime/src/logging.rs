//! Logs: tracing to stderr, plain or JSON lines; `PORTCULLIS_LOG` (or `RUST_LOG`) filters.

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, fmt};

/// `--log-format` (`PORTCULLIS_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// `--log-format`, for every subcommand of a binary (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct LogArgs {
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

/// Installs the global subscriber; `info` unless the environment says otherwise.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
