//! The sender against a fake control plane that keeps the runs as the real one does: what
//! earlier runs left goes first under its own run, a resync starts and ends, a refused
//! violation is dropped alone, and a superseded run restarts.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use portcullis_proto::v1::{
    ReportViolationsRequest, ReportViolationsResponse, Violation,
    agent_service_server::AgentService,
};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use super::{AuditConfig, AuditStats, pending::Pending, sender::run_sender};

/// One request as the fake saw it: run, resync_start, resync_end, names, and its answer.
type Logged = (String, bool, bool, Vec<String>, String);

#[derive(Clone, Default)]
struct Fake {
    /// The current run.
    current: Arc<Mutex<Option<String>>>,
    /// (run, resync_start, resync_end, names) of each request, and what it answered.
    log: Arc<Mutex<Vec<Logged>>>,
}

#[tonic::async_trait]
impl AgentService for Fake {
    type SyncStream = tokio_stream::Empty<Result<portcullis_proto::v1::SyncResponse, Status>>;

    async fn sync(
        &self,
        _: Request<portcullis_proto::v1::SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        Err(Status::unimplemented("sync"))
    }

    async fn report_status(
        &self,
        _: Request<portcullis_proto::v1::ReportStatusRequest>,
    ) -> Result<Response<portcullis_proto::v1::ReportStatusResponse>, Status> {
        Ok(Response::new(Default::default()))
    }

    async fn report_events(
        &self,
        _: Request<portcullis_proto::v1::ReportEventsRequest>,
    ) -> Result<Response<portcullis_proto::v1::ReportEventsResponse>, Status> {
        Err(Status::unimplemented("report_events"))
    }

    async fn report_violations(
        &self,
        request: Request<ReportViolationsRequest>,
    ) -> Result<Response<ReportViolationsResponse>, Status> {
        let r = request.into_inner();
        let names: Vec<String> = r.violations.iter().map(|v| v.name.clone()).collect();
        let mut current = self.current.lock().unwrap();
        let answer: Result<ReportViolationsResponse, Status> =
            if names.iter().any(|n| n.starts_with("poison")) {
                Err(Status::invalid_argument("violations[0].name: poison"))
            } else if current.as_ref().is_some_and(|c| r.run < *c) {
                Err(Status::failed_precondition(
                    "superseded by a later audit run",
                ))
            } else if r.resync_start {
                *current = Some(r.run.clone());
                Ok(Default::default())
            } else if current.as_deref() != Some(r.run.as_str()) {
                Ok(ReportViolationsResponse {
                    resync_required: true,
                    ..Default::default()
                })
            } else {
                Ok(Default::default())
            };
        let said = match &answer {
            Ok(a) if a.resync_required => "resync".to_owned(),
            Ok(_) => "ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.log
            .lock()
            .unwrap()
            .push((r.run, r.resync_start, r.resync_end, names, said));
        answer.map(Response::new)
    }
}

fn violation(name: &str) -> Violation {
    Violation {
        kind: "Pod".into(),
        namespace: "ns".into(),
        name: name.into(),
        policy: "p".into(),
        state: "open".into(),
        ..Default::default()
    }
}

async fn until(what: &str, pred: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pred() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn leftovers_go_first_then_the_resync_and_a_refused_violation_is_dropped_alone() {
    let fake = Fake::default();
    let (server, _tx, rx) = crate::sync::status::serve_for_test(fake.clone()).await;

    // A stopped run left two changes; the control plane knows a newer run already.
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("q").unwrap();
    let (mut old, _) = Pending::open(tree.clone(), "run-0".into());
    old.push(violation("left-1"));
    old.push(violation("left-2"));
    drop(old);
    *fake.current.lock().unwrap() = Some("run-1".into());
    let (mut pending, leftovers) = Pending::open(tree.clone(), "run-2".into());
    assert_eq!(leftovers.entries.len(), 2);
    pending.begin_resync();
    for name in ["a", "poison", "b"] {
        pending.push(violation(name));
    }
    let pending = Arc::new(Mutex::new(pending));
    let stats = Arc::new(AuditStats::default());
    let resync = Arc::new(Notify::new());
    let config = AuditConfig {
        retry_max: Duration::from_millis(20),
        superseded_pause: Duration::from_millis(10),
        run_check: Duration::from_millis(50),
        ..AuditConfig::new("c1", &[])
    };
    let sender = tokio::spawn(run_sender(
        "c1".into(),
        pending.clone(),
        leftovers,
        Arc::new(Notify::new()),
        resync.clone(),
        rx,
        stats.clone(),
        config,
    ));
    until("the resync delivered", || {
        let p = pending.lock().unwrap();
        p.is_empty() && !p.resyncing()
    })
    .await;
    let log = fake.log.lock().unwrap().clone();
    // The old run was superseded: its changes dropped (the resync replaces them).
    assert_eq!(log[0].0, "run-0");
    assert_eq!(log[0].4, "FailedPrecondition");
    // The resync: refused whole for the poisoned one, split until it is alone.
    let delivered: Vec<String> = log
        .iter()
        .filter(|l| l.4 == "ok")
        .flat_map(|l| l.3.clone())
        .collect();
    assert_eq!(delivered, ["a", "b"]);
    let ok: Vec<_> = log.iter().filter(|l| l.4 == "ok").collect();
    assert!(
        ok.first().unwrap().1,
        "the first delivered batch starts the resync"
    );
    assert!(ok.last().unwrap().2, "the last one ends it");
    assert_eq!(stats.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(tree.len(), 0, "delivered or dropped entries leave the tree");

    // The control plane forgets the run (a store restored from a backup): the idle check
    // notices, and a resync is asked for.
    *fake.current.lock().unwrap() = None;
    tokio::time::timeout(Duration::from_secs(20), resync.notified())
        .await
        .expect("a resync asked for after the run was forgotten");
    assert!(
        fake.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.3.is_empty() && l.4 == "resync"),
        "an empty report found the run unknown"
    );
    // The auditor answers with a resync, which the control plane takes.
    pending.lock().unwrap().begin_resync();
    pending.lock().unwrap().push(violation("a"));
    until("the second resync delivered", || {
        let p = pending.lock().unwrap();
        p.is_empty() && !p.resyncing()
    })
    .await;

    // Another replica's later run supersedes this one: a new run, and a resync is asked for.
    *fake.current.lock().unwrap() = Some("run-9".into());
    pending.lock().unwrap().push(violation("c"));
    let asked = resync.notified();
    tokio::time::timeout(Duration::from_secs(20), asked)
        .await
        .expect("a resync asked for");
    let run = pending.lock().unwrap().run.clone();
    assert_ne!(run, "run-2");
    // Nothing goes out under the new run until the auditor queues its resync: an empty
    // resync would resolve every violation of the cluster.
    {
        let p = pending.lock().unwrap();
        assert!(p.is_empty() && !p.resyncing());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !fake
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.0 == run && (l.1 || l.2)),
        "a resync was sent under the new run before the auditor queued it"
    );
    sender.abort();
    server.abort();
}
