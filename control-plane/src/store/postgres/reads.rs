//! Reads: objects by key, pages in key order, the change log, snapshots, and the blocking
//! readers a snapshot's scan sender uses.

use std::collections::VecDeque;

use portcullis_proto::v1::{Cluster, ImageScan, Policy};
use tokio_postgres::GenericClient;

use super::{PgStore, StoreError, db_error, decode};
use crate::store::{
    ChangeRecord, ChangesSince, Page, StoreSnapshot, records::ClusterRecord, rules::scan_lookups,
};

/// The committed head revision.
pub async fn head<C: GenericClient>(client: &C) -> Result<u64, StoreError> {
    let row = client
        .query_one("SELECT value FROM revision WHERE id = 1", &[])
        .await
        .map_err(db_error)?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub async fn policy<C: GenericClient>(c: &C, name: &str) -> Result<Option<Policy>, StoreError> {
    c.query_opt(
        "SELECT record FROM policies WHERE name = $1",
        &[&name.as_bytes()],
    )
    .await
    .map_err(db_error)?
    .map(|row| decode("policy", row.get::<_, &[u8]>(0)))
    .transpose()
}

pub async fn cluster_record<C: GenericClient>(
    c: &C,
    name: &str,
) -> Result<Option<ClusterRecord>, StoreError> {
    c.query_opt(
        "SELECT record FROM clusters WHERE name = $1",
        &[&name.as_bytes()],
    )
    .await
    .map_err(db_error)?
    .map(|row| decode("cluster", row.get::<_, &[u8]>(0)))
    .transpose()
}

pub async fn scan_by_id<C: GenericClient>(
    c: &C,
    id: &str,
) -> Result<Option<ImageScan>, StoreError> {
    c.query_opt("SELECT record FROM scans WHERE id = $1", &[&id.as_bytes()])
        .await
        .map_err(db_error)?
        .map(|row| decode("image scan", row.get::<_, &[u8]>(0)))
        .transpose()
}

async fn scan_key<C: GenericClient>(c: &C, key: &str) -> Result<Option<String>, StoreError> {
    c.query_opt(
        "SELECT id FROM scan_keys WHERE key = $1",
        &[&key.as_bytes()],
    )
    .await
    .map_err(db_error)?
    .map(|row| {
        String::from_utf8(row.get::<_, Vec<u8>>(0)).map_err(|_| StoreError::Corrupt {
            what: "scan index holds a non-UTF-8 id".into(),
        })
    })
    .transpose()
}

/// The scan `image` finds, as `Store::find_scan` says.
pub async fn find_scan<C: GenericClient>(
    c: &C,
    image: &str,
) -> Result<Option<ImageScan>, StoreError> {
    let (keys, fallback) = scan_lookups(image);
    for key in keys {
        if let Some(id) = scan_key(c, &key).await? {
            return scan_by_id(c, &id).await;
        }
    }
    match fallback {
        Some(id) => scan_by_id(c, &id).await,
        None => Ok(None),
    }
}

/// Rows of `table` (`key`, `record`) in key order after `after`, `limit` + 1 of them at most.
async fn page_rows<C: GenericClient>(
    c: &C,
    sql: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let after = after.unwrap_or("").as_bytes();
    let limit = limit.saturating_add(1).min(i64::MAX as usize) as i64;
    c.query(sql, &[&after, &limit]).await.map_err(db_error)
}

fn page_of<T>(
    rows: Vec<tokio_postgres::Row>,
    limit: usize,
    mut decode_item: impl FnMut(&[u8]) -> Result<T, StoreError>,
) -> Result<Page<T>, StoreError> {
    let more = rows.len() > limit;
    let items = rows
        .iter()
        .take(limit)
        .map(|row| decode_item(row.get::<_, &[u8]>(0)))
        .collect::<Result<_, _>>()?;
    Ok(Page { items, more })
}

impl PgStore {
    pub async fn get_policy(&self, name: &str) -> Result<Option<Policy>, StoreError> {
        policy(&**self.client().await?, name).await
    }

    pub async fn list_policies(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Policy>, StoreError> {
        let client = self.client().await?;
        let rows = page_rows(
            &**client,
            "SELECT record FROM policies WHERE name > $1 ORDER BY name LIMIT $2",
            after,
            limit,
        )
        .await?;
        page_of(rows, limit, |bytes| decode("policy", bytes))
    }

    pub async fn get_cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        Ok(cluster_record(&**self.client().await?, name)
            .await?
            .map(|record| record.cluster.unwrap_or_default()))
    }

    pub async fn list_clusters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Cluster>, StoreError> {
        let client = self.client().await?;
        let rows = page_rows(
            &**client,
            "SELECT record FROM clusters WHERE name > $1 ORDER BY name LIMIT $2",
            after,
            limit,
        )
        .await?;
        page_of(rows, limit, |bytes| {
            Ok(decode::<ClusterRecord>("cluster", bytes)?
                .cluster
                .unwrap_or_default())
        })
    }

    pub async fn cluster_for_token(
        &self,
        token_sha256: &[u8; 32],
    ) -> Result<Option<String>, StoreError> {
        self.client()
            .await?
            .query_opt(
                "SELECT name FROM clusters WHERE token_sha256 = $1",
                &[&&token_sha256[..]],
            )
            .await
            .map_err(db_error)?
            .map(|row| {
                String::from_utf8(row.get::<_, Vec<u8>>(0)).map_err(|_| StoreError::Corrupt {
                    what: "a cluster name is not UTF-8".into(),
                })
            })
            .transpose()
    }

    pub async fn find_scan(&self, image: &str) -> Result<Option<ImageScan>, StoreError> {
        find_scan(&**self.client().await?, image).await
    }

    /// Scans in id order after `after` that `keep` accepts, at most `limit`; read in batches.
    pub async fn list_scans(
        &self,
        after: Option<&str>,
        limit: usize,
        mut keep: impl FnMut(&ImageScan) -> bool,
    ) -> Result<Page<ImageScan>, StoreError> {
        const BATCH: i64 = 64;
        let client = self.client().await?;
        let mut cursor = after.unwrap_or("").as_bytes().to_vec();
        let mut items = Vec::with_capacity(limit.min(1024));
        loop {
            let rows = client
                .query(
                    "SELECT id, record FROM scans WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&cursor, &BATCH],
                )
                .await
                .map_err(db_error)?;
            let done = (rows.len() as i64) < BATCH;
            for row in &rows {
                let scan: ImageScan = decode("image scan", row.get::<_, &[u8]>(1))?;
                cursor = row.get::<_, Vec<u8>>(0);
                if !keep(&scan) {
                    continue;
                }
                if items.len() == limit {
                    return Ok(Page { items, more: true });
                }
                items.push(scan);
            }
            if done {
                return Ok(Page { items, more: false });
            }
        }
    }

    pub async fn changes_since(
        &self,
        revision: u64,
        limit: usize,
    ) -> Result<ChangesSince, StoreError> {
        let mut durable = self.revision();
        if revision > durable {
            // An agent from a replica that heard of a commit before this one did: ask the
            // database before sending it to a snapshot.
            durable = head(&**self.client().await?).await?;
            self.shared.advance(durable);
        }
        if revision > durable || revision < self.compacted_through().await? {
            return Ok(ChangesSince::SnapshotNeeded);
        }
        let rows = self
            .client()
            .await?
            .query(
                "SELECT record FROM changes WHERE revision > $1 AND revision <= $2 \
                 ORDER BY revision LIMIT $3",
                &[
                    &(revision as i64),
                    &(durable as i64),
                    &(limit.min(i64::MAX as usize) as i64),
                ],
            )
            .await
            .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let record: ChangeRecord = decode("change", row.get::<_, &[u8]>(0))?;
            // A gap means compaction removed entries while we read: fall back to a snapshot.
            if record.revision != revision + 1 + out.len() as u64 {
                return Ok(ChangesSince::SnapshotNeeded);
            }
            out.push(record);
        }
        if out.is_empty() && durable > revision && limit > 0 {
            return Ok(ChangesSince::SnapshotNeeded);
        }
        Ok(ChangesSince::Changes(out))
    }

    pub async fn compacted_through(&self) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT compacted_through FROM revision WHERE id = 1", &[])
            .await
            .map_err(db_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Drops log entries more than `keep` revisions behind the head. Returns how many. The
    /// horizon moves first (in the same transaction), so a reader never believes in entries
    /// that are going away.
    pub async fn compact(&self, keep: u64) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let row = tx
            .query_one(
                "SELECT value, compacted_through FROM revision WHERE id = 1",
                &[],
            )
            .await
            .map_err(db_error)?;
        let (head, compacted) = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
        let through = head.saturating_sub(keep);
        if through <= compacted {
            return Ok(0);
        }
        tx.execute(
            "UPDATE revision SET compacted_through = $1 WHERE id = 1 AND compacted_through < $1",
            &[&(through as i64)],
        )
        .await
        .map_err(db_error)?;
        let dropped = tx
            .execute(
                "DELETE FROM changes WHERE revision <= $1",
                &[&(through as i64)],
            )
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(dropped as usize)
    }

    /// Every policy and `cluster` as of one committed revision (one repeatable-read
    /// transaction). Scans are read afterwards (`scan_summaries`), as on sled.
    pub async fn snapshot(&self, cluster: &str) -> Result<StoreSnapshot, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db_error)?;
        let revision = head(&*tx).await?;
        let policies = tx
            .query("SELECT record FROM policies ORDER BY name", &[])
            .await
            .map_err(db_error)?
            .iter()
            .map(|row| decode("policy", row.get::<_, &[u8]>(0)))
            .collect::<Result<Vec<Policy>, _>>()?;
        let cluster = cluster_record(&*tx, cluster)
            .await?
            .map(|record| record.cluster.unwrap_or_default());
        tx.commit().await.map_err(db_error)?;
        // Committed is durable: the deltas that follow start here.
        self.shared.advance(revision);
        Ok(StoreSnapshot {
            epoch: self.epoch.clone(),
            revision,
            policies,
            cluster,
        })
    }

    /// Every scan's numbered summary in id order, read in pages as the iterator is consumed
    /// (blocking: call it on a blocking thread).
    pub fn scan_summaries(
        &self,
    ) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> + Send + use<> {
        Summaries {
            pool: self.pool.clone(),
            handle: tokio::runtime::Handle::current(),
            after: Vec::new(),
            buffer: VecDeque::new(),
            done: false,
        }
    }

    pub fn vulnerability_ids(&self) -> PgVulnerabilityIds {
        PgVulnerabilityIds {
            pool: self.pool.clone(),
            handle: tokio::runtime::Handle::current(),
        }
    }
}

