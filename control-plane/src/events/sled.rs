//! Events in sled, in segments with an index in memory.
//!
//! Layout: events are written in segments, each one sled value holding up to `SEGMENT_EVENTS`
//! events of one ingested batch (about `SEGMENT_BYTES`): tree `event_segments` maps the segment
//! number (u64, big endian) to its records (`index::push_record`). A batch of a thousand events
//! is then a few dozen sled inserts instead of one per event and index entry, which is what
//! bounded ingest. Tree `event_updates` maps an event's key to the event as an operator last
//! changed it (`HandleEvents`), which supersedes the segment's copy.
//!
//! The index is in memory (`index::Index`): every event's key — the 16 bytes of its UUIDv7 id,
//! each inverted, so newer events sort first — with its location, cluster, policy, action,
//! count and time. Listing walks it newest first and reads only the events that pass the
//! cluster, policy and time filters; summaries never read the segments. It is rebuilt from the
//! segments when the store opens (about 80 bytes of memory per event). An event is in the index
//! only once its segment is written, and acknowledged only once the segment is durable.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use prost::Message;
use tokio::sync::{Mutex, broadcast};

use portcullis_proto::v1::{Event, EventCount, EventFilter};
use portcullis_proto::words::EventState;

use super::filter::{self, Matcher, id_bound};
use super::index::{Entry, Index, RECORD_HEADER, push_record, record_at, records};
use super::{EventPage, EventSettings, Ingested, as_handled, as_received, decode};
use crate::store::{Store, StoreError, now_millis, timestamp_from_millis};

/// Events per segment at most.
const SEGMENT_EVENTS: usize = 256;
/// Candidates `list` takes from the index per read lock.
const LIST_BATCH: usize = 256;
/// A segment is closed once it holds this many bytes (an event larger than this gets a segment
/// of its own). sled keeps up to 16 values in a leaf and writes a leaf of more than a quarter
/// of its 512 KiB log segment as a separate blob file; leaves of 6 KiB values stay under that
/// (with 16 KiB values the control plane spent a third of its time creating blob files).
const SEGMENT_BYTES: usize = 6 * 1024;

/// The events of a sled store (`Store::db`).
pub struct SledEvents {
    store: Arc<Store>,
    pub(super) segments: sled::Tree,
    pub(super) updates: sled::Tree,
    index: RwLock<Index>,
    /// Serialises writers, so the existence check and the write of an id are one step.
    writer: Mutex<()>,
    new_events: broadcast::Sender<Arc<Event>>,
}

impl SledEvents {
    pub fn open(
        store: Arc<Store>,
        new_events: broadcast::Sender<Arc<Event>>,
    ) -> Result<Self, StoreError> {
        let db = store.db();
        // Before the release events were one value each in a tree `events`: refused by name
        // rather than left unread.
        if db.tree_names().iter().any(|n| n.as_ref() == b"events") {
            return Err(StoreError::PreRelease {
                dir: "of this control plane".into(),
                what: "events in the layout before segments",
            });
        }
        let segments = db.open_tree("event_segments")?;
        let updates = db.open_tree("event_updates")?;
        let mut index = Index::default();
        for item in segments.iter() {
            let (number, value) = item?;
            let segment = segment_number(&number)?;
            for record in records(&value) {
                let (offset, key, bytes) = record.map_err(|what| corrupt(segment, what))?;
                let entry = index.entry(&decode(bytes)?, segment, offset);
                index.insert(key, entry);
            }
        }
        for item in updates.iter() {
            let (key, _) = item?;
            match index.events.get_mut(key.as_ref()) {
                Some(entry) => entry.updated = true,
                // Its event was deleted by retention just before a crash.
                None => {
                    updates.remove(key)?;
                }
            }
        }
        let events = Self {
            store,
            segments,
            updates,
            index: RwLock::new(index),
            writer: Mutex::new(()),
            new_events,
        };
        Ok(events)
    }

