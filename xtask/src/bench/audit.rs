//! `cargo xtask bench audit`: continuous audit of a loaded cluster on a real API server.
//!
//! The real kube-apiserver (envtest's variables, as the tests), the release control plane
//! with 50 policies (48 that read every object and find nothing, one whose scope is changed
//! to measure a policy change, one scan policy), and the release agent in Kubernetes mode.
//! The cluster holds 1,500 Deployments with their ReplicaSets, 9,000 Pods under them
//! (controlled by the ReplicaSets, so judged through the Deployments) and 1,000 standalone
//! Pods running one image. Measured: the agent's RSS above its idle RSS once it judges them
//! all; the time from a policy change (scope widened to the namespace) until its 1,500 new
//! violations are all listed on the control plane; and from a Trivy import for the
//! standalone Pods' image until their 1,000 violations are.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use portcullis_proto::v1::{
    SummarizeViolationsRequest, audit_service_client::AuditServiceClient,
    cluster_service_client::ClusterServiceClient,
};
use serde_json::{Value, json};

use super::harness::{self, Agent, Bearer, ControlPlane, admin_cli, api_server, http_get, root};

#[derive(clap::Args)]
pub struct AuditArgs {
    #[arg(long, default_value_t = 1_500)]
    deployments: usize,
    /// Pods under the Deployments (spread over their ReplicaSets).
    #[arg(long, default_value_t = 9_000)]
    owned_pods: usize,
    /// Standalone Pods running the image the scan is imported for.
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
}

const NS: &str = "bench-audit";
const SCANNED: &str = "registry.bench.example/scanned:1";

fn policies(probe_scope: &str) -> String {
    let mut docs: Vec<String> = (0..48)
        .map(|i| {
            format!(
                "name: quiet-{i:02}\naction: alert\nrules: {{resource: {{hostNamespaces: {{}}, \
                 hostPath: {{}}}}}}\n"
            )
        })
        .collect();
    docs.push(format!(
        "name: probe\naction: alert\nscope: {{namespaces: {{include: [{probe_scope}]}}}}\n\
         rules: {{resource: {{privileged: {{}}}}}}\n"
    ));
    docs.push(
        "name: scan\naction: alert\nrules: {image: {vulnerabilities: {severity: high}}}\n"
            .to_owned(),
    );
    docs.join("---\n")
}

fn objects(args: &AuditArgs) -> Vec<Value> {
    let mut all = Vec::new();
    let per_rs = args.owned_pods.div_ceil(args.deployments.max(1));
    let mut pods = 0;
    for d in 0..args.deployments {
        let name = format!("web-{d:05}");
        let template = json!({
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": format!("registry.bench.example/app-{}:1", d % 50),
                "securityContext": {"privileged": true}}]}
        });
        all.push(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": template}
        }));
        let rs = format!("{name}-5d8f7");
        all.push(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs, "namespace": NS, "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": template}
        }));
        for p in 0..per_rs {
            if pods == args.owned_pods {
                break;
            }
            pods += 1;
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{rs}-{p:03}"), "namespace": NS,
                    "labels": {"app": name}, "ownerReferences": [{
                        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                        "uid": "00000000-0000-0000-0000-000000000002", "controller": true}]},
            });
            pod["spec"] = template["spec"].clone();
            all.push(pod);
        }
    }
    for p in 0..args.pods {
        all.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("standalone-{p:05}"), "namespace": NS},
            "spec": {"containers": [{"name": "app", "image": SCANNED}]}
        }));
    }
    all
}

