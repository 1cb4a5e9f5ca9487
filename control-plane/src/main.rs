use clap::Parser;
use portcullis_control_plane::{args::Cli, run, telemetry};

/// mimalloc instead of the system allocator: decoding, storing and answering event batches
/// allocates and frees many small strings on every worker thread, and glibc's allocator spent
/// a third of the control plane's time on it (fastbin consolidation, arena locks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
