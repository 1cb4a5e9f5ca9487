//! Protection events: stored idempotently by id, indexed for the operator queries, kept within
//! the retention limits, and fanned out to watchers.
//!
//! Layout (sled trees in the store's database): `events` maps the event's key — the 16 bytes
//! of its UUIDv7 id, each inverted, so newer events sort first and newest-first listings read
//! forward (sled's reverse iteration is far slower) — to the `Event` message;
//! `events_by_cluster`, `events_by_policy` and `events_by_cluster_policy` map
//! `cluster \0 key`, `policy \0 key` and `cluster \0 policy \0 key` to nothing. Index entries are written before the event and removed after it, so an index
//! entry may point to a missing event (a crash in between) but an event is never unindexed;
//! readers skip missing events, and a re-sent batch writes both again.

mod filter;
mod validate;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prost::Message;
use tokio::sync::{Mutex, broadcast};
use tracing::{info, warn};

use portcullis_proto::v1::{Event, EventCount, EventFilter};

use crate::store::{Store, StoreError, now_millis, timestamp_from_millis};

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

pub struct EventStore {
    store: Arc<Store>,
    events: sled::Tree,
    by_cluster: sled::Tree,
    by_policy: sled::Tree,
    by_cluster_policy: sled::Tree,
    /// Events held (kept exact under `writer`).
    count: AtomicU64,
    /// Serialises writers, so the existence check and the write of an id are one step.
    writer: Mutex<()>,
    new_events: broadcast::Sender<Arc<Event>>,
    pub settings: EventSettings,
}

impl EventStore {
    pub fn open(store: Arc<Store>, settings: EventSettings) -> Result<Self, StoreError> {
        let db = store.db();
        let events = db.open_tree("events")?;
        let count = events.len() as u64;
        Ok(Self {
            by_cluster: db.open_tree("events_by_cluster")?,
            by_policy: db.open_tree("events_by_policy")?,
            by_cluster_policy: db.open_tree("events_by_cluster_policy")?,
            events,
            store,
            count: AtomicU64::new(count),
            writer: Mutex::new(()),
            new_events: broadcast::channel(4096).0,
            settings,
        })
    }

