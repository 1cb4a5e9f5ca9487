//! `portcullis-agent`: the per-cluster agent. Its sync client, cache and admission webhook are
//! being built; this binary only answers `--version` and `--help` for now.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "portcullis-agent",
    version,
    about = "Portcullis per-cluster agent (in progress)"
)]
struct Cli {}

fn main() {
    Cli::parse();
    eprintln!("portcullis-agent: nothing to run yet; see `portcullis-agent --help`");
    std::process::exit(2);
}
