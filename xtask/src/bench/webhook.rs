//! `cargo xtask bench webhook`: the agent's webhook over HTTPS with keep-alive, from a load
//! generator on loopback sharing the machine's 2 cores. A release control plane and agent,
//! a set of mixed policies synced to the agent, and the Deployment AdmissionReview captured
//! from kube-apiserver as the request. First the throughput (closed loop), then the latency at
//! half that rate (open loop, measured from the scheduled send time).
//!
//! With `--flood`, one closed-loop phase of `--connections` connections (1,000 for the target)
//! instead: the latency of the reviews that are answered (the rest are shed with 503), and,
//! applied halfway through, how long a policy takes to reach the agent, whose sync stream must
//! stay alive.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use portcullis_proto::v1::{
    ApplyPoliciesRequest, CapabilitiesRule, ImageRules, PodSecurityRule, Policy,
    RegisterClusterRequest, RegistryRule, ResourceRules, Rules,
    cluster_service_client::ClusterServiceClient, policy_service_client::PolicyServiceClient,
};

use super::harness::{self, Agent, Bearer, ControlPlane, http_get, root};

#[derive(clap::Args)]
pub struct WebhookArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The AdmissionReview sent (a file of agent/tests/fixtures/admission).
    #[arg(long, default_value = "deployment-create-basic.json")]
    fixture: String,
    /// The open-loop rate of the second phase [default: half the measured throughput].
    #[arg(long)]
    rate: Option<f64>,
    /// Run the agent with event recording on or off (`--record-events`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    record_events: bool,
    /// The flood phase alone (see the module), with a policy applied halfway through.
    #[arg(long)]
    flood: bool,
}

