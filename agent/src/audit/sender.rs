//! The sender: drains the queue to `AgentService.ReportViolations` in batches, oldest change
//! first, and removes only what the control plane acknowledged. `Unavailable` and other
//! transient failures are retried with jittered backoff (the queue coalesces, so waiting costs
//! no memory beyond the violations themselves). When the control plane does not know the run
//! (`resync_required`: it lost its state, or the run began while it was away) the auditor
//! reports everything again; when a later run superseded this one (`FailedPrecondition`: two
//! replicas led at once) this replica starts a new run after a pause. A batch refused for its
//! content is split until the bad violation is alone, which is dropped, logged and counted.

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::sync::{Notify, watch};
use tonic::Code;
use tracing::{Instrument, debug, info, info_span, warn};

use portcullis_proto::v1::ReportViolationsRequest;

use super::{
    AuditConfig, AuditStats,
    pending::{Leftovers, Pending, new_run},
};
use crate::sync::{reconnect::Reconnect, status::AgentClient};

/// Without news from the auditor, the queue is checked this often.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Whether the control plane refused the batch for what its violations hold (it names one:
/// `violations[i]…`, or the batch is too large), so that smaller batches isolate the cause.
/// A refusal of the request as a whole (its run, the token's cluster) is no violation's fault:
/// it is retried with backoff and logged, and nothing is dropped for it.
fn refused_for_content(status: &tonic::Status, count: usize) -> bool {
    count > 0
        && (status.code() == Code::OutOfRange
            || (matches!(status.code(), Code::InvalidArgument | Code::DataLoss)
                && status.message().starts_with("violations")))
}

