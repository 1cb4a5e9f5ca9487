use clap::Parser;
use portcullis_cli::{args::Cli, run};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("portcullis: {error:#}");
            // 2: the command could not run (1 means `test` blocked something).
            std::process::ExitCode::from(2)
        }
    }
}
