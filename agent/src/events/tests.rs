use std::collections::BTreeMap;

use portcullis_engine::{self as engine, AdmissionInput, Operation};

use super::*;
use crate::state::LoadedPolicy;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn mk_state(yaml: &str) -> AgentState {
    let mut policies = BTreeMap::new();
    for mut proto in portcullis_policy::parse_policy_documents(yaml).unwrap() {
        proto.revision = 7;
        let loaded = LoadedPolicy::load(proto).unwrap();
        policies.insert(loaded.proto.name.clone(), Arc::new(loaded));
    }
    AgentState {
        epoch: "e".into(),
        policies,
        ..Default::default()
    }
}

fn decide(request: &review::Request<'_>, state: &AgentState) -> Decision {
    let input = AdmissionInput {
        operation: Operation::parse(&request.operation),
        kind: &request.kind.kind,
        sub_resource: "",
        namespace: &request.namespace,
        name: &request.name,
        object: request.object.map(|r| r.get()),
        old_object: request.old_object.map(|r| r.get()),
    };
    engine::evaluate(
        &input,
        "c1",
        state.policies.values().map(|p| &p.policy),
        &state.scans,
    )
}

const POLICIES: &str = "name: no-privileged\nrules: {resource: {privileged: {}}}\n---\n\
    name: tags\naction: alert\nrules: {image: {disallowedTags: [\"1.25\"]}}\n---\n\
    name: unrelated\nrules: {resource: {hostNamespaces: {}}}\n";

#[test]
fn ids_of_admissions_in_one_millisecond_sort_by_time() {
    let body = fixture("pod-create-privileged.json");
    let request = review::parse(&body).unwrap();
    let state = mk_state(POLICIES);
    let decision = decide(&request, &state);
    let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    // Twenty admissions 10 us apart, all in the same millisecond (with the millisecond alone
    // and random bits below it, each pair would sort by chance).
    let ids: Vec<String> = (0..20)
        .map(|i| {
            let now = start + Duration::from_micros(10 * i);
            build("c1", &RequestInfo::of(&request), &decision, &state, now)[0]
                .id
                .clone()
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

#[test]
fn one_event_per_policy_with_its_findings() {
    let body = fixture("pod-create-privileged.json");
    let request = review::parse(&body).unwrap();
    let state = mk_state(POLICIES);
    let decision = decide(&request, &state);
    let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    let events = build("c1", &RequestInfo::of(&request), &decision, &state, now);
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.policy.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(names, [("no-privileged", "blocked")], "{decision:?}");
    let event = &events[0];
    let id = uuid::Uuid::parse_str(&event.id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
    assert_eq!((secs, nanos / 1_000_000), (1_795_000_000, 123));
    assert_eq!(event.time.unwrap().seconds, 1_795_000_000);
    assert_eq!(
        (
            event.cluster.as_str(),
            event.kind.as_str(),
            event.operation.as_str()
        ),
        ("c1", "Pod", "CREATE")
    );
    assert_eq!(event.namespace, request.namespace);
    assert_eq!(event.name, request.name);
    assert_eq!(event.user, request.user_info.username);
    assert_eq!(event.groups, request.user_info.groups);
    assert_eq!(event.admission_uid, request.uid);
    assert_eq!((event.policy_revision, event.count), (7, 1));
    assert!(!event.images.is_empty());
    assert_eq!(event.findings[0].rule, "privileged");
    assert_eq!(
        event.findings[0].path,
        "spec.containers[0].securityContext.privileged"
    );
}

#[test]
fn alerts_are_recorded_and_dry_runs_and_allows_are_not() {
    let state = Arc::new(mk_state(POLICIES));
    let dropped = Arc::new(AtomicU64::new(0));
    let (recorder, mut rx) = Recorder::new(dropped.clone());
    for (name, expected) in [
        ("deployment-create-basic.json", Some(("tags", "alerted"))),
        ("pod-create-dryrun-apply.json", None),
        ("pod-create-restricted-compliant.json", None),
    ] {
        let body = fixture(name);
        let request = review::parse(&body).unwrap();
        let decision = decide(&request, &state);
        recorder.record(&request, decision.clone(), state.clone());
        let got = rx.try_recv().ok().map(|r| r.events("c1"));
        assert_eq!(
            got.as_ref()
                .map(|e| (e[0].policy.as_str(), e[0].action.as_str())),
            expected,
            "{name}: {decision:?}"
        );
        assert!(rx.try_recv().is_err(), "{name}: one event");
    }
    assert_eq!(dropped.load(Ordering::Relaxed), 0);
}

fn mk_event(n: u64) -> Event {
    let stamp = uuid::Timestamp::from_unix(uuid::NoContext, 1_795_000_000 + n, 0);
    Event {
        id: uuid::Uuid::new_v7(stamp).to_string(),
        name: format!("pod-{n}"),
        policy: "p".into(),
        action: "blocked".into(),
        count: 1,
        ..Default::default()
    }
}

/// Opens the database in `path` again after a test dropped it: sled lets go of its lock when
/// its last handle (a background flush) is gone, which a loaded machine can delay.
async fn reopen(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(error) if std::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("reopening {}: {error}", path.display()),
        }
    }
}

#[tokio::test]
async fn the_outbox_is_durable_bounded_and_counts_drops() {
    let dir = tempfile::tempdir().unwrap();
    let limits = OutboxLimits {
        max_events: 3,
        max_bytes: 1 << 20,
    };
    {
        let db = sled::open(dir.path()).unwrap();
        let outbox = Outbox::open(&db, limits).unwrap();
        outbox
            .append(&(0..5).map(mk_event).collect::<Vec<_>>())
            .unwrap();
        outbox.flush().await.unwrap();
        assert_eq!((outbox.len(), outbox.dropped()), (3, 2));
    }
    let db = reopen(dir.path()).await;
    let outbox = Outbox::open(&db, limits).unwrap();
    assert_eq!((outbox.len(), outbox.dropped()), (3, 2), "after a restart");
    let batch = outbox.peek(2, 1 << 20).unwrap();
    let names: Vec<&str> = batch.iter().map(|(_, e)| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["pod-2", "pod-3"],
        "oldest first, the two oldest dropped"
    );
    let keys: Vec<sled::IVec> = batch.into_iter().map(|(k, _)| k).collect();
    outbox.remove(&keys).unwrap();
    assert_eq!(outbox.len(), 1);
    // A byte bound still yields one event.
    assert_eq!(outbox.peek(10, 1).unwrap().len(), 1);

    // The byte limit drops too.
    let small = Outbox::open(
        &sled::open(dir.path().join("b")).unwrap(),
        OutboxLimits {
            max_events: 100,
            max_bytes: 200,
        },
    )
    .unwrap();
    small
        .append(&(0..10).map(mk_event).collect::<Vec<_>>())
        .unwrap();
    assert!(small.len() < 10 && small.dropped() == 10 - small.len());
}

#[tokio::test]
async fn the_writer_folds_bursts_and_writes_everything_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let outbox = Arc::new(Outbox::open(&db, OutboxLimits::default()).unwrap());
    let (recorder, rx) = Recorder::new(outbox.dropped.clone());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let written = Arc::new(tokio::sync::Notify::new());
    let writer = tokio::spawn(run_writer(
        "c1".into(),
        outbox.clone(),
        rx,
        Duration::from_secs(3600),
        written,
        stop_rx,
    ));
    // The same privileged pod three times (one burst), and an alerted Deployment.
    let state = Arc::new(mk_state(POLICIES));
    for (name, times) in [
        ("pod-create-privileged.json", 3),
        ("deployment-create-basic.json", 1),
    ] {
        let body = fixture(name);
        let request = review::parse(&body).unwrap();
        let decision = decide(&request, &state);
        for _ in 0..times {
            recorder.record(&request, decision.clone(), state.clone());
        }
    }
    stop.send(true).unwrap();
    writer.await.unwrap();
    let events: Vec<Event> = outbox
        .peek(10, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let mut counts: Vec<(&str, &str, u32)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.policy.as_str(), e.count))
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        [("Deployment", "tags", 1), ("Pod", "no-privileged", 3)]
    );
}

