//! The audit calls end to end in process: agents' `ReportViolations` (auth, refusals, status
//! codes) and the operators' `AuditService`.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::Code;

use portcullis_proto::v1::{
    Cluster, ReportViolationsRequest, ReportViolationsResponse, agent_service_server::AgentService,
};

use super::*;
use crate::{
    api::AgentApi,
    auth::{Role, token_sha256},
    events::{EventSettings, EventStore},
    fleet::Fleet,
    sync::SyncSettings,
};

const ADMIN: &str = "an-admin-token-for-tests";
const VIEWER: &str = "a-viewer-token-for-tests";
const RUN: &str = "0190f3a0-1c2d-7e4f-8a5b-6c7d8e9f0a1b";
const LATER_RUN: &str = "0190f3a0-1c2d-7e4f-8a5b-6c7d8e9f0a1c";

fn agent_token(cluster: &str) -> String {
    format!("pcl_token-of-{cluster}")
}

fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

struct Fixture {
    audit: AuditApi,
    agents: AgentApi,
    _shutdown: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (store, dir) = crate::store::test_support::temp_store();
    let store = Arc::new(store);
    for name in ["c1", "c2"] {
        let cluster = Cluster {
            name: name.into(),
            ..Default::default()
        };
        let hash = token_sha256(&agent_token(name));
        store.register_cluster(cluster, hash).await.unwrap();
    }
    let mut auth = Authenticator::new(store.clone());
    auth.add_operator("admin", Role::Admin, ADMIN);
    auth.add_operator("viewer", Role::Viewer, VIEWER);
    let auth = Arc::new(auth);
    let violations = Arc::new(
        ViolationStore::open(store.clone(), Default::default())
            .await
            .unwrap(),
    );
    let events = Arc::new(EventStore::open(store.clone(), EventSettings::default()).unwrap());
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    let settings = SyncSettings {
        heartbeat: Duration::from_secs(10),
        shutdown: watch,
    };
    Fixture {
        audit: AuditApi::new(violations.clone(), store.clone(), auth.clone()),
        agents: AgentApi::new(store, events, violations, auth, Fleet::default(), settings),
        _shutdown: shutdown,
        _dir: dir,
    }
}

fn mk(name: &str, state: &str) -> Violation {
    Violation {
        kind: "Deployment".into(),
        namespace: "ns".into(),
        name: name.into(),
        policy: "p".into(),
        action: "block".into(),
        severity: "high".into(),
        state: state.into(),
        images: vec!["nginx:1.25".into()],
        ..Default::default()
    }
}

fn report(
    cluster: &str,
    run: &str,
    start: bool,
    violations: Vec<Violation>,
) -> ReportViolationsRequest {
    ReportViolationsRequest {
        cluster: cluster.into(),
        run: run.into(),
        resync_start: start,
        resync_end: start,
        violations,
    }
}

impl Fixture {
    async fn send(
        &self,
        token: &str,
        request: ReportViolationsRequest,
    ) -> Result<ReportViolationsResponse, Status> {
        let answer = self
            .agents
            .report_violations(with_token(token, request))
            .await;
        answer.map(Response::into_inner)
    }

    async fn list(
        &self,
        token: &str,
        request: ListViolationsRequest,
    ) -> Result<ListViolationsResponse, Status> {
        let answer = self.audit.list_violations(with_token(token, request)).await;
        answer.map(Response::into_inner)
    }
}

