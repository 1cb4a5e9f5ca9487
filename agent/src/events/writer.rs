//! The writer task: takes decisions from the webhook's channel, builds their events, folds
//! identical events of a burst into one with a count, appends them to the outbox and flushes,
//! at least every `flush_interval`; on shutdown it writes what is left.
//!
//! Folding happens twice: identical decisions (same object, operation, user, images and
//! findings) are counted before any event is built, since a burst usually repeats one
//! decision and building an event costs an id and a copy of every field; the events of the
//! distinct decisions are then folded as before. The result is the same as folding the events
//! of every decision, for a fraction of the work on the core the webhook shares.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{Notify, mpsc, watch};
use tracing::error;

use portcullis_proto::v1::Event;

use super::{Outbox, Record};

/// Distinct decisions per write at most (a flood is written in slices).
const MAX_PENDING: usize = 4096;
/// How often the writer takes what the webhook handed over. Polling the channel instead of
/// waiting on it means handing a decision over never wakes a task: on a loaded node every
/// wake-up is a context switch the admission requests pay for.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Runs until `shutdown` turns true (then drains the channel) or every sender is gone.
pub async fn run_writer(
    cluster: String,
    outbox: Arc<Outbox>,
    mut rx: mpsc::Receiver<Record>,
    flush_interval: Duration,
    written: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending = PendingRecords::default();
    loop {
        let deadline = tokio::time::sleep(flush_interval);
        tokio::pin!(deadline);
        // Gather until the interval ends, the buffer is full, or shutdown.
        let mut closed = false;
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        loop {
            tokio::select! {
                _ = drain.tick() => {
                    loop {
                        match rx.try_recv() {
                            Ok(record) => pending.add(record),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed || pending.len() >= MAX_PENDING {
                        break;
                    }
                }
                () = &mut deadline => break,
                _ = shutdown.wait_for(|stop| *stop) => {
                    while let Ok(record) = rx.try_recv() {
                        pending.add(record);
                    }
                    closed = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            let events = pending.take(&cluster);
            let result = async {
                outbox.append(&events)?;
                outbox.persist_dropped()?;
                outbox.flush().await
            }
            .await;
            match result {
                Ok(()) => written.notify_one(),
                Err(error) => {
                    error!(%error, lost = events.len(), "Cannot write events to the outbox")
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// Decisions waiting to be written, identical ones counted on the first.
#[derive(Default)]
pub(super) struct PendingRecords {
    records: Vec<(Record, u32)>,
    by_fingerprint: HashMap<u64, usize>,
}

impl PendingRecords {
    pub(super) fn add(&mut self, record: Record) {
        let key = record_key(&record);
        let fingerprint = fingerprint(&key);
        let seen = self.by_fingerprint.get(&fingerprint).copied();
        let same = seen.filter(|&at| record_key(&self.records[at].0) == key);
        drop(key);
        if let Some(at) = same {
            let count = &mut self.records[at].1;
            *count = count.saturating_add(1);
            return;
        }
        self.by_fingerprint.insert(fingerprint, self.records.len());
        self.records.push((record, 1));
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The events of every pending decision, folded.
    pub(super) fn take(&mut self, cluster: &str) -> Vec<Event> {
        self.by_fingerprint.clear();
        let mut events = Pending::default();
        for (record, count) in self.records.drain(..) {
            for mut event in record.events(cluster) {
                event.count = count;
                events.add(event);
            }
        }
        events.take()
    }
}

/// What makes two decisions produce the same events (see `key`): the object, operation,
/// user, images and every finding with its policy and action.
fn record_key(record: &Record) -> impl Hash + PartialEq + '_ {
    let (request, decision) = (&record.request, &record.decision);
    (
        (&request.namespace, &request.kind, &request.name),
        (&request.operation, &request.user, &decision.images),
        decision
            .findings
            .iter()
            .map(|f| {
                let finding = &f.finding;
                let (rule, path, value) = (&finding.rule, &finding.path, &finding.value);
                (&f.policy, f.action, rule, path, value, &finding.message)
            })
            .collect::<Vec<_>>(),
    )
}

/// Events waiting to be written, identical ones folded into the first with a count.
#[derive(Default)]
pub(super) struct Pending {
    events: Vec<Event>,
    by_fingerprint: HashMap<u64, usize>,
}

impl Pending {
    pub(super) fn add(&mut self, event: Event) {
        let fingerprint = fingerprint(&key(&event));
        if let Some(&at) = self.by_fingerprint.get(&fingerprint)
            && same(&self.events[at], &event)
        {
            let first = &mut self.events[at];
            first.count = first.count.saturating_add(event.count.max(1));
            return;
        }
        self.by_fingerprint.insert(fingerprint, self.events.len());
        self.events.push(event);
    }

    pub(super) fn take(&mut self) -> Vec<Event> {
        self.by_fingerprint.clear();
        std::mem::take(&mut self.events)
    }
}

/// What makes two events the same admission outcome: policy, object, operation, user,
/// action and findings (not the id, time or admission uid).
fn key(event: &Event) -> impl Hash + PartialEq + '_ {
    (
        (&event.policy, &event.namespace, &event.kind, &event.name),
        (&event.operation, &event.user, &event.action, &event.images),
        event
            .findings
            .iter()
            .map(|f| (&f.rule, &f.path, &f.value, &f.message))
            .collect::<Vec<_>>(),
    )
}

fn fingerprint(key: &impl Hash) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

fn same(a: &Event, b: &Event) -> bool {
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_event(name: &str) -> Event {
        Event {
            id: uuid::Uuid::now_v7().to_string(),
            policy: "p".into(),
            name: name.into(),
            action: "blocked".into(),
            count: 1,
            ..Default::default()
        }
    }

    #[test]
    fn identical_events_of_a_burst_are_folded_with_a_count() {
        let mut pending = Pending::default();
        for _ in 0..5 {
            pending.add(mk_event("a"));
        }
        pending.add(mk_event("b"));
        let events = pending.take();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].name.as_str(), events[0].count), ("a", 5));
        assert_eq!((events[1].name.as_str(), events[1].count), ("b", 1));
        assert!(pending.take().is_empty());
        pending.add(mk_event("a"));
        assert_eq!(pending.take()[0].count, 1, "a new burst starts a new event");
    }
}