#[test]
fn folding_decisions_first_gives_the_events_of_folding_every_event() {
    let body = fixture("pod-create-privileged.json");
    let request = review::parse(&body).unwrap();
    // With the alerting `watch` policy too the pod's decision differs, but its
    // `no-privileged` event is the same: only the event-level fold can merge those.
    let states = [
        Arc::new(mk_state(POLICIES)),
        Arc::new(mk_state(&format!(
            "{POLICIES}---\nname: watch\naction: alert\nrules: {{resource: {{privileged: {{}}}}}}\n"
        ))),
    ];
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
    let records = || {
        [0, 0, 1, 0, 1].map(|s| Record {
            time,
            request: RequestInfo::of(&request),
            decision: decide(&request, &states[s]),
            state: states[s].clone(),
        })
    };
    let mut folded = writer::PendingRecords::default();
    for record in records() {
        folded.add(record);
    }
    let mut every = writer::Pending::default();
    for record in records() {
        for event in record.events("c1") {
            every.add(event);
        }
    }
    let strip = |events: Vec<Event>| -> Vec<(String, String, u32, usize)> {
        let of = |e: Event| (e.policy, e.action, e.count, e.findings.len());
        events.into_iter().map(of).collect()
    };
    let folded = strip(folded.take("c1"));
    assert_eq!(folded, strip(every.take()));
    let expected = [
        ("no-privileged".to_owned(), "blocked".to_owned(), 5, 1),
        ("watch".to_owned(), "alerted".to_owned(), 2, 1),
    ];
    assert_eq!(folded, expected);
}

