//! The fleet view across replicas: each replica writes the records of the clusters whose
//! agents talked to it (`fleet_status`, one row per cluster and replica) and its own liveness
//! (`replicas`), and reads the other replicas' rows back; a cluster is connected while a live
//! replica holds a stream of it, and its status is the newest report any replica received.
//! About a second behind; a replica that stops refreshing its row for `LIVE_FOR` counts no
//! longer as holding streams, and its rows go after `FORGET_AFTER`. A cluster deleted through
//! one replica is forgotten by every replica at its next round.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use prost::Message;
use tracing::warn;

use portcullis_proto::v1::ClusterStatus;
use portcullis_runtime::clock::timestamp;

use super::{AgentRecord, Fleet};
use crate::store::postgres::db_error;

const INTERVAL: Duration = Duration::from_secs(1);
const LIVE_FOR: Duration = Duration::from_secs(10);
const FORGET_AFTER: Duration = Duration::from_secs(3600);

pub(super) struct Shared {
    pool: deadpool_postgres::Pool,
    replica: String,
    /// Clusters whose local record changed (or went) since the last write.
    dirty: Mutex<HashSet<String>>,
    /// The other replicas' records: cluster → (record, whether its replica is live).
    others: Mutex<HashMap<String, Vec<(AgentRecord, bool)>>>,
}

impl Shared {
    pub(super) fn new(pool: deadpool_postgres::Pool) -> Self {
        Self {
            pool,
            replica: uuid::Uuid::new_v4().to_string(),
            dirty: Mutex::default(),
            others: Mutex::default(),
        }
    }

    pub(super) fn changed(&self, cluster: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_owned());
    }

    pub(super) fn removed(&self, cluster: &str) {
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cluster);
        self.changed(cluster);
    }

    /// `local` merged with the other replicas' records of `cluster`.
    pub(super) fn merged(&self, cluster: &str, local: Option<AgentRecord>) -> Option<AgentRecord> {
        let others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        let Some(remote) = others.get(cluster) else {
            return local;
        };
        let connected = local.as_ref().map_or(0, |r| r.streams)
            + remote
                .iter()
                .filter(|(_, live)| *live)
                .map(|(r, _)| r.streams)
                .sum::<usize>();
        let newest = local
            .iter()
            .chain(remote.iter().map(|(r, _)| r))
            .max_by_key(|r| r.last_seen)?;
        Some(AgentRecord {
            streams: connected,
            ..newest.clone()
        })
    }
}

/// Writes this replica's changed records and liveness, reads the others', every `INTERVAL`.
pub(super) async fn sync_periodically(fleet: Fleet) {
    let Some(shared) = fleet.shared.clone() else {
        return;
    };
    let mut failing = false;
    loop {
        tokio::time::sleep(INTERVAL).await;
        match sync_once(&fleet, &shared).await {
            Ok(()) => failing = false,
            Err(error) => {
                if !failing {
                    warn!(%error, "Fleet view: could not share this replica's agents");
                }
                failing = true;
            }
        }
    }
}

