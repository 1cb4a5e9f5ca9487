//! `cargo xtask bench scans`: image scans at fleet scale against release binaries.
//! 1. import: N Trivy reports (SchemaVersion 2, ~50 vulnerabilities each, ids drawn from a
//!    shared pool as real images share CVEs) through `ScanService.ImportReport` with C
//!    concurrent clients: reports per second;
//! 2. snapshot: a fresh release agent syncing every scan: time from process start until all
//!    are applied (persisted and ACKed), and the agent's resident memory.
//!
//! The verdict lookup itself is measured by criterion (`cargo bench -p portcullis-engine
//! --bench scan_lookup`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use portcullis_proto::v1::{
    ImportReportRequest, RegisterClusterRequest, cluster_service_client::ClusterServiceClient,
    scan_service_client::ScanServiceClient,
};

use super::{
    harness::{self, Agent, Bearer, ControlPlane},
    percentile,
};

#[derive(clap::Args, Clone)]
pub struct ScansArgs {
    /// Images (one report each).
    #[arg(long, default_value_t = 100_000)]
    images: usize,
    /// Vulnerabilities per report.
    #[arg(long, default_value_t = 50)]
    vulnerabilities: usize,
    /// Distinct vulnerability ids the reports draw from.
    #[arg(long, default_value_t = 20_000)]
    id_pool: usize,
    /// Concurrent import clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Keep the control plane's data here; when it already holds the scans (a previous run),
    /// skip the import and measure only the snapshot.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
    /// On PostgreSQL (a server of the benchmark's own; not with `--keep`); the snapshot is
    /// served by a second replica.
    #[arg(long, conflicts_with = "keep")]
    postgres: bool,
}

const SEVERITIES: [&str; 5] = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"];

/// A Trivy SchemaVersion 2 report of image `i`, shaped like real Trivy output.
fn report(i: usize, args: &ScansArgs) -> Vec<u8> {
    // A cheap deterministic mix so images differ but share ids.
    let mix = |n: usize| (n.wrapping_mul(2_654_435_761) >> 7) % args.id_pool.max(1);
    let vulnerabilities: Vec<_> = (0..args.vulnerabilities)
        .map(|v| {
            let id = mix(i * 131 + v * 7919);
            json!({
                "VulnerabilityID": format!("CVE-{}-{:05}", 2015 + id % 10, id),
                "PkgName": format!("pkg-{}", v % 40),
                "InstalledVersion": "1.2.3-r0",
                "FixedVersion": if v % 3 == 0 { "" } else { "1.2.4-r0" },
                "Status": if v % 3 == 0 { "affected" } else { "fixed" },
                "Severity": SEVERITIES[id % SEVERITIES.len()],
                "PublishedDate": "2024-01-15T12:00:00Z",
            })
        })
        .collect();
    let digest = format!("sha256:{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15);
    let repository = format!("registry.example.com/team-{}/app-{i}", i % 100);
    let report = json!({
        "SchemaVersion": 2,
        "CreatedAt": "2026-11-27T01:00:00Z",
        "ArtifactName": format!("{repository}:1.0"),
        "ArtifactType": "container_image",
        "Metadata": {
            "OS": {"Family": "alpine", "Name": "3.19.1"},
            "ImageID": digest,
            "RepoTags": [format!("{repository}:1.0")],
            "RepoDigests": [format!("{repository}@{digest}")],
        },
        "Results": [{
            "Target": format!("{repository}:1.0 (alpine 3.19.1)"),
            "Class": "os-pkgs",
            "Type": "alpine",
            "Vulnerabilities": vulnerabilities,
        }],
    });
    serde_json::to_vec(&report).unwrap_or_default()
}

pub async fn run(args: ScansArgs) -> Result<()> {
    let imported = args.keep.as_ref().is_some_and(|k| k.join("cp").exists());
    let database = harness::Database::start(args.postgres)?;
    let cp = match &args.keep {
        Some(keep) => {
            std::fs::create_dir_all(keep)?;
            ControlPlane::start_bench(Some(keep.join("cp")), &[])
        }
        None => database.control_plane(&[]),
    };
    let channel = harness::channel(&cp).await?;
    let admin = Bearer::new(&cp.admin_token())?;
    if !imported {
        import(&args, &cp, channel.clone(), admin.clone()).await?;
    }
    println!("== on {}", database.name());
    match args.postgres {
        true => {
            let replica = cp.start_replica();
            let channel = harness::channel(&replica).await?;
            snapshot(&args, &replica, channel, admin).await
        }
        false => snapshot(&args, &cp, channel, admin).await,
    }
}

async fn import(
    args: &ScansArgs,
    cp: &ControlPlane,
    channel: tonic::transport::Channel,
    admin: Bearer,
) -> Result<()> {
    let _ = cp;

    println!(
        "== import: {} Trivy reports of {} vulnerabilities ({} distinct ids), {} clients",
        args.images, args.vulnerabilities, args.id_pool, args.concurrency
    );
    let size = report(0, args).len();
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Duration>>(1024);
    let per_client = args.images.div_ceil(args.concurrency);
    let shared = std::sync::Arc::new(args.clone());
    for client_index in 0..args.concurrency {
        let mut client = ScanServiceClient::with_interceptor(channel.clone(), admin.clone());
        let (tx, args) = (tx.clone(), shared.clone());
        tokio::spawn(async move {
            let range =
                client_index * per_client..((client_index + 1) * per_client).min(args.images);
            for i in range {
                let request = ImportReportRequest {
                    format: "trivy".into(),
                    report: report(i, &args).into(),
                    image: String::new(),
                };
                let sent = Instant::now();
                let result = client
                    .import_report(request)
                    .await
                    .map(|_| sent.elapsed())
                    .with_context(|| format!("importing report {i}"));
                if tx.send(result).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(args.images);
    while let Some(result) = rx.recv().await {
        latencies.push(result?);
        if latencies.len() % 20_000 == 0 {
            println!("  {} imported ({:?})", latencies.len(), started.elapsed());
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "imported {} reports (~{} KiB each) in {elapsed:.1?}: {:.0} reports/s; ImportReport latency p50 {:?}, p99 {:?}",
        latencies.len(),
        size / 1024,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
    );
    Ok(())
}

async fn snapshot(
    args: &ScansArgs,
    cp: &ControlPlane,
    channel: tonic::transport::Channel,
    admin: Bearer,
) -> Result<()> {
    println!(
        "== snapshot: {} image summaries to one fresh agent",
        args.images
    );
    let mut clusters = ClusterServiceClient::with_interceptor(channel, admin);
    let name = format!("bench-scans-{}", std::process::id());
    let token = clusters
        .register_cluster(RegisterClusterRequest {
            name: name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .agent_token;
    let agent = Agent::start_bench(cp, &name, &token, None, &[]);
    let images = args.images as u64;
    agent
        .wait_state(Duration::from_secs(300), "the snapshot", |s| {
            s["scans"].as_u64() == Some(images)
        })
        .map_err(anyhow::Error::msg)?;
    println!(
        "agent process start to {} scans applied (persisted, ACKed): {:.2?}; agent RSS {:.1} MiB",
        args.images,
        agent.started.elapsed(),
        agent.rss_mib()
    );
    // Memory once the snapshot's transient buffers are gone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("agent RSS 5 s later: {:.1} MiB", agent.rss_mib());
    Ok(())
}
