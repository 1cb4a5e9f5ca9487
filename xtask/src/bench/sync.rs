//! `cargo xtask bench sync`:
//! 1. fan-out: N agent streams (in-process clients, one TLS connection each) against one
//!    control plane; one policy change; the time until every agent has received it and its ACK
//!    was answered (p50 / p99 / max), then a check that the fleet view shows lag 0 for all;
//! 2. snapshot: a real release agent syncing P policies from scratch (time to applied), and
//!    its resident memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;

use portcullis_proto::v1::{
    ApplyPoliciesRequest, ListClustersRequest, Policy, RegisterClusterRequest, ReportStatusRequest,
    ResourceRules, Rules, Scope, SyncRequest, agent_service_client::AgentServiceClient,
    cluster_service_client::ClusterServiceClient, policy_service_client::PolicyServiceClient,
    sync_response::Message,
};

use super::{
    harness::{self, Agent, Bearer, ControlPlane},
    percentile,
};

#[derive(clap::Args)]
pub struct SyncArgs {
    /// Agent streams for the fan-out.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Policies in the snapshot.
    #[arg(long, default_value_t = 5000)]
    policies: usize,
    /// On PostgreSQL: two control-plane replicas, the agents spread over both, the change
    /// written on the first.
    #[arg(long)]
    postgres: bool,
}

pub async fn run(args: SyncArgs) -> Result<()> {
    let database = harness::Database::start(args.postgres)?;
    fan_out(args.agents, &database).await?;
    snapshot(args.policies, &database).await
}

