//! The writer task: takes decisions from the webhook's channel, builds their events, folds
//! identical events of a burst into one with a count, appends them to the outbox and flushes, at least every
//! `flush_interval`; on shutdown it writes what is left.

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

/// Events per write at most (a flood is written in slices).
const MAX_PENDING: usize = 4096;

/// Runs until `shutdown` turns true (then drains the channel) or every sender is gone.
pub async fn run_writer(
    cluster: String,
    outbox: Arc<Outbox>,
    mut rx: mpsc::Receiver<Record>,
    flush_interval: Duration,
    written: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending = Pending::default();
    loop {
        let deadline = tokio::time::sleep(flush_interval);
        tokio::pin!(deadline);
        // Gather until the interval ends, the buffer is full, or shutdown.
        let mut closed = false;
        let mut received = Vec::with_capacity(256);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut received, 256) => {
                    if n == 0 {
                        closed = true;
                        break;
                    }
                    for record in received.drain(..) {
                        for event in record.events(&cluster) {
                            pending.add(event);
                        }
                    }
                    if pending.len() >= MAX_PENDING {
                        break;
                    }
                }
                () = &mut deadline => break,
                _ = shutdown.wait_for(|stop| *stop) => {
                    while let Ok(record) = rx.try_recv() {
                        for event in record.events(&cluster) {
                            pending.add(event);
                        }
                    }
                    closed = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            let events = pending.take();
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

/// Events waiting to be written, identical ones folded into the first with a count.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    by_fingerprint: HashMap<u64, usize>,
}

impl Pending {
    fn add(&mut self, event: Event) {
        let fingerprint = fingerprint(&event);
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

    fn len(&self) -> usize {
        self.events.len()
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn take(&mut self) -> Vec<Event> {
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

fn fingerprint(event: &Event) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key(event).hash(&mut hasher);
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
        assert!(pending.is_empty());
        pending.add(mk_event("a"));
        assert_eq!(pending.take()[0].count, 1, "a new burst starts a new event");
    }
}
