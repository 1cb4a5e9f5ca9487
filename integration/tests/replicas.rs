//! Several control-plane replicas on one PostgreSQL database, end to end: real binaries on
//! loopback, a private PostgreSQL server (the testkit's; these tests say how to enable
//! themselves and pass without running when PostgreSQL is not installed).

use std::{
    fs,
    path::Path,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use portcullis_testkit::{
    Agent, ControlPlane, Postgres, bin_dir, eventually, fresh_database, http_get, success,
};

fn apply_policy(cp: &ControlPlane, dir: &Path, name: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    fs::write(
        &path,
        format!("name: {name}\nrules:\n  resource:\n    privileged: {{}}\n"),
    )
    .unwrap();
    success(&cp.admin_cli(&["policy", "apply", "-f", &path.display().to_string()]))
}

#[test]
fn a_policy_applied_on_one_replica_reaches_an_agent_connected_to_the_other() {
    let Some(url) = fresh_database("replicas_reach") else {
        return;
    };
    let a = ControlPlane::start_on_database(&url, &[]);
    let b = a.start_replica();
    let dir = tempfile::tempdir().unwrap();
    let token = a.register("c1");
    let agent = Agent::start(&b, "c1", &token);
    agent.wait_for("connected to B", |s| s["connected"] == true);

    apply_policy(&a, dir.path(), "from-a");
    agent.wait_for("the policy applied on A", |s| {
        s["policies"].as_array().is_some_and(|p| !p.is_empty())
    });
    assert_eq!(agent.policies(), ["from-a"]);
    // Both replicas show the same fleet: the agent's ACK, reported to B, is read on A.
    let revision = a.revision();
    eventually("B at A's revision", || b.revision() == revision);
    eventually("the ACK in A's fleet view", || {
        let status = &a.cluster("c1")["status"];
        status["appliedRevision"].as_str() == Some(revision.to_string().as_str())
    });
}

#[test]
fn a_replica_killed_under_load_loses_no_acknowledged_write_and_agents_resume_on_the_other() {
    let Some(url) = fresh_database("replicas_kill") else {
        return;
    };
    let mut a = ControlPlane::start_on_database(&url, &[]);
    let b = a.start_replica();
    let dir = tempfile::tempdir().unwrap();
    let token = a.register("c1");
    apply_policy(&a, dir.path(), "first");
    // The agent knows both replicas; it starts on A.
    let agent = Agent::start_with(&a, "c1", &token, &["--control-plane", &b.url()]);
    agent.wait_revision(a.revision());
    assert_eq!(agent.state()["lastSyncMode"], "snapshot");

    // Writers on A: each policy acknowledged (the CLI exited 0) is counted.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        let (server, token, ca) = (a.url(), a.admin_token(), a.ca_file());
        let dir = dir.path().to_path_buf();
        thread::spawn(move || {
            for n in 0u64.. {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let name = format!("load-{n:04}");
                let path = dir.join(format!("{name}.yaml"));
                let policy = format!("name: {name}\nrules:\n  resource:\n    privileged: {{}}\n");
                fs::write(&path, policy).unwrap();
                let out = Command::new(bin_dir().join("portcullis"))
                    .args(["policy", "apply", "-f"])
                    .arg(&path)
                    .env("PORTCULLIS_SERVER", &server)
                    .env("PORTCULLIS_TOKEN", &token)
                    .env("PORTCULLIS_CA_FILE", &ca)
                    .env_remove("PORTCULLIS_TOKEN_FILE")
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap();
                if !out.status.success() {
                    // A is gone: what it acknowledged is what counts.
                    return;
                }
                acknowledged.store(n + 1, Ordering::Release);
            }
        })
    };
    eventually("some writes acknowledged", || {
        acknowledged.load(Ordering::Acquire) >= 5
    });
    a.kill();
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    let acknowledged = acknowledged.load(Ordering::Acquire);

    // Every acknowledged write is on B.
    let listed = success(&b.admin_cli(&["policy", "list", "-o", "json"]));
    for n in 0..acknowledged {
        assert!(listed.contains(&format!("load-{n:04}")), "load-{n:04} lost");
    }
    // The agent moved to B and resumed by delta: no second snapshot.
    agent.wait_for("the agent on B", |s| {
        s["connected"] == true && s["controlPlane"]["address"] == b.url()
    });
    let state = agent.wait_revision(b.revision());
    assert_eq!(state["lastSyncMode"], "resume", "{state}");
    assert_eq!(state["snapshots"], 1, "no second snapshot: {state}");
    apply_policy(&b, dir.path(), "after");
    let state = agent.wait_revision(b.revision());
    assert_eq!(state["snapshots"], 1, "{state}");
}

