//! The sender task: drains the outbox to `AgentService.ReportEvents` in batches (oldest first,
//! bounded in events and bytes), deletes only what the control plane acknowledged, and retries
//! failures with jittered backoff. A batch the control plane refuses as malformed is split
//! until the bad event is alone; that one is dropped (counted) so it cannot block the rest.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Notify, watch};
use tonic::Code;
use tracing::{debug, error, warn};

use portcullis_proto::v1::ReportEventsRequest;

use super::{EventsConfig, Outbox};
use crate::sync::{reconnect::Reconnect, status::AgentClient};

/// Without news from the writer, the outbox is checked this often.
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub async fn run_sender(
    cluster: String,
    outbox: Arc<Outbox>,
    mut client: watch::Receiver<Option<AgentClient>>,
    written: Arc<Notify>,
    config: EventsConfig,
) {
    let mut retry = Reconnect::new(Duration::from_millis(500), config.retry_max);
    let mut batch_limit = config.batch_events.max(1);
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
        let request = ReportEventsRequest {
            cluster: cluster.clone(),
            events,
        };
        match connection.report_events(request).await {
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
                batch_limit = config.batch_events.max(1);
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::PermissionDenied
                ) =>
            {
                if count > 1 {
                    // Find the bad event: smaller batches until it is alone.
                    batch_limit = (count / 2).max(1);
                    warn!(code = ?status.code(), message = status.message(), count, "Event batch refused; retrying in smaller batches");
                } else {
                    error!(code = ?status.code(), message = status.message(), "Event refused by the control plane: dropped");
                    outbox
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = outbox.remove(&keys);
                    let _ = outbox.persist_dropped();
                }
            }
            Err(status) => {
                let delay = retry.next_delay();
                debug!(code = ?status.code(), message = status.message(), delay_ms = delay.as_millis() as u64, "Events not delivered; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
