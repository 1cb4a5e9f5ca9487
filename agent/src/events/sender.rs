//! The sender task: drains the outbox to `AgentService.ReportEvents` in batches (oldest first,
//! bounded in events and bytes), deletes only what the control plane acknowledged, and retries
//! failures with jittered backoff. A batch the control plane refuses (a permanent status, or
//! any status but `Unavailable` for `MAX_ATTEMPTS` tries in a row) is split until the bad event
//! is alone; that one is dropped, logged at WARN with its id and counted (`refused`), so no
//! event can block the ones behind it and nothing is retried forever. `Unavailable` (the
//! control plane cannot be reached) is waited out: the outbox is bounded and counts its drops.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};
use tonic::Code;
use tracing::{Instrument, debug, error, info_span, warn};

use portcullis_proto::v1::ReportEventsRequest;

use super::{EventsConfig, Outbox};
use crate::sync::{reconnect::Reconnect, status::AgentClient};

/// Without news from the writer, the outbox is checked this often.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Tries of one batch that fail with a status other than `Unavailable` before it is taken as
/// refused.
const MAX_ATTEMPTS: u32 = 8;

/// Whether the control plane refused the batch for good (the same batch would be refused
/// again), rather than failed to take it for now.
fn permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::DataLoss
    )
}

pub async fn run_sender(
    cluster: String,
    outbox: Arc<Outbox>,
    mut client: watch::Receiver<Option<AgentClient>>,
    written: Arc<Notify>,
    config: EventsConfig,
) {
    let mut retry = Reconnect::new(Duration::from_millis(500), config.retry_max);
    let mut batch_limit = config.batch_events.max(1);
    // Failed tries of the current head batch (statuses other than `Unavailable`).
    let mut attempts = 0;
    loop {
        if outbox.is_empty() {
            tokio::select! {
                () = written.notified() => {}
                () = tokio::time::sleep(IDLE_CHECK) => {}
            }
            continue;
        }
        let Some(mut connection) = client.borrow_and_update().clone() else {
            // Not connected yet: wait for the sync client's first connection.
            let _ = tokio::time::timeout(IDLE_CHECK, client.changed()).await;
            continue;
        };
        let batch = match outbox.peek(batch_limit, config.batch_bytes) {
            Ok(batch) => batch,
            Err(error) => {
                error!(%error, "Cannot read the event outbox");
                tokio::time::sleep(retry.next_delay()).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let (keys, events): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let count = events.len();
        let first_id = events.first().map(|e| e.id.clone()).unwrap_or_default();
        let request = ReportEventsRequest {
            cluster: cluster.clone(),
            events,
        };
        let span = info_span!(parent: None, "events.deliver", events = count);
        match connection.report_events(request).instrument(span).await {
            Ok(response) => {
                let response = response.into_inner();
                debug!(
                    sent = count,
                    stored = response.stored,
                    duplicates = response.duplicates,
                    "Events delivered"
                );
                if let Err(error) = outbox.acknowledge(&keys) {
                    error!(%error, "Cannot remove delivered events from the outbox");
                }
                retry.reset();
                attempts = 0;
                batch_limit = config.batch_events.max(1);
            }
            Err(status)
                if permanent(status.code())
                    || (status.code() != Code::Unavailable && attempts + 1 >= MAX_ATTEMPTS) =>
            {
                attempts = 0;
                if count > 1 {
                    // Find the bad event: smaller batches until it is alone.
                    batch_limit = (count / 2).max(1);
                    warn!(code = ?status.code(), message = status.message(), count, "Event batch refused; retrying in smaller batches");
                } else {
                    warn!(id = %first_id, code = ?status.code(), message = status.message(), "Event refused by the control plane: dropped");
                    if let Err(error) = outbox.refuse(&keys) {
                        error!(%error, "Cannot remove a refused event from the outbox");
                    }
                }
            }
            Err(status) => {
                let delay = retry.next_delay();
                if status.code() == Code::Unavailable {
                    debug!(
                        message = status.message(),
                        delay_ms = delay.as_millis() as u64,
                        "Control plane unavailable; events wait in the outbox"
                    );
                } else {
                    attempts += 1;
                    warn!(code = ?status.code(), message = status.message(), attempts, delay_ms = delay.as_millis() as u64, "Events not delivered; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