/// A control plane that refuses events named `poison-*` for good (as malformed) and fails
/// `flaky-*` with `Internal` every time; it stores the rest.
#[derive(Clone, Default)]
struct FakeControlPlane {
    stored: Arc<std::sync::Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl portcullis_proto::v1::agent_service_server::AgentService for FakeControlPlane {
    type SyncStream =
        tokio_stream::Empty<Result<portcullis_proto::v1::SyncResponse, tonic::Status>>;

    async fn sync(
        &self,
        _: tonic::Request<portcullis_proto::v1::SyncRequest>,
    ) -> Result<tonic::Response<Self::SyncStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("sync"))
    }

    async fn report_status(
        &self,
        _: tonic::Request<portcullis_proto::v1::ReportStatusRequest>,
    ) -> Result<tonic::Response<portcullis_proto::v1::ReportStatusResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }

    async fn report_events(
        &self,
        request: tonic::Request<portcullis_proto::v1::ReportEventsRequest>,
    ) -> Result<tonic::Response<portcullis_proto::v1::ReportEventsResponse>, tonic::Status> {
        let events = request.into_inner().events;
        if events.iter().any(|e| e.name.starts_with("poison")) {
            return Err(tonic::Status::invalid_argument("events[0]: malformed"));
        }
        if events.iter().any(|e| e.name.starts_with("flaky")) {
            return Err(tonic::Status::internal("cannot store this one"));
        }
        let mut stored = self.stored.lock().unwrap();
        stored.extend(events.iter().map(|e| e.name.clone()));
        Ok(tonic::Response::new(
            portcullis_proto::v1::ReportEventsResponse {
                stored: events.len() as u32,
                ..Default::default()
            },
        ))
    }

    async fn report_violations(
        &self,
        _: tonic::Request<portcullis_proto::v1::ReportViolationsRequest>,
    ) -> Result<tonic::Response<portcullis_proto::v1::ReportViolationsResponse>, tonic::Status>
    {
        Err(tonic::Status::unimplemented("report_violations"))
    }
}

/// One event refused for good and one that always fails are each dropped alone (counted,
/// logged with their ids); every event around them is delivered, in order.
#[tokio::test]
async fn a_refused_or_failing_event_never_blocks_the_others() {
    let fake = FakeControlPlane::default();
    let (server, _tx, rx) = crate::sync::status::serve_for_test(fake.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let outbox = Arc::new(Outbox::open(&db, OutboxLimits::default()).unwrap());
    let names = ["ok-1", "poison-1", "ok-2", "flaky-1", "ok-3"];
    let events: Vec<Event> = names
        .iter()
        .enumerate()
        .map(|(n, name)| Event {
            name: (*name).to_owned(),
            ..mk_event(n as u64)
        })
        .collect();
    outbox.append(&events).unwrap();
    let config = EventsConfig {
        retry_max: Duration::from_millis(20),
        ..EventsConfig::default()
    };
    let sender = tokio::spawn(sender::run_sender(
        "c1".into(),
        outbox.clone(),
        rx,
        Arc::new(tokio::sync::Notify::new()),
        config,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !outbox.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*fake.stored.lock().unwrap(), ["ok-1", "ok-2", "ok-3"]);
    assert_eq!(
        (outbox.refused(), outbox.dropped(), outbox.lost()),
        (2, 0, 2)
    );
    // The count survives a restart.
    drop(outbox);
    sender.abort();
    server.abort();
    let _ = sender.await;
    drop(db);
    let db = reopen(dir.path()).await;
    assert_eq!(
        Outbox::open(&db, OutboxLimits::default())
            .unwrap()
            .refused(),
        2
    );
}

/// An admitted pod with a 2.5 MiB image name and more findings than an event may list: the
/// event fits the control plane's limits, with the image cut and the extra findings counted.
#[test]
fn oversized_decisions_become_events_within_the_limits() {
    let state = mk_state("name: tags\naction: alert\nrules: {image: {disallowedTags: [latest]}}\n");
    let huge = format!("registry.example.com/{}", "a".repeat(2_500_000));
    let mut containers: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"name":"c{i}","image":"registry.example.com/app{i}"}}"#))
        .collect();
    containers.push(format!(r#"{{"name":"big","image":"{huge}"}}"#));
    let pod = format!(
        r#"{{"metadata":{{"name":"p","namespace":"n"}},"spec":{{"containers":[{}]}}}}"#,
        containers.join(",")
    );
    let input = AdmissionInput {
        operation: Operation::Create,
        kind: "Pod",
        sub_resource: "",
        namespace: "n",
        name: "p",
        object: Some(&pod),
        old_object: None,
    };
    let decision = engine::evaluate(
        &input,
        "c1",
        state.policies.values().map(|p| &p.policy),
        &state.scans,
    );
    assert_eq!(decision.findings.len(), 301);
    let request = RequestInfo {
        namespace: "n".into(),
        kind: "Pod".into(),
        name: "p".into(),
        ..Default::default()
    };
    let events = build("c1", &request, &decision, &state, SystemTime::now());
    assert_eq!(events.len(), 1);
    let event = &events[0];
    portcullis_proto::limits::check_event(event).unwrap();
    let summary = event.findings.last().unwrap();
    assert_eq!(summary.rule, "truncated");
    let listed = event.findings.len() - 1;
    assert!(
        summary
            .message
            .starts_with(&format!("{} more findings", 301 - listed))
    );
    assert!(event.images.last().unwrap().starts_with("…and "));
}
