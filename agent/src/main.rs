use clap::Parser;
use portcullis_agent::{args::Cli, run};
use portcullis_runtime::logging;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _telemetry = logging::init(cli.log.log_format, "portcullis-agent");
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("portcullis-agent: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