#[test]
fn replicas_are_not_ready_while_the_database_is_down_and_recover_without_a_restart() {
    // A server of its own: it is stopped and started again.
    let Some(mut postgres) = Postgres::start() else {
        return;
    };
    let url = postgres.create_database("restart");
    let a = ControlPlane::start_on_database(&url, &[]);
    let b = a.start_replica();
    let dir = tempfile::tempdir().unwrap();
    let token = a.register("c1");
    apply_policy(&a, dir.path(), "before");
    let agent = Agent::start(&a, "c1", &token);
    agent.wait_revision(a.revision());
    postgres.stop();
    for cp in [&a, &b] {
        eventually("not ready", || {
            matches!(http_get(cp.admin_port, "/readyz"), Some((503, _)))
        });
    }
    // The replica that lost its database ends the agent's stream (so it goes elsewhere), with
    // Unavailable; the agent keeps enforcing what it has.
    let state = agent.wait_for("the stream ended", |s| {
        s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("lost its database"))
    });
    assert_eq!(state["policies"], serde_json::json!(["before"]), "{state}");
    let refused = a.admin_cli(&["policy", "list"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unavailable"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    postgres.start_again();
    for cp in [&a, &b] {
        eventually("ready again", || {
            matches!(http_get(cp.admin_port, "/readyz"), Some((200, _)))
        });
    }
    eventually("a write after the database came back", || {
        b.admin_cli(&["policy", "list"]).status.success()
    });
    apply_policy(&b, dir.path(), "after");
    let listed = success(&a.admin_cli(&["policy", "list"]));
    assert!(
        listed.contains("before") && listed.contains("after"),
        "{listed}"
    );
    // The agent is back, and resumed.
    let state = agent.wait_for("the agent back with the new policy", |s| {
        s["policies"] == serde_json::json!(["after", "before"])
    });
    assert_eq!(state["snapshots"], 1, "{state}");
}

/// `portcullis-control-plane serve` against `url`; it must exit at start: its stderr.
fn refused_at_start(url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_dir().join("portcullis-control-plane"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("PORTCULLIS_DATABASE_URL", url)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started against {url}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_database_and_a_newer_schema_stop_the_control_plane_at_start_with_the_reason() {
    let (Some(server), Some(url)) = (
        portcullis_testkit::shared_postgres(),
        fresh_database("replicas_bad"),
    ) else {
        return;
    };
    let password = server.password().to_owned();
    let port = portcullis_testkit::free_port();
    for (bad, reason) in [
        (
            url.replace(&password, "wrong-password"),
            "password authentication failed",
        ),
        (
            format!("postgres://portcullis:{password}@127.0.0.1:{port}/x?sslmode=disable"),
            "refused",
        ),
        (
            url.replace(url.rsplit('/').next().unwrap(), "missing?sslmode=disable"),
            "does not exist",
        ),
        (
            "postgres://u:secret@h:notaport/db".to_owned(),
            "--database-url",
        ),
    ] {
        let stderr = refused_at_start(&bad);
        assert!(stderr.contains(reason), "{stderr}");
        for secret in [password.as_str(), "wrong-password", "secret"] {
            assert!(!stderr.contains(secret), "a password was printed: {stderr}");
        }
    }
    // A database a newer build migrated: refused, naming both versions.
    let cp = ControlPlane::start_on_database(&url, &[]);
    drop(cp);
    let database = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    server.sql(
        database,
        "INSERT INTO portcullis_schema (version) VALUES (42)",
    );
    let stderr = refused_at_start(&url);
    assert!(
        stderr.contains("schema version 42 is newer than this build's"),
        "{stderr}"
    );
}
