//! The PostgreSQL backend: the same store on a database several control-plane replicas share.
//!
//! Every writing transaction first locks the one row of `revision` (`SELECT … FOR UPDATE`), so
//! writers on every replica run one at a time; it takes the next revisions, writes its objects
//! and change-log entries, sets the row to its last revision, and sends a notification with it
//! (`pg_notify`, delivered at commit). Revisions are therefore gapless and in commit order, and
//! a committed revision is durable (PostgreSQL's commit). Each replica follows the revision:
//! its own commits, the notifications of the others (LISTEN on a connection of its own), and a
//! poll of the row as a safety net, which also tells whether the database answers (`/readyz`).
//! Schema migrations (`control-plane/migrations`) are applied at start under an advisory lock.

mod connect;
mod migrate;
mod objects;
mod reads;

use std::{sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};

pub use connect::PgSettings;
pub use migrate::SCHEMA_VERSION;
pub use reads::PgVulnerabilityIds;

use super::{Change, ChangeRecord, StoreError, now_millis};

/// The channel every replica listens on; the payload is the committed revision.
const CHANNEL: &str = "portcullis_revision";

/// What else a replica hears about from the others: new events, changed audit violations
/// (the stores of those follow their tables; a notification wakes them before their poll).
#[derive(Clone, Copy, Debug)]
pub enum Topic {
    Events,
    Violations,
}

impl Topic {
    pub const ALL: [Topic; 2] = [Topic::Events, Topic::Violations];

    pub fn channel(self) -> &'static str {
        match self {
            Topic::Events => "portcullis_events",
            Topic::Violations => "portcullis_violations",
        }
    }
}

/// The store on PostgreSQL. Cheap to share behind an `Arc`.
pub struct PgStore {
    pool: Pool,
    epoch: String,
    shared: Arc<Shared>,
    /// Ends the follower task when the store goes.
    _follower: connect::AbortOnDrop,
}

/// What the follower task and the store share.
struct Shared {
    /// The last revision this replica knows is committed.
    durable: watch::Sender<u64>,
    /// Whether the database answered the follower's last poll.
    available: watch::Sender<bool>,
    /// Counts the notifications of each `Topic` (in `Topic::ALL` order).
    topics: [watch::Sender<u64>; 2],
}

impl Shared {
    /// Hears a notification on `channel`.
    fn heard(&self, channel: &str, payload: &str) {
        if channel == CHANNEL {
            if let Ok(revision) = payload.parse::<u64>() {
                self.advance(revision);
            }
            return;
        }
        for topic in Topic::ALL {
            if channel == topic.channel() {
                self.topics[topic as usize].send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Records whether the database answers; true when it changed.
    fn set_available(&self, available: bool) -> bool {
        self.available.send_if_modified(|current| {
            let changed = *current != available;
            *current = available;
            changed
        })
    }

    /// Publishes `revision` if it is newer than what watchers have seen.
    fn advance(&self, revision: u64) {
        self.durable.send_if_modified(|durable| {
            let newer = revision > *durable;
            if newer {
                *durable = revision;
            }
            newer
        });
    }
}

impl PgStore {
    /// Connects (failing at once, with the reason, when the database cannot be used: a bad
    /// URL, a refused password, an unreachable host, a missing database), applies the schema
    /// migrations, and starts following the revision.
    pub async fn connect(settings: &PgSettings) -> Result<Self, StoreError> {
        let connector = connect::Connector::new(settings)?;
        let pool = connector.pool(settings.pool_size)?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Database(format!(
                "connecting to {}: {}",
                connector.describe(),
                connect::reason(&e)
            ))
        })?;
        migrate::migrate(&mut client).await?;
        let epoch = uuid::Uuid::new_v4().to_string();
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING",
                &[&epoch],
            )
            .await
            .map_err(db_error)?;
        let epoch: String = client
            .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])
            .await
            .map_err(db_error)?
            .get(0);
        let revision = reads::head(&**client).await?;
        drop(client);
        let (durable, _) = watch::channel(revision);
        let shared = Arc::new(Shared {
            durable,
            available: watch::channel(true).0,
            topics: [watch::channel(0).0, watch::channel(0).0],
        });
        let follower = tokio::spawn(follow(connector, shared.clone(), settings.poll_interval));
        info!(database = %settings.describe(), %epoch, revision, "PostgreSQL store open");
        Ok(Self {
            pool,
            epoch,
            shared,
            _follower: connect::AbortOnDrop(follower),
        })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn revision(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// Whether the database answered the last poll.
    pub fn is_available(&self) -> bool {
        *self.shared.available.borrow()
    }

    /// Changes every time another replica (or this one) notifies `topic`.
    pub fn notifications(&self, topic: Topic) -> watch::Receiver<u64> {
        self.shared.topics[topic as usize].subscribe()
    }

    /// Follows `is_available`.
    pub fn availability(&self) -> watch::Receiver<bool> {
        self.shared.available.subscribe()
    }

    /// The connection pool, for stores that keep their tables in the same database.
    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A pooled connection; `Unavailable` when none can be had.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        pooled(&self.pool).await
    }

    /// Starts a writing transaction: takes the revision row's lock and reads the head.
    async fn begin<'c>(
        &self,
        client: &'c mut deadpool_postgres::Object,
    ) -> Result<Write<'c>, StoreError> {
        let tx = client.transaction().await.map_err(db_error)?;
        let head: i64 = tx
            .query_one("SELECT value FROM revision WHERE id = 1 FOR UPDATE", &[])
            .await
            .map_err(db_error)?
            .get(0);
        Ok(Write {
            tx,
            start: head as u64,
            revision: head as u64,
            now: now_millis(),
        })
    }

    /// Commits `write` (nothing when it took no revision) and publishes its revision.
    async fn finish(&self, write: Write<'_>) -> Result<(), StoreError> {
        let Write {
            tx,
            start,
            revision,
            ..
        } = write;
        if revision == start {
            tx.rollback().await.map_err(db_error)?;
            return Ok(());
        }
        let value = revision as i64;
        tx.execute("UPDATE revision SET value = $1 WHERE id = 1", &[&value])
            .await
            .map_err(db_error)?;
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CHANNEL, &revision.to_string()],
        )
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.shared.advance(revision);
        Ok(())
    }
}

