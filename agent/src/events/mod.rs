//! Protection events: every blocked or alerted admission (not dry runs) becomes an event per
//! policy with findings. The webhook hands events to a bounded channel and never waits; the
//! writer task aggregates identical events of a burst, appends them to the durable outbox and
//! flushes at least every 500 ms; the sender drains the outbox to the control plane in
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

use portcullis_policy::{
    Action,
    engine::{Decision, Outcome},
};
use portcullis_proto::v1::{Event, EventFinding};

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

/// The webhook's handle: records events without waiting.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    /// Events lost because the writer could not keep up (also counted as outbox drops).
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder and the receiving end for the writer.
    pub fn new(dropped: Arc<AtomicU64>) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        (Self { tx, dropped }, rx)
    }

    /// The events of one decision (none for an allow or a dry run).
    pub fn record(
        &self,
        cluster: &str,
        request: &review::Request<'_>,
        decision: &Decision,
        state: &AgentState,
    ) {
        if request.dry_run.unwrap_or(false)
            || !matches!(decision.outcome, Outcome::Block | Outcome::Alert)
        {
            return;
        }
        for event in build(cluster, request, decision, state, SystemTime::now()) {
            if self.tx.try_send(event).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One event per policy with findings in `decision`, at `now`.
pub fn build(
    cluster: &str,
    request: &review::Request<'_>,
    decision: &Decision,
    state: &AgentState,
    now: SystemTime,
) -> Vec<Event> {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let time = pbjson_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    };
    let mut events: Vec<Event> = Vec::new();
    for finding in &decision.findings {
        let fresh = events.last().is_none_or(|e| e.policy != finding.policy);
        if fresh {
            let stamp =
                uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
            events.push(Event {
                id: uuid::Uuid::new_v7(stamp).to_string(),
                time: Some(time),
                cluster: cluster.to_owned(),
                namespace: request.namespace.clone(),
                kind: request.kind.kind.clone(),
                name: request.name.clone(),
                operation: request.operation.clone(),
                user: request.user_info.username.clone(),
                groups: request.user_info.groups.clone(),
                images: decision.images.clone(),
                policy: finding.policy.clone(),
                policy_revision: state
                    .policies
                    .get(&finding.policy)
                    .map_or(0, |p| p.proto.revision),
                action: "alerted".into(),
                admission_uid: request.uid.clone(),
                count: 1,
                ..Default::default()
            });
        }
        let Some(event) = events.last_mut() else {
            continue;
        };
        if finding.action == Action::Block {
            event.action = "blocked".into();
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
    events
}

#[cfg(test)]
mod tests;
