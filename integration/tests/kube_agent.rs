//! The agent in Kubernetes mode against the real kube-apiserver v1.28.7 (issue #17): the real
//! control plane, the real agent binary with the chart's arguments, authenticated as the
//! chart's ServiceAccount with exactly the chart's RBAC (a token minted through the
//! TokenRequest API), and the API server calling the webhook by URL through a forwarder that
//! stands in for the Service. One API server per test binary; the tests take turns, since a
//! webhook configuration is cluster-wide. Needs envtest's `TEST_ASSET_*` variables (see
//! `integration/src/kube.rs`; `.ci/run` sets them).

use std::{
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use portcullis_integration::{
    Agent, bin_dir, json,
    kube::{ApiServer, KubeEnv, render_chart, serial},
    success,
};
use serde_json::{Value, json};

const NO_PRIVILEGED: &str =
    "name: no-privileged\naction: block\nrules: {resource: {privileged: {}}}\n";

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn pod(namespace: &str, name: &str, privileged: bool) -> Value {
    pod_with_image(namespace, name, privileged, "registry.example.com/app:1")
}

fn pod_with_image(namespace: &str, name: &str, privileged: bool, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": image,
            "securityContext": {"privileged": privileged}}]},
    })
}

/// `kubectl create -f -` as the admin (with `extra` flags).
fn create(api: &ApiServer, object: &Value, extra: &[&str]) -> Output {
    let mut args = vec!["create", "-f", "-"];
    args.extend(extra);
    api.kubectl_with_input(&args, Some(&object.to_string()))
}

