//! `cargo xtask bench …`: benchmark programs (not tests). Each builds the release binaries,
//! runs against real processes on loopback, and prints numbers to record in BENCHMARKS.md.

mod apiserver;
mod audit;
mod console;
mod events;
mod harness;
pub mod loadgen;
mod pprof;
mod scans;
mod sync;
mod webhook;

use anyhow::{Context, Result};

#[derive(clap::Subcommand)]
pub enum Bench {
    /// 1,000 agent streams and one policy change; a 5,000-policy snapshot to a real agent.
    Sync(sync::SyncArgs),
    /// The webhook over HTTPS: throughput, then latency at half that rate.
    Webhook(webhook::WebhookArgs),
    /// 100,000 Trivy reports imported (reports/s), then snapshotted to a fresh agent.
    Scans(scans::ScansArgs),
    /// Pod creates on a real kube-apiserver: Portcullis vs a no-op webhook vs none.
    Apiserver(apiserver::ApiServerArgs),
    /// Continuous audit of 1,500 Deployments, 10,000 Pods and 50 policies on a real API
    /// server: a policy change and a scan import until their violations are listed.
    Audit(audit::AuditArgs),
    /// 1,000,000 events ingested (events/s), then ListEvents with a cluster + policy filter.
    Events(events::EventsArgs),
    /// The web console: the fleet page with 5,000 clusters, the events page filtered over
    /// 1,000,000 events, a new event until it is on the live stream.
    Console(console::ConsoleArgs),
}

pub fn run(bench: Bench) -> Result<()> {
    harness::build_release()?;
    if cfg!(debug_assertions) {
        // `cargo xtask` runs a debug build; the clients and load generators inside the
        // benchmark must not be the bottleneck, so the release build runs it instead.
        let status = std::process::Command::new(harness::release_bin("xtask"))
            .args(std::env::args_os().skip(1))
            .status()
            .context("running the release xtask")?;
        anyhow::ensure!(status.success(), "benchmark failed: {status}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match bench {
        Bench::Sync(args) => runtime.block_on(sync::run(args)),
        Bench::Webhook(args) => runtime.block_on(webhook::run(args)),
        Bench::Scans(args) => runtime.block_on(scans::run(args)),
        Bench::Events(args) => runtime.block_on(events::run(args)),
        Bench::Apiserver(args) => runtime.block_on(apiserver::run(args)),
        Bench::Audit(args) => runtime.block_on(audit::run(args)),
        Bench::Console(args) => runtime.block_on(console::run(args)),
    }
}

/// The p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    if sorted.is_empty() {
        return std::time::Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