#[tokio::test]
async fn agents_report_for_their_own_cluster_only_and_a_refused_report_stores_nothing() {
    let f = fixture().await;
    let c1 = agent_token("c1");
    let answer = f
        .send(&c1, report("c1", RUN, true, vec![mk("a", "open")]))
        .await
        .unwrap();
    assert_eq!((answer.opened, answer.resync_required), (1, false));

    // Another cluster's token, or a violation of another cluster: PermissionDenied.
    let error = f
        .send(&c1, report("c2", RUN, true, vec![mk("b", "open")]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    let mut other = mk("b", "open");
    other.cluster = "c2".into();
    let error = f
        .send(&c1, report("c1", RUN, false, vec![mk("c", "open"), other]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(
        error.message().starts_with("violations[1].cluster: "),
        "{}",
        error.message()
    );
    // Operators' tokens are not agents'.
    let error = f
        .send(ADMIN, report("c1", RUN, true, vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);

    // Malformed: InvalidArgument naming the field; nothing of the batch is stored.
    let mut bad = mk("d", "open");
    bad.severity = "severe".into();
    let error = f
        .send(&c1, report("c1", RUN, false, vec![mk("e", "open"), bad]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("violations[1].severity: "),
        "{}",
        error.message()
    );
    let error = f
        .send(&c1, report("c1", "x", false, vec![]))
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (Code::InvalidArgument, r#"run: "x" is not a UUIDv7"#)
    );

    // A later run takes over; the earlier one is then FailedPrecondition.
    let answer = f
        .send(&c1, report("c1", LATER_RUN, false, vec![]))
        .await
        .unwrap();
    assert!(answer.resync_required);
    f.send(&c1, report("c1", LATER_RUN, true, vec![mk("a", "open")]))
        .await
        .unwrap();
    let error = f
        .send(&c1, report("c1", RUN, false, vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(
        error.message().contains("superseded by a later audit run"),
        "{}",
        error.message()
    );

    let all = f.list(VIEWER, Default::default()).await.unwrap();
    let names: Vec<&str> = all.violations.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a"]);
}

#[tokio::test]
async fn viewers_and_admins_read_and_agents_may_not() {
    let f = fixture().await;
    f.send(
        &agent_token("c1"),
        report("c1", RUN, true, vec![mk("a", "open")]),
    )
    .await
    .unwrap();
    for token in [ADMIN, VIEWER] {
        assert_eq!(
            f.list(token, Default::default())
                .await
                .unwrap()
                .violations
                .len(),
            1
        );
        let summary = f
            .audit
            .summarize_violations(with_token(token, SummarizeViolationsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.total, 1);
    }
    let error = f
        .list(&agent_token("c1"), Default::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied);
    let watch = WatchViolationsRequest::default();
    let error = f
        .audit
        .watch_violations(with_token(&agent_token("c1"), watch))
        .await
        .err()
        .unwrap();
    assert_eq!(error.code(), Code::PermissionDenied);
    let error = f
        .list("nobody-knows-this-token", Default::default())
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn pages_resume_with_their_own_filter_only() {
    let f = fixture().await;
    let batch = (0..5).map(|i| mk(&format!("w{i}"), "open")).collect();
    f.send(&agent_token("c1"), report("c1", RUN, true, batch))
        .await
        .unwrap();
    let filter = ViolationFilter {
        cluster: "c1".into(),
        ..Default::default()
    };
    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListViolationsRequest {
            filter: Some(filter.clone()),
            page_size: 2,
            page_token,
        };
        let page = f.list(VIEWER, request).await.unwrap();
        names.extend(page.violations.into_iter().map(|v| v.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(names, ["w0", "w1", "w2", "w3", "w4"]);

    let first = f
        .list(
            VIEWER,
            ListViolationsRequest {
                filter: Some(filter),
                page_size: 2,
                page_token: String::new(),
            },
        )
        .await
        .unwrap();
    let other = ViolationFilter {
        cluster: "c2".into(),
        ..Default::default()
    };
    let request = ListViolationsRequest {
        filter: Some(other),
        page_size: 2,
        page_token: first.next_page_token,
    };
    let error = f.list(VIEWER, request).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("page_token: "),
        "{}",
        error.message()
    );
    let forged = ListViolationsRequest {
        page_token: paging::encode(&listing(&ViolationFilter::default()), "not hex"),
        ..Default::default()
    };
    let error = f.list(VIEWER, forged).await.unwrap_err();
    assert!(
        error.message().starts_with("page_token: "),
        "{}",
        error.message()
    );
}

#[tokio::test]
async fn filters_with_unknown_words_are_refused_naming_the_field() {
    let f = fixture().await;
    for (filter, field) in [
        (
            ViolationFilter {
                action: "blocked".into(),
                ..Default::default()
            },
            "filter.action: ",
        ),
        (
            ViolationFilter {
                state: "all".into(),
                ..Default::default()
            },
            "filter.state: ",
        ),
    ] {
        let request = ListViolationsRequest {
            filter: Some(filter.clone()),
            ..Default::default()
        };
        let error = f.list(VIEWER, request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.message().starts_with(field), "{}", error.message());
        let watch = WatchViolationsRequest {
            filter: Some(filter),
        };
        let error = f
            .audit
            .watch_violations(with_token(VIEWER, watch))
            .await
            .err()
            .unwrap();
        assert!(error.message().starts_with(field), "{}", error.message());
    }
}

#[tokio::test]
async fn watchers_see_matching_changes_with_stale_computed() {
    let f = fixture().await;
    let watch = WatchViolationsRequest {
        filter: Some(ViolationFilter {
            name: "a".into(),
            ..Default::default()
        }),
    };
    let mut stream = f
        .audit
        .watch_violations(with_token(VIEWER, watch))
        .await
        .unwrap()
        .into_inner();
    let c1 = agent_token("c1");
    f.send(
        &c1,
        report("c1", RUN, true, vec![mk("a", "open"), mk("b", "open")]),
    )
    .await
    .unwrap();
    // Confirmed (unchanged): not sent. Then the resync's end resolves a.
    f.send(&c1, report("c1", RUN, false, vec![mk("a", "open")]))
        .await
        .unwrap();
    f.send(&c1, report("c1", RUN, true, vec![mk("b", "open")]))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (first.name.as_str(), first.state.as_str(), first.stale),
        ("a", "open", true)
    );
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(
        (second.name.as_str(), second.state.as_str()),
        ("a", "resolved")
    );
}

#[tokio::test]
async fn a_watcher_that_falls_behind_is_ended_with_resource_exhausted() {
    let f = fixture().await;
    let watch = WatchViolationsRequest::default();
    let mut stream = f
        .audit
        .watch_violations(with_token(VIEWER, watch))
        .await
        .unwrap()
        .into_inner();
    let c1 = agent_token("c1");
    // Nothing reads the stream: its buffer fills, then the broadcast backlog overflows.
    for batch in 0..6 {
        let violations = (0..1000)
            .map(|i| mk(&format!("w{batch}-{i}"), "open"))
            .collect();
        f.send(&c1, report("c1", RUN, batch == 0, violations))
            .await
            .unwrap();
    }
    let mut received = 0;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => break status,
            None => panic!("ended without an error after {received}"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("list to catch up"),
        "{}",
        status.message()
    );
    assert!(received < 6000);
}