async fn sync_once(fleet: &Fleet, shared: &Shared) -> Result<(), crate::store::StoreError> {
    let dirty: Vec<String> =
        std::mem::take(&mut *shared.dirty.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect();
    let (records, known): (Vec<(String, Option<AgentRecord>)>, Vec<String>) = {
        let agents = fleet.agents.lock().unwrap_or_else(|e| e.into_inner());
        let records = dirty
            .iter()
            .map(|cluster| (cluster.clone(), agents.get(cluster).cloned()))
            .collect();
        (records, agents.keys().cloned().collect())
    };
    match write_and_read(shared, &records, &known).await {
        Ok(deleted) => {
            // Clusters deleted, maybe through another replica: this one forgets them too.
            let mut agents = fleet.agents.lock().unwrap_or_else(|e| e.into_inner());
            for cluster in deleted {
                agents.remove(&cluster);
            }
            Ok(())
        }
        Err(error) => {
            // Written next time.
            shared
                .dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(dirty);
            Err(error)
        }
    }
}

/// Writes `records` and this replica's liveness, reads the other replicas' records; returns
/// which of the `known` clusters (this replica's records) no longer exist: deleted, maybe
/// through another replica.
async fn write_and_read(
    shared: &Shared,
    records: &[(String, Option<AgentRecord>)],
    known: &[String],
) -> Result<Vec<String>, crate::store::StoreError> {
    let mut client = crate::store::postgres::pooled(&shared.pool).await?;
    let tx = client.transaction().await.map_err(db_error)?;
    // The database's clock, not the replicas' own: theirs may disagree.
    let now: i64 = tx
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .map_err(db_error)?
        .get(0);
    tx.execute(
        "INSERT INTO replicas (replica, seen_millis) VALUES ($1, $2) \
         ON CONFLICT (replica) DO UPDATE SET seen_millis = excluded.seen_millis",
        &[&shared.replica, &now],
    )
    .await
    .map_err(db_error)?;
    for (cluster, record) in records {
        match record {
            Some(record) => {
                tx.execute(
                    "INSERT INTO fleet_status (cluster, replica, streams, record) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (cluster, replica) \
                     DO UPDATE SET streams = excluded.streams, record = excluded.record",
                    &[
                        &cluster.as_bytes(),
                        &shared.replica,
                        &(record.streams.min(i32::MAX as usize) as i32),
                        &encode(record),
                    ],
                )
                .await
                .map_err(db_error)?;
            }
            // A deleted cluster: every replica's rows.
            None => {
                tx.execute(
                    "DELETE FROM fleet_status WHERE cluster = $1",
                    &[&cluster.as_bytes()],
                )
                .await
                .map_err(db_error)?;
            }
        }
    }
    let forget = now - FORGET_AFTER.as_millis() as i64;
    tx.execute(
        "DELETE FROM fleet_status WHERE replica IN \
         (SELECT replica FROM replicas WHERE seen_millis < $1)",
        &[&forget],
    )
    .await
    .map_err(db_error)?;
    tx.execute("DELETE FROM replicas WHERE seen_millis < $1", &[&forget])
        .await
        .map_err(db_error)?;
    let known: Vec<&[u8]> = known.iter().map(|c| c.as_bytes()).collect();
    let deleted: Vec<Vec<u8>> = tx
        .query(
            "SELECT k FROM unnest($1::bytea[]) AS k \
             WHERE NOT EXISTS (SELECT 1 FROM clusters c WHERE c.name = k)",
            &[&known],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    tx.execute(
        "DELETE FROM fleet_status WHERE replica = $1 AND cluster = ANY($2)",
        &[&shared.replica, &deleted],
    )
    .await
    .map_err(db_error)?;
    let deleted: Vec<String> = deleted
        .into_iter()
        .filter_map(|c| String::from_utf8(c).ok())
        .collect();
    let rows = tx
        .query(
            "SELECT f.cluster, f.streams, f.record, coalesce(r.seen_millis, 0) \
             FROM fleet_status f LEFT JOIN replicas r ON r.replica = f.replica \
             WHERE f.replica <> $1",
            &[&shared.replica],
        )
        .await
        .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    let live_since = now - LIVE_FOR.as_millis() as i64;
    let mut others: HashMap<String, Vec<(AgentRecord, bool)>> = HashMap::new();
    for row in rows {
        let Ok(cluster) = String::from_utf8(row.get::<_, Vec<u8>>(0)) else {
            continue;
        };
        let Some(record) = decode(row.get::<_, i32>(1), row.get::<_, &[u8]>(2)) else {
            continue;
        };
        let live = row.get::<_, i64>(3) >= live_since;
        others.entry(cluster).or_default().push((record, live));
    }
    *shared.others.lock().unwrap_or_else(|e| e.into_inner()) = others;
    Ok(deleted)
}

fn encode(record: &AgentRecord) -> Vec<u8> {
    ClusterStatus {
        last_seen: record.last_seen.map(timestamp),
        agent_version: record.agent_version.clone(),
        applied_epoch: record.applied_epoch.clone(),
        applied_revision: record.applied_revision,
        last_error: record.last_error.clone(),
        protection_state: record.protection_state.clone(),
        events_dropped: record.events_dropped,
        events_pending: record.events_pending,
        ..Default::default()
    }
    .encode_to_vec()
}

fn decode(streams: i32, bytes: &[u8]) -> Option<AgentRecord> {
    let status = ClusterStatus::decode(bytes).ok()?;
    let last_seen = status.last_seen.and_then(|t| {
        let since = Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?);
        SystemTime::UNIX_EPOCH.checked_add(since)
    });
    Some(AgentRecord {
        streams: usize::try_from(streams).unwrap_or(0),
        last_seen,
        agent_version: status.agent_version,
        applied_epoch: status.applied_epoch,
        applied_revision: status.applied_revision,
        last_error: status.last_error,
        protection_state: status.protection_state,
        events_dropped: status.events_dropped,
        events_pending: status.events_pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{connect, eventually, fresh_database};
    use portcullis_proto::v1::{Cluster, ReportStatusRequest};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_merge_their_agents_and_forget_clusters_deleted_through_another() {
        let Some(url) = fresh_database("fleet") else {
            return;
        };
        let store = connect(&url).await;
        let c1 = || Cluster {
            name: "c1".into(),
            ..Default::default()
        };
        store.register_cluster(c1(), [1; 32]).await.unwrap();
        let pool = store.postgres_pool().unwrap().clone();
        let (a, b) = (Fleet::shared(pool.clone()), Fleet::shared(pool));
        // B's agent: connected and reporting; A shows it.
        let stream = b.connected("c1", "1.0");
        let ack = ReportStatusRequest {
            applied_epoch: "e".into(),
            applied_revision: 1,
            ..Default::default()
        };
        b.report("c1", &ack);
        eventually("A sees B's agent", || {
            let status = a.status("c1", "e", 1);
            status.connected && status.applied_revision == 1 && status.lag == 0
        })
        .await;
        drop(stream);
        eventually("A sees the stream end", || {
            !a.status("c1", "e", 1).connected
        })
        .await;
        // Deleted through A (as the cluster service does); B forgets its record too, so a
        // cluster registered again under the name does not show the old agent.
        store.delete_cluster("c1").await.unwrap();
        a.remove("c1");
        eventually("B forgets c1", || {
            b.agents.lock().unwrap().get("c1").is_none()
        })
        .await;
        store.register_cluster(c1(), [2; 32]).await.unwrap();
        for (name, fleet) in [("A", &a), ("B", &b)] {
            let status = fleet.status("c1", "e", 2);
            assert_eq!(
                (status.applied_revision, status.lag),
                (0, 2),
                "{name}: {status:?}"
            );
        }
    }

    #[test]
    fn records_survive_their_encoding() {
        let record = AgentRecord {
            streams: 2,
            last_seen: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            agent_version: "1.0".into(),
            applied_epoch: "e".into(),
            applied_revision: 7,
            last_error: "x".into(),
            protection_state: "on".into(),
            events_dropped: 1,
            events_pending: 2,
        };
        assert_eq!(decode(2, &encode(&record)), Some(record));
        assert_eq!(decode(1, b"\xff\xff"), None);
    }
}