    pub(super) fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-changed (every change
        // is one insert or remove), so a poisoned lock is still usable.
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Events held.
    pub fn len(&self) -> u64 {
        self.read_index().events.len() as u64
    }

    /// Writes `events` (keys not yet stored) as new segments and adds them to the index. The
    /// caller holds `writer` and makes them durable.
    fn write_segments(&self, events: &[([u8; 16], Event)]) -> Result<(), StoreError> {
        let mut next = self.read_index().next_segment();
        let mut placed = Vec::with_capacity(events.len());
        // Room for a full segment and one more event: no growth while filling it.
        let capacity = SEGMENT_BYTES + 4096;
        let mut segment = Vec::with_capacity(capacity);
        let mut held = 0;
        for (i, (key, event)) in events.iter().enumerate() {
            placed.push((next, push_record(&mut segment, key, event)));
            held += 1;
            let last = i + 1 == events.len();
            if last || held == SEGMENT_EVENTS || segment.len() >= SEGMENT_BYTES {
                let full = std::mem::replace(&mut segment, Vec::with_capacity(capacity));
                self.segments.insert(next.to_be_bytes(), full)?;
                next += 1;
                held = 0;
            }
        }
        let mut index = self.write_index();
        for ((key, event), (segment, offset)) in events.iter().zip(placed) {
            let entry = index.entry(event, segment, offset);
            index.insert(*key, entry);
        }
        Ok(())
    }

    /// Stores a validated batch: events whose id is already stored are counted as duplicates
    /// and left as they are. Returns once the batch is durable.
    pub async fn ingest(&self, events: Vec<(uuid::Uuid, Event)>) -> Result<Ingested, StoreError> {
        let mut result = Ingested::default();
        let mut fresh = Vec::with_capacity(events.len());
        {
            let _writer = self.writer.lock().await;
            let now = timestamp_from_millis(now_millis());
            {
                let index = self.read_index();
                let mut seen = HashSet::with_capacity(events.len());
                for (id, mut event) in events {
                    let key = key_of(id.as_bytes());
                    if !seen.insert(key) || index.events.contains_key(&key) {
                        result.duplicates += 1;
                        continue;
                    }
                    as_received(&mut event, now);
                    fresh.push((key, event));
                }
            }
            self.write_segments(&fresh)?;
        }
        self.store.flush_all().await?;
        result.stored = fresh.len() as u32;
        if self.new_events.receiver_count() > 0 {
            for (_, event) in fresh {
                // A watcher that went away meanwhile is fine.
                let _ = self.new_events.send(Arc::new(event));
            }
        }
        Ok(result)
    }

    pub fn get(&self, id: &uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let key = key_of(id.as_bytes());
        let Some(entry) = self.read_index().events.get(&key).copied() else {
            return Ok(None);
        };
        self.load(&mut Reader::new(self), &key, entry)
    }

    /// The event `key` whose entry was `entry` when the index was read. Retention may have
    /// deleted it or moved it within its segment since: then the index is read again.
    pub(super) fn load(
        &self,
        reader: &mut Reader<'_>,
        key: &[u8; 16],
        mut entry: Entry,
    ) -> Result<Option<Event>, StoreError> {
        for _ in 0..3 {
            if let Some(event) = reader.read(key, &entry)? {
                return Ok(Some(event));
            }
            reader.forget();
            match self.read_index().events.get(key) {
                Some(now) => entry = *now,
                None => return Ok(None),
            }
        }
        Err(corrupt(
            entry.segment,
            format!("no record of the event at {}", entry.offset),
        ))
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
        let nothing = || EventPage {
            events: Vec::new(),
            more_after: None,
        };
        let (cluster, policy, action) = {
            let index = self.read_index();
            // A name no event carries matches nothing.
            let name = |want: &str| match want {
                "" => Some(None),
                want => index.names.id(want).map(Some),
            };
            match (
                name(&filter.cluster),
                name(&filter.policy),
                name(&filter.action),
            ) {
                (Some(c), Some(p), Some(a)) => (c, p, a),
                _ => return Ok(nothing()),
            }
        };
        if low >= high {
            return Ok(nothing());
        }
        let mut reader = Reader::new(self);
        // Keys invert ids: ids in [low, high) are keys in (key(high), key(low)]. The index is
        // read a batch of candidates at a time, so a slow query never holds up writers.
        let last = key_of(&low);
        let mut from = key_of(&high);
        loop {
            let mut candidates = Vec::with_capacity(LIST_BATCH);
            let mut scanned = None;
            {
                let index = self.read_index();
                let range = index.events.range((
                    std::ops::Bound::Excluded(from),
                    std::ops::Bound::Included(last),
                ));
                for (key, entry) in range {
                    scanned = Some(*key);
                    if cluster.is_some_and(|c| c != entry.cluster)
                        || policy.is_some_and(|p| p != entry.policy)
                        || action.is_some_and(|a| a != entry.action)
                        || !matcher.time_matches(entry.time_ms)
                    {
                        continue;
                    }
                    candidates.push((*key, *entry));
                    if candidates.len() == LIST_BATCH {
                        break;
                    }
                }
            }
            for (key, entry) in candidates {
                let Some(event) = self.load(&mut reader, &key, entry)? else {
                    continue;
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
            match scanned {
                Some(key) if key != last => from = key,
                _ => break,
            }
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
        state: EventState,
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
                as_handled(&mut event, state, note, by, now);
                batch.insert(&key_of(id.as_bytes()), event.encode_to_vec());
                updated.push(event);
            }
            self.updates.apply_batch(batch)?;
            let mut index = self.write_index();
            for id in ids {
                if let Some(entry) = index.events.get_mut(&key_of(id.as_bytes())) {
                    entry.updated = true;
                }
            }
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
        let index = self.read_index();
        let mut counts: std::collections::BTreeMap<(&str, &str, &str), (u64, u64)> =
            Default::default();
        if low < high {
            let range = (
                std::ops::Bound::Excluded(key_of(&high)),
                std::ops::Bound::Included(key_of(&low)),
            );
            for entry in index.events.range(range).map(|(_, e)| e) {
                if !matcher.time_matches(entry.time_ms) {
                    continue;
                }
                let names = &index.names;
                let key = (
                    names.name(entry.cluster),
                    names.name(entry.policy),
                    names.name(entry.action),
                );
                let row = counts.entry(key).or_default();
                row.0 += 1;
                row.1 += u64::from(entry.admissions);
            }
        }
        Ok(counts
            .into_iter()
            .map(
                |((cluster, policy, action), (events, admissions))| EventCount {
                    cluster: cluster.to_owned(),
                    policy: policy.to_owned(),
                    action: action.to_owned(),
                    events,
                    admissions,
                },
            )
            .collect())
    }

    /// Deletes events past the retention limits; returns how many.
    pub async fn enforce_retention(&self, settings: &EventSettings) -> Result<u64, StoreError> {
        let cutoff = now_millis() - settings.max_age.as_millis() as i64;
        let cutoff_id = filter::id_at_millis(cutoff, false);
        let mut deleted = 0;
        loop {
            let _writer = self.writer.lock().await;
            // Oldest first: keys invert ids, so from the end.
            let doomed: Vec<([u8; 16], Entry)> = {
                let index = self.read_index();
                let excess = (index.events.len() as u64).saturating_sub(settings.max_count);
                let mut doomed = Vec::new();
                for (key, entry) in index.events.iter().rev() {
                    let old = key_of(key) < cutoff_id;
                    let n = doomed.len() as u64;
                    if (!old && n >= excess) || n >= 10_000 {
                        break;
                    }
                    doomed.push((*key, *entry));
                }
                doomed
            };
            if doomed.is_empty() {
                break;
            }
            self.delete(&doomed)?;
            deleted += doomed.len() as u64;
        }
        if deleted > 0 {
            self.store.flush_all().await?;
        }
        Ok(deleted)
    }

    /// Removes `doomed` events: segments left without a live event are deleted, the others are
    /// rewritten without them (one sled write each, so a segment is never half-rewritten).
    fn delete(&self, doomed: &[([u8; 16], Entry)]) -> Result<(), StoreError> {
        let gone: HashSet<[u8; 16]> = doomed.iter().map(|(key, _)| *key).collect();
        // Events to delete per segment.
        let mut touched: std::collections::BTreeMap<u64, u32> = Default::default();
        for (_, entry) in doomed {
            *touched.entry(entry.segment).or_default() += 1;
        }
        let mut moved = Vec::new();
        let mut rewrites = sled::Batch::default();
        // Under the write lock: readers never see a rewritten segment with old offsets. All
        // segment changes are one batch, so a failure changes nothing.
        let mut index = self.write_index();
        for (&segment, &dying) in &touched {
            let live = index.segments.get(&segment).copied().unwrap_or(0);
            if live <= dying {
                rewrites.remove(&segment.to_be_bytes());
                continue;
            }
            let Some(value) = self.segments.get(segment.to_be_bytes())? else {
                continue;
            };
            let mut kept = Vec::with_capacity(value.len());
            for record in records(&value) {
                let (offset, key, bytes) = record.map_err(|what| corrupt(segment, what))?;
                let current = index.events.get(&key);
                let live = current.is_some_and(|e| e.segment == segment && e.offset == offset);
                if !live || gone.contains(&key) {
                    continue;
                }
                let at = kept.len() as u32;
                kept.extend_from_slice(&value[offset as usize..][..RECORD_HEADER + bytes.len()]);
                moved.push((key, at));
            }
            rewrites.insert(&segment.to_be_bytes(), kept);
        }
        self.segments.apply_batch(rewrites)?;
        let mut removals = sled::Batch::default();
        for (key, entry) in doomed {
            if entry.updated {
                removals.remove(key);
            }
            index.remove(key);
        }
        for (key, offset) in moved {
            if let Some(entry) = index.events.get_mut(&key) {
                entry.offset = offset;
            }
        }
        drop(index);
        self.updates.apply_batch(removals)?;
        Ok(())
    }
}

/// Reads events from their segments, keeping the last segment read (a page's events usually
/// share a few).
pub(super) struct Reader<'s> {
    store: &'s SledEvents,
    last: Option<(u64, sled::IVec)>,
}

impl<'s> Reader<'s> {
    pub(super) fn new(store: &'s SledEvents) -> Self {
        Self { store, last: None }
    }

    /// Drops the segment kept from the last read.
    fn forget(&mut self) {
        self.last = None;
    }

    /// The event at `entry`; `None` when it is not there (its segment was deleted or
    /// rewritten by retention since the entry was read).
    fn read(&mut self, key: &[u8; 16], entry: &Entry) -> Result<Option<Event>, StoreError> {
        if entry.updated
            && let Some(bytes) = self.store.updates.get(key)?
        {
            return decode(&bytes).map(Some);
        }
        if self.last.as_ref().is_none_or(|(s, _)| *s != entry.segment) {
            let Some(value) = self.store.segments.get(entry.segment.to_be_bytes())? else {
                return Ok(None);
            };
            self.last = Some((entry.segment, value));
        }
        let (_, value) = self.last.as_ref().expect("just set");
        match record_at(value, entry.offset as usize) {
            Ok((found, bytes)) if found == *key => decode(bytes).map(Some),
            _ => Ok(None),
        }
    }
}

/// An event's key from its id (and back): every byte inverted, so newer ids sort first.
pub(super) fn key_of(id: &[u8; 16]) -> [u8; 16] {
    id.map(|b| !b)
}

fn segment_number(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        what: "event segment key is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn corrupt(segment: u64, what: String) -> StoreError {
    StoreError::Corrupt {
        what: format!("event segment {segment}: {what}"),
    }
}
