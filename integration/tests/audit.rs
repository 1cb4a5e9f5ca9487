//! Continuous audit on the real kube-apiserver v1.28.7 (issue #20): workloads that were
//! running before a policy existed are judged and listed centrally, resolve when fixed or
//! deleted, follow scan imports, and are neither lost nor duplicated across an agent restart,
//! a control plane outage, a control plane that lost its store, and a watch that expired
//! (410 Gone). Pods stay Pending here (no kubelet), which is all the audit needs. The agent
//! runs as the chart's ServiceAccount with exactly the chart's RBAC. Needs envtest's
//! `TEST_ASSET_*` variables (see `crates/testkit/src/kube/mod.rs`; `.ci/run` sets them).
//!
//! The shared API server of this binary runs without its watch cache, so a watch resuming
//! from a compacted resource version gets 410 Gone from etcd, as it does behind a busy
//! cluster's watch cache.

use std::time::{Duration, Instant};

use portcullis_testkit::kube::{
    ApiServer, Forwarder, KubeEnv,
    objects::{create, delete, namespace, pod, pod_with_image, stderr},
};
use portcullis_testkit::{Agent, ControlPlane, http_get, json, success};
use serde_json::{Value, json};

const API_ARGS: &[&str] = &["--watch-cache=false"];

const NO_PRIVILEGED_ALERT: &str =
    "name: no-privileged\naction: alert\nrules: {resource: {privileged: {}}}\n";
const NO_HIGH_ALERT: &str =
    "name: no-high\naction: alert\nrules: {image: {vulnerabilities: {severity: high}}}\n";
const SCANNED_IMAGE: &str = "ghcr.io/aquasecurity/trivy-test-images:debian-buster";

/// A test's world, and the namespace its workloads run in (the agent's own is exempt).
fn env(name: &str) -> Option<(KubeEnv, String)> {
    ApiServer::configure_shared(API_ARGS);
    let env = KubeEnv::new(name, json!({}))?;
    let apps = format!("{name}-apps");
    namespace(env.api, &apps);
    Some((env, apps))
}

/// Every violation of `namespace` (open and resolved), by "Kind/name/policy".
fn violations(cp: &ControlPlane, namespace: &str) -> Vec<Value> {
    let out = cp.admin_cli(&[
        "audit",
        "list",
        "--namespace",
        namespace,
        "--state",
        "all",
        "--limit",
        "0",
        "-o",
        "json",
    ]);
    json(&out).as_array().cloned().unwrap_or_default()
}

fn key(v: &Value) -> String {
    format!(
        "{}/{}/{}",
        v["kind"].as_str().unwrap_or(""),
        v["name"].as_str().unwrap_or(""),
        v["policy"].as_str().unwrap_or("")
    )
}

/// The violations of `namespace` as sorted "Kind/name/policy=state".
fn states(cp: &ControlPlane, namespace: &str) -> Vec<String> {
    let mut all: Vec<String> = violations(cp, namespace)
        .iter()
        .map(|v| format!("{}={}", key(v), v["state"].as_str().unwrap_or("")))
        .collect();
    all.sort();
    all
}

/// Waits until `states` of `namespace` are `expected`.
fn wait_states(cp: &ControlPlane, namespace: &str, expected: &[&str], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = states(cp, namespace);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: violations of {namespace} are {now:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A counter or gauge of the agent's `/metrics`.
fn metric(agent: &Agent, name: &str) -> f64 {
    let (_, body) = http_get(agent.admin_port, "/metrics").expect("agent /metrics");
    body.lines()
        .find_map(|line| {
            let (metric, value) = line.rsplit_once(' ')?;
            let metric = metric.split('{').next()?;
            (metric == name || metric == format!("{name}_total")).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

fn apply(api: &ApiServer, object: &Value) {
    let out = api.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn deployment(namespace: &str, name: &str, privileged: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
                "securityContext": {"privileged": privileged}}]}}}
    })
}

/// A Pod controlled by a ReplicaSet (as a Deployment's are): judged through it, not alone.
fn owned_pod(namespace: &str, name: &str, owner: &str) -> Value {
    let mut pod = pod(namespace, name, true);
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
        "uid": "00000000-0000-0000-0000-000000000001", "controller": true
    }]);
    pod
}