fn mk_policy(name: String, clusters: Vec<String>) -> Policy {
    Policy {
        name,
        description: "benchmark policy: forbid privileged containers and host namespaces".into(),
        action: "block".into(),
        scope: Some(Scope {
            clusters,
            ..Default::default()
        }),
        rules: Some(Rules {
            resource: Some(ResourceRules {
                privileged: Some(Default::default()),
                host_namespaces: Some(Default::default()),
                allow_privilege_escalation: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn register(cp: &ControlPlane, names: Vec<String>) -> Result<Vec<(String, String)>> {
    let channel = harness::channel(cp).await?;
    let admin = Bearer::new(&cp.admin_token())?;
    let mut tokens = Vec::with_capacity(names.len());
    for chunk in names.chunks(32) {
        let calls = chunk.iter().cloned().map(|name| {
            let mut client = ClusterServiceClient::with_interceptor(channel.clone(), admin.clone());
            let request = RegisterClusterRequest {
                name: name.clone(),
                ..Default::default()
            };
            async move {
                client
                    .register_cluster(request)
                    .await
                    .map(|r| (name, r.into_inner().agent_token))
            }
        });
        for result in futures_join_all(calls).await {
            tokens.push(result.context("registering a cluster")?);
        }
    }
    Ok(tokens)
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

async fn fan_out(agents: usize, database: &harness::Database) -> Result<()> {
    let cp = database.control_plane(&["--heartbeat-interval", "10"]);
    let replicas: Vec<ControlPlane> = match database.name() {
        "PostgreSQL" => vec![cp.start_replica()],
        _ => Vec::new(),
    };
    println!(
        "== fan-out: {agents} agent streams over {} control plane(s) on {}, one policy change",
        1 + replicas.len(),
        database.name()
    );
    let urls: Vec<String> = std::iter::once(&cp)
        .chain(&replicas)
        .map(ControlPlane::url)
        .collect();
    let started = Instant::now();
    let tokens = register(&cp, (0..agents).map(|i| format!("bench-{i}")).collect()).await?;
    println!("registered {agents} clusters in {:?}", started.elapsed());

    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(agents);
    let (done_tx, mut done_rx) = mpsc::channel::<Instant>(agents);
    let ca = std::fs::read(cp.ca_file())?;
    for (i, (cluster, token)) in tokens.into_iter().enumerate() {
        let url = urls[i % urls.len()].clone();
        let (ready_tx, done_tx, ca) = (ready_tx.clone(), done_tx.clone(), ca.clone());
        tokio::spawn(async move {
            if let Err(error) = one_agent(url, ca, cluster.clone(), token, ready_tx, done_tx).await
            {
                eprintln!("agent {cluster}: {error:#}");
            }
        });
    }
    drop((ready_tx, done_tx));
    let connect_started = Instant::now();
    for _ in 0..agents {
        ready_rx
            .recv()
            .await
            .context("an agent failed before its snapshot")?;
    }
    println!(
        "{agents} agents connected and applied their snapshot in {:?}",
        connect_started.elapsed()
    );

    let channel = harness::channel(&cp).await?;
    let admin = Bearer::new(&cp.admin_token())?;
    let mut policies = PolicyServiceClient::with_interceptor(channel.clone(), admin.clone());
    let t0 = Instant::now();
    let request = ApplyPoliciesRequest {
        policies: vec![mk_policy("fan-out".into(), vec![])],
        validate_only: false,
    };
    policies.apply_policies(request).await?;
    let write = t0.elapsed();
    let mut latencies = Vec::with_capacity(agents);
    for _ in 0..agents {
        let at = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
            .await
            .context("timed out waiting for ACKs")?
            .context("an agent failed")?;
        latencies.push(at.duration_since(t0));
    }
    latencies.sort();
    println!(
        "policy write acknowledged in {write:?}; applied + ACKed by all {agents}: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or_default()
    );

    let mut clusters = ClusterServiceClient::with_interceptor(channel, admin);
    // Replicas share their agents' reports about every second: a few reads at most.
    let mut caught_up = 0;
    for _ in 0..20 {
        caught_up = fleet_caught_up(&mut clusters).await?;
        if caught_up == agents {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("fleet view: {caught_up}/{agents} clusters connected with lag 0");
    if caught_up != agents {
        bail!("not every agent shows lag 0 in the fleet view");
    }
    Ok(())
}

/// Clusters the fleet view shows connected with lag 0.
async fn fleet_caught_up(
    clusters: &mut ClusterServiceClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    >,
) -> Result<usize> {
    let mut caught_up = 0;
    let mut token = String::new();
    loop {
        let page = clusters
            .list_clusters(ListClustersRequest {
                page_size: 1000,
                page_token: token,
            })
            .await?
            .into_inner();
        caught_up += page
            .clusters
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| s.connected && s.lag == 0))
            .count();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(caught_up)
}

/// A minimal in-process agent: sync, ACK the snapshot, then ACK the first delta.
async fn one_agent(
    url: String,
    ca: Vec<u8>,
    cluster: String,
    token: String,
    ready: mpsc::Sender<()>,
    done: mpsc::Sender<Instant>,
) -> Result<()> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let channel = Endpoint::from_shared(url)?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
        .connect()
        .await?;
    let mut client = AgentServiceClient::with_interceptor(channel, Bearer::new(&token)?);
    let request = SyncRequest {
        cluster: cluster.clone(),
        ..Default::default()
    };
    let mut stream = client.sync(request).await?.into_inner();
    let (mut epoch, mut revision) = (String::new(), 0);
    let report = |epoch: &str, revision: u64| ReportStatusRequest {
        cluster: cluster.clone(),
        agent_version: "bench".into(),
        applied_epoch: epoch.to_owned(),
        applied_revision: revision,
        ..Default::default()
    };
    while let Some(message) = stream.message().await? {
        match message.message {
            Some(Message::Start(start)) => epoch = start.epoch,
            Some(Message::SnapshotEnd(end)) => {
                revision = end.revision;
                client.report_status(report(&epoch, revision)).await?;
                ready.send(()).await?;
            }
            Some(Message::Delta(delta)) => {
                if delta.prev_revision != revision {
                    bail!("gap: at {revision}, delta from {}", delta.prev_revision);
                }
                revision = delta.revision;
                client.report_status(report(&epoch, revision)).await?;
                done.send(Instant::now()).await?;
                // Stay connected (heartbeats) until the benchmark has read the fleet view.
                while let Ok(Some(_)) = stream.message().await {}
                return Ok(());
            }
            _ => {}
        }
    }
    bail!("stream ended")
}

async fn snapshot(count: usize, database: &harness::Database) -> Result<()> {
    println!(
        "== snapshot: {count} policies to one fresh agent (release binary), on {}",
        database.name()
    );
    let cp = database.control_plane(&[]);
    let tokens = register(&cp, vec!["bench-snapshot".into()]).await?;
    let channel = harness::channel(&cp).await?;
    let admin = Bearer::new(&cp.admin_token())?;
    let mut policies = PolicyServiceClient::with_interceptor(channel, admin);
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let batch = chunk
            .iter()
            .map(|i| mk_policy(format!("policy-{i:05}"), vec!["bench-*".into()]))
            .collect();
        policies
            .apply_policies(ApplyPoliciesRequest {
                policies: batch,
                validate_only: false,
            })
            .await?;
    }
    let agent = Agent::start_bench(&cp, "bench-snapshot", &tokens[0].1, None, &[]);
    agent
        .wait_state(Duration::from_secs(120), "the snapshot", |s| {
            s["policies"].as_array().is_some_and(|p| p.len() == count)
        })
        .map_err(anyhow::Error::msg)?;
    println!(
        "agent process start to {count} policies applied (persisted, ACKed): {:?}; agent RSS {:.1} MiB",
        agent.started.elapsed(),
        agent.rss_mib()
    );
    Ok(())
}
