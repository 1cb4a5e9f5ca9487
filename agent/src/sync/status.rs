//! Status reports to the control plane: ACK (the applied epoch and revision) or NACK (the
//! revision that failed and why), with the agent's version, cache age and policy count. The
//! latest outcome wins: a reporter task sends it whenever it changes, when the connection is
//! new, and periodically, so the fleet view stays fresh without blocking the sync stream.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use tracing::debug;

use portcullis_proto::v1::{ReportStatusRequest, agent_service_client::AgentServiceClient};

use crate::{state::StateHandle, stats::SyncStats};

pub use portcullis_proto::auth::Bearer;

pub type AgentClient = AgentServiceClient<InterceptedService<Channel, Bearer>>;

/// The result of the last apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ack,
    Nack { revision: u64, error: String },
}

/// Hands outcomes and connections to the reporter task.
#[derive(Clone)]
pub struct StatusReporter {
    outcome: watch::Sender<Outcome>,
    client: watch::Sender<Option<AgentClient>>,
}

impl Default for StatusReporter {
    fn default() -> Self {
        Self {
            outcome: watch::Sender::new(Outcome::Ack),
            client: watch::Sender::new(None),
        }
    }
}

impl StatusReporter {
    pub fn report(&self, outcome: Outcome) {
        self.outcome.send_replace(outcome);
    }

    pub fn set_client(&self, client: AgentClient) {
        self.client.send_replace(Some(client));
    }

    /// The latest connection to the control plane, for other senders (events).
    pub fn client(&self) -> watch::Receiver<Option<AgentClient>> {
        self.client.subscribe()
    }

    /// Sends reports until the process ends.
    pub async fn run(
        self,
        cluster: String,
        state: StateHandle,
        stats: Arc<SyncStats>,
        outbox: Option<Arc<crate::events::Outbox>>,
        every: Duration,
    ) {
        let mut outcome = self.outcome.subscribe();
        let mut client = self.client.subscribe();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = outcome.changed() => {}
                _ = client.changed() => {}
                _ = tick.tick() => {}
            }
            let Some(mut connection) = client.borrow_and_update().clone() else {
                continue;
            };
            let last = outcome.borrow_and_update().clone();
            let current = state.load();
            let (failed_revision, error) = match last {
                Outcome::Ack => (0, stats.error_for_report()),
                Outcome::Nack { revision, error } => (revision, error),
            };
            let request = ReportStatusRequest {
                cluster: cluster.clone(),
                agent_version: crate::VERSION.into(),
                applied_epoch: current.epoch.clone(),
                applied_revision: current.revision,
                failed_revision,
                error,
                cache_age_seconds: stats.cache_age_seconds(current.applied_at_ms),
                protection_state: stats.protection().0,
                policies: current.policies.len() as u32,
                events_dropped: outbox.as_ref().map_or(0, |o| o.lost()),
                events_pending: outbox.as_ref().map_or(0, |o| o.len()),
            };
            if let Err(status) = connection.report_status(request).await {
                debug!(code = ?status.code(), message = status.message(), "Status report not delivered");
            }
        }
    }
}

/// For tests: `service` served on a loopback port, and a client of it as the senders get
/// theirs (a watch holding it). Dropping the handle's task stops the server.
#[cfg(test)]
pub async fn serve_for_test<S>(
    service: S,
) -> (
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    tokio::sync::watch::Sender<Option<AgentClient>>,
    tokio::sync::watch::Receiver<Option<AgentClient>>,
)
where
    S: portcullis_proto::v1::agent_service_server::AgentService,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                portcullis_proto::v1::agent_service_server::AgentServiceServer::new(service),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = AgentServiceClient::with_interceptor(channel, Bearer::new("t").unwrap());
    let (tx, rx) = tokio::sync::watch::channel(Some(client));
    (server, tx, rx)
}
