//! Admission decisions made by the real kube-apiserver v1.28.7 calling the real agent's
//! webhook (issue #17): the agent in Kubernetes mode with the chart's arguments, as the chart's
//! ServiceAccount, reached by URL through a forwarder standing in for the Service. Denials with
//! field paths, alert warnings, server-side dry runs, updates of admitted objects, every
//! protected kind and ephemeral containers, and imported scans. Needs
//! envtest's `TEST_ASSET_*` variables (see `crates/testkit/src/kube/mod.rs`; `.ci/run` sets
//! them). One API server per test binary; the tests take turns, since a webhook configuration
//! is cluster-wide.

use std::{
    thread,
    time::{Duration, Instant},
};

use portcullis_testkit::kube::objects::{
    NO_PRIVILEGED, admitted, create, eventually_denied, namespace, pod, pod_with_image, stderr,
};
use portcullis_testkit::{json, kube::KubeEnv, success};
use serde_json::{Value, json};

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
    portcullis_testkit::eventually("the event of the real denial", || {
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
    // A real Trivy report (crates/scan/tests/scans/trivy, Apache-2.0), for the image pinned by
    // digest as a pod runs it.
    let image = "ghcr.io/aquasecurity/trivy-test-images:debian-buster@sha256:\
                 0b6e42a6f3f2a4b1bd9f2ae3f35fbe4e2b6bdb6e3a1b4e6c0c7e1e0e7e5c1d2a";
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/scan/tests/scans/trivy/debian-buster.json");
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