fn namespace(api: &ApiServer, name: &str) {
    let out = api.kubectl(&["create", "namespace", name]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Creates `object` until our webhook denies it (the API server picks up a new or changed
/// configuration within a moment); returns the denial. Deletes what got admitted meanwhile.
fn eventually_denied(api: &ApiServer, object: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = create(api, object, &[]);
        let text = stderr(&out);
        if !out.status.success() && text.contains("denied the request") {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not denied by the webhook: {text}",
            object["metadata"]["name"]
        );
        if out.status.success() {
            delete(api, object);
        }
        thread::sleep(Duration::from_millis(300));
    }
}

fn delete(api: &ApiServer, object: &Value) {
    let out = api.kubectl_with_input(
        &["delete", "-f", "-", "--wait=false", "--grace-period=0"],
        Some(&object.to_string()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

fn admitted(api: &ApiServer, object: &Value) {
    let out = create(api, object, &[]);
    assert!(
        out.status.success(),
        "{} was not admitted: {}",
        object["metadata"]["name"],
        stderr(&out)
    );
}

/// The agent's protection state, once it says `state`.
fn wait_protection(agent: &Agent, state: &str) -> Value {
    agent.wait_for(&format!("protection {state}"), |s| {
        s["protectionState"] == state
    })
}

#[test]
fn the_configuration_is_programmed_and_its_ca_verifies_the_served_certificate() {
    let Some(env) = KubeEnv::new(
        "k-programmed",
        json!({"exemptNamespaces": ["kube-system", "k-programmed-exempt"]}),
    ) else {
        return;
    };
    let _agent = env.start_agent("agent-0", &[]);
    let config = env
        .wait_config("programmed", |c| c.is_some())
        .expect("a configuration");
    let webhook = &config["webhooks"][0];
    assert_eq!(
        webhook["clientConfig"]["url"],
        format!("https://127.0.0.1:{}/validate", env.forwarder.port)
    );

    // Its CA bundle verifies the certificate the agent serves (for the URL's address), and
    // another CA does not (so the check can fail).
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(webhook["clientConfig"]["caBundle"].as_str().unwrap())
        .unwrap();
    let bundle_file = env.dir().join("bundle.pem");
    std::fs::write(&bundle_file, bundle).unwrap();
    let url = format!("https://127.0.0.1:{}/validate", env.forwarder.port);
    let curl = |ca: &std::path::Path| {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-X", "POST", "--data", "{}"])
            .arg("--cacert")
            .arg(ca)
            .arg(&url)
            .output()
            .unwrap()
    };
    let verified = curl(&bundle_file);
    assert!(verified.status.success(), "{}", stderr(&verified));
    let other = curl(&env.api.ca_file());
    assert!(!other.status.success(), "another CA verified the webhook");

    // Its rules cover every kind Portcullis protects, on CREATE and UPDATE.
    let mut covered: Vec<String> = webhook["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]), "{rule}");
            let group = rule["apiGroups"][0].as_str().unwrap().to_owned();
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |r| format!("{group}/{}", r.as_str().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    covered.sort();
    assert_eq!(
        covered,
        [
            "/pods",
            "/pods/ephemeralcontainers",
            "/services",
            "apps/daemonsets",
            "apps/deployments",
            "apps/replicasets",
            "apps/statefulsets",
            "batch/cronjobs",
            "batch/jobs",
        ]
    );
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["failurePolicy"], "Ignore");

    // The exempt namespaces (the chart's and the release's own) are left out.
    let selector = &webhook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(selector["key"], "kubernetes.io/metadata.name");
    assert_eq!(selector["operator"], "NotIn");
    let mut exempt: Vec<&str> = selector["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    exempt.sort_unstable();
    assert_eq!(
        exempt,
        ["k-programmed", "k-programmed-exempt", "kube-system"]
    );
    // And so the API server does not ask: a privileged pod there is admitted.
    env.apply_policy(NO_PRIVILEGED);
    namespace(env.api, "k-programmed-apps");
    eventually_denied(env.api, &pod("k-programmed-apps", "probe", true));
    namespace(env.api, "k-programmed-exempt");
    admitted(env.api, &pod("k-programmed-exempt", "privileged", true));
}

#[test]
fn a_privileged_pod_is_denied_with_its_field_path_and_a_compliant_one_created() {
    let Some(env) = KubeEnv::new("k-deny", json!({})) else {
        return;
    };
    let _agent = env.start_agent("agent-0", &[]);
    env.apply_policy(NO_PRIVILEGED);
    namespace(env.api, "k-deny-apps");
    let denied = eventually_denied(env.api, &pod("k-deny-apps", "privileged", true));
    assert!(
        denied.contains(r#"admission webhook "validate.portcullis.io" denied the request"#),
        "{denied}"
    );
    assert!(denied.contains("no-privileged"), "{denied}");
    assert!(
        denied.contains("spec.containers[0].securityContext.privileged"),
        "{denied}"
    );
    admitted(env.api, &pod("k-deny-apps", "plain", false));
    assert!(
        env.api
            .get("pod", Some("k-deny-apps"), "privileged")
            .is_none()
    );
}

#[test]
fn an_alert_policy_admits_and_the_api_server_returns_the_warnings() {
    let Some(env) = KubeEnv::new("k-alert", json!({})) else {
        return;
    };
    let _agent = env.start_agent("agent-0", &[]);
    env.apply_policy(&NO_PRIVILEGED.replace("action: block", "action: alert"));
    namespace(env.api, "k-alert-apps");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    let warnings = loop {
        attempt += 1;
        let object = pod("k-alert-apps", &format!("alerted-{attempt}"), true);
        let (status, warnings, body) = env
            .api
            .post("/api/v1/namespaces/k-alert-apps/pods", &object);
        assert_eq!(status, 201, "an alert policy must admit: {body}");
        if !warnings.is_empty() {
            break warnings;
        }
        assert!(Instant::now() < deadline, "no Warning header came back");
        thread::sleep(Duration::from_millis(300));
    };
    let all = warnings.join("\n");
    assert!(all.contains("no-privileged"), "{all}");
    assert!(
        all.contains("spec.containers[0].securityContext.privileged"),
        "{all}"
    );
    // kubectl shows them as `Warning:` lines.
    let out = create(env.api, &pod("k-alert-apps", "via-kubectl", true), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Warning: "), "{}", stderr(&out));
}

#[test]
fn a_server_side_dry_run_is_decided_the_same_way_and_records_no_event() {
    let Some(env) = KubeEnv::new("k-dryrun", json!({})) else {
        return;
    };
    let _agent = env.start_agent("agent-0", &[]);
    env.apply_policy(NO_PRIVILEGED);
    namespace(env.api, "k-dryrun-apps");
    let real = eventually_denied(env.api, &pod("k-dryrun-apps", "real", true));
    let dry = create(
        env.api,
        &pod("k-dryrun-apps", "dry", true),
        &["--dry-run=server"],
    );
    assert!(!dry.status.success());
    let dry = stderr(&dry);
    assert!(dry.contains("denied the request"), "{dry}");
    assert_eq!(
        dry.replace("\"dry\"", "NAME"),
        real.replace("\"real\"", "NAME"),
        "the same decision"
    );
    // A dry run that would be admitted is admitted, and creates nothing.
    let out = create(
        env.api,
        &pod("k-dryrun-apps", "dry-plain", false),
        &["--dry-run=server"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // A later real denial is recorded; the dry run before it never is.
    eventually_denied(env.api, &pod("k-dryrun-apps", "after", true));
    let names = || -> Vec<String> {
        let events = json(&env.cp.admin_cli(&[
            "events",
            "list",
            "--cluster",
            "k-dryrun",
            "--limit",
            "0",
            "-o",
            "json",
        ]));
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    portcullis_integration::eventually("the event of the real denial", || {
        names().contains(&"after".to_owned())
    });
    let names = names();
    assert!(!names.contains(&"dry".to_owned()), "{names:?}");
    assert!(names.contains(&"real".to_owned()), "{names:?}");
}

#[test]
fn relabelling_an_admitted_violating_pod_is_admitted() {
    let Some(env) = KubeEnv::new("k-relabel", json!({})) else {
        return;
    };
    let _agent = env.start_agent("agent-0", &[]);
    namespace(env.api, "k-relabel-apps");
    // Admitted while no policy forbade it.
    let old = pod("k-relabel-apps", "old", true);
    admitted(env.api, &old);
    env.apply_policy(NO_PRIVILEGED);
    eventually_denied(env.api, &pod("k-relabel-apps", "new", true));
    let out = env.api.kubectl(&[
        "label",
        "pod",
        "old",
        "-n",
        "k-relabel-apps",
        "tier=backend",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let labelled = env.api.get("pod", Some("k-relabel-apps"), "old").unwrap();
    assert_eq!(labelled["metadata"]["labels"]["tier"], "backend");
}

/// The pod template of each workload kind, privileged.
fn workload(kind: &str, name: &str, namespace: &str) -> Value {
    let template = json!({
        "metadata": {"labels": {"app": name}},
        "spec": {"restartPolicy": if matches!(kind, "Job" | "CronJob") { "Never" } else { "Always" },
            "containers": [{"name": "app", "image": "registry.example.com/app:1",
                "securityContext": {"privileged": true}}]},
    });
    let selector = json!({"matchLabels": {"app": name}});
    let (api_version, spec) = match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" => (
            "apps/v1",
            json!({"selector": selector, "template": template}),
        ),
        "StatefulSet" => (
            "apps/v1",
            json!({"selector": selector, "serviceName": name, "template": template}),
        ),
        "Job" => ("batch/v1", json!({"template": template})),
        "CronJob" => (
            "batch/v1",
            json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}),
        ),
        _ => unreachable!("{kind}"),
    };
    json!({"apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

#[test]
fn every_protected_kind_is_blocked_for_its_own_violation() {
    let Some(env) = KubeEnv::new("k-kinds", json!({})) else {
        return;
    };
    let _agent = env.start_agent("agent-0", &[]);
    env.apply_policy(
        "name: no-privileged\naction: block\nrules: {resource: {privileged: {}}}\n---\n\
         name: no-node-ports\naction: block\nrules: {resource: {service: {disallowTypes: [NodePort]}}}\n",
    );
    let ns = "k-kinds-apps";
    namespace(env.api, ns);
    eventually_denied(env.api, &pod(ns, "probe", true));
    for (kind, path) in [
        (
            "Deployment",
            "spec.template.spec.containers[0].securityContext.privileged",
        ),
        (
            "StatefulSet",
            "spec.template.spec.containers[0].securityContext.privileged",
        ),
        (
            "DaemonSet",
            "spec.template.spec.containers[0].securityContext.privileged",
        ),
        (
            "ReplicaSet",
            "spec.template.spec.containers[0].securityContext.privileged",
        ),
        (
            "Job",
            "spec.template.spec.containers[0].securityContext.privileged",
        ),
        (
            "CronJob",
            "spec.jobTemplate.spec.template.spec.containers[0].securityContext.privileged",
        ),
    ] {
        let object = workload(kind, &kind.to_lowercase(), ns);
        let out = create(env.api, &object, &[]);
        let text = stderr(&out);
        assert!(!out.status.success(), "{kind} admitted");
        assert!(text.contains("denied the request"), "{kind}: {text}");
        assert!(text.contains("no-privileged"), "{kind}: {text}");
        assert!(text.contains(path), "{kind}: {text}");
    }
    let service = |name: &str, kind: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": kind, "selector": {"app": "x"}, "ports": [{"port": 80}]}})
    };
    let out = create(env.api, &service("exposed", "NodePort"), &[]);
    let text = stderr(&out);
    assert!(!out.status.success(), "a NodePort Service was admitted");
    assert!(
        text.contains("no-node-ports") && text.contains("spec.type"),
        "{text}"
    );
    admitted(env.api, &service("internal", "ClusterIP"));

    // An ephemeral container is added through the pods/ephemeralcontainers subresource (as
    // `kubectl debug` does): a privileged one is blocked; the pod itself was admitted.
    admitted(env.api, &pod(ns, "target", false));
    let debug = |name: &str, privileged: bool| {
        let mut target = env.api.get("pod", Some(ns), "target").unwrap();
        target["spec"]["ephemeralContainers"] = json!([{"name": name,
            "image": "registry.example.com/debug:1", "targetContainerName": "app",
            "securityContext": {"privileged": privileged}}]);
        env.api.kubectl_with_input(
            &[
                "replace",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/pods/target/ephemeralcontainers"),
                "-f",
                "-",
            ],
            Some(&target.to_string()),
        )
    };
    let out = debug("debugger", true);
    let text = stderr(&out);
    assert!(
        !out.status.success(),
        "the privileged ephemeral container was added"
    );
    assert!(text.contains("denied the request"), "{text}");
    assert!(
        text.contains("spec.ephemeralContainers[0].securityContext.privileged"),
        "{text}"
    );
    let target = env.api.get("pod", Some(ns), "target").unwrap();
    assert!(target["spec"].get("ephemeralContainers").is_none());
    // One that is not privileged is added.
    let out = debug("plain-debugger", false);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_image_with_a_critical_vulnerability_in_its_imported_trivy_report_is_denied() {
    let Some(env) = KubeEnv::new("k-images", json!({})) else {
        return;
    };
    let _agent = env.start_agent("agent-0", &[]);
    // A real Trivy report (policy/tests/scans/trivy, Apache-2.0), for the image pinned by
    // digest as a pod runs it.
    let image = "ghcr.io/aquasecurity/trivy-test-images:debian-buster@sha256:\
                 0b6e42a6f3f2a4b1bd9f2ae3f35fbe4e2b6bdb6e3a1b4e6c0c7e1e0e7e5c1d2a";
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policy/tests/scans/trivy/debian-buster.json");
    success(
        &env.cp
            .admin_cli(&["scan", "import", report.to_str().unwrap(), "--image", image]),
    );
    let policy = "name: no-critical\naction: block\nrules: {image: {vulnerabilities: {severity: critical}}}\n";
    env.apply_policy(policy);
    let ns = "k-images-apps";
    namespace(env.api, ns);
    let denied = eventually_denied(env.api, &pod_with_image(ns, "vulnerable", false, image));
    assert!(denied.contains("no-critical"), "{denied}");
    assert!(denied.contains("CVE-"), "{denied}");
    // Another image is admitted.
    admitted(env.api, &pod(ns, "other", false));
    // Whitelisted: admitted.
    env.apply_policy(&format!(
        "{policy}whitelist: {{images: [\"ghcr.io/aquasecurity/trivy-test-images:*\"]}}\n"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let out = create(
            env.api,
            &pod_with_image(ns, &format!("whitelisted-{attempt}"), false, image),
            &[],
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the whitelisted image is still denied: {}",
            stderr(&out)
        );
        thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn protection_off_deletes_the_configuration_and_fail_waits_for_the_self_check() {
    let Some(env) = KubeEnv::new("k-protect", json!({})) else {
        return;
    };
    let agent = env.start_agent("agent-0", &[]);
    env.apply_policy(NO_PRIVILEGED);
    let ns = "k-protect-apps";
    namespace(env.api, ns);
    eventually_denied(env.api, &pod(ns, "probe", true));

    // Fail is held back while the webhook cannot be reached through its URL.
    env.forwarder.set_backends(&[]);
    success(&env.cp.admin_cli(&[
        "cluster",
        "protect",
        "k-protect",
        "--failure-policy",
        "fail",
    ]));
    let state = agent.wait_for("the held-back note", |s| {
        s["deployError"]
            .as_str()
            .is_some_and(|note| note.contains("held back"))
    });
    assert_eq!(
        env.config().unwrap()["webhooks"][0]["failurePolicy"],
        "Ignore",
        "{state}"
    );
    // Reachable again: Fail is programmed.
    env.forwarder.set_backends(&[agent.webhook_port]);
    env.wait_config("failurePolicy Fail", |c| {
        c.is_some_and(|c| c["webhooks"][0]["failurePolicy"] == "Fail")
    });

    // Off: the configuration is deleted and a privileged pod is admitted.
    success(
        &env.cp
            .admin_cli(&["cluster", "protect", "k-protect", "--disable"]),
    );
    env.wait_config("deleted", |c| c.is_none());
    wait_protection(&agent, "unprotected");
    admitted(env.api, &pod(ns, "while-off", true));
    // On again: it is back.
    success(
        &env.cp
            .admin_cli(&["cluster", "protect", "k-protect", "--enable"]),
    );
    env.wait_config("recreated", |c| c.is_some());
    eventually_denied(env.api, &pod(ns, "after-on", true));
}

#[test]
fn another_replica_takes_the_lease_over_and_repairs_drift() {
    let Some(env) = KubeEnv::new("k-lease", json!({})) else {
        return;
    };
    let mut agents = [
        env.start_agent("agent-0", &[]),
        env.start_agent("agent-1", &[]),
    ];
    env.wait_config("programmed", |c| c.is_some());
    let lease_name = env.flag("lease-name");
    let holder = || -> String {
        env.api.get("lease", Some("k-lease"), &lease_name).unwrap()["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let first = holder();
    let (stopped, other) = match first.as_str() {
        "agent-0" => (0, "agent-1"),
        "agent-1" => (1, "agent-0"),
        _ => panic!("the Lease holder is {first:?}"),
    };
    agents[stopped].kill();
    // Drift while nobody leads: the configuration deleted by hand.
    let out = env.api.kubectl(&[
        "delete",
        "validatingwebhookconfiguration",
        &env.config_name(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Documented: the Lease is taken over 15 s after its holder stops; the new leader repairs
    // at its next reconcile (every second here).
    let killed = Instant::now();
    env.wait_config("recreated by the other replica", |c| c.is_some());
    let took = killed.elapsed();
    assert_eq!(holder(), other);
    assert!(
        took < Duration::from_secs(15 + 2 + 10),
        "takeover and repair took {took:?}"
    );
    // An edit by hand is put back.
    let out = env.api.kubectl(&[
        "patch",
        "validatingwebhookconfiguration",
        &env.config_name(),
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/webhooks/0/namespaceSelector", "value": {}}]"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_config("the edit repaired", |c| {
        c.is_some_and(|c| {
            c["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["operator"] == "NotIn"
        })
    });
    drop(agents);
}

#[test]
fn creates_keep_working_across_certificate_rotations() {
    let Some(env) = KubeEnv::new("k-rotate", json!({})) else {
        return;
    };
    // A 30 s certificate renewed 20 s early: a new one about every 10 s.
    let _agent = env.start_agent(
        "agent-0",
        &[
            "--cert-validity-seconds=30",
            "--cert-renew-before-seconds=20",
        ],
    );
    env.apply_policy(NO_PRIVILEGED);
    let ns = "k-rotate-apps";
    namespace(env.api, ns);
    eventually_denied(env.api, &pod(ns, "probe", true));
    // Fail closed, so a handshake that fails would fail the create.
    success(
        &env.cp
            .admin_cli(&["cluster", "protect", "k-rotate", "--failure-policy", "fail"]),
    );
    env.wait_config("failurePolicy Fail", |c| {
        c.is_some_and(|c| c["webhooks"][0]["failurePolicy"] == "Fail")
    });
    let secret = env.flag("cert-secret");
    let leaf = || -> String {
        env.api.get("secret", Some("k-rotate"), &secret).unwrap()["data"]["tls.crt"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut leaves = vec![leaf()];
    let start = Instant::now();
    let mut creates = 0;
    while leaves.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the certificate was not rotated twice"
        );
        creates += 1;
        admitted(env.api, &pod(ns, &format!("plain-{creates}"), false));
        if creates % 5 == 0 {
            // And the webhook is still the one deciding.
            let out = create(env.api, &pod(ns, &format!("priv-{creates}"), true), &[]);
            assert!(
                stderr(&out).contains("denied the request"),
                "{}",
                stderr(&out)
            );
        }
        let now = leaf();
        if leaves.last() != Some(&now) {
            leaves.push(now);
        }
    }
    assert!(creates > 10, "only {creates} creates across two rotations");
}

#[test]
fn uninstall_as_the_chart_service_account_removes_the_configuration_for_good() {
    let Some(env) = KubeEnv::new("k-uninstall", json!({})) else {
        return;
    };
    let _agents = [
        env.start_agent("agent-0", &[]),
        env.start_agent("agent-1", &[]),
    ];
    env.wait_config("programmed", |c| c.is_some());
    // The chart's pre-delete hook: its arguments, as its ServiceAccount.
    let job = env
        .chart
        .iter()
        .find(|o| o["kind"] == "Job")
        .expect("the uninstall Job");
    let pod_spec = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod_spec["serviceAccountName"],
        env.object("ServiceAccount")["metadata"]["name"]
    );
    let args: Vec<&str> = pod_spec["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "uninstall");
    let out = Command::new(bin_dir().join("portcullis-agent"))
        .args(&args)
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .unwrap();
    assert!(out.status.success(), "uninstall failed: {}", stderr(&out));
    assert!(env.config().is_none());
    // No replica programs it again.
    thread::sleep(Duration::from_secs(4));
    assert!(
        env.config().is_none(),
        "a replica recreated the configuration"
    );
    // Idempotent.
    let again = Command::new(bin_dir().join("portcullis-agent"))
        .args(&args)
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn both_charts_are_accepted_by_server_side_apply_with_strict_validation() {
    let _serial = serial();
    let Some(api) = ApiServer::shared() else {
        return;
    };
    let helm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/ci");
    let required = json!({
        "clusterName": "prod-eu-1",
        "controlPlane": {"address": "https://portcullis-control-plane.portcullis-system.svc:8443"},
    });
    let cases = [
        (
            "portcullis-agent",
            "portcullis-agent",
            None,
            required.clone(),
        ),
        (
            "portcullis-agent",
            "edge",
            Some(helm.join("agent-nondefault.yaml")),
            json!({}),
        ),
        (
            "portcullis-agent",
            "on-the-node",
            None,
            json!({"clusterName": "node", "controlPlane": {"address": "https://cp:8443"},
                "hostNetwork": true, "webhook": {"port": 10443}, "adminPort": 10444}),
        ),
        (
            "portcullis-control-plane",
            "portcullis-control-plane",
            None,
            json!({}),
        ),
        (
            "portcullis-control-plane",
            "fleet",
            Some(helm.join("control-plane-nondefault.yaml")),
            json!({}),
        ),
    ];
    let ns = "portcullis-system";
    if api.get("namespace", None, ns).is_none() {
        namespace(api, ns);
    }
    // The non-default values ask for a ServiceMonitor: the Prometheus Operator's CRD, in
    // brief (its schema left open), as a cluster running the operator has it.
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                "plural": "servicemonitors", "singular": "servicemonitor"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]},
    });
    api.apply(&[crd]);
    let established = api.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=60s",
    ]);
    assert!(established.status.success(), "{}", stderr(&established));
    for (chart, release, values_file, values) in cases {
        let objects = render_chart(chart, release, ns, values_file.as_deref(), &values);
        assert!(!objects.is_empty(), "{chart} {release}: no objects");
        api.apply(&objects);
        for object in &objects {
            let kind = object["kind"].as_str().unwrap();
            let name = object["metadata"]["name"].as_str().unwrap();
            let namespace = object["metadata"]["namespace"].as_str();
            assert!(
                api.get(kind, namespace, name).is_some(),
                "{chart} {release}: {kind}/{name} not stored"
            );
        }
    }
}

/// The serving certificate's subjectAltName, as openssl prints it.
fn alt_names(pem: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_first_certificate_names_the_url_host_and_is_not_reissued() {
    for (name, host, san) in [
        ("k-url-ip", "127.0.0.1", "IP Address:127.0.0.1"),
        ("k-url-name", "localhost", "DNS:localhost"),
    ] {
        let Some(env) = KubeEnv::new(
            name,
            json!({"webhook": {"url": format!("https://{host}:{{port}}/validate")}}),
        ) else {
            return;
        };
        let url = format!("https://{host}:{}/validate", env.forwarder.port);
        assert_eq!(env.flag("webhook-url"), url);
        let secret_name = env.flag("cert-secret");
        let _agent = env.start_agent("agent-0", &[]);
        let secret = || env.api.get("secret", Some(name), &secret_name);
        // The first version of the Secret there is.
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some(secret) = secret() {
                break secret;
            }
            assert!(Instant::now() < deadline, "{name}: no Secret");
            thread::sleep(Duration::from_millis(50));
        };
        use base64::Engine;
        let leaf = |secret: &Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(secret["data"]["tls.crt"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        let names = alt_names(&leaf(&first));
        assert!(names.contains(san), "{name}: {names}");
        // The API server reaches the webhook by that URL.
        env.wait_config("programmed", |c| {
            c.is_some_and(|c| c["webhooks"][0]["clientConfig"]["url"] == url.as_str())
        });
        env.apply_policy(NO_PRIVILEGED);
        let ns = format!("{name}-apps");
        namespace(env.api, &ns);
        eventually_denied(env.api, &pod(&ns, "probe", true));
        // Five reconciles (one a second) later, still the first version.
        thread::sleep(Duration::from_secs(6));
        let now = secret().unwrap();
        assert_eq!(
            now["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"],
            "{name}: the Secret was rewritten"
        );
    }
}

#[test]
fn an_unreachable_webhook_fails_open_or_closed_as_programmed() {
    let Some(env) = KubeEnv::new("k-down", json!({})) else {
        return;
    };
    env.apply_policy(NO_PRIVILEGED);
    let ns = "k-down-apps";
    namespace(env.api, ns);
    let mut agent = env.start_agent("agent-0", &[]);
    eventually_denied(env.api, &pod(ns, "probe", true));
    // Ignore (the default): with the agent stopped, creates succeed.
    agent.kill();
    admitted(env.api, &pod(ns, "while-down-ignore", true));

    // Fail: creates in covered namespaces fail with the API server's webhook error; the
    // exempt namespaces, the agent's own among them, keep working.
    let agent = env.start_agent("agent-0b", &[]);
    success(
        &env.cp
            .admin_cli(&["cluster", "protect", "k-down", "--failure-policy", "fail"]),
    );
    env.wait_config("failurePolicy Fail", |c| {
        c.is_some_and(|c| c["webhooks"][0]["failurePolicy"] == "Fail")
    });
    drop(agent);
    let out = create(env.api, &pod(ns, "while-down-fail", false), &[]);
    let text = stderr(&out);
    assert!(
        !out.status.success(),
        "admitted with the webhook down and Fail"
    );
    assert!(
        text.contains("failed calling webhook") && text.contains("validate.portcullis.io"),
        "{text}"
    );
    admitted(env.api, &pod("k-down", "own-namespace", false));
    admitted(env.api, &pod("kube-system", "k-down-system", false));
    delete(env.api, &pod("kube-system", "k-down-system", false));
}

#[test]
fn a_missing_rbac_rule_is_reported_as_deploy_failed_until_restored() {
    let Some(env) = KubeEnv::new("k-rbac", json!({})) else {
        return;
    };
    let agent = env.start_agent("agent-0", &[]);
    env.apply_policy(NO_PRIVILEGED);
    wait_protection(&agent, "protected");
    // Take away the ClusterRole's rule for the webhook configuration.
    let role = env.object("ClusterRole").clone();
    let mut reduced = role.clone();
    reduced["rules"] = json!([role["rules"][1].clone()]);
    let out = env
        .api
        .kubectl_with_input(&["replace", "-f", "-"], Some(&reduced.to_string()));
    assert!(out.status.success(), "{}", stderr(&out));
    let state = wait_protection(&agent, "deploy-failed");
    let error = state["deployError"].as_str().unwrap().to_owned();
    assert!(error.contains("forbidden"), "{error}");
    assert!(error.contains("validatingwebhookconfigurations"), "{error}");
    // The fleet view says so too, with the API server's reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = env.cp.cluster("k-rbac");
        let text = status.to_string();
        if text.contains("deploy-failed") && text.contains("forbidden") {
            break;
        }
        assert!(Instant::now() < deadline, "fleet view: {status}");
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !error.contains("Status {"),
        "the reason, not a debug dump: {error}"
    );
    // Restored: it recovers.
    let out = env
        .api
        .kubectl_with_input(&["replace", "-f", "-"], Some(&role.to_string()));
    assert!(out.status.success(), "{}", stderr(&out));
    wait_protection(&agent, "protected");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = env.cp.cluster("k-rbac");
        if status.to_string().contains("\"protected\"") {
            break;
        }
        assert!(Instant::now() < deadline, "fleet view: {status}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn helm_test_verify_passes_only_while_enforcement_is_live() {
    let Some(env) = KubeEnv::new(
        "k-verify",
        json!({"verify": {"namespace": "k-verify-apps"}}),
    ) else {
        return;
    };
    namespace(env.api, "k-verify-apps");
    // The chart's `helm test` objects: its ServiceAccount, Role and RoleBinding, and the
    // Pod's arguments, run as that ServiceAccount.
    let verify_objects: Vec<Value> = env
        .chart
        .iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == "verify")
        .cloned()
        .collect();
    let test_pod = verify_objects
        .iter()
        .find(|o| o["kind"] == "Pod")
        .expect("the helm test Pod");
    let rbac: Vec<Value> = verify_objects
        .iter()
        .filter(|o| o["kind"] != "Pod")
        .cloned()
        .collect();
    assert_eq!(rbac.len(), 3, "ServiceAccount, Role, RoleBinding");
    env.api.apply(&rbac);
    let account = test_pod["spec"]["serviceAccountName"].as_str().unwrap();
    let kubeconfig = env.dir().join("verify-kubeconfig");
    env.api
        .write_kubeconfig(&kubeconfig, &env.api.mint_token("k-verify", account));
    let args: Vec<&str> = test_pod["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let verify = || {
        Command::new(bin_dir().join("portcullis-agent"))
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    };

    // No webhook yet: a privileged Pod would be admitted, and verify says so.
    let out = verify();
    assert!(!out.status.success(), "verify passed without a webhook");
    assert!(
        stderr(&out).contains("would be admitted"),
        "{}",
        stderr(&out)
    );

    // The agent programs its webhook and a policy forbids privileged containers.
    let _agent = env.start_agent("agent-0", &[]);
    env.apply_policy(NO_PRIVILEGED);
    eventually_denied(env.api, &pod("k-verify-apps", "probe", true));
    let out = verify();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("enforcement is live"), "{said}");
    assert!(said.contains("no-privileged"), "{said}");
    // Nothing was created: it was a dry run.
    let pods = env
        .api
        .kubectl(&["get", "pods", "-n", "k-verify-apps", "-o", "name"]);
    assert!(
        !String::from_utf8_lossy(&pods.stdout).contains("portcullis-verify"),
        "the dry run created a Pod"
    );
}
