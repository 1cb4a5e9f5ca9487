//! The durable outbox: events waiting for the control plane, in a sled tree keyed by the 16
//! bytes of their UUIDv7 ids (oldest first), each value checksummed (`portcullis_runtime::record`). Bounded by count and bytes: appending past a bound
//! drops the oldest events and counts them; the count survives restarts.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prost::Message;

use portcullis_proto::v1::Event;

use portcullis_runtime::record;

const DROPPED: &[u8] = b"dropped";
const REFUSED: &[u8] = b"refused";

/// How much the outbox holds at most.
#[derive(Clone, Copy, Debug)]
pub struct OutboxLimits {
    pub max_events: u64,
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

pub struct Outbox {
    db: sled::Db,
    events: sled::Tree,
    meta: sled::Tree,
    limits: OutboxLimits,
    len: AtomicU64,
    bytes: AtomicU64,
    /// Dropped because the outbox (or the channel to it) was full; shared with the recorder.
    pub dropped: Arc<AtomicU64>,
    /// Refused by the control plane for good (each alone, after splitting its batch), and so
    /// dropped; the count survives restarts.
    refused: AtomicU64,
    /// Acknowledged by the control plane since the agent started.
    delivered: AtomicU64,
}

fn read_count(meta: &sled::Tree, key: &[u8]) -> Result<u64, sled::Error> {
    Ok(match meta.get(key)? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        None => 0,
    })
}

impl Outbox {
    /// Opens the outbox trees in the agent's database.
    pub fn open(db: &sled::Db, limits: OutboxLimits) -> Result<Self, sled::Error> {
        let events = db.open_tree("outbox")?;
        let meta = db.open_tree("outbox_meta")?;
        let (mut len, mut bytes) = (0, 0);
        for entry in events.iter() {
            let (_, value) = entry?;
            len += 1;
            bytes += value.len() as u64;
        }
        let dropped = read_count(&meta, DROPPED)?;
        let refused = read_count(&meta, REFUSED)?;
        Ok(Self {
            db: db.clone(),
            events,
            meta,
            limits,
            len: AtomicU64::new(len),
            bytes: AtomicU64::new(bytes),
            dropped: Arc::new(AtomicU64::new(dropped)),
            refused: AtomicU64::new(refused),
            delivered: AtomicU64::new(0),
        })
    }

    /// Events waiting.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events the control plane acknowledged since the agent started.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Removes events the control plane acknowledged.
    pub fn acknowledge(&self, keys: &[sled::IVec]) -> Result<(), sled::Error> {
        self.remove(keys)?;
        self.delivered
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Events dropped since counting began.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events the control plane refused for good since counting began.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Every event lost since counting began (dropped for room, unreadable, or refused): what
    /// the fleet view shows.
    pub fn lost(&self) -> u64 {
        self.dropped() + self.refused()
    }

    /// Removes events the control plane refused for good, and counts them durably.
    pub fn refuse(&self, keys: &[sled::IVec]) -> Result<(), sled::Error> {
        self.remove(keys)?;
        let total =
            self.refused.fetch_add(keys.len() as u64, Ordering::Relaxed) + keys.len() as u64;
        self.meta.insert(REFUSED, &total.to_be_bytes())?;
        Ok(())
    }

    /// Appends `events` (not yet durable: see `flush`), dropping the oldest past the limits.
    pub fn append(&self, events: &[Event]) -> Result<(), sled::Error> {
        let mut batch = sled::Batch::default();
        let (mut added, mut added_bytes) = (0, 0);
        for event in events {
            let Ok(id) = uuid::Uuid::parse_str(&event.id) else {
                continue;
            };
            let value = record::seal(id.as_bytes(), &event.encode_to_vec());
            added_bytes += value.len() as u64;
            added += 1;
            batch.insert(id.as_bytes(), value);
        }
        self.events.apply_batch(batch)?;
        self.len.fetch_add(added, Ordering::Relaxed);
        self.bytes.fetch_add(added_bytes, Ordering::Relaxed);
        self.enforce_limits()
    }

    fn enforce_limits(&self) -> Result<(), sled::Error> {
        let mut dropped = 0;
        while self.len() > self.limits.max_events
            || self.bytes.load(Ordering::Relaxed) > self.limits.max_bytes
        {
            let Some((_, value)) = self.events.pop_min()? else {
                break;
            };
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.bytes.fetch_sub(value.len() as u64, Ordering::Relaxed);
            dropped += 1;
        }
        if dropped > 0 {
            let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
            self.meta.insert(DROPPED, &total.to_be_bytes())?;
            tracing::warn!(
                dropped,
                total,
                "Event outbox full: dropped the oldest events"
            );
        }
        Ok(())
    }

    /// Records drops counted elsewhere (the recorder's full channel) durably.
    pub fn persist_dropped(&self) -> Result<(), sled::Error> {
        let total = self.dropped();
        self.meta.insert(DROPPED, &total.to_be_bytes())?;
        Ok(())
    }

    /// The oldest events, at most `max_events` and about `max_bytes` (at least one).
    pub fn peek(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<(sled::IVec, Event)>, sled::Error> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.events.iter() {
            let (key, value) = entry?;
            if !out.is_empty() && (out.len() >= max_events || bytes + value.len() > max_bytes) {
                break;
            }
            bytes += value.len();
            let event = record::open(&key, &value)
                .and_then(|bytes| Event::decode(bytes).map_err(|e| e.to_string()));
            match event {
                Ok(event) => out.push((key, event)),
                Err(error) => {
                    // Unreadable: it can never be sent. Counted, never silent.
                    tracing::error!(%error, "Dropping an unreadable outbox entry");
                    self.remove(&[key])?;
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    self.persist_dropped()?;
                }
            }
        }
        Ok(out)
    }

    /// Removes sent events (the keys `peek` gave).
    pub fn remove(&self, keys: &[sled::IVec]) -> Result<(), sled::Error> {
        for key in keys {
            if let Some(value) = self.events.remove(key)? {
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(value.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Makes appended events durable: sled's blocking flush on a blocking thread.
    pub async fn flush(&self) -> Result<(), sled::Error> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush().map(drop))
            .await
            .unwrap_or_else(|e| Err(sled::Error::ReportableBug(e.to_string())))
    }
}
