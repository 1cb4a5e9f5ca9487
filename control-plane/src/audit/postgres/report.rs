//! A report in one transaction: the cluster's lock, its run and the stored records read, the
//! plan made (`plan`), its writes, commit; then this replica catches up with the feed, so the
//! report's changes reach its watchers and counts before it returns.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use prost::Message;

use portcullis_proto::v1::Violation;
use portcullis_proto::words::ViolationState;

use super::{PgAudit, lock_existing_cluster, readable, take_positions};
use crate::audit::plan::{Plan, Write};
use crate::audit::record::{RunRecord, ViolationRecord};
use crate::audit::retention::resolved_at_ms;
use crate::audit::{AuditError, Report, Reported};
use crate::store::{StoreError, now_millis, postgres::db_error, timestamp_from_millis};

impl PgAudit {
    /// Applies `report` whole (see `ViolationStore::report`).
    pub async fn report(&self, report: Report) -> Result<Reported, AuditError> {
        let cluster = report.cluster.clone();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_error)?;
        let Some(plan) = plan_report(&tx, report).await? else {
            return Ok(Reported {
                resync_required: true,
                ..Default::default()
            });
        };
        let position = write(&tx, &cluster, &plan).await?;
        if plan.writes_anything() {
            tx.commit().await.map_err(db_error)?;
        } else {
            tx.rollback().await.map_err(db_error)?;
        }
        if let Some(position) = position {
            self.follower
                .catch_up_after_commit(&mut client, position)
                .await;
        }
        Ok(plan.reported)
    }
}

/// Locks the cluster and reads what the plan needs (`None`: the agent must resync).
async fn plan_report(tx: &Transaction<'_>, report: Report) -> Result<Option<Plan>, AuditError> {
    let cluster = report.cluster.clone();
    // The agent's token was checked before: a cluster missing now was deleted meanwhile.
    if !lock_existing_cluster(tx, &cluster).await? {
        return Err(StoreError::NotFound {
            kind: "cluster",
            name: cluster,
        }
        .into());
    }
    let stored_run = tx
        .query_opt(
            "SELECT run, resync FROM audit_runs WHERE cluster = $1",
            &[&cluster.as_bytes()],
        )
        .await
        .map_err(db_error)?
        .map(|row| RunRecord {
            run: row.get(0),
            resync: row.get::<_, i64>(1) as u64,
        });
    let now = timestamp_from_millis(now_millis());
    let Some(mut plan) = Plan::new(&report, stored_run, now)? else {
        return Ok(None);
    };
    let keys: Vec<&[u8]> = report
        .violations
        .iter()
        .map(|(k, _)| k.as_slice())
        .collect();
    let mut stored: HashMap<Vec<u8>, ViolationRecord> = HashMap::with_capacity(keys.len());
    for row in tx
        .query(
            "SELECT key, record FROM violations WHERE key = ANY($1)",
            &[&keys],
        )
        .await
        .map_err(db_error)?
    {
        let key: Vec<u8> = row.get(0);
        if let Some(record) = readable(&key, row.get(1)) {
            stored.insert(key, record);
        }
    }
    drop(keys);
    let resync_end = report.resync_end;
    for (key, violation) in report.violations {
        let record = stored.remove(&key);
        plan.apply(key, record, violation);
    }
    if resync_end {
        // The cluster's open records this resync did not touch.
        let touch = plan.touch();
        let rows = tx
            .query(
                "SELECT key, record FROM violations \
                 WHERE cluster = $1 AND state = 'open' AND NOT (run = $2 AND resync = $3)",
                &[&cluster.as_bytes(), &touch.run, &(touch.resync as i64)],
            )
            .await
            .map_err(db_error)?;
        for row in rows {
            let key: Vec<u8> = row.get(0);
            if plan.was_reported(&key) {
                continue;
            }
            if let Some(record) = readable(&key, row.get(1)) {
                plan.resolve_unreported(key, record);
            }
        }
    }
    Ok(Some(plan))
}

