//! Protection events end to end (issue #6): blocked admissions become events in the agent's
//! outbox, survive an unreachable control plane and a SIGKILLed agent, arrive exactly once,
//! survive a SIGKILLed control plane once acknowledged, and can be filtered, paged, handled,
//! watched and summarised by operators; bad batches are refused.

use std::{collections::BTreeSet, fs, time::Duration};

use serde_json::Value;

use portcullis_testkit::{
    Agent, ControlPlane, admission_fixture, failure, json, post_many, success,
};

const VIEWER: &str = "viewer-token-0123456789";

/// The captured privileged-pod CREATE, as pod `name` with its own uid.
fn privileged_review(name: &str) -> Vec<u8> {
    let mut review: Value =
        serde_json::from_slice(&admission_fixture("pod-create-privileged.json")).unwrap();
    let request = &mut review["request"];
    request["uid"] = format!("uid-{name}").into();
    request["name"] = name.into();
    request["object"]["metadata"]["name"] = name.into();
    serde_json::to_vec(&review).unwrap()
}

/// A control plane with a `no-privileged` block policy and an `images` alert policy, the
/// viewer token, and a synced agent for cluster `c1`.
fn setup() -> (ControlPlane, Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    fs::write(
        &tokens,
        format!("tokens:\n- {{name: dashboard, role: viewer, token: {VIEWER}}}\n"),
    )
    .unwrap();
    let cp = ControlPlane::start_with(&["--tokens-file", tokens.to_str().unwrap()]);
    let token = cp.register("c1");
    let policies = dir.path().join("p.yaml");
    fs::write(
        &policies,
        "name: no-privileged\nrules: {resource: {privileged: {}}}\n---\n\
         name: images\naction: alert\nrules: {image: {disallowedTags: [latest]}}\n",
    )
    .unwrap();
    success(&cp.admin_cli(&["policy", "apply", "-f", policies.to_str().unwrap()]));
    let agent = Agent::start(&cp, "c1", &token);
    agent.wait_revision(cp.revision());
    (cp, agent, dir)
}

fn post_privileged(agent: &Agent, names: impl Iterator<Item = String>) {
    let bodies = names.map(|n| privileged_review(&n)).collect();
    for (status, review) in post_many(agent, "/validate?timeout=5s", bodies) {
        assert_eq!(status, 200, "{review}");
        assert_eq!(review["response"]["allowed"], false, "{review}");
    }
}

