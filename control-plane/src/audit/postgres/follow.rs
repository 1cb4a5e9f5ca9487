//! Following the audit feed. Every change of a violation takes the next feed position (the
//! row's `seq`), and so does the deletion of a cluster's violations (`audit_cleared`);
//! positions are in commit order, so a replica that read the feed up to a position in one
//! snapshot has read every change before it. Each replica reads past what it has seen, sends
//! the changed violations to its watchers in feed order (a row changed twice since is sent
//! once, as it is now), and recounts the open violations of the clusters they belong to. Its
//! own writes catch up before they return; other replicas' are read by a poll.

use std::{
    collections::HashSet,
    sync::{Arc, Weak},
    time::Duration,
};

use deadpool_postgres::{Object, Pool};
use tokio::sync::Mutex;
use tokio_postgres::{GenericClient, IsolationLevel};
use tracing::{info, warn};

use super::{client, readable};
use crate::audit::{Published, counts::Row};
use crate::store::{StoreError, postgres::db_error};

/// Changed rows read per query.
const PAGE: i64 = 1000;

pub struct Follower {
    published: Arc<Published>,
    seen: Mutex<Seen>,
}

struct Seen {
    /// The feed position published up to.
    position: i64,
    /// Clusters whose counts are to be read again (kept when a catch-up fails midway).
    dirty: HashSet<String>,
}

impl Follower {
    /// Counts every cluster's open violations as of the feed's head, where watchers start.
    pub async fn start(client: &mut Object, published: Arc<Published>) -> Result<Self, StoreError> {
        let tx = snapshot(client).await?;
        let position = head(&*tx).await?;
        let rows = count_open(&*tx, None).await?;
        tx.commit().await.map_err(db_error)?;
        published.write_counts().replace(None, rows);
        Ok(Self {
            published,
            seen: Mutex::new(Seen {
                position,
                dirty: HashSet::new(),
            }),
        })
    }

    /// After this replica committed at `position`: publishes its changes (and any before them)
    /// before the writer returns. A failure is logged: the write is stored, and the next poll
    /// publishes it.
    pub async fn catch_up_after_commit(&self, client: &mut Object, position: i64) {
        if let Err(error) = self.catch_up(client, position).await {
            warn!(%error, "Publishing audit changes failed; the next read of the feed retries");
        }
    }

    /// Reads the feed's head, and catches up when it is past what was published.
    async fn poll(&self, pool: &Pool) -> Result<(), StoreError> {
        let mut client = client(pool).await?;
        let position = head(&**client).await?;
        self.catch_up(&mut client, position).await
    }

    /// Publishes the feed up to its head, which is at `position` or past it.
    async fn catch_up(&self, client: &mut Object, position: i64) -> Result<(), StoreError> {
        let mut seen = self.seen.lock().await;
        if seen.position >= position && seen.dirty.is_empty() {
            return Ok(());
        }
        let tx = snapshot(client).await?;
        let head = head(&*tx).await?;
        if head > seen.position {
            // Deletions first: should a page below fail, their clusters are recounted anyway.
            let cleared = tx
                .query(
                    "SELECT cluster FROM audit_cleared WHERE seq > $1 AND seq <= $2",
                    &[&seen.position, &head],
                )
                .await
                .map_err(db_error)?;
            seen.dirty
                .extend(cleared.into_iter().filter_map(|row| name(row.get(0))));
            while seen.position < head {
                let rows = tx
                    .query(
                        "SELECT seq, cluster, key, record FROM violations \
                         WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                        &[&seen.position, &head, &PAGE],
                    )
                    .await
                    .map_err(db_error)?;
                for row in &rows {
                    seen.dirty.extend(name(row.get(1)));
                    if let Some(violation) =
                        readable(row.get(2), row.get(3)).and_then(|r| r.violation)
                    {
                        self.published.send(violation);
                    }
                    seen.position = row.get(0);
                }
                if (rows.len() as i64) < PAGE {
                    // The rest of the positions were rows changed again, or deletions.
                    seen.position = head;
                }
            }
        }
        if !seen.dirty.is_empty() {
            let clusters: Vec<&[u8]> = seen.dirty.iter().map(|c| c.as_bytes()).collect();
            let rows = count_open(&*tx, Some(&clusters)).await?;
            drop(clusters);
            let seen = &mut *seen;
            self.published
                .write_counts()
                .replace(Some(&seen.dirty), rows);
            seen.dirty.clear();
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}

/// Reads the feed every `every` for as long as the follower lives.
/// (or at once when another replica notifies a change: see `store::postgres::Topic`).
pub async fn follow_periodically(
    follower: Weak<Follower>,
    pool: Pool,
    every: Duration,
    mut notified: Option<tokio::sync::watch::Receiver<u64>>,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = crate::store::postgres::next_notification(&mut notified) => {}
        }
        let Some(follower) = follower.upgrade() else {
            return;
        };
        match follower.poll(&pool).await {
            Ok(()) if failing => {
                info!("Following the audit feed again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                warn!(%error, "Following the audit feed failed; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// A read-only transaction on one snapshot.
async fn snapshot(client: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db_error)
}

async fn head<C: GenericClient>(c: &C) -> Result<i64, StoreError> {
    Ok(c.query_one("SELECT seq FROM audit_feed WHERE id = 1", &[])
        .await
        .map_err(db_error)?
        .get(0))
}

/// Open violations by row, of `clusters` (of every cluster when `None`).
async fn count_open<C: GenericClient>(
    c: &C,
    clusters: Option<&[&[u8]]>,
) -> Result<Vec<(Row, u64)>, StoreError> {
    let rows = match clusters {
        None => {
            c.query(
                "SELECT cluster, namespace, policy, severity, count(*) FROM violations \
                 WHERE state = 'open' GROUP BY cluster, namespace, policy, severity",
                &[],
            )
            .await
        }
        Some(clusters) => {
            c.query(
                "SELECT cluster, namespace, policy, severity, count(*) FROM violations \
                 WHERE state = 'open' AND cluster = ANY($1) \
                 GROUP BY cluster, namespace, policy, severity",
                &[&clusters],
            )
            .await
        }
    }
    .map_err(db_error)?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let counted = (
                name(row.get(0))?,
                name(row.get(1))?,
                name(row.get(2))?,
                row.get::<_, String>(3),
            );
            Some((counted, row.get::<_, i64>(4) as u64))
        })
        .collect())
}

/// A name column (bytes of the name a report was stored with: UTF-8).
fn name(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}
