//! `portcullis.v1.AgentService`: the Sync stream, status reports, events and audit violations.
//! Only a cluster's own agent token is accepted, and only for that cluster.

use std::{pin::Pin, sync::Arc};

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span, warn};

use portcullis_proto::v1::{
    ReportEventsRequest, ReportEventsResponse, ReportStatusRequest, ReportStatusResponse,
    ReportViolationsRequest, ReportViolationsResponse, SyncRequest, SyncResponse,
    agent_service_server::AgentService,
};

use crate::{
    audit::{ReportError, ViolationStore, validate_report},
    auth::Authenticator,
    events::{BatchError, EventStore, validate_batch},
    fleet::Fleet,
    store::Store,
    sync::{self, SyncSettings},
};

pub struct AgentApi {
    store: Arc<Store>,
    events: Arc<EventStore>,
    audit: Arc<ViolationStore>,
    auth: Arc<Authenticator>,
    fleet: Fleet,
    settings: SyncSettings,
}

impl AgentApi {
    pub fn new(
        store: Arc<Store>,
        events: Arc<EventStore>,
        audit: Arc<ViolationStore>,
        auth: Arc<Authenticator>,
        fleet: Fleet,
        settings: SyncSettings,
    ) -> Self {
        Self {
            store,
            events,
            audit,
            auth,
            fleet,
            settings,
        }
    }

    /// The agent's cluster, which must be the one the request names.
    async fn authorize(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        claimed: &str,
    ) -> Result<String, Status> {
        let cluster = self.auth.agent(metadata).await?;
        if claimed != cluster {
            warn!(token_cluster = %cluster, claimed, "Agent token used for another cluster");
            return Err(Status::permission_denied(format!(
                "this token belongs to cluster {cluster:?}, not {claimed:?}"
            )));
        }
        Ok(cluster)
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<SyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let cluster = self
            .authorize(request.metadata(), &request.get_ref().cluster)
            .await?;
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let connection = self.fleet.connected(&cluster, &request.agent_version);
        let store = self.store.clone();
        let settings = self.settings.clone();
        let span = info_span!("sync", cluster = %cluster);
        tokio::spawn(
            async move {
                sync::serve(store, cluster, request, settings, tx).await;
                drop(connection);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        let cluster = self
            .authorize(request.metadata(), &request.get_ref().cluster)
            .await?;
        let report = request.into_inner();
        if !report.error.is_empty() {
            warn!(%cluster, failed_revision = report.failed_revision, error = %report.error, "Agent could not apply a revision");
        }
        self.fleet.report(&cluster, &report);
        Ok(Response::new(ReportStatusResponse {}))
    }

    async fn report_events(
        &self,
        request: Request<ReportEventsRequest>,
    ) -> Result<Response<ReportEventsResponse>, Status> {
        let cluster = self
            .authorize(request.metadata(), &request.get_ref().cluster)
            .await?;
        let events = request.into_inner().events;
        let batch =
            validate_batch(&cluster, events, self.events.settings.max_batch).map_err(|error| {
                warn!(%cluster, %error, "Event batch refused");
                match error {
                    BatchError::OtherCluster(m) => Status::permission_denied(m),
                    BatchError::Invalid(m) => Status::invalid_argument(m),
                }
            })?;
        let ingested = self.events.ingest(batch).await?;
        Ok(Response::new(ReportEventsResponse {
            stored: ingested.stored,
            duplicates: ingested.duplicates,
        }))
    }

    async fn report_violations(
        &self,
        request: Request<ReportViolationsRequest>,
    ) -> Result<Response<ReportViolationsResponse>, Status> {
        let cluster = self
            .authorize(request.metadata(), &request.get_ref().cluster)
            .await?;
        let report = validate_report(&cluster, request.into_inner()).map_err(|error| {
            warn!(%cluster, %error, "Violation report refused");
            match error {
                ReportError::OtherCluster(m) => Status::permission_denied(m),
                ReportError::Invalid(m) => Status::invalid_argument(m),
            }
        })?;
        let reported = self.audit.report(report).await.map_err(|error| {
            warn!(%cluster, %error, "Violation report not applied");
            Status::from(error)
        })?;
        Ok(Response::new(ReportViolationsResponse {
            opened: reported.opened,
            changed: reported.changed,
            resolved: reported.resolved,
            unchanged: reported.unchanged,
            resync_required: reported.resync_required,
        }))
    }
}
