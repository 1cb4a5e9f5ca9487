//! Protection events: stored idempotently by id (a batch whole, duplicates ignored), listed
//! newest first for the operator queries, kept within the retention limits, and fanned out to
//! watchers as they are stored. Two backends with the same semantics, chosen by the store's:
//! sled (segments and an index in memory, `sled.rs`) and PostgreSQL (one table every replica
//! shares, `postgres/`).

mod filter;
mod index;
mod postgres;
mod sled;
mod validate;

use std::{sync::Arc, time::Duration};

use prost::Message;
use tokio::sync::broadcast;
use tracing::{info, warn};

use portcullis_proto::v1::{Event, EventCount, EventFilter};
use portcullis_proto::words::EventState;

use crate::store::{Store, StoreError};

pub use filter::{Matcher, id_bound};
pub use validate::{BatchError, validate_batch};

/// Retention and limits.
#[derive(Clone, Debug)]
pub struct EventSettings {
    /// Events older than this are deleted.
    pub max_age: Duration,
    /// At most this many events are kept (the oldest go first).
    pub max_count: u64,
    /// Events per `ReportEvents` call.
    pub max_batch: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_count: 1_000_000,
            max_batch: 1000,
        }
    }
}

/// What one ingest did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    pub stored: u32,
    pub duplicates: u32,
}

/// One page of events, newest first.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The id of the last event when more follow.
    pub more_after: Option<[u8; 16]>,
}

/// The events of the store, on its backend. Cheap to share behind an `Arc`.
pub struct EventStore {
    backend: Backend,
    new_events: broadcast::Sender<Arc<Event>>,
    pub settings: EventSettings,
}

enum Backend {
    Sled(Arc<sled::SledEvents>),
    Postgres(postgres::PgEvents),
}

impl EventStore {
    /// The events of `store`: in its PostgreSQL database when it has one, else in its sled
    /// database. With PostgreSQL this starts the task that follows other replicas' events
    /// (it needs a Tokio runtime).
    pub fn open(store: Arc<Store>, settings: EventSettings) -> Result<Self, StoreError> {
        let new_events = broadcast::channel(4096).0;
        let backend = match store.postgres_pool() {
            Some(pool) => Backend::Postgres(postgres::PgEvents::open(
                pool.clone(),
                store.notifications(crate::store::postgres::Topic::Events),
                new_events.clone(),
            )),
            None => Backend::Sled(Arc::new(sled::SledEvents::open(store, new_events.clone())?)),
        };
        Ok(Self {
            backend,
            new_events,
            settings,
        })
    }

    /// Events held. With PostgreSQL an estimate: the last count of the table (taken when
    /// this replica first writes or follows, and every minute) corrected by what this replica
    /// stored and deleted since.
    pub fn len(&self) -> u64 {
        match &self.backend {
            Backend::Sled(events) => events.len(),
            Backend::Postgres(events) => events.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// New events as they are stored (with PostgreSQL: on any replica), each once, from the
    /// moment this returns. Changes of handling state are not sent. With PostgreSQL this first
    /// fixes where this replica's following starts (once), so it can fail as `Unavailable`.
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<Event>>, StoreError> {
        if let Backend::Postgres(events) = &self.backend {
            events.follow_from_now().await?;
        }
        Ok(self.new_events.subscribe())
    }

    /// Stores a validated batch: events whose id is already stored are counted as duplicates
    /// and left as they are. Returns once the batch is durable; nothing of it is stored when
    /// this fails.
    pub async fn ingest(&self, events: Vec<(uuid::Uuid, Event)>) -> Result<Ingested, StoreError> {
        match &self.backend {
            Backend::Sled(backend) => backend.ingest(events).await,
            Backend::Postgres(backend) => backend.ingest(events).await,
        }
    }

    pub async fn get(&self, id: &uuid::Uuid) -> Result<Option<Event>, StoreError> {
        match &self.backend {
            Backend::Sled(events) => events.get(id),
            Backend::Postgres(events) => events.get(id).await,
        }
    }

    /// Events matching `filter`, newest first (by id), older than `before` (a page token's
    /// id).
    pub async fn list(
        &self,
        filter: &EventFilter,
        limit: usize,
        before: Option<[u8; 16]>,
    ) -> Result<EventPage, StoreError> {
        match &self.backend {
            Backend::Sled(events) => {
                let (events, filter) = (events.clone(), filter.clone());
                blocking("listing events", move || {
                    events.list(&filter, limit, before)
                })
                .await
            }
            Backend::Postgres(events) => events.list(filter, limit, before).await,
        }
    }

    /// Sets the handling state of every event in `ids` (all must exist; nothing changes
    /// otherwise). Returns the updated events.
    pub async fn handle(
        &self,
        ids: &[uuid::Uuid],
        state: EventState,
        note: &str,
        by: &str,
    ) -> Result<Vec<Event>, StoreError> {
        match &self.backend {
            Backend::Sled(events) => events.handle(ids, state, note, by).await,
            Backend::Postgres(events) => events.handle(ids, state, note, by).await,
        }
    }

    /// Counts by (cluster, policy, action) of the events in [since, until), in that order.
    pub async fn summarize(
        &self,
        since: Option<&pbjson_types::Timestamp>,
        until: Option<&pbjson_types::Timestamp>,
    ) -> Result<Vec<EventCount>, StoreError> {
        match &self.backend {
            Backend::Sled(events) => {
                let (events, since, until) = (events.clone(), since.copied(), until.copied());
                blocking("summarizing events", move || {
                    events.summarize(since.as_ref(), until.as_ref())
                })
                .await
            }
            Backend::Postgres(events) => events.summarize(since, until).await,
        }
    }

    /// Deletes events past the retention limits; returns how many.
    pub async fn enforce_retention(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sled(events) => events.enforce_retention(&self.settings).await,
            Backend::Postgres(events) => events.enforce_retention(&self.settings).await,
        }
    }

    /// The sled backend, for tests of its layout.
    #[cfg(test)]
    fn as_sled(&self) -> Option<&sled::SledEvents> {
        match &self.backend {
            Backend::Sled(events) => Some(events),
            Backend::Postgres(_) => None,
        }
    }
}

/// Runs `read` on a blocking thread (sled reads wait for the disk).
async fn blocking<T: Send + 'static>(
    what: &str,
    read: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| StoreError::Corrupt {
            what: format!("{what}: {e}"),
        })?
}

/// Enforces retention every `every` until the task is dropped.
pub async fn retain_periodically(events: Arc<EventStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match events.enforce_retention().await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, kept = events.len(), "Event retention"),
            Err(error) => warn!(%error, "Event retention failed"),
        }
    }
}

/// An agent's event as the control plane stores it: new, not handled, received `now`.
fn as_received(event: &mut Event, now: pbjson_types::Timestamp) {
    event.state = EventState::New.as_str().into();
    event.handled_by.clear();
    event.note.clear();
    event.handled_time = None;
    event.received_time = Some(now);
}

/// `event` as an operator (`by`) set its handling `state` with `note` at `now`.
fn as_handled(
    event: &mut Event,
    state: EventState,
    note: &str,
    by: &str,
    now: pbjson_types::Timestamp,
) {
    event.state = state.as_str().to_owned();
    event.note = note.to_owned();
    if state == EventState::New {
        event.handled_by.clear();
        event.handled_time = None;
    } else {
        event.handled_by = by.to_owned();
        event.handled_time = Some(now);
    }
}

fn decode(bytes: &[u8]) -> Result<Event, StoreError> {
    Event::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("event: {e}"),
    })
}

#[cfg(test)]
mod tests;
