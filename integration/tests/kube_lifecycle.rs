//! The agent keeping its admission components right on the real kube-apiserver v1.28.7
//! (issue #17), as the chart's ServiceAccount with exactly the chart's RBAC: the programmed
//! configuration, protection on and off, the failure policy and its self-check, Lease
//! takeover and drift repair, uninstall, an unreachable webhook, a missing RBAC rule, and
//! `helm test` (certificates: `kube_certificates.rs`). Needs
//! envtest's `TEST_ASSET_*` variables (see `crates/testkit/src/kube/mod.rs`; `.ci/run` sets
//! them). One API server per test binary; the tests take turns, since a webhook configuration
//! is cluster-wide.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use portcullis_testkit::kube::objects::{
    NO_PRIVILEGED, admitted, create, delete, eventually_denied, namespace, pod, stderr,
    wait_protection,
};
use portcullis_testkit::{bin_dir, kube::KubeEnv, success};
use serde_json::{Value, json};

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
