//! Protection events: every blocked or alerted admission (not dry runs) becomes an event per
//! policy with findings. The webhook hands the decision (and a copy of the request's few
//! fields) to a bounded channel and never waits; the writer task builds the events from it,
//! aggregates identical events of a burst, appends them to the durable outbox and flushes at
//! least every 500 ms; the sender drains the outbox to the control plane in
//! batches and deletes only what the control plane acknowledged.

pub mod outbox;
pub mod sender;
mod writer;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;

use portcullis_engine::{Decision, Outcome};
use portcullis_policy::Action;
use portcullis_proto::limits;
use portcullis_proto::v1::{Event, EventFinding};
use portcullis_proto::words::EventAction;
use tracing::warn;

use crate::{state::AgentState, webhook::review};

pub use outbox::{Outbox, OutboxLimits};
pub use writer::run_writer;

/// How events are kept and sent.
#[derive(Clone, Debug)]
pub struct EventsConfig {
    pub limits: OutboxLimits,
    /// Longest time an event waits in memory before it is written and flushed.
    pub flush_interval: Duration,
    /// Events per `ReportEvents` call, and their encoded bytes.
    pub batch_events: usize,
    pub batch_bytes: usize,
    /// Longest wait between send attempts after failures.
    pub retry_max: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            limits: OutboxLimits::default(),
            flush_interval: Duration::from_millis(500),
            batch_events: 500,
            batch_bytes: 1024 * 1024,
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Events waiting for the writer, at most.
const CHANNEL: usize = 16 * 1024;

/// The request fields an event names (copied: the request borrows the webhook's body).
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub uid: String,
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub operation: String,
    pub user: String,
    pub groups: Vec<String>,
}

impl RequestInfo {
    pub fn of(request: &review::Request<'_>) -> Self {
        Self {
            uid: request.uid.clone(),
            namespace: request.namespace.clone(),
            kind: request.kind.kind.clone(),
            name: request.name.clone(),
            operation: request.operation.clone(),
            user: request.user_info.username.clone(),
            groups: request.user_info.groups.clone(),
        }
    }
}

/// One decision to turn into events, as the webhook hands it over.
pub struct Record {
    pub time: SystemTime,
    pub request: RequestInfo,
    pub decision: Decision,
    /// The state that decided (for the policies' revisions).
    pub state: Arc<AgentState>,
}

impl Record {
    /// Its events (see `build`).
    pub fn events(&self, cluster: &str) -> Vec<Event> {
        build(
            cluster,
            &self.request,
            &self.decision,
            &self.state,
            self.time,
        )
    }
}

/// The webhook's handle: records decisions without waiting.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    /// Events lost because the writer could not keep up (also counted as outbox drops).
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder and the receiving end for the writer.
    pub fn new(dropped: Arc<AtomicU64>) -> (Self, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        (Self { tx, dropped }, rx)
    }

    /// Hands over one decision: blocks and alerts only, never dry runs.
    pub fn record(
        &self,
        request: &review::Request<'_>,
        decision: Decision,
        state: Arc<AgentState>,
    ) {
        if request.dry_run.unwrap_or(false)
            || !matches!(decision.outcome, Outcome::Block | Outcome::Alert)
        {
            return;
        }
        let record = Record {
            time: SystemTime::now(),
            request: RequestInfo::of(request),
            decision,
            state,
        };
        if let Err(error) = self.tx.try_send(record) {
            let lost = match error {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => {
                    r.decision.policy_names().len()
                }
            };
            self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        }
    }
}

/// One event per policy with findings in `decision`, at `now`.
pub fn build(
    cluster: &str,
    request: &RequestInfo,
    decision: &Decision,
    state: &AgentState,
    now: SystemTime,
) -> Vec<Event> {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let time = portcullis_runtime::clock::timestamp(now);
    let mut events: Vec<Event> = Vec::new();
    for finding in &decision.findings {
        let fresh = events.last().is_none_or(|e| e.policy != finding.policy);
        if fresh {
            // Ids sort as the events list (newest first): the time below the millisecond goes
            // into the id too, so two admissions in one millisecond keep their order.
            let precise = uuid::ContextV7::new().with_additional_precision();
            let stamp = uuid::Timestamp::from_unix(&precise, since.as_secs(), since.subsec_nanos());
            events.push(Event {
                id: uuid::Uuid::new_v7(stamp).to_string(),
                time: Some(time),
                cluster: cluster.to_owned(),
                namespace: request.namespace.clone(),
                kind: request.kind.clone(),
                name: request.name.clone(),
                operation: request.operation.clone(),
                user: request.user.clone(),
                groups: request.groups.clone(),
                images: decision.images.clone(),
                policy: finding.policy.clone(),
                policy_revision: state
                    .policies
                    .get(&finding.policy)
                    .map_or(0, |p| p.proto.revision),
                action: EventAction::Alerted.as_str().into(),
                admission_uid: request.uid.clone(),
                count: 1,
                ..Default::default()
            });
        }
        let Some(event) = events.last_mut() else {
            continue;
        };
        if finding.action == Action::Block {
            event.action = EventAction::Blocked.as_str().into();
        }
        let f = &finding.finding;
        event.findings.push(EventFinding {
            rule: f.rule.clone(),
            path: f.path.clone(),
            value: f.value.clone(),
            message: f.message.clone(),
            cve_ids: f.ids.clone(),
        });
    }
    // Within what the control plane accepts: cut texts are marked, findings past the limit
    // are counted in a summary finding, never dropped (an alert must leave a trace).
    for event in &mut events {
        let findings = event.findings.len();
        if limits::fit_event(event) {
            warn!(
                id = %event.id,
                policy = %event.policy,
                findings,
                "Event over the control plane's limits: long fields cut, extra findings counted"
            );
        }
    }
    events
}

#[cfg(test)]
mod tests;
