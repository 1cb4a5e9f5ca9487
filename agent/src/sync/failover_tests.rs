//! The sync client over real TLS against fake control plane replicas in this process: it skips
//! an address that refuses connections, fails over when its replica goes away, resumes there
//! from the revision it holds, and the unary calls follow it.

use std::{
    pin::Pin,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use futures::Stream;
use tokio::sync::watch;
use tonic::{
    Request, Response, Status,
    transport::{Identity, Server, ServerTlsConfig},
};

use portcullis_proto::v1::{
    Delta, ReportEventsRequest, ReportEventsResponse, ReportStatusRequest, ReportStatusResponse,
    ReportViolationsRequest, ReportViolationsResponse, SnapshotEnd, SyncRequest, SyncResponse,
    SyncStart,
    agent_service_server::{AgentService, AgentServiceServer},
    sync_response::Message,
};

use super::{SyncClient, SyncConfig, endpoints::ControlPlaneUrl};
use crate::{cache::Cache, state, stats::SyncStats, sync::status::StatusReporter};

const EPOCH: &str = "e1";

/// A CA, and a serving certificate it signed for `localhost` only: a connection that checked
/// the certificate against the IP address it dialled would fail.
fn mk_pki() -> (String, Identity) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca.pem(),
        Identity::from_pem(cert.pem(), key.serialize_pem()),
    )
}

/// A control plane replica at `revision` of epoch `EPOCH`: a new agent gets a snapshot, an
/// agent of the epoch resumes with a delta per revision it misses. It records the Sync
/// requests and status reports it gets; when it goes down, its streams end `Unavailable` and
/// it stops listening.
#[derive(Clone)]
struct Replica {
    revision: u64,
    syncs: Arc<Mutex<Vec<SyncRequest>>>,
    reports: Arc<Mutex<Vec<ReportStatusRequest>>>,
    down: watch::Sender<bool>,
}

impl Replica {
    fn new(revision: u64) -> Self {
        Self {
            revision,
            syncs: Arc::default(),
            reports: Arc::default(),
            down: watch::Sender::new(false),
        }
    }

    /// Serves on a loopback port over TLS; returns the port.
    async fn serve(&self, identity: Identity) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut down = self.down.subscribe();
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(AgentServiceServer::new(self.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { went_down(&mut down).await },
            );
        tokio::spawn(server);
        port
    }

    fn go_down(&self) {
        self.down.send_replace(true);
    }

    fn syncs(&self) -> Vec<(String, u64)> {
        let syncs = self.syncs.lock().unwrap();
        syncs
            .iter()
            .map(|r| (r.epoch.clone(), r.revision))
            .collect()
    }

    fn messages(&self, request: &SyncRequest) -> Vec<Message> {
        let start = |mode: &str| SyncStart {
            mode: mode.to_owned(),
            epoch: EPOCH.to_owned(),
            revision: self.revision,
            heartbeat_interval_ms: 60_000,
            reason: String::new(),
        };
        if request.epoch != EPOCH {
            return vec![
                Message::Start(start("snapshot")),
                Message::SnapshotEnd(SnapshotEnd {
                    revision: self.revision,
                    protection: None,
                }),
            ];
        }
        let deltas = (request.revision..self.revision).map(|revision| {
            Message::Delta(Delta {
                prev_revision: revision,
                revision: revision + 1,
                ..Default::default()
            })
        });
        std::iter::once(Message::Start(start("resume")))
            .chain(deltas)
            .collect()
    }
}

async fn went_down(down: &mut watch::Receiver<bool>) {
    let _ = down.wait_for(|down| *down).await;
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Replica {
    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let request = request.into_inner();
        let messages = self.messages(&request);
        self.syncs.lock().unwrap().push(request);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut down = self.down.subscribe();
        tokio::spawn(async move {
            for message in messages {
                let message = SyncResponse {
                    message: Some(message),
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = went_down(&mut down) => {
                    let _ = tx.send(Err(Status::unavailable("replica going down"))).await;
                }
                () = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        self.reports.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ReportStatusResponse::default()))
    }

    async fn report_events(
        &self,
        _: Request<ReportEventsRequest>,
    ) -> Result<Response<ReportEventsResponse>, Status> {
        Err(Status::unimplemented("report_events"))
    }

    async fn report_violations(
        &self,
        _: Request<ReportViolationsRequest>,
    ) -> Result<Response<ReportViolationsResponse>, Status> {
        Err(Status::unimplemented("report_violations"))
    }
}

/// Waits until `done` holds (a deadline only so that a failure ends the test).
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A loopback port nothing listens on.
async fn refused_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn the_agent_fails_over_between_replicas_and_resumes_from_its_revision() {
    let (ca, identity) = mk_pki();
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, token_file) = (dir.path().join("ca.crt"), dir.path().join("token"));
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&token_file, "t\n").unwrap();
    let (first, second) = (Replica::new(3), Replica::new(5));
    let dead = refused_port().await;
    let first_port = first.serve(identity.clone()).await;
    let second_port = second.serve(identity).await;
    let urls = [dead, first_port, second_port].map(|port| format!("https://localhost:{port}"));

    let opened = Cache::open_or_recover(&dir.path().join("data")).unwrap();
    let state = state::handle(opened.state);
    let stats = Arc::new(SyncStats::default());
    let reporter = StatusReporter::default();
    let connection = reporter.client();
    let client = SyncClient {
        config: SyncConfig {
            cluster: "c1".into(),
            control_planes: urls
                .iter()
                .map(|url| ControlPlaneUrl::parse(url).unwrap())
                .collect(),
            token_file,
            ca_file: Some(ca_file),
            heartbeat_misses: 3,
            reconnect_initial: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
        },
        cache: Arc::new(opened.cache),
        state: state.clone(),
        stats: stats.clone(),
        reporter,
        last_token: Default::default(),
    };
    let running = tokio::spawn(client.run());

    // The first address refuses connections: the snapshot comes from the first replica,
    // whose certificate names the URL's host, not the address dialled.
    wait_until("the first replica's snapshot", || {
        state.load().revision == 3
    })
    .await;
    assert_eq!(first.syncs(), [(String::new(), 0)]);
    assert!(second.syncs().is_empty());
    assert!(
        stats.reconnects.load(Ordering::Relaxed) >= 1,
        "the dead address was tried"
    );
    let (url, address) = stats.control_plane().unwrap();
    assert_eq!(url, urls[1]);
    assert_eq!(address, format!("127.0.0.1:{first_port}"));
    assert!(stats.connected());

    // The replica goes away: the agent resumes on the other one from revision 3.
    first.go_down();
    wait_until("the second replica's deltas", || state.load().revision == 5).await;
    assert_eq!(second.syncs(), [(EPOCH.to_owned(), 3)]);
    assert_eq!(state.load().epoch, EPOCH);
    assert_eq!(stats.control_plane().unwrap().0, urls[2]);

    // The unary calls go to the replica the stream is on (set before its deltas applied).
    let mut unary = connection.borrow().clone().unwrap();
    unary
        .report_status(ReportStatusRequest {
            cluster: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(second.reports.lock().unwrap().len(), 1);
    assert!(first.reports.lock().unwrap().is_empty());
    running.abort();
}