/// Writes `plan`: the run, the confirmations, then the changes at the next feed positions;
/// the last position when there were changes.
async fn write(
    tx: &Transaction<'_>,
    cluster: &str,
    plan: &Plan,
) -> Result<Option<i64>, StoreError> {
    let touch = plan.touch();
    let (run, resync) = (touch.run.as_str(), touch.resync as i64);
    if let Some(new) = &plan.run {
        tx.execute(
            "INSERT INTO audit_runs (cluster, run, resync) VALUES ($1, $2, $3) \
             ON CONFLICT (cluster) DO UPDATE SET run = excluded.run, resync = excluded.resync",
            &[&cluster.as_bytes(), &new.run, &(new.resync as i64)],
        )
        .await
        .map_err(db_error)?;
    }
    let (changes, confirmations): (Vec<&Write>, Vec<&Write>) =
        plan.writes.iter().partition(|w| w.is_change());
    // Every written record holds its violation.
    let changes: Vec<(&Write, &Violation)> = changes
        .into_iter()
        .filter_map(|w| Some((w, w.record.violation.as_ref()?)))
        .collect();
    if !confirmations.is_empty() {
        // Only `last_seen` and the run that touched them move: the feed position stays.
        let keys: Vec<&[u8]> = confirmations.iter().map(|w| w.key.as_slice()).collect();
        let records: Vec<Vec<u8>> = confirmations
            .iter()
            .map(|w| w.record.encode_to_vec())
            .collect();
        tx.execute(
            "UPDATE violations SET run = $3, resync = $4, record = u.record \
             FROM unnest($1::bytea[], $2::bytea[]) AS u(key, record) \
             WHERE violations.key = u.key",
            &[&keys, &records, &run, &resync],
        )
        .await
        .map_err(db_error)?;
    }
    if changes.is_empty() {
        return Ok(None);
    }
    let rows = Rows::of(&changes);
    // Taken last: the feed row stays locked until the commit.
    let last = take_positions(tx, changes.len()).await?;
    let first = last - changes.len() as i64 + 1;
    let positions: Vec<i64> = (first..=last).collect();
    tx.execute(
        "INSERT INTO violations (key, cluster, namespace, kind, name, policy, action, severity, \
                                 state, resolved_at_ms, run, resync, seq, record) \
         SELECT key, cluster, namespace, kind, name, policy, action, severity, state, \
                resolved_at_ms, $11, $12, seq, record \
         FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bytea[], $5::bytea[], \
                     $6::bytea[], $7::text[], $8::text[], $9::text[], $10::bigint[], \
                     $13::bigint[], $14::bytea[]) \
              AS u(key, cluster, namespace, kind, name, policy, action, severity, state, \
                   resolved_at_ms, seq, record) \
         ON CONFLICT (key) DO UPDATE SET action = excluded.action, \
             severity = excluded.severity, state = excluded.state, \
             resolved_at_ms = excluded.resolved_at_ms, run = excluded.run, \
             resync = excluded.resync, seq = excluded.seq, record = excluded.record",
        &[
            &rows.keys,
            &rows.column(|v| &v.cluster),
            &rows.column(|v| &v.namespace),
            &rows.column(|v| &v.kind),
            &rows.column(|v| &v.name),
            &rows.column(|v| &v.policy),
            &rows.words(|v| &v.action),
            &rows.words(|v| &v.severity),
            &rows.words(|v| &v.state),
            &rows.resolved_at,
            &run,
            &resync,
            &positions,
            &rows.records,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(Some(last))
}

/// The columns of the changed records, for `unnest`.
struct Rows<'w> {
    violations: Vec<&'w Violation>,
    keys: Vec<&'w [u8]>,
    records: Vec<Vec<u8>>,
    resolved_at: Vec<Option<i64>>,
}

impl<'w> Rows<'w> {
    fn of(changes: &[(&'w Write, &'w Violation)]) -> Self {
        let open = ViolationState::Open.as_str();
        Self {
            keys: changes.iter().map(|(w, _)| w.key.as_slice()).collect(),
            records: changes
                .iter()
                .map(|(w, _)| w.record.encode_to_vec())
                .collect(),
            resolved_at: changes
                .iter()
                .map(|(_, v)| (v.state != open).then(|| resolved_at_ms(v)))
                .collect(),
            violations: changes.iter().map(|(_, v)| *v).collect(),
        }
    }

    fn column(&self, field: fn(&Violation) -> &String) -> Vec<&'w [u8]> {
        self.violations
            .iter()
            .map(|&v| field(v).as_bytes())
            .collect()
    }

    fn words(&self, field: fn(&Violation) -> &String) -> Vec<&'w str> {
        self.violations.iter().map(|&v| field(v).as_str()).collect()
    }
}