#[test]
fn running_workloads_are_judged_when_a_policy_arrives_and_resolve_when_fixed_or_deleted() {
    let Some((env, ns)) = env("audit-flow") else {
        return;
    };
    // Running before any policy exists.
    for object in [
        pod(&ns, "privileged", true),
        pod(&ns, "unprivileged", false),
        owned_pod(&ns, "web-7d4b9-x2x", "web-7d4b9"),
        deployment(&ns, "web", true),
        pod_with_image(&ns, "scanned", false, SCANNED_IMAGE),
    ] {
        let out = create(env.api, &object, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let agent = env.start_agent("agent-0", &[]);
    eventually_metric(&agent, "portcullis_agent_audit_running", 1.0);
    assert_eq!(states(&env.cp, &ns), Vec::<String>::new());

    env.apply_policy(NO_PRIVILEGED_ALERT);
    wait_states(
        &env.cp,
        &ns,
        &[
            "Deployment/web/no-privileged=open",
            "Pod/privileged/no-privileged=open",
        ],
        "a policy applied",
    );
    let audit = &agent.state()["audit"];
    assert_eq!(
        (&audit["running"], &audit["ready"], &audit["lastError"]),
        (&json!(true), &json!(true), &json!("")),
        "{audit}"
    );
    let listed = violations(&env.cp, &ns);
    let pod_violation = listed.iter().find(|v| v["kind"] == "Pod").unwrap();
    assert_eq!(pod_violation["cluster"], env.name.as_str());
    assert_eq!(pod_violation["action"], "alert");
    assert_eq!(pod_violation["severity"], "none");
    assert!(pod_violation["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(
        pod_violation["findings"][0]["path"],
        "spec.containers[0].securityContext.privileged"
    );
    // The summary counts them, and the fleet view the cluster's total (the API server is
    // shared with the other test, whose workloads this agent audits too).
    let summary =
        json(
            &env.cp
                .admin_cli(&["audit", "summary", "--cluster", &env.name, "-o", "json"]),
        );
    let in_namespace: u64 = summary["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["namespace"] == ns.as_str())
        .map(|row| row["violations"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(in_namespace, 2, "{summary}");
    let cluster = env.cp.cluster(&env.name);
    assert_eq!(
        cluster["status"]["openViolations"], summary["total"],
        "{cluster} {summary}"
    );

    // Watched while fixed (the Deployment's template) and deleted (the Pod): resolved.
    let admin = env.cp.admin_token();
    let mut watch = env
        .cp
        .cli_command(
            &admin,
            &["audit", "watch", "--namespace", &ns, "-o", "json"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    apply(env.api, &deployment(&ns, "web", false));
    delete(env.api, &pod(&ns, "privileged", true));
    wait_states(
        &env.cp,
        &ns,
        &[
            "Deployment/web/no-privileged=resolved",
            "Pod/privileged/no-privileged=resolved",
        ],
        "fixed and deleted",
    );
    std::thread::sleep(Duration::from_millis(500));
    watch.kill().unwrap();
    let watched = String::from_utf8(watch.wait_with_output().unwrap().stdout).unwrap();
    let mut seen: Vec<String> = watched
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .map(|v| format!("{}={}", key(&v), v["state"].as_str().unwrap_or("")))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "Deployment/web/no-privileged=resolved",
            "Pod/privileged/no-privileged=resolved"
        ],
        "{watched}"
    );

    // A Trivy report imported for a running image: a violation of the scan policy.
    env.apply_policy(NO_HIGH_ALERT);
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/scan/tests/scans/trivy/debian-buster.json");
    success(&env.cp.admin_cli(&[
        "scan",
        "import",
        report.to_str().unwrap(),
        "--image",
        SCANNED_IMAGE,
    ]));
    wait_states(
        &env.cp,
        &ns,
        &[
            "Deployment/web/no-privileged=resolved",
            "Pod/privileged/no-privileged=resolved",
            "Pod/scanned/no-high=open",
        ],
        "a scan imported",
    );
    let scanned = violations(&env.cp, &ns)
        .into_iter()
        .find(|v| v["policy"] == "no-high")
        .unwrap();
    assert!(
        ["critical", "high"].contains(&scanned["severity"].as_str().unwrap_or("")),
        "{scanned}"
    );
    let cve = scanned["findings"][0]["cveIds"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let by_cve = env.cp.admin_cli(&[
        "audit",
        "list",
        "--vulnerability",
        &cve,
        "--limit",
        "0",
        "-o",
        "json",
    ]);
    assert_eq!(json(&by_cve).as_array().map(Vec::len), Some(1), "{cve}");
}

fn eventually_metric(agent: &Agent, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(agent, name) < at_least {
        assert!(Instant::now() < deadline, "{name} stayed below {at_least}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// first_seen and received_time of each open violation of `namespace`.
fn stamps(cp: &ControlPlane, namespace: &str) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = violations(cp, namespace)
        .iter()
        .filter(|v| v["state"] == "open")
        .map(|v| (key(v), format!("{}", v["firstSeen"])))
        .collect();
    all.sort();
    all
}

#[test]
fn restarts_outages_a_lost_store_and_an_expired_watch_lose_and_duplicate_nothing() {
    let Some((mut env, ns)) = env("audit-outage") else {
        return;
    };
    // The agent reaches the API server through a forwarder the test can cut.
    let api_port: u16 = env.api.url.rsplit(':').next().unwrap().parse().unwrap();
    let cut = Forwarder::start();
    cut.set_backends(&[api_port]);
    env.route_api_through(&cut);
    env.apply_policy(NO_PRIVILEGED_ALERT);
    for name in ["a", "b"] {
        let out = create(env.api, &pod(&ns, name, true), &[]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut agent = env.start_agent("agent-0", &[]);
    wait_states(
        &env.cp,
        &ns,
        &["Pod/a/no-privileged=open", "Pod/b/no-privileged=open"],
        "first run",
    );
    let before = stamps(&env.cp, &ns);

    // Restarted: a new run resyncs, and nothing is opened twice.
    agent.restart();
    eventually_metric(&agent, "portcullis_agent_audit_delivered", 2.0);
    assert_eq!(
        states(&env.cp, &ns),
        ["Pod/a/no-privileged=open", "Pod/b/no-privileged=open"]
    );
    assert_eq!(
        stamps(&env.cp, &ns),
        before,
        "first seen kept over a restart"
    );
    for v in violations(&env.cp, &ns) {
        assert_eq!(v["history"], Value::Null, "reopened: {v}");
    }

    // The control plane down: changes wait in the agent and arrive when it is back.
    env.cp.kill();
    delete(env.api, &pod(&ns, "a", true));
    let out = create(env.api, &pod(&ns, "c", true), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    eventually_metric(&agent, "portcullis_agent_audit_violations_pending", 2.0);
    env.cp.restart();
    wait_states(
        &env.cp,
        &ns,
        &[
            "Pod/a/no-privileged=resolved",
            "Pod/b/no-privileged=open",
            "Pod/c/no-privileged=open",
        ],
        "after the outage",
    );

    // The control plane lost its store (a new epoch, no violations, no run): the agent is
    // asked to resync and reports everything again.
    env.cp.reset_store();
    let token = env.cp.register(&env.name);
    agent.set_token(&token);
    env.apply_policy(NO_PRIVILEGED_ALERT);
    wait_states(
        &env.cp,
        &ns,
        &["Pod/b/no-privileged=open", "Pod/c/no-privileged=open"],
        "after the store was lost",
    );

    // The watch expires: connections cut while a Pod is deleted and another created, etcd
    // compacted, then the agent resumes from its old resource version, gets 410 Gone and lists
    // again; what the listing lacks resolves, what it adds opens, nothing else changes.
    let relists = metric(&agent, "portcullis_agent_audit_relists");
    let before = stamps(&env.cp, &ns);
    cut.set_backends(&[]);
    cut.cut();
    delete(env.api, &pod(&ns, "b", true));
    let out = create(env.api, &pod(&ns, "d", true), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.api.compact_etcd();
    cut.set_backends(&[api_port]);
    eventually_metric(&agent, "portcullis_agent_audit_relists", relists + 1.0);
    wait_states(
        &env.cp,
        &ns,
        &[
            "Pod/b/no-privileged=resolved",
            "Pod/c/no-privileged=open",
            "Pod/d/no-privileged=open",
        ],
        "after the 410",
    );
    let after = stamps(&env.cp, &ns);
    let c = |s: &[(String, String)]| s.iter().find(|(k, _)| k.starts_with("Pod/c/")).cloned();
    assert_eq!(c(&after), c(&before), "an unchanged violation was touched");
}
