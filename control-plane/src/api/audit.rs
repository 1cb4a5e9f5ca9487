//! `portcullis.v1.AuditService`: operators (viewers and admins) list, summarise and watch the
//! fleet's audit violations. Nothing here writes: violations come from the agents
//! (`AgentService.ReportViolations`).

use std::{pin::Pin, sync::Arc};

use sha2::{Digest, Sha256};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tracing::warn;

use portcullis_proto::v1::{
    ListViolationsRequest, ListViolationsResponse, SummarizeViolationsRequest,
    SummarizeViolationsResponse, Violation, ViolationFilter, WatchViolationsRequest,
    audit_service_server::AuditService,
};
use portcullis_proto::words::{UnknownWord, ViolationAction, ViolationState};

use super::paging;
use crate::{
    audit::{Matcher, PolicyRevisions, ViolationStore},
    auth::{Access, Authenticator},
    store::Store,
};

pub struct AuditApi {
    audit: Arc<ViolationStore>,
    store: Arc<Store>,
    auth: Arc<Authenticator>,
}

impl AuditApi {
    pub fn new(audit: Arc<ViolationStore>, store: Arc<Store>, auth: Arc<Authenticator>) -> Self {
        Self { audit, store, auth }
    }
}

/// Page tokens are bound to the filter: the listing name carries a hash of it.
fn listing(filter: &ViolationFilter) -> String {
    let digest = Sha256::digest(prost::Message::encode_to_vec(filter));
    format!("ListViolations/{}", hex::encode(&digest[..8]))
}

fn check_filter(filter: &ViolationFilter) -> Result<(), Status> {
    let invalid = |field: &str, error: UnknownWord| {
        Status::invalid_argument(format!("filter.{field}: {error}"))
    };
    if !filter.action.is_empty() {
        filter
            .action
            .parse::<ViolationAction>()
            .map_err(|e| invalid("action", e))?;
    }
    if !filter.state.is_empty() {
        filter
            .state
            .parse::<ViolationState>()
            .map_err(|e| invalid("state", e))?;
    }
    Ok(())
}

/// The key a page token resumes after.
fn resume_key(listing: &str, token: &str) -> Result<Option<Vec<u8>>, Status> {
    let Some(key) = paging::decode(listing, token)? else {
        return Ok(None);
    };
    hex::decode(key)
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("page_token: not a token of {listing}")))
}

type ViolationStream = Pin<Box<dyn Stream<Item = Result<Violation, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    type WatchViolationsStream = ViolationStream;

    async fn list_violations(
        &self,
        request: Request<ListViolationsRequest>,
    ) -> Result<Response<ListViolationsResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let request = request.into_inner();
        let filter = request.filter.unwrap_or_default();
        check_filter(&filter)?;
        let listing = listing(&filter);
        let after = resume_key(&listing, &request.page_token)?;
        let size = paging::page_size(request.page_size);
        let page = self.audit.list(&filter, size, after).await?;
        let mut violations = page.violations;
        // A violation is up to about `limits::event::MAX_EVENT_BYTES`: a page stops at the
        // budget and resumes after the last violation it holds.
        let cut = paging::within_budget(&mut violations);
        let next_page_token = match violations.len().checked_sub(1) {
            Some(last) if cut || page.more => {
                paging::encode(&listing, &hex::encode(&page.keys[last]))
            }
            _ => String::new(),
        };
        Ok(Response::new(ListViolationsResponse {
            violations,
            next_page_token,
        }))
    }

    async fn summarize_violations(
        &self,
        request: Request<SummarizeViolationsRequest>,
    ) -> Result<Response<SummarizeViolationsResponse>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let cluster = request.into_inner().cluster;
        let (mut counts, total) = self
            .audit
            .summarize(Some(cluster.as_str()).filter(|c| !c.is_empty()));
        // Rows name namespaces and policies as the agents reported them: past the response
        // budget the rest are left out (the total still counts them).
        if paging::within_budget(&mut counts) {
            warn!(
                rows = counts.len(),
                total, "Violation summary cut to the response budget"
            );
        }
        Ok(Response::new(SummarizeViolationsResponse { counts, total }))
    }

    async fn watch_violations(
        &self,
        request: Request<WatchViolationsRequest>,
    ) -> Result<Response<ViolationStream>, Status> {
        self.auth.operator(request.metadata(), Access::Read).await?;
        let filter = request.into_inner().filter.unwrap_or_default();
        check_filter(&filter)?;
        let mut changes = self.audit.subscribe();
        let mut revisions = PolicyRevisions::new(self.store.clone());
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let matcher = Matcher::new(&filter);
            loop {
                let change = tokio::select! {
                    received = changes.recv() => received,
                    () = tx.closed() => return,
                };
                let sent = match change {
                    Ok(violation) if matcher.matches(&violation) => {
                        let mut violation = (*violation).clone();
                        match revisions.mark(&mut violation).await {
                            Ok(()) => tx.send(Ok(violation)).await,
                            Err(error) => {
                                let _ = tx.send(Err(error.into())).await;
                                return;
                            }
                        }
                    }
                    Ok(_) => Ok(()),
                    Err(RecvError::Lagged(missed)) => {
                        let status = Status::resource_exhausted(format!(
                            "the watcher fell {missed} violation changes behind; list to catch up, then watch again"
                        ));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests;