fn metric(agent: &Agent, name: &str) -> f64 {
    let Some((_, body)) = http_get(agent.admin_port, "/metrics") else {
        return 0.0;
    };
    body.lines()
        .find_map(|line| {
            let (metric, value) = line.rsplit_once(' ')?;
            let metric = metric.split('{').next()?;
            // Counters are exported with `_total`.
            (metric == name || metric.strip_suffix("_total") == Some(name))
                .then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

pub async fn run(args: AuditArgs) -> Result<()> {
    let api = api_server().await?;
    for ns in ["portcullis-system", NS] {
        let out = api.kubectl(&["create", "namespace", ns]);
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cp = ControlPlane::start_bench(None, &[]);
    let admin = cp.admin_token();
    let cli = |args: &[&str]| admin_cli(&cp, args);
    let token = cp.register("bench");
    // Protection off: the objects are created without the webhook in the way (the audit
    // runs whatever the protection).
    cli(&["cluster", "protect", "bench", "--disable"])?;
    let dir = tempfile::tempdir()?;
    let policy_file = dir.path().join("policies.yaml");
    std::fs::write(&policy_file, policies("nowhere"))?;
    cli(&["policy", "apply", "-f", policy_file.to_str().unwrap()])?;
    let agent = Agent::start_bench(
        &cp,
        "bench",
        &token,
        Some(&api.kubeconfig()),
        &[
            "--namespace",
            "portcullis-system",
            "--reconcile-interval",
            "1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&agent, "portcullis_agent_audit_running") < 1.0 {
        ensure!(Instant::now() < deadline, "the audit did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = agent.rss_mib();

    let all = objects(&args);
    let created = Instant::now();
    for chunk in all.chunks(1_000) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": chunk});
        let out = api.kubectl_with_input(
            &["create", "-f", "-", "-o", "name"],
            Some(&list.to_string()),
        );
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "created {} objects in {:.1} s",
        all.len(),
        created.elapsed().as_secs_f64()
    );
    let judged_alone = (args.deployments + args.pods) as f64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while metric(&agent, "portcullis_agent_audit_objects") < judged_alone {
        ensure!(
            Instant::now() < deadline,
            "the audit did not see every object"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = agent.rss_mib();

    let channel = harness::channel(&cp).await?;
    let bearer = Bearer::new(&admin)?;
    let mut audit = AuditServiceClient::with_interceptor(channel.clone(), bearer.clone());
    let mut count = async |policy: &str| -> Result<u64> {
        let summary = audit
            .summarize_violations(SummarizeViolationsRequest {
                cluster: "bench".into(),
            })
            .await?
            .into_inner();
        Ok(summary
            .counts
            .iter()
            .filter(|c| c.policy == policy)
            .map(|c| c.violations)
            .sum())
    };

    // A policy change: the probe's scope widened to the namespace.
    std::fs::write(&policy_file, policies(NS))?;
    let start = Instant::now();
    cli(&["policy", "apply", "-f", policy_file.to_str().unwrap()])?;
    while count("probe").await? < args.deployments as u64 {
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "policy change not visible"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let policy_change = start.elapsed();

    // A scan import that makes the standalone Pods violate.
    let report = root().join("crates/scan/tests/scans/trivy/debian-buster.json");
    let start = Instant::now();
    cli(&[
        "scan",
        "import",
        report.to_str().unwrap(),
        "--image",
        SCANNED,
    ])?;
    while count("scan").await? < args.pods as u64 {
        ensure!(
            start.elapsed() < Duration::from_secs(120),
            "scan import not visible"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let scan_import = start.elapsed();
    let cluster = ClusterServiceClient::with_interceptor(channel, bearer)
        .get_cluster(portcullis_proto::v1::GetClusterRequest {
            name: "bench".into(),
        })
        .await?
        .into_inner();

    println!(
        "\n{} Deployments ({} Pods under them), {} standalone Pods, 50 policies; release agent \
         on kube-apiserver v1.28.7",
        args.deployments, args.owned_pods, args.pods
    );
    println!("| measure | result | target |");
    println!("|---|---|---|");
    println!(
        "| policy change → {} violations listed | {:.0} ms | ≤ 2,000 ms |",
        args.deployments,
        policy_change.as_secs_f64() * 1e3
    );
    println!(
        "| scan import → {} violations listed | {:.0} ms | ≤ 2,000 ms |",
        args.pods,
        scan_import.as_secs_f64() * 1e3
    );
    println!(
        "| agent RSS above idle ({idle:.1} MiB idle) | {:.1} MiB | ≤ 40 MB |",
        loaded - idle
    );
    println!(
        "| judgements | {:.0} | |",
        metric(&agent, "portcullis_agent_audit_judged")
    );
    println!(
        "| open violations in the fleet view | {} | |",
        cluster.status.map_or(0, |s| s.open_violations)
    );
    Ok(())
}
