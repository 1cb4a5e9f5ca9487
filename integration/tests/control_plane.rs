//! The control plane binary end to end: TLS, tokens, reflection, policies and clusters through
//! the CLI and grpcurl, durability across SIGKILL, and refusal of bad input.

use std::{fs, path::Path};

use portcullis_testkit::{ControlPlane, failure, json, success};

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policies.yaml")
        .display()
        .to_string()
}

#[test]
fn reflection_lists_services_and_health_serves() {
    let cp = ControlPlane::start();
    let token = cp.admin_token();
    let services = success(&cp.grpcurl(Some(&token), &["list"]));
    for service in [
        "portcullis.v1.PolicyService",
        "portcullis.v1.ClusterService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing from:\n{services}"
        );
    }
    let described = success(&cp.grpcurl(Some(&token), &["describe", "portcullis.v1.Policy"]));
    assert!(described.contains("create_time"), "{described}");
    let health = success(&cp.grpcurl(
        None,
        &[
            "-d",
            r#"{"service": "portcullis.v1.PolicyService"}"#,
            "--",
            "grpc.health.v1.Health/Check",
        ],
    ));
    assert!(health.contains("SERVING"), "{health}");
}

#[test]
fn runs_with_freed_memory_returned_at_once() {
    // The binary runs itself again with mimalloc's purge delay at 0 (main.rs): the process
    // that serves, under the same pid, has it in its environment.
    let cp = ControlPlane::start();
    let environ = std::fs::read(format!("/proc/{}/environ", cp.pid().unwrap())).unwrap();
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(vars.contains(&&b"MIMALLOC_PURGE_DELAY=0"[..]), "{vars:?}");
}

#[test]
fn grpcurl_creates_and_gets_a_policy_as_json() {
    let cp = ControlPlane::start();
    let token = cp.admin_token();
    let body = r#"{"policy": {"name": "no-privileged", "action": "block",
        "scope": {"namespaces": {"exclude": ["kube-system"]}},
        "rules": {"resource": {"privileged": {}, "hostNamespaces": {"allowPID": true}}}}}"#;
    let created = json(&cp.grpcurl(
        Some(&token),
        &["-d", body, "--", "portcullis.v1.PolicyService/CreatePolicy"],
    ));
    assert_eq!(created["name"], "no-privileged");
    assert_eq!(created["revision"], "1");
    assert_eq!(
        created["rules"]["resource"]["hostNamespaces"]["allowPID"],
        true
    );

    let got = json(&cp.grpcurl(
        Some(&token),
        &[
            "-d",
            r#"{"name": "no-privileged"}"#,
            "--",
            "portcullis.v1.PolicyService/GetPolicy",
        ],
    ));
    assert_eq!(got, created);
    // The CLI reads the same object in the same JSON shape (timestamps aside: grpcurl writes
    // UTC as "Z", pbjson as "+00:00").
    let mut via_cli = json(&cp.admin_cli(&["policy", "get", "no-privileged", "-o", "json"]));
    let mut created = created;
    for doc in [&mut via_cli, &mut created] {
        let object = doc.as_object_mut().unwrap();
        assert!(object.remove("createTime").is_some() && object.remove("updateTime").is_some());
    }
    assert_eq!(via_cli, created);
}