/// Ten policies of each kind: Pod Security restricted, individual controls, image hygiene.
fn policies() -> Vec<Policy> {
    let mut out = Vec::new();
    for i in 0..10 {
        out.push(Policy {
            name: format!("pss-{i}"),
            action: if i % 2 == 0 { "alert" } else { "block" }.into(),
            rules: Some(Rules {
                resource: Some(ResourceRules {
                    pod_security: Some(PodSecurityRule {
                        level: "baseline".into(),
                        version: "latest".into(),
                    }),
                    privileged: Some(Default::default()),
                    capabilities: Some(CapabilitiesRule {
                        allow: vec!["NET_BIND_SERVICE".into()],
                        required_drop: vec![],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        out.push(Policy {
            name: format!("hygiene-{i}"),
            rules: Some(Rules {
                image: Some(ImageRules {
                    registries: Some(RegistryRule {
                        allow: vec!["docker.io/library".into()],
                        deny: vec![],
                    }),
                    disallowed_tags: vec!["latest".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    out
}

pub async fn run(args: WebhookArgs) -> Result<()> {
    let cp = ControlPlane::start_bench(None, &[]);
    let channel = harness::channel(&cp).await?;
    let admin = Bearer::new(&cp.admin_token())?;
    let token = ClusterServiceClient::with_interceptor(channel.clone(), admin.clone())
        .register_cluster(RegisterClusterRequest {
            name: "bench".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .agent_token;
    let policies = policies();
    let count = policies.len();
    let mut operator = PolicyServiceClient::with_interceptor(channel, admin);
    operator
        .apply_policies(ApplyPoliciesRequest {
            policies,
            validate_only: false,
        })
        .await?;

    let cert_dir = tempfile::tempdir()?;
    let cert = cert_dir.path().join("webhook.crt");
    let record = format!("--record-events={}", args.record_events);
    let cert_flag = format!("--webhook-cert-out={}", cert.display());
    let agent = Agent::start_bench(
        &cp,
        "bench",
        &token,
        None,
        &[cert_flag.as_str(), record.as_str()],
    );
    let webhook_port = agent.webhook_port;
    let result = async {
        agent
            .wait_state(Duration::from_secs(30), "the policies", |s| {
                s["policies"].as_array().is_some_and(|p| p.len() == count)
            })
            .map_err(anyhow::Error::msg)?;
        let body = root()
            .join("agent/tests/fixtures/admission")
            .join(&args.fixture);
        println!(
            "== webhook: {count} policies, {}, {} keep-alive connections, events {}",
            args.fixture,
            args.connections,
            if args.record_events { "on" } else { "off" }
        );
        if args.flood {
            let load = loadgen_child(
                webhook_port,
                &cert,
                &body,
                args.connections,
                args.duration,
                0.0,
            )?;
            tokio::time::sleep(Duration::from_secs(args.duration / 2)).await;
            // A policy applied mid-flood: the time until the agent enforces it.
            let applied = std::time::Instant::now();
            let revision = operator
                .apply_policies(ApplyPoliciesRequest {
                    policies: vec![Policy {
                        name: "mid-flood".into(),
                        rules: Some(Rules {
                            resource: Some(ResourceRules {
                                privileged: Some(Default::default()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    validate_only: false,
                })
                .await?
                .into_inner()
                .results
                .first()
                .and_then(|r| r.policy.as_ref())
                .map_or(0, |p| p.revision);
            let reached = agent.wait_state(Duration::from_secs(30), "the mid-flood policy", |s| {
                s["revision"].as_u64().is_some_and(|r| r >= revision)
            });
            let delta_ms = applied.elapsed().as_secs_f64() * 1e3;
            let out = load
                .wait_with_output()
                .context("waiting for the load generator")?;
            if !out.status.success() {
                bail!(
                    "load generator failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let flood: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            println!("flood (closed loop, answered reviews; errors = shed with 503): {flood}");
            match reached {
                Ok(_) => {
                    println!("policy applied mid-flood reached the agent in {delta_ms:.0} ms")
                }
                Err(error) => println!("policy applied mid-flood: {error}"),
            }
            if let Some((200, body)) = http_get(agent.admin_port, "/state") {
                let state: serde_json::Value = serde_json::from_str(&body)?;
                println!(
                    "agent: connected {}, reconnects {}, webhook {}",
                    state["connected"], state["reconnects"], state["webhook"]
                );
            }
            return Ok(());
        }
        let max = loadgen(
            webhook_port,
            &cert,
            &body,
            args.connections,
            args.duration,
            0.0,
        )?;
        println!("throughput (closed loop): {max}");
        let rps = max["rps"].as_f64().context("rps")?;
        let rate = args.rate.unwrap_or(rps / 2.0);
        let half = loadgen(
            webhook_port,
            &cert,
            &body,
            args.connections,
            args.duration,
            rate,
        )?;
        println!("open loop at {rate:.0}/s: {half}");
        if let Some((200, body)) = http_get(agent.admin_port, "/state") {
            let state: serde_json::Value = serde_json::from_str(&body)?;
            println!("agent events: {}", state["events"]);
        }
        Ok(())
    }
    .await;
    drop(agent);
    result
}

fn loadgen(
    port: u16,
    ca: &std::path::Path,
    body: &std::path::Path,
    connections: usize,
    duration: u64,
    rate: f64,
) -> Result<serde_json::Value> {
    let out = loadgen_child(port, ca, body, connections, duration, rate)?
        .wait_with_output()
        .context("running the load generator")?;
    if !out.status.success() {
        bail!(
            "load generator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The load generator, started (its JSON result on standard output).
fn loadgen_child(
    port: u16,
    ca: &std::path::Path,
    body: &std::path::Path,
    connections: usize,
    duration: u64,
    rate: f64,
) -> Result<std::process::Child> {
    std::process::Command::new(root().join("target/release/xtask"))
        .args([
            "bench-loadgen",
            "--port",
            &port.to_string(),
            "--connections",
            &connections.to_string(),
        ])
        .args([
            "--duration",
            &duration.to_string(),
            "--rate",
            &rate.to_string(),
        ])
        .arg("--ca")
        .arg(ca)
        .arg("--body")
        .arg(body)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the load generator")
}