/// Delivers what earlier runs left in the outbox, each under its own run, before anything of
/// this run: a run the control plane no longer takes (superseded, or unknown to it) is
/// dropped whole, since the resync that follows replaces it.
async fn deliver_leftovers(
    cluster: &str,
    pending: &Mutex<Pending>,
    leftovers: &mut Leftovers,
    client: &mut watch::Receiver<Option<AgentClient>>,
    stats: &AuditStats,
    config: &AuditConfig,
) {
    let tree = pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tree()
        .cloned();
    let mut retry = Reconnect::new(Duration::from_millis(200), config.retry_max);
    let mut limit = config.batch_size.max(1);
    while let Some((run, sequences, violations)) = leftovers.batch(limit) {
        let Some(mut connection) = client.borrow_and_update().clone() else {
            let _ = tokio::time::timeout(IDLE_CHECK, client.changed()).await;
            continue;
        };
        let count = violations.len();
        let request = ReportViolationsRequest {
            cluster: cluster.to_owned(),
            run: run.clone(),
            violations,
            ..Default::default()
        };
        let drop_run = |leftovers: &mut Leftovers, why: &str| {
            let of_run = leftovers.of_run(&run);
            info!(%run, changes = of_run.len(), "{why}: dropping what it left (this run's resync replaces it)");
            leftovers.remove(tree.as_ref(), &of_run);
        };
        match connection.report_violations(request).await {
            Ok(response) if response.get_ref().resync_required => {
                drop_run(
                    leftovers,
                    "The control plane does not know an earlier audit run",
                );
            }
            Ok(_) => {
                leftovers.remove(tree.as_ref(), &sequences);
                stats.delivered.fetch_add(count as u64, Ordering::Relaxed);
                retry.reset();
                limit = config.batch_size.max(1);
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                drop_run(leftovers, "An earlier audit run was superseded");
            }
            Err(status) if refused_for_content(&status, count) => {
                if count > 1 {
                    limit = (count / 2).max(1);
                } else {
                    warn!(%run, code = ?status.code(), message = status.message(), "Violation change of an earlier run refused by the control plane: dropped");
                    leftovers.remove(tree.as_ref(), &sequences);
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(status) => {
                let delay = retry.next_delay();
                debug!(code = ?status.code(), message = status.message(), delay_ms = delay.as_millis() as u64, "Earlier violation changes not delivered; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run_sender(
    cluster: String,
    pending: Arc<Mutex<Pending>>,
    mut leftovers: Leftovers,
    queued: Arc<Notify>,
    resync: Arc<Notify>,
    mut client: watch::Receiver<Option<AgentClient>>,
    stats: Arc<AuditStats>,
    config: AuditConfig,
) {
    if !leftovers.entries.is_empty() {
        info!(
            changes = leftovers.entries.len(),
            "Delivering what earlier audit runs left in the outbox"
        );
        deliver_leftovers(
            &cluster,
            &pending,
            &mut leftovers,
            &mut client,
            &stats,
            &config,
        )
        .await;
    }
    let lock = || pending.lock().unwrap_or_else(|e| e.into_inner());
    let mut retry = Reconnect::new(Duration::from_millis(200), config.retry_max);
    let mut limit = config.batch_size.max(1);
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let batch = lock().batch(limit, config.batch_bytes);
        stats.pending.store(lock().len() as u64, Ordering::Relaxed);
        let batch = match batch {
            Some(batch) => batch,
            None if last_sent.elapsed() >= config.run_check => lock().empty_batch(),
            None => {
                tokio::select! {
                    () = queued.notified() => {}
                    () = tokio::time::sleep(IDLE_CHECK) => {}
                }
                continue;
            }
        };
        let Some(mut connection) = client.borrow_and_update().clone() else {
            let _ = tokio::time::timeout(IDLE_CHECK, client.changed()).await;
            continue;
        };
        let count = batch.violations.len();
        let request = ReportViolationsRequest {
            cluster: cluster.clone(),
            run: batch.run.clone(),
            resync_start: batch.resync_start,
            resync_end: batch.resync_end,
            violations: batch.violations.clone(),
        };
        let span = info_span!(parent: None, "audit.deliver", violations = count);
        let answer = connection.report_violations(request).instrument(span).await;
        if answer.is_ok() {
            last_sent = tokio::time::Instant::now();
        }
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                if response.resync_required {
                    info!(run = %batch.run, "The control plane does not know this audit run: reporting every violation again");
                    resync.notify_one();
                    // The auditor queues the resync; wait for it rather than resend.
                    let _ = tokio::time::timeout(IDLE_CHECK, queued.notified()).await;
                    continue;
                }
                debug!(
                    sent = count,
                    opened = response.opened,
                    changed = response.changed,
                    resolved = response.resolved,
                    resync_start = batch.resync_start,
                    resync_end = batch.resync_end,
                    "Violations delivered"
                );
                lock().acknowledge(&batch);
                stats.delivered.fetch_add(count as u64, Ordering::Relaxed);
                retry.reset();
                limit = config.batch_size.max(1);
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                let delay = retry.next_delay().max(config.superseded_pause);
                warn!(
                    message = status.message(),
                    delay_ms = delay.as_millis() as u64,
                    "This audit run was superseded by another replica's; starting a new run after a pause"
                );
                tokio::time::sleep(delay).await;
                lock().restart(new_run());
                resync.notify_one();
            }
            Err(status) if refused_for_content(&status, count) => {
                if count > 1 {
                    limit = (count / 2).max(1);
                    warn!(code = ?status.code(), message = status.message(), count, "Violation batch refused; retrying in smaller batches");
                } else {
                    let dropped = lock().refuse(&batch);
                    stats.refused.fetch_add(dropped as u64, Ordering::Relaxed);
                    let v = batch.violations.first();
                    warn!(
                        kind = v.map_or("", |v| v.kind.as_str()),
                        namespace = v.map_or("", |v| v.namespace.as_str()),
                        name = v.map_or("", |v| v.name.as_str()),
                        policy = v.map_or("", |v| v.policy.as_str()),
                        code = ?status.code(),
                        message = status.message(),
                        "Violation refused by the control plane: dropped"
                    );
                }
            }
            Err(status) => {
                let delay = retry.next_delay();
                if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
                    debug!(code = ?status.code(), message = status.message(), delay_ms = delay.as_millis() as u64, "Violations not delivered; retrying");
                } else {
                    warn!(code = ?status.code(), message = status.message(), delay_ms = delay.as_millis() as u64, "Violation report refused as a whole; retrying");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
