//! Events on PostgreSQL: table `events` (`migrations/0002_events.sql`), which every replica
//! shares. A batch is one multi-row `INSERT … ON CONFLICT (id) DO NOTHING` in one transaction:
//! stored whole or not at all, an id stored once whichever replica gets it first. Listings and
//! summaries are queries on the indexed columns (`reads.rs`); each replica follows new rows to
//! its watchers (`follow.rs`). Database errors map as the store's do: a lost connection is
//! `Unavailable`.

mod follow;
mod reads;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use deadpool_postgres::Pool;
use prost::Message;
use tokio::sync::{Notify, OnceCell, broadcast};
use tracing::{Instrument, info, info_span};

use portcullis_proto::v1::Event;
use portcullis_proto::words::EventState;

use super::{EventSettings, Ingested, as_handled, as_received, decode, filter};
use crate::store::{StoreError, now_millis, postgres::db_error, timestamp_from_millis};
use follow::Cursor;

/// Events deleted per statement by retention (each its own short transaction).
const DELETE_CHUNK: i64 = 10_000;

/// The events of a PostgreSQL store.
pub struct PgEvents {
    shared: Arc<Shared>,
    /// Ends the follower when the store goes.
    _follower: AbortOnDrop,
}

/// What the store's calls and its follower share.
struct Shared {
    pool: Pool,
    /// Where this replica starts following: fixed before it first writes or follows.
    start: OnceCell<Cursor>,
    /// The estimate `len` returns.
    count: AtomicI64,
    /// Wakes the follower after a commit here (other replicas' commits: their notification,
    /// or the poll).
    wake: Notify,
    new_events: broadcast::Sender<Arc<Event>>,
}

impl PgEvents {
    /// The events in `pool`'s database (the schema is the store's migration 2); starts the
    /// follower task.
    pub fn open(
        pool: Pool,
        notified: Option<tokio::sync::watch::Receiver<u64>>,
        new_events: broadcast::Sender<Arc<Event>>,
    ) -> Self {
        let shared = Arc::new(Shared {
            pool,
            start: OnceCell::new(),
            count: AtomicI64::new(0),
            wake: Notify::new(),
            new_events,
        });
        let follower = tokio::spawn(
            follow::follow(shared.clone(), notified).instrument(info_span!("event_follower")),
        );
        Self {
            shared,
            _follower: AbortOnDrop(follower),
        }
    }

    /// Fixes where following starts, if it is not yet: watchers subscribing afterwards get
    /// every event committed after they subscribed.
    pub async fn follow_from_now(&self) -> Result<(), StoreError> {
        self.shared.start().await.map(|_| ())
    }

    pub fn len(&self) -> u64 {
        self.shared.count.load(Ordering::Relaxed).max(0) as u64
    }

