use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use clap::Parser;
use portcullis_control_plane::{args::Cli, run};
use portcullis_runtime::logging;

/// mimalloc instead of the system allocator: decoding, storing and answering event batches
/// allocates and frees many small strings on every worker thread, and glibc's allocator spent
/// a third of the control plane's time on it (fastbin consolidation, arena locks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc returns freed memory to the OS only 10 ms after a page empties (100 ms for arena
/// ranges), so a report import's parsed form is still resident when its stored form is built:
/// a 13.6 MB report of 100,000 findings peaked 51 MB above idle with the default, 30 MB with
/// 0 (RELIABILITY.md). The price is event ingest 10-25 % slower (the extra `madvise` calls),
/// still over three times its target: memory is what a pod's limit kills for.
const PURGE_DELAY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "0");

fn main() -> ExitCode {
    with_allocator_options();
    serve(Cli::parse())
}

/// mimalloc reads its options from the environment when the process starts, before `main`,
/// and setting them later takes `unsafe` code, which the workspace forbids. So the binary runs
/// itself again, once, with the option in its environment; one an operator set is kept. If
/// that fails (the binary was replaced on disk), it goes on with the defaults.
fn with_allocator_options() {
    let (name, value) = PURGE_DELAY;
    if std::env::var_os(name).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command.args(args).env(name, value).exec();
    eprintln!("portcullis-control-plane: not restarted with {name}={value}: {error}");
}

#[tokio::main]
async fn serve(cli: Cli) -> ExitCode {
    let _telemetry = logging::init(cli.log.log_format, "portcullis-control-plane");
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("portcullis-control-plane: {error:#}");
            ExitCode::FAILURE
        }
    }
}