#[test]
fn cli_applies_lists_and_deletes_policies() {
    let cp = ControlPlane::start();
    let out = success(&cp.admin_cli(&["policy", "apply", "-f", &examples()]));
    assert!(
        out.contains("no-privileged") && out.contains("created"),
        "{out}"
    );
    let again = success(&cp.admin_cli(&["policy", "apply", "-f", &examples()]));
    assert!(
        again.contains("unchanged") && !again.contains("created"),
        "{again}"
    );

    let listed = json(&cp.admin_cli(&["policy", "list", "-o", "json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["no-high-vulns", "no-privileged", "restricted-workloads"]
    );
    let table = success(&cp.admin_cli(&["policy", "list"]));
    assert!(table.starts_with("NAME"), "{table}");

    // A policy read back as YAML applies again unchanged: the output is the input format.
    let yaml = success(&cp.admin_cli(&["policy", "get", "no-high-vulns", "-o", "yaml"]));
    let file = tempfile::NamedTempFile::with_suffix(".yaml").unwrap();
    fs::write(file.path(), yaml).unwrap();
    let reapplied =
        success(&cp.admin_cli(&["policy", "apply", "-f", file.path().to_str().unwrap()]));
    assert!(reapplied.contains("unchanged"), "{reapplied}");

    success(&cp.admin_cli(&["policy", "delete", "no-privileged"]));
    let err = failure(&cp.admin_cli(&["policy", "get", "no-privileged"]));
    assert!(err.contains("NotFound"), "{err}");
}

#[test]
fn invalid_policies_are_rejected_with_paths_and_nothing_is_stored() {
    let cp = ControlPlane::start();
    let err = failure(&cp.admin_cli(&["policy", "apply", "-f", &data("invalid-policy.yaml")]));
    assert!(err.contains("InvalidArgument"), "{err}");
    for expected in [
        "name",
        "action",
        "scope.namespaces.include[1]",
        "rules.image.vulnerabilities.severity",
        "rules.resource.hostPorts",
    ] {
        assert!(err.contains(expected), "{expected} missing from: {err}");
    }
    let listed = json(&cp.admin_cli(&["policy", "list", "-o", "json"]));
    assert_eq!(
        listed,
        serde_json::json!([]),
        "the valid policy of the file was not stored either"
    );

    // The same through grpcurl: InvalidArgument with the field path.
    let body = r#"{"policy": {"name": "x", "rules": {"resource": {"podSecurity": {"level": "restricted", "version": "v1.99"}}}}}"#;
    let out = cp.grpcurl(
        Some(&cp.admin_token()),
        &["-d", body, "--", "portcullis.v1.PolicyService/CreatePolicy"],
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("InvalidArgument") && text.contains("rules.resource.podSecurity.version"),
        "{text}"
    );
}

#[test]
fn a_file_that_is_not_yaml_is_reported_with_line_and_column() {
    let cp = ControlPlane::start();
    let err = failure(&cp.admin_cli(&["policy", "apply", "-f", &data("not-yaml.yaml")]));
    assert!(
        err.contains("not-yaml.yaml") && err.contains("line") && err.contains("column"),
        "{err}"
    );
}

#[test]
fn stale_revision_is_aborted() {
    let cp = ControlPlane::start();
    let token = cp.admin_token();
    let create = r#"{"policy": {"name": "p", "rules": {"resource": {"privileged": {}}}}}"#;
    success(&cp.grpcurl(
        Some(&token),
        &[
            "-d",
            create,
            "--",
            "portcullis.v1.PolicyService/CreatePolicy",
        ],
    ));
    let update = |revision: u64| {
        format!(
            r#"{{"policy": {{"name": "p", "description": "r{revision}", "revision": "{revision}", "rules": {{"resource": {{"privileged": {{}}}}}}}}}}"#
        )
    };
    let updated = json(&cp.grpcurl(
        Some(&token),
        &[
            "-d",
            &update(1),
            "--",
            "portcullis.v1.PolicyService/UpdatePolicy",
        ],
    ));
    assert_eq!(updated["revision"], "2");
    let stale = cp.grpcurl(
        Some(&token),
        &[
            "-d",
            &update(1),
            "--",
            "portcullis.v1.PolicyService/UpdatePolicy",
        ],
    );
    let text = String::from_utf8_lossy(&stale.stderr).into_owned();
    assert!(
        !stale.status.success() && text.contains("Aborted"),
        "{text}"
    );
}

#[test]
fn tokens_roles_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.yaml");
    fs::write(
        &tokens,
        "tokens:\n- {name: dashboard, role: viewer, token: viewer-token-0123456789}\n",
    )
    .unwrap();
    let cp = ControlPlane::start_with(&["--tokens-file", tokens.to_str().unwrap()]);
    let viewer = "viewer-token-0123456789";

    success(&cp.cli(viewer, &["policy", "list"]));
    let err = failure(&cp.cli(viewer, &["policy", "apply", "-f", &examples()]));
    assert!(err.contains("PermissionDenied"), "{err}");
    let err = failure(&cp.cli("not-a-token", &["policy", "list"]));
    assert!(err.contains("Unauthenticated"), "{err}");
    let out = cp.grpcurl(None, &["--", "portcullis.v1.PolicyService/ListPolicies"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));

    // An agent token is not an operator token.
    let registered = json(&cp.admin_cli(&["cluster", "register", "edge-1", "-o", "json"]));
    let agent_token = registered["agentToken"].as_str().unwrap().to_owned();
    let err = failure(&cp.cli(&agent_token, &["policy", "list"]));
    assert!(err.contains("PermissionDenied"), "{err}");
}

#[test]
fn plaintext_http2_to_the_tls_port_is_refused() {
    let cp = ControlPlane::start();
    let out = std::process::Command::new(portcullis_testkit::grpcurl_path())
        .args(["-plaintext", "-max-time", "5", &cp.addr(), "list"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "plaintext was served");
    // And the server still works for TLS clients afterwards.
    success(&cp.admin_cli(&["policy", "list"]));
}

#[test]
fn clusters_register_protect_and_delete() {
    let cp = ControlPlane::start();
    let out = success(&cp.admin_cli(&["cluster", "register", "prod-eu-1", "--label", "env=prod"]));
    assert!(out.contains("pcl_"), "the token is printed once: {out}");
    let got = json(&cp.admin_cli(&["cluster", "get", "prod-eu-1", "-o", "json"]));
    assert_eq!(got["protection"]["failurePolicy"], "ignore");
    assert_eq!(got["labels"]["env"], "prod");
    assert!(got.get("agentToken").is_none());

    let protected = json(&cp.admin_cli(&[
        "cluster",
        "protect",
        "prod-eu-1",
        "--failure-policy",
        "fail",
        "--timeout",
        "5",
        "-o",
        "json",
    ]));
    assert_eq!(protected["protection"]["failurePolicy"], "fail");
    assert_eq!(protected["protection"]["timeoutSeconds"], 5);
    assert_eq!(protected["protection"]["enabled"], true);
    let off = json(&cp.admin_cli(&["cluster", "protect", "prod-eu-1", "--disable", "-o", "json"]));
    assert!(off["protection"].get("enabled").is_none() || off["protection"]["enabled"] == false);
    assert_eq!(
        off["protection"]["failurePolicy"], "fail",
        "other settings kept"
    );

    let err = failure(&cp.admin_cli(&["cluster", "protect", "prod-eu-1", "--timeout", "60"]));
    assert!(err.contains("timeoutSeconds"), "{err}");
    let fleet = success(&cp.admin_cli(&["cluster", "list"]));
    assert!(
        fleet.contains("prod-eu-1") && fleet.contains("CONNECTED"),
        "{fleet}"
    );
    success(&cp.admin_cli(&["cluster", "delete", "prod-eu-1"]));
    assert!(failure(&cp.admin_cli(&["cluster", "get", "prod-eu-1"])).contains("NotFound"));
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut cp = ControlPlane::start();
    success(&cp.admin_cli(&["policy", "apply", "-f", &examples()]));
    let before = json(&cp.admin_cli(&["policy", "get", "restricted-workloads", "-o", "json"]));
    cp.kill();
    cp.restart();
    let after = json(&cp.admin_cli(&["policy", "get", "restricted-workloads", "-o", "json"]));
    assert_eq!(after, before);
    assert_eq!(after["revision"], "3");
    // The next write continues the revision sequence.
    let out = json(&cp.admin_cli(&["cluster", "register", "c1", "-o", "json"]));
    assert_eq!(out["cluster"]["revision"], "4");
}

#[test]
fn a_data_dir_of_a_newer_format_is_refused() {
    let mut cp = ControlPlane::start();
    cp.kill();
    fs::write(cp.data_dir.join("FORMAT"), "99\n").unwrap();
    let out = cp.command().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("format version 99") && err.contains("supports up to"),
        "{err}"
    );
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut cp = ControlPlane::start();
    let status = cp.terminate();
    assert!(status.success(), "{status}");
}