    pub async fn ingest(&self, events: Vec<(uuid::Uuid, Event)>) -> Result<Ingested, StoreError> {
        // A batch stored before following started would never reach this replica's watchers.
        self.shared.start().await?;
        let now = timestamp_from_millis(now_millis());
        let mut result = Ingested::default();
        let mut seen = HashSet::with_capacity(events.len());
        let mut batch = Batch::with_capacity(events.len());
        for (id, mut event) in events {
            if !seen.insert(id) {
                result.duplicates += 1;
                continue;
            }
            as_received(&mut event, now);
            batch.push(id, event);
        }
        if batch.ids.is_empty() {
            return Ok(result);
        }
        let mut client = self.shared.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO events (id, cluster, policy, action, state, time_ms, admissions, record)
                 SELECT id, cluster, policy, action, 'new', time_ms, admissions, record
                 FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                             $6::bigint[], $7::bytea[])
                      AS batch (id, cluster, policy, action, time_ms, admissions, record)
                 ON CONFLICT (id) DO NOTHING",
            )
            .await
            .map_err(db_error)?;
        let stored = tx
            .execute(
                &insert,
                &[
                    &batch.ids,
                    &batch.clusters,
                    &batch.policies,
                    &batch.actions,
                    &batch.times,
                    &batch.admissions,
                    &batch.records,
                ],
            )
            .await
            .map_err(db_error)? as u32;
        if stored > 0 {
            // For replicas that listen (delivered at commit).
            tx.execute("SELECT pg_notify($1, '')", &[&follow::CHANNEL])
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        result.stored = stored;
        result.duplicates += batch.ids.len() as u32 - stored;
        self.shared
            .count
            .fetch_add(i64::from(stored), Ordering::Relaxed);
        self.shared.wake.notify_one();
        Ok(result)
    }

    pub async fn get(&self, id: &uuid::Uuid) -> Result<Option<Event>, StoreError> {
        let client = self.shared.client().await?;
        reads::get(&client, id).await
    }

    /// Sets the handling state of the events in `ids`, in one transaction that locks them (in
    /// id order, so concurrent calls do not deadlock); `NotFound` naming the first missing id.
    pub async fn handle(
        &self,
        ids: &[uuid::Uuid],
        state: EventState,
        note: &str,
        by: &str,
    ) -> Result<Vec<Event>, StoreError> {
        let now = timestamp_from_millis(now_millis());
        let unique: Vec<&[u8]> = ids
            .iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|id| id.as_bytes().as_slice())
            .collect();
        let mut client = self.shared.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let lock = tx
            .prepare_cached(
                "SELECT id, record FROM events WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .await
            .map_err(db_error)?;
        let mut found = HashMap::with_capacity(unique.len());
        for row in tx.query(&lock, &[&unique]).await.map_err(db_error)? {
            let id: &[u8] = row.get(0);
            let mut event = decode(row.get(1))?;
            as_handled(&mut event, state, note, by, now);
            found.insert(id.to_vec(), event);
        }
        let updated =
            ids.iter()
                .map(|id| {
                    found.get(id.as_bytes().as_slice()).cloned().ok_or_else(|| {
                        StoreError::NotFound {
                            kind: "event",
                            name: id.to_string(),
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
        let (ids, records): (Vec<&[u8]>, Vec<Vec<u8>>) = found
            .iter()
            .map(|(id, event)| (id.as_slice(), event.encode_to_vec()))
            .unzip();
        let update = tx
            .prepare_cached(
                "UPDATE events SET state = $1, record = changed.record
                 FROM unnest($2::bytea[], $3::bytea[]) AS changed (id, record)
                 WHERE events.id = changed.id",
            )
            .await
            .map_err(db_error)?;
        tx.execute(&update, &[&state.as_str(), &ids, &records])
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(updated)
    }

    pub async fn list(
        &self,
        filter: &portcullis_proto::v1::EventFilter,
        limit: usize,
        before: Option<[u8; 16]>,
    ) -> Result<super::EventPage, StoreError> {
        let client = self.shared.client().await?;
        reads::list(&client, filter, limit, before).await
    }

    pub async fn summarize(
        &self,
        since: Option<&pbjson_types::Timestamp>,
        until: Option<&pbjson_types::Timestamp>,
    ) -> Result<Vec<portcullis_proto::v1::EventCount>, StoreError> {
        let client = self.shared.client().await?;
        reads::summarize(&client, since, until).await
    }

    /// Deletes the events older than `max_age` and those beyond the newest `max_count`, oldest
    /// first, a chunk per statement. Replicas doing it at once delete the same events (the
    /// bound is an id), so none goes beyond the limits.
    pub async fn enforce_retention(&self, settings: &EventSettings) -> Result<u64, StoreError> {
        // The first count, before this subtracts from it.
        self.shared.start().await?;
        let cutoff = now_millis() - settings.max_age.as_millis() as i64;
        // Events with an id below `bound` go.
        let mut bound = filter::id_at_millis(cutoff, false).to_vec();
        let client = self.shared.client().await?;
        let beyond = client
            .prepare_cached("SELECT id FROM events ORDER BY id DESC OFFSET $1 LIMIT 1")
            .await
            .map_err(db_error)?;
        let max_count = i64::try_from(settings.max_count).unwrap_or(i64::MAX);
        if let Some(row) = client
            .query_opt(&beyond, &[&max_count])
            .await
            .map_err(db_error)?
        {
            // The newest event beyond the count and every older one: the ids up to it, and
            // one zero byte past it (no 16-byte id sorts between).
            let mut newest_beyond: Vec<u8> = row.get(0);
            newest_beyond.push(0);
            bound = bound.max(newest_beyond);
        }
        let delete = client
            .prepare_cached(
                "DELETE FROM events WHERE id IN
                     (SELECT id FROM events WHERE id < $1 ORDER BY id LIMIT $2)",
            )
            .await
            .map_err(db_error)?;
        let mut deleted = 0;
        loop {
            let n = client
                .execute(&delete, &[&bound, &DELETE_CHUNK])
                .await
                .map_err(db_error)?;
            deleted += n;
            self.shared.count.fetch_sub(n as i64, Ordering::Relaxed);
            if n < DELETE_CHUNK as u64 {
                return Ok(deleted);
            }
        }
    }
}

impl Shared {
    /// A pooled connection; `Unavailable` when none can be had.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        crate::store::postgres::pooled(&self.pool).await
    }

    /// Where following starts (see `follow.rs`), with the first count of the table.
    async fn start(&self) -> Result<&Cursor, StoreError> {
        self.start
            .get_or_try_init(|| async {
                let client = self.client().await?;
                let row = client
                    .query_one(
                        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
                                (SELECT count(*) FROM events)",
                        &[],
                    )
                    .await
                    .map_err(db_error)?;
                let count: i64 = row.get(1);
                self.count.store(count, Ordering::Relaxed);
                info!(events = count, "Following events in PostgreSQL");
                Ok(Cursor::at(row.get(0)))
            })
            .await
    }
}

/// A batch's columns, for `unnest`.
struct Batch {
    ids: Vec<Vec<u8>>,
    clusters: Vec<String>,
    policies: Vec<String>,
    actions: Vec<String>,
    times: Vec<i64>,
    admissions: Vec<i64>,
    records: Vec<Vec<u8>>,
}

impl Batch {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            clusters: Vec::with_capacity(n),
            policies: Vec::with_capacity(n),
            actions: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            admissions: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
        }
    }

    /// Adds `event` (encoded first, then its names moved into their columns).
    fn push(&mut self, id: uuid::Uuid, mut event: Event) {
        self.ids.push(id.as_bytes().to_vec());
        self.records.push(event.encode_to_vec());
        self.times
            .push(event.time.as_ref().map(filter::millis).unwrap_or(0));
        self.admissions.push(i64::from(event.count.max(1)));
        self.clusters.push(std::mem::take(&mut event.cluster));
        self.policies.push(std::mem::take(&mut event.policy));
        self.actions.push(std::mem::take(&mut event.action));
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
