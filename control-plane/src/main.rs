use clap::Parser;
use portcullis_control_plane::{args::Cli, run, telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("portcullis-control-plane: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
