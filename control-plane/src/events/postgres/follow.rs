//! Following new events to this replica's watchers, whichever replica stored them.
//!
//! Rows are read in (tx, id) order, `tx` being the inserting transaction's id, and only those
//! of transactions below the horizon: the oldest transaction still running
//! (`pg_snapshot_xmin`). Every transaction below it has ended, so no row can appear behind the
//! cursor later — which a sequence number would not ensure, as concurrent transactions commit
//! in another order than they took their numbers. A transaction running long delays delivery
//! until it ends; nothing is lost. Without watchers the follower only moves its cursor.
//!
//! The follower reads after each commit of this replica and polls every `POLL_INTERVAL` for
//! the others' (their `pg_notify` on `CHANNEL` awaits a listening connection). It also counts
//! the table every `COUNT_INTERVAL`, for `len`.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};

use super::{Shared, decode};
use crate::store::{StoreError, postgres::db_error};

/// Notified by every commit that stores events.
pub const CHANNEL: &str = "portcullis_events";
/// How often the follower looks for other replicas' events.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the table is counted.
const COUNT_INTERVAL: Duration = Duration::from_secs(60);
/// Rows read per query.
const FOLLOW_BATCH: i64 = 1000;

/// A position in (tx, id) order: the rows after it are still to be sent.
#[derive(Clone, Debug)]
pub struct Cursor {
    tx: i64,
    id: Vec<u8>,
}

impl Cursor {
    /// Before every row of the transactions from `horizon` on.
    pub fn at(horizon: i64) -> Self {
        Self {
            tx: horizon,
            id: Vec::new(),
        }
    }

    /// Past every row of the transactions before `horizon`.
    fn advance_to(&mut self, horizon: i64) {
        if self.tx < horizon {
            *self = Self::at(horizon);
        }
    }
}

/// Follows until the task is aborted; a failure is logged once and retried at the next poll.
pub async fn follow(shared: Arc<Shared>, mut notified: Option<watch::Receiver<u64>>) {
    let mut cursor = None;
    let mut counted = Instant::now();
    let mut failing = false;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            () = shared.wake.notified() => {}
            // Another replica's events (see `store::postgres::Topic`).
            () = crate::store::postgres::next_notification(&mut notified) => {}
        }
        match step(&shared, &mut cursor, &mut counted).await {
            Ok(()) if failing => {
                info!("Following new events again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                warn!(%error, "Cannot follow new events; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn step(
    shared: &Shared,
    cursor: &mut Option<Cursor>,
    counted: &mut Instant,
) -> Result<(), StoreError> {
    if cursor.is_none() {
        *cursor = Some(shared.start().await?.clone());
    }
    let cursor = cursor.as_mut().expect("just set");
    let client = shared.client().await?;
    send_new(shared, &client, cursor).await?;
    if counted.elapsed() >= COUNT_INTERVAL {
        let count: i64 = client
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .map_err(db_error)?
            .get(0);
        shared.count.store(count, Ordering::Relaxed);
        *counted = Instant::now();
    }
    Ok(())
}

/// Sends the events after `cursor` below the horizon, and moves the cursor past them.
async fn send_new(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    cursor: &mut Cursor,
) -> Result<(), StoreError> {
    let horizon = client
        .prepare_cached("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        .await
        .map_err(db_error)?;
    let after = client
        .prepare_cached(
            "SELECT tx, id, record FROM events
             WHERE (tx, id) > ($1, $2) AND tx < $3 ORDER BY tx, id LIMIT $4",
        )
        .await
        .map_err(db_error)?;
    loop {
        let below: i64 = client
            .query_one(&horizon, &[])
            .await
            .map_err(db_error)?
            .get(0);
        // Checked after the horizon is read: whoever subscribes later gets every event
        // committed after it subscribed, as those are of transactions from the horizon on.
        if shared.new_events.receiver_count() == 0 {
            cursor.advance_to(below);
            return Ok(());
        }
        let rows = client
            .query(&after, &[&cursor.tx, &cursor.id, &below, &FOLLOW_BATCH])
            .await
            .map_err(db_error)?;
        let more = rows.len() as i64 == FOLLOW_BATCH;
        for row in rows {
            cursor.tx = row.get(0);
            cursor.id = row.get(1);
            match decode(row.get(2)) {
                Ok(event) => {
                    // A watcher that went away meanwhile is fine.
                    let _ = shared.new_events.send(Arc::new(event));
                }
                Err(error) => error!(%error, "Not sending an event that does not decode"),
            }
        }
        if !more {
            cursor.advance_to(below);
            return Ok(());
        }
    }
}