    /// Events held.
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// New events as they are stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.new_events.subscribe()
    }

    /// Stores a validated batch: events whose id is already stored are counted as duplicates
    /// and left as they are. Returns once the batch is durable.
    pub async fn ingest(&self, events: Vec<(uuid::Uuid, Event)>) -> Result<Ingested, StoreError> {
        let mut result = Ingested::default();
        let mut fresh = Vec::with_capacity(events.len());
        {
            let _writer = self.writer.lock().await;
            let now = timestamp_from_millis(now_millis());
            let mut indexes = [
                sled::Batch::default(),
                sled::Batch::default(),
                sled::Batch::default(),
            ];
            let mut records = sled::Batch::default();
            let mut seen = std::collections::HashSet::with_capacity(events.len());
            for (id, mut event) in events {
                let key = key_of(id.as_bytes());
                if !seen.insert(key) || self.events.contains_key(key)? {
                    result.duplicates += 1;
                    continue;
                }
                event.state = "new".into();
                event.handled_by.clear();
                event.note.clear();
                event.handled_time = None;
                event.received_time = Some(now);
                for (batch, index_key) in indexes.iter_mut().zip(index_keys(&event, &key)) {
                    batch.insert(index_key, &[] as &[u8]);
                }
                records.insert(&key, event.encode_to_vec());
                fresh.push(Arc::new(event));
            }
            let [clusters, policies, both] = indexes;
            self.by_cluster.apply_batch(clusters)?;
            self.by_policy.apply_batch(policies)?;
            self.by_cluster_policy.apply_batch(both)?;
            self.events.apply_batch(records)?;
            self.count.fetch_add(fresh.len() as u64, Ordering::Relaxed);
        }
        self.store.flush_all().await?;
        result.stored = fresh.len() as u32;
        for event in fresh {
            // No watcher is fine.
            let _ = self.new_events.send(event);
        }
        Ok(result)
    }

    pub fn get(&self, id: &uuid::Uuid) -> Result<Option<Event>, StoreError> {
        self.events
            .get(key_of(id.as_bytes()))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    /// Events matching `filter`, newest first, older than `before` (a page token's id).
    pub fn list(
        &self,
        filter: &EventFilter,
        limit: usize,
        before: Option<[u8; 16]>,
    ) -> Result<EventPage, StoreError> {
        let matcher = Matcher::new(filter);
        let low = id_bound(filter.since.as_ref(), false);
        let mut high = id_bound(filter.until.as_ref(), true);
        if let Some(before) = before {
            high = high.min(before);
        }
        let mut events = Vec::with_capacity(limit.min(1024));
        if low >= high {
            return Ok(EventPage {
                events,
                more_after: None,
            });
        }
        // The most selective index the filter allows; ids come from the key's last 16 bytes.
        let (tree, prefix) = match (filter.cluster.as_str(), filter.policy.as_str()) {
            ("", "") => (&self.events, Vec::new()),
            (cluster, "") => (&self.by_cluster, prefixed(&[cluster])),
            ("", policy) => (&self.by_policy, prefixed(&[policy])),
            (cluster, policy) => (&self.by_cluster_policy, prefixed(&[cluster, policy])),
        };
        // Keys invert ids: ids in [low, high) are keys in (key(high), key(low)].
        let bound = |id: [u8; 16]| [prefix.as_slice(), &key_of(&id)].concat();
        let range = tree.range((
            std::ops::Bound::Excluded(bound(high)),
            std::ops::Bound::Included(bound(low)),
        ));
        for entry in range {
            let (key, value) = entry?;
            let event_key: [u8; 16] = key[key.len() - 16..].try_into().unwrap_or([0; 16]);
            let event = if prefix.is_empty() {
                decode(&value)?
            } else {
                match self.events.get(event_key)? {
                    Some(bytes) => decode(&bytes)?,
                    // Indexed before the event was written (a crash between): skip.
                    None => continue,
                }
            };
            if !matcher.matches(&event) {
                continue;
            }
            if events.len() == limit {
                let last = events
                    .last()
                    .and_then(|e: &Event| uuid::Uuid::parse_str(&e.id).ok())
                    .map(|u| *u.as_bytes());
                return Ok(EventPage {
                    events,
                    more_after: last,
                });
            }
            events.push(event);
        }
        Ok(EventPage {
            events,
            more_after: None,
        })
    }

    /// Sets the handling state of every event in `ids` (all must exist; nothing changes
    /// otherwise). Returns the updated events.
    pub async fn handle(
        &self,
        ids: &[uuid::Uuid],
        state: &str,
        note: &str,
        by: &str,
    ) -> Result<Vec<Event>, StoreError> {
        let mut updated = Vec::with_capacity(ids.len());
        {
            let _writer = self.writer.lock().await;
            let now = timestamp_from_millis(now_millis());
            let mut batch = sled::Batch::default();
            for id in ids {
                let mut event = self.get(id)?.ok_or_else(|| StoreError::NotFound {
                    kind: "event",
                    name: id.to_string(),
                })?;
                event.state = state.to_owned();
                event.note = note.to_owned();
                if state == "new" {
                    event.handled_by.clear();
                    event.handled_time = None;
                } else {
                    event.handled_by = by.to_owned();
                    event.handled_time = Some(now);
                }
                batch.insert(&key_of(id.as_bytes()), event.encode_to_vec());
                updated.push(event);
            }
            self.events.apply_batch(batch)?;
        }
        self.store.flush_all().await?;
        Ok(updated)
    }

    /// Counts by (cluster, policy, action) of the events in [since, until).
    pub fn summarize(
        &self,
        since: Option<&pbjson_types::Timestamp>,
        until: Option<&pbjson_types::Timestamp>,
    ) -> Result<Vec<EventCount>, StoreError> {
        let filter = EventFilter {
            since: since.copied(),
            until: until.copied(),
            ..Default::default()
        };
        let matcher = Matcher::new(&filter);
        let (low, high) = (id_bound(since, false), id_bound(until, true));
        let mut counts: std::collections::BTreeMap<(String, String, String), (u64, u64)> =
            Default::default();
        if low < high {
            let range = (
                std::ops::Bound::Excluded(key_of(&high)),
                std::ops::Bound::Included(key_of(&low)),
            );
            for entry in self.events.range(range) {
                let event = decode(&entry?.1)?;
                if !matcher.matches(&event) {
                    continue;
                }
                let row = counts
                    .entry((event.cluster, event.policy, event.action))
                    .or_default();
                row.0 += 1;
                row.1 += u64::from(event.count.max(1));
            }
        }
        Ok(counts
            .into_iter()
            .map(
                |((cluster, policy, action), (events, admissions))| EventCount {
                    cluster,
                    policy,
                    action,
                    events,
                    admissions,
                },
            )
            .collect())
    }

    /// Deletes events past the retention limits; returns how many.
    pub async fn enforce_retention(&self) -> Result<u64, StoreError> {
        let cutoff = now_millis() - self.settings.max_age.as_millis() as i64;
        let cutoff_id = filter::id_at_millis(cutoff, false);
        let mut deleted = 0;
        loop {
            let _writer = self.writer.lock().await;
            let excess = self.len().saturating_sub(self.settings.max_count);
            let mut batches = [
                sled::Batch::default(),
                sled::Batch::default(),
                sled::Batch::default(),
                sled::Batch::default(),
            ];
            let mut n = 0u64;
            // Oldest first: keys invert ids, so from the end.
            for entry in self.events.iter().rev() {
                let (key, value) = entry?;
                let event_key: [u8; 16] = key.as_ref().try_into().unwrap_or([0; 16]);
                let old = key_of(&event_key) < cutoff_id;
                if (!old && n >= excess) || n >= 10_000 {
                    break;
                }
                let event = decode(&value)?;
                batches[0].remove(key);
                for (batch, index_key) in
                    batches[1..].iter_mut().zip(index_keys(&event, &event_key))
                {
                    batch.remove(index_key);
                }
                n += 1;
            }
            if n == 0 {
                break;
            }
            let [records, clusters, policies, both] = batches;
            self.events.apply_batch(records)?;
            self.by_cluster.apply_batch(clusters)?;
            self.by_policy.apply_batch(policies)?;
            self.by_cluster_policy.apply_batch(both)?;
            self.count.fetch_sub(n, Ordering::Relaxed);
            deleted += n;
        }
        if deleted > 0 {
            self.store.flush_all().await?;
        }
        Ok(deleted)
    }
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

/// An event's key from its id (and back): every byte inverted, so newer ids sort first.
fn key_of(id: &[u8; 16]) -> [u8; 16] {
    id.map(|b| !b)
}

fn decode(bytes: &[u8]) -> Result<Event, StoreError> {
    Event::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("event: {e}"),
    })
}

/// `a \0 b \0` ...: names never hold a NUL (they are validated).
fn prefixed(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::new();
    for part in parts {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
}

/// The keys of `event` (whose key is `key`) in the cluster, policy and cluster+policy indexes.
fn index_keys(event: &Event, key: &[u8; 16]) -> [Vec<u8>; 3] {
    let with_id = |mut prefix: Vec<u8>| {
        prefix.extend_from_slice(key);
        prefix
    };
    [
        with_id(prefixed(&[&event.cluster])),
        with_id(prefixed(&[&event.policy])),
        with_id(prefixed(&[&event.cluster, &event.policy])),
    ]
}

#[cfg(test)]
mod tests;