/// Summaries in pages of `SUMMARY_PAGE`, keyed on from the last id read.
struct Summaries {
    pool: deadpool_postgres::Pool,
    handle: tokio::runtime::Handle,
    after: Vec<u8>,
    buffer: VecDeque<Vec<u8>>,
    done: bool,
}

const SUMMARY_PAGE: i64 = 1000;

impl Summaries {
    async fn fetch(&mut self) -> Result<(), StoreError> {
        let client = super::pooled(&self.pool).await?;
        let rows = client
            .query(
                "SELECT id, summary FROM scans WHERE id > $1 ORDER BY id LIMIT $2",
                &[&self.after, &SUMMARY_PAGE],
            )
            .await
            .map_err(db_error)?;
        self.done = (rows.len() as i64) < SUMMARY_PAGE;
        for row in rows {
            self.after = row.get(0);
            self.buffer.push_back(row.get(1));
        }
        Ok(())
    }
}

impl Iterator for Summaries {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.done {
            let handle = self.handle.clone();
            if let Err(error) = handle.block_on(self.fetch()) {
                self.done = true;
                return Some(Err(error));
            }
        }
        self.buffer.pop_front().map(Ok)
    }
}

/// Reads vulnerability ids by number (blocking: on a blocking thread).
#[derive(Clone)]
pub struct PgVulnerabilityIds {
    pool: deadpool_postgres::Pool,
    handle: tokio::runtime::Handle,
}

impl PgVulnerabilityIds {
    /// The ids numbered `from` and up, in order.
    pub fn from(&self, from: u32) -> Result<Vec<String>, StoreError> {
        self.handle.block_on(async {
            let client = super::pooled(&self.pool).await?;
            let rows = client
                .query(
                    "SELECT number, id FROM vulnerability_ids WHERE number >= $1 ORDER BY number",
                    &[&(from.min(i32::MAX as u32) as i32)],
                )
                .await
                .map_err(db_error)?;
            let mut ids = Vec::with_capacity(rows.len());
            for (expected, row) in (from as i64..).zip(&rows) {
                let number: i32 = row.get(0);
                if i64::from(number) != expected {
                    return Err(StoreError::Corrupt {
                        what: format!("vulnerability id number {expected} is missing"),
                    });
                }
                ids.push(row.get(1));
            }
            Ok(ids)
        })
    }
}
