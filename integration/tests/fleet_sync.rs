//! Fleet sync end to end: real control plane and agents on loopback. Policies reach exactly the
//! agents in scope, every change is ACKed, agents resume by revision across control-plane
//! restarts, serve from their cache while it is down, resync on a new epoch, and bad tokens are
//! refused.

use std::{fs, path::Path};

use portcullis_testkit::{Agent, ControlPlane, eventually, json, success};

fn write_policy(dir: &Path, name: &str, clusters: &[&str]) -> String {
    let path = dir.join(format!("{name}.yaml"));
    let clusters = clusters
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    fs::write(
        &path,
        format!("name: {name}\nscope: {{clusters: [{clusters}]}}\nrules:\n  resource:\n    privileged: {{}}\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// Applies a one-rule policy scoped to `clusters` through the CLI.
fn apply_policy(cp: &ControlPlane, dir: &Path, name: &str, clusters: &[&str]) {
    success(&cp.admin_cli(&["policy", "apply", "-f", &write_policy(dir, name, clusters)]));
}

/// Waits until the fleet view shows `cluster` connected, at the store's revision, lag 0.
fn wait_acked(cp: &ControlPlane, cluster: &str) -> serde_json::Value {
    let revision = cp.revision();
    let mut last = serde_json::Value::Null;
    eventually(&format!("{cluster} to ACK revision {revision}"), || {
        last = cp.cluster(cluster);
        let status = &last["status"];
        status["connected"] == true
            && status["appliedRevision"].as_str() == Some(revision.to_string().as_str())
            && status.get("lag").is_none_or(|lag| lag == "0")
    });
    last
}

#[test]
fn policies_reach_only_the_agents_in_scope_and_are_acked() {
    let cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let token_a = cp.register("prod-a");
    let token_b = cp.register("dev-b");
    let a = Agent::start(&cp, "prod-a", &token_a);
    let b = Agent::start(&cp, "dev-b", &token_b);
    a.wait_revision(cp.revision());
    b.wait_revision(cp.revision());
    assert_eq!(a.state()["lastSyncMode"], "snapshot");

    apply_policy(&cp, dir.path(), "prod-only", &["prod-*"]);
    apply_policy(&cp, dir.path(), "everywhere", &[]);
    let revision = cp.revision();
    a.wait_revision(revision);
    b.wait_revision(revision);
    assert_eq!(a.policies(), ["everywhere", "prod-only"]);
    assert_eq!(b.policies(), ["everywhere"]);

    // Each change is ACKed by the right agents: the fleet view shows them at the head, lag 0.
    for cluster in ["prod-a", "dev-b"] {
        let view = wait_acked(&cp, cluster);
        assert_eq!(view["status"]["agentVersion"], env!("CARGO_PKG_VERSION"));
    }
    let fleet = success(&cp.admin_cli(&["cluster", "list"]));
    assert!(fleet.contains("prod-a") && fleet.contains("yes"), "{fleet}");

    // Rescoping moves a policy from one agent to the other.
    apply_policy(&cp, dir.path(), "prod-only", &["dev-*"]);
    let revision = cp.revision();
    a.wait_revision(revision);
    b.wait_revision(revision);
    assert_eq!(a.policies(), ["everywhere"]);
    assert_eq!(b.policies(), ["everywhere", "prod-only"]);

    // Protection settings travel on the same stream.
    success(&cp.admin_cli(&[
        "cluster",
        "protect",
        "prod-a",
        "--failure-policy",
        "fail",
        "--timeout",
        "4",
    ]));
    let state = a.wait_for("fail-closed settings", |s| {
        s["protection"]["failurePolicy"] == "fail"
    });
    assert_eq!(state["protection"]["timeoutSeconds"], 4);
    wait_acked(&cp, "prod-a");
    wait_acked(&cp, "dev-b");
}

#[test]
fn agents_resume_with_deltas_after_the_control_plane_is_killed() {
    let mut cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let token = cp.register("c1");
    apply_policy(&cp, dir.path(), "first", &[]);
    let agent = Agent::start(&cp, "c1", &token);
    agent.wait_revision(cp.revision());

    cp.kill();
    agent.wait_for("the agent to notice", |s| s["connected"] == false);
    cp.restart();
    apply_policy(&cp, dir.path(), "second", &[]);
    let state = agent.wait_revision(cp.revision());
    assert_eq!(state["lastSyncMode"], "resume");
    assert_eq!(state["snapshots"], 1, "no second snapshot: {state}");
    assert_eq!(agent.policies(), ["first", "second"]);
    wait_acked(&cp, "c1");
}

#[test]
fn a_restarted_agent_serves_its_cache_while_the_control_plane_is_down() {
    let mut cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let token = cp.register("c1");
    apply_policy(&cp, dir.path(), "cached", &[]);
    let mut agent = Agent::start(&cp, "c1", &token);
    let before = agent.wait_revision(cp.revision());

    cp.kill();
    agent.restart();
    // Ready from the cache at once, without the control plane.
    assert_eq!(agent.readyz(), 200);
    let state = agent.state();
    assert_eq!(state["connected"], false);
    assert_eq!(state["revision"], before["revision"]);
    assert_eq!(state["epoch"], before["epoch"]);
    assert_eq!(agent.policies(), ["cached"]);
}

#[test]
fn a_reset_store_makes_agents_take_a_snapshot() {
    let mut cp = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    let token = cp.register("c1");
    apply_policy(&cp, dir.path(), "old", &[]);
    let agent = Agent::start(&cp, "c1", &token);
    let before = agent.wait_revision(cp.revision());

    cp.reset_store();
    let token = cp.register("c1");
    agent.set_token(&token);
    apply_policy(&cp, dir.path(), "new", &[]);
    let after = agent.wait_for("a snapshot of the new epoch", |s| {
        s["epoch"] != before["epoch"]
    });
    assert_eq!(after["snapshots"], 2);
    assert_eq!(after["lastSyncMode"], "snapshot");
    assert_eq!(agent.policies(), ["new"]);
    wait_acked(&cp, "c1");
}

#[test]
fn wrong_revoked_and_foreign_tokens_are_refused() {
    let cp = ControlPlane::start();
    let token_a = cp.register("a");
    let token_b = cp.register("b");
    let sync = |token: &str, cluster: &str| {
        let body = format!(r#"{{"cluster": "{cluster}"}}"#);
        let out = cp.grpcurl(
            Some(token),
            &[
                "-max-time",
                "3",
                "-d",
                &body,
                "--",
                "portcullis.v1.AgentService/Sync",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    assert!(sync("pcl_wrong", "a").contains("Unauthenticated"));
    assert!(sync(&token_a, "b").contains("PermissionDenied"));
    assert!(
        sync(&cp.admin_token(), "a").contains("Unauthenticated"),
        "operator tokens are not agent tokens"
    );
    let ok = sync(&token_a, "a");
    assert!(ok.contains("\"mode\": \"snapshot\""), "{ok}");
    let report = cp.grpcurl(
        Some(&token_a),
        &[
            "-d",
            r#"{"cluster": "b"}"#,
            "--",
            "portcullis.v1.AgentService/ReportStatus",
        ],
    );
    assert!(String::from_utf8_lossy(&report.stderr).contains("PermissionDenied"));

    // Deleting a cluster revokes its token and closes its open stream.
    let agent = Agent::start(&cp, "b", &token_b);
    agent.wait_for("connected", |s| s["connected"] == true);
    success(&cp.admin_cli(&["cluster", "delete", "b"]));
    agent.wait_for("the stream to close", |s| s["connected"] == false);
    let state = agent.wait_for("the refusal", |s| {
        s["lastError"]
            .as_str()
            .unwrap_or("")
            .contains("Unauthenticated")
    });
    assert_eq!(
        state["ready"], true,
        "the agent keeps enforcing its last good state"
    );
    assert!(sync(&token_b, "b").contains("Unauthenticated"));
    let listed = json(&cp.admin_cli(&["cluster", "list", "-o", "json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

/// The benchmarks' profile (the binaries' own defaults: no test intervals, a kept data dir)
/// starts both binaries and syncs, as `cargo xtask bench` relies on.
#[test]
fn the_benchmark_profile_starts_and_syncs() {
    let keep = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start_bench(Some(keep.path().join("cp")), &[]);
    assert!(keep.path().join("cp/admin.token").exists());
    apply_policy(&cp, keep.path(), "p", &[]);
    let token = cp.register("bench");
    let agent = Agent::start_bench(&cp, "bench", &token, None, &[]);
    let state = agent
        .wait_state(std::time::Duration::from_secs(30), "the policy", |s| {
            s["policies"].as_array().is_some_and(|p| p.len() == 1)
        })
        .unwrap();
    assert_eq!(state["policies"][0], "p");
    assert!(agent.rss_mib() > 0.0);
}