fn pending(agent: &Agent) -> u64 {
    agent.state()["events"]["pending"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

fn list(cp: &ControlPlane, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "list", "--limit", "0", "-o", "json"];
    all.extend(args);
    json(&cp.admin_cli(&all)).as_array().unwrap().clone()
}

#[test]
fn ten_thousand_blocked_while_the_control_plane_is_down_arrive_exactly_once() {
    let (mut cp, agent, _dir) = setup();
    cp.kill();
    post_privileged(&agent, (0..10_000).map(|i| format!("pod-{i:05}")));
    agent.wait_for("10,000 events in the outbox", |s| {
        s["events"]["pending"] == 10_000
    });
    cp.restart();
    agent.wait_for("the outbox drained", |s| s["events"]["pending"] == 0);
    let events = list(&cp, &["--cluster", "c1"]);
    assert_eq!(events.len(), 10_000);
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let names: BTreeSet<&str> = events.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(
        (ids.len(), names.len()),
        (10_000, 10_000),
        "each exactly once"
    );
    assert!(
        events
            .iter()
            .all(|e| e["action"] == "blocked" && e["policy"] == "no-privileged" && e["count"] == 1)
    );
    // Newest first.
    let times: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    let summary = json(&cp.admin_cli(&["events", "summary", "-o", "json"]));
    assert_eq!(summary["total"], "10000", "{summary}");
    // Nothing dropped, nothing left; the fleet view says so too.
    let cluster = cp.cluster("c1");
    assert!(
        cluster["status"]["eventsDropped"].is_null() || cluster["status"]["eventsDropped"] == "0",
        "{cluster}"
    );
}

#[test]
fn events_survive_a_killed_agent_and_a_killed_control_plane() {
    let (mut cp, mut agent, _dir) = setup();
    // Agent SIGKILLed with events in its outbox: delivered after its restart.
    cp.kill();
    post_privileged(&agent, (0..20).map(|i| format!("offline-{i}")));
    agent.wait_for("20 events in the outbox", |s| s["events"]["pending"] == 20);
    // The writer flushes right after appending; give it the flush interval.
    std::thread::sleep(Duration::from_millis(600));
    agent.kill();
    agent.restart();
    assert_eq!(pending(&agent), 20, "the outbox survived SIGKILL");
    cp.restart();
    agent.wait_for("the outbox drained", |s| s["events"]["pending"] == 0);
    assert_eq!(list(&cp, &[]).len(), 20);

    // Control plane SIGKILLed after acknowledging: the events are there after its restart.
    post_privileged(&agent, (0..5).map(|i| format!("acked-{i}")));
    agent.wait_for("acknowledged", |s| s["events"]["delivered"] == 25);
    assert_eq!(list(&cp, &[]).len(), 25);
    cp.kill();
    cp.restart();
    let events = list(&cp, &["--search", "BUSYBOX"]);
    assert_eq!(events.len(), 25);
    assert!(events.iter().any(|e| e["name"] == "acked-4"));
}

#[test]
fn operators_filter_page_handle_watch_and_summarise() {
    let (cp, agent, _dir) = setup();
    // 6 blocked pods (privileged), 4 alerted deployments (image without a tag = latest).
    post_privileged(&agent, (0..6).map(|i| format!("web-{i}")));
    let mut deployment: Value =
        serde_json::from_slice(&admission_fixture("deployment-create-basic.json")).unwrap();
    deployment["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] =
        "nginx".into();
    let bodies = (0..4)
        .map(|i| {
            let mut review = deployment.clone();
            review["request"]["name"] = format!("api-{i}").into();
            review["request"]["object"]["metadata"]["name"] = format!("api-{i}").into();
            serde_json::to_vec(&review).unwrap()
        })
        .collect();
    for (_, review) in post_many(&agent, "/validate", bodies) {
        assert_eq!(review["response"]["allowed"], true, "{review}");
        assert!(review["response"]["warnings"].is_array(), "{review}");
    }
    agent.wait_for("delivered", |s| s["events"]["delivered"] == 10);
    let names = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(list(&cp, &[]).len(), 10);
    assert_eq!(
        names(&list(&cp, &["--action", "alerted"])),
        ["api-3", "api-2", "api-1", "api-0"]
    );
    assert_eq!(
        names(&list(
            &cp,
            &[
                "--policy",
                "no-privileged",
                "--kind",
                "Pod",
                "--name",
                "web-2"
            ]
        )),
        ["web-2"]
    );
    assert!(list(&cp, &["--cluster", "other"]).is_empty());
    assert_eq!(list(&cp, &["--since", "1h", "--cluster", "c1"]).len(), 10);
    assert!(list(&cp, &["--until", "1h"]).is_empty());
    // Paging through grpcurl: pages of 3 give all 10, newest first, no repeats.
    let viewer_call = |body: &Value| {
        json(&cp.grpcurl(
            Some(VIEWER),
            &[
                "-d",
                &body.to_string(),
                "--",
                "portcullis.v1.EventService/ListEvents",
            ],
        ))
    };
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = viewer_call(&serde_json::json!({"pageSize": 3, "pageToken": token}));
        paged.extend(names(page["events"].as_array().unwrap()));
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_owned(),
            _ => break,
        }
    }
    assert_eq!(paged, names(&list(&cp, &[])));
    // A page token from another query is refused.
    let first = viewer_call(&serde_json::json!({"pageSize": 3}));
    let foreign = serde_json::json!({
        "filter": {"action": "blocked"},
        "pageSize": 3,
        "pageToken": first["nextPageToken"],
    });
    let refused = failure(&cp.grpcurl(
        Some(VIEWER),
        &[
            "-d",
            &foreign.to_string(),
            "--",
            "portcullis.v1.EventService/ListEvents",
        ],
    ));
    assert!(
        refused.contains("InvalidArgument") && refused.contains("page_token"),
        "{refused}"
    );

    // Handling: admins only, recorded with who and the note.
    let id = list(&cp, &["--name", "web-0"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = failure(&cp.cli(VIEWER, &["events", "handle", &id, "--note", "x"]));
    assert!(denied.contains("PermissionDenied"), "{denied}");
    success(&cp.admin_cli(&[
        "events",
        "handle",
        &id,
        "--note",
        "rebuilt without privileges",
    ]));
    let event = json(&cp.cli(VIEWER, &["events", "get", &id, "-o", "json"]));
    assert_eq!(event["state"], "handled");
    assert_eq!(event["handledBy"], "bootstrap-admin");
    assert_eq!(event["note"], "rebuilt without privileges");
    assert_eq!(names(&list(&cp, &["--state", "handled"])), ["web-0"]);
    assert_eq!(list(&cp, &["--state", "new"]).len(), 9);
    let missing = failure(&cp.admin_cli(&["events", "handle", "not-an-id"]));
    assert!(missing.contains("InvalidArgument"), "{missing}");

    // Summary by cluster, policy and action.
    let summary = json(&cp.cli(VIEWER, &["events", "summary", "-o", "json"]));
    let rows = summary["counts"].as_array().unwrap();
    let row = |policy: &str| {
        rows.iter()
            .find(|r| r["policy"] == policy)
            .map(|r| (r["action"].clone(), r["events"].clone()))
    };
    assert_eq!(row("no-privileged"), Some(("blocked".into(), "6".into())));
    assert_eq!(row("images"), Some(("alerted".into(), "4".into())));

    // Watch: a new blocked pod arrives on the stream.
    let mut watch = cp
        .cli_command(
            VIEWER,
            &["events", "watch", "--policy", "no-privileged", "-o", "json"],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    post_privileged(&agent, std::iter::once("watched".to_owned()));
    let stdout = watch.stdout.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .next()
        .unwrap()
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let watched: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(watched["name"], "watched");
}

#[test]
fn bad_event_batches_are_refused_whole() {
    let (cp, _agent, _dir) = setup();
    let token = cp.register("c2");
    let event = |cluster: &str, id: &str| {
        serde_json::json!({
            "id": id, "time": "2026-11-27T01:00:00Z", "cluster": cluster,
            "policy": "p", "action": "blocked", "count": 1,
        })
    };
    // 2026-11-27T01:00:00Z as a UUIDv7.
    let id = |n: u8| format!("01a21a84-2e80-7000-8000-0000000000{n:02x}");
    let call = |events: Vec<Value>| {
        let body = serde_json::json!({"cluster": "c2", "events": events});
        cp.grpcurl(
            Some(&token),
            &[
                "-d",
                &body.to_string(),
                "--",
                "portcullis.v1.AgentService/ReportEvents",
            ],
        )
    };
    let ok = json(&call(vec![event("c2", &id(1))]));
    assert_eq!(ok["stored"], 1, "{ok}");
    let again = json(&call(vec![event("c2", &id(1))]));
    assert_eq!(
        again["duplicates"], 1,
        "a re-sent event is not stored twice: {again}"
    );

    let other = failure(&call(vec![event("c2", &id(2)), event("c1", &id(3))]));
    assert!(
        other.contains("PermissionDenied") && other.contains("events[1]"),
        "{other}"
    );
    let malformed = failure(&call(vec![event("c2", "not-a-uuid")]));
    assert!(
        malformed.contains("InvalidArgument")
            && malformed.contains("events[0] (id \"not-a-uuid\")"),
        "{malformed}"
    );
    let mut bad_time = event("c2", &id(4));
    bad_time["time"] = "2020-01-01T00:00:00Z".into();
    let refused = failure(&call(vec![bad_time]));
    assert!(refused.contains("does not agree with the id"), "{refused}");
    // Minimal events: the size check comes first, and grpcurl takes the batch as an argument.
    let big: Vec<Value> = (0..1001)
        .map(|_| serde_json::json!({"policy": "p"}))
        .collect();
    let oversized = failure(&call(big));
    assert!(oversized.contains("at most 1000"), "{oversized}");
    // Nothing of a refused batch was stored.
    assert_eq!(list(&cp, &["--cluster", "c2"]).len(), 1);
    // An operator token cannot report events.
    let body = serde_json::json!({"cluster": "c2", "events": []});
    let denied = failure(&cp.grpcurl(
        Some(&cp.admin_token()),
        &[
            "-d",
            &body.to_string(),
            "--",
            "portcullis.v1.AgentService/ReportEvents",
        ],
    ));
    assert!(
        denied.contains("Unauthenticated") || denied.contains("PermissionDenied"),
        "{denied}"
    );
}
