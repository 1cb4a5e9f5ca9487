//! `cargo xtask bench events`: the control plane's event store against a release binary.
//! 1. ingest: E events in batches of B through `AgentService.ReportEvents` from C concurrent
//!    clients (10 clusters, 20 policies): events per second, acknowledged (durable);
//! 2. query: `ListEvents` with a cluster + policy filter (first page of 100, newest first)
//!    over everything stored: p50 / p99 / max of Q calls.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tonic::transport::Channel;

use portcullis_proto::v1::{
    Event, EventFilter, EventFinding, ListEventsRequest, RegisterClusterRequest,
    ReportEventsRequest, agent_service_client::AgentServiceClient,
    cluster_service_client::ClusterServiceClient, event_service_client::EventServiceClient,
};

use super::{
    harness::{self, Bearer},
    percentile,
};

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Events ingested (and then queried).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per ReportEvents call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent reporting clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// ListEvents calls timed.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// On PostgreSQL: two control-plane replicas, the clients spread over both.
    #[arg(long)]
    postgres: bool,
}

const CLUSTERS: usize = 10;
const POLICIES: usize = 20;

fn mk_event(cluster: usize, n: usize, millis: u64) -> Event {
    let stamp = uuid::Timestamp::from_unix(
        uuid::NoContext,
        millis / 1000,
        (millis % 1000) as u32 * 1_000_000,
    );
    Event {
        id: uuid::Uuid::new_v7(stamp).to_string(),
        time: Some(pbjson_types::Timestamp {
            seconds: (millis / 1000) as i64,
            nanos: ((millis % 1000) * 1_000_000) as i32,
        }),
        cluster: format!("cluster-{cluster}"),
        namespace: format!("team-{}", n % 50),
        kind: "Deployment".into(),
        name: format!("app-{}", n % 5000),
        operation: "CREATE".into(),
        user: "system:serviceaccount:ci:deployer".into(),
        groups: vec!["system:serviceaccounts".into()],
        images: vec![format!("registry.example.com/team/app-{}:1.{}", n % 5000, n % 7)],
        policy: format!("policy-{}", n % POLICIES),
        policy_revision: 3,
        action: if n.is_multiple_of(4) { "alerted" } else { "blocked" }.into(),
        findings: vec![EventFinding {
            rule: "vulnerabilities".into(),
            path: "spec.template.spec.containers[0].image".into(),
            value: format!("registry.example.com/team/app-{}:1.{}", n % 5000, n % 7),
            message: "image has 3 vulnerabilities at or above high: CVE-2024-0001, CVE-2024-0002, CVE-2024-0003".into(),
            cve_ids: vec!["CVE-2024-0001".into(), "CVE-2024-0002".into(), "CVE-2024-0003".into()],
        }],
        admission_uid: uuid::Uuid::new_v4().to_string(),
        count: 1,
        ..Default::default()
    }
}

pub async fn run(args: EventsArgs) -> Result<()> {
    let database = harness::Database::start(args.postgres)?;
    let cp = database.control_plane(&[
        "--event-max-count",
        &(args.events * 2).to_string(),
        "--event-max-batch",
        &args.batch.to_string(),
    ]);
    // On PostgreSQL, a second replica takes half the clients.
    let replica = args.postgres.then(|| cp.start_replica());
    let channel = harness::channel(&cp).await?;
    let channels = match &replica {
        Some(replica) => vec![channel.clone(), harness::channel(replica).await?],
        None => vec![channel.clone()],
    };
    let admin = Bearer::new(&cp.admin_token())?;
    let mut clusters = ClusterServiceClient::with_interceptor(channel.clone(), admin.clone());
    let mut tokens = Vec::new();
    for c in 0..CLUSTERS {
        let response = clusters
            .register_cluster(RegisterClusterRequest {
                name: format!("cluster-{c}"),
                ..Default::default()
            })
            .await?;
        tokens.push(response.into_inner().agent_token);
    }

    println!(
        "== ingest: {} events, batches of {}, {} clients, {} control plane(s) on {}",
        args.events,
        args.batch,
        args.concurrency,
        channels.len(),
        database.name()
    );
    let started = Instant::now();
    let mut latencies = ingest(
        &channels,
        &tokens,
        args.events,
        args.batch,
        args.concurrency,
    )
    .await?;
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "ingested {} events in {elapsed:.1?}: {:.0} events/s; ReportEvents latency p50 {:?}, p99 {:?}",
        args.events,
        args.events as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
    );

    println!(
        "== query: ListEvents, cluster + policy filter, page of 100, over {} events",
        args.events
    );
    let mut events = EventServiceClient::with_interceptor(channel, admin);
    let mut latencies = Vec::with_capacity(args.queries);
    let mut returned = 0;
    for q in 0..args.queries {
        let filter = EventFilter {
            cluster: format!("cluster-{}", q % CLUSTERS),
            policy: format!("policy-{}", (q * 7) % POLICIES),
            ..Default::default()
        };
        let sent = Instant::now();
        let page = events
            .list_events(ListEventsRequest {
                filter: Some(filter),
                page_size: 100,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        latencies.push(sent.elapsed());
        returned += page.events.len();
    }
    latencies.sort();
    println!(
        "{} queries ({} events returned): p50 {:?}, p99 {:?}, max {:?}",
        args.queries,
        returned,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(Duration::ZERO),
    );
    Ok(())
}

/// Reports `total` events, spread over the last day, in batches of `batch` from `concurrency`
/// clients through `AgentService.ReportEvents`, each batch for one of the clusters whose agent
/// tokens are given (`cluster-0`, `cluster-1`, …); every call's latency.
pub async fn ingest(
    channels: &[Channel],
    tokens: &[String],
    total: usize,
    batch: usize,
    concurrency: usize,
) -> Result<Vec<Duration>> {
    // Events spread over the last day, in time order per client.
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        - 86_400_000;
    let batches = total.div_ceil(batch);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let channel = channels[worker % channels.len()].clone();
        let tokens = tokens.to_vec();
        let (batch_size, clusters) = (batch, tokens.len());
        tasks.push(tokio::spawn(async move {
            let mut clients: Vec<_> = tokens
                .iter()
                .map(|t| {
                    Bearer::new(t)
                        .map(|b| AgentServiceClient::with_interceptor(channel.clone(), b))
                        .map_err(anyhow::Error::from)
                })
                .collect::<Result<_>>()?;
            let mut latencies = Vec::new();
            for b in (worker..batches).step_by(concurrency) {
                let cluster = b % clusters;
                let first = b * batch_size;
                let events = (first..(first + batch_size).min(total))
                    .map(|n| {
                        mk_event(
                            cluster,
                            n,
                            start_ms + (n as u64 * 86_400_000 / total as u64),
                        )
                    })
                    .collect();
                let sent = Instant::now();
                clients[cluster]
                    .report_events(ReportEventsRequest {
                        cluster: format!("cluster-{cluster}"),
                        events,
                    })
                    .await
                    .with_context(|| format!("batch {b}"))?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}
