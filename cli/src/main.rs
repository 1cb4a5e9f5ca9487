use clap::Parser;
use portcullis_cli::{args::Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("portcullis: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