/// One writing transaction: the revisions it takes and when.
struct Write<'c> {
    tx: deadpool_postgres::Transaction<'c>,
    /// The head when it began.
    start: u64,
    /// The last revision taken so far.
    revision: u64,
    now: i64,
}

impl Write<'_> {
    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    /// Takes the next revision for `change` and writes its change-log entry.
    async fn take_revision(&mut self, change: Change) -> Result<u64, StoreError> {
        let revision = self.next_revision();
        self.log(revision, change).await?;
        Ok(revision)
    }

    /// Writes the change-log entry of `revision`.
    async fn log(&self, revision: u64, change: Change) -> Result<(), StoreError> {
        let record = ChangeRecord {
            revision,
            unix_millis: self.now,
            change: Some(change),
        };
        self.tx
            .execute(
                "INSERT INTO changes (revision, record) VALUES ($1, $2)",
                &[&(revision as i64), &record.encode_to_vec()],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    fn timestamp(&self) -> pbjson_types::Timestamp {
        super::timestamp_from_millis(self.now)
    }
}

/// Follows the committed revision for as long as the store lives: notifications on a
/// connection of its own, and a poll every `interval` that also tells whether the database
/// answers. A lost connection marks the store unavailable until a new one answers.
async fn follow(connector: connect::Connector, shared: Arc<Shared>, interval: Duration) {
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        let error = connector.listen(CHANNEL, &shared, interval).await;
        // A connection that served a while starts the backoff again.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        if shared.set_available(false) {
            warn!(%error, "PostgreSQL: lost the database; not ready until it answers again");
        }
        failures = failures.saturating_add(1);
        let pause = Duration::from_millis(200u64 << failures.min(5)).min(Duration::from_secs(5));
        tokio::time::sleep(pause).await;
    }
}

/// A connection from `pool`; `Unavailable` when none can be had (for the stores beside this
/// one, which share its pool).
pub(crate) async fn pooled(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get()
        .await
        .map_err(|e| StoreError::Unavailable(connect::reason(&e)))
}

/// Waits for the next notification `notified` counts; forever without one (sled, or the
/// store gone): for a follower's `select!` beside its poll.
pub(crate) async fn next_notification(notified: &mut Option<watch::Receiver<u64>>) {
    let heard = match notified.as_mut() {
        Some(notes) => notes.changed().await.is_ok(),
        None => false,
    };
    if !heard {
        std::future::pending::<()>().await;
    }
}

/// A database error as the store reports it: `Unavailable` when the connection is gone or the
/// server cannot serve (the call may succeed on another replica or later), else `Database`.
pub(crate) fn db_error(error: tokio_postgres::Error) -> StoreError {
    let code = error.code().map(|c| c.code()).unwrap_or("");
    // A text with a character PostgreSQL cannot store (a NUL byte): the caller's input.
    if matches!(code, "22021" | "22P05") {
        return StoreError::Invalid {
            what: "a text holds a character the database cannot store (a NUL byte)".into(),
        };
    }
    let unavailable = error.is_closed()
        // Class 08: connection exception; 57P0x: the server is shutting down or starting.
        || code.starts_with("08")
        || code.starts_with("57P")
        // Worth trying again, here or on another replica: a statement or lock wait cut off
        // (57014, 55P03), too many connections (53300), a read-only server (25006: a standby
        // after a failover), a deadlock or serialization failure (40P01, 40001).
        || matches!(code, "57014" | "55P03" | "53300" | "25006" | "40P01" | "40001")
        || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>());
    if unavailable {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Database(connect::error_text(&error))
    }
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("{what}: {e}"),
    })
}
