//! The fleet view: what each cluster's agent last said (ACK / NACK, version, cache age,
//! protection state) and whether it is connected. Kept in memory: agents report again as soon
//! as they reconnect to a restarted control plane. With several replicas (PostgreSQL) each one
//! also shares what its agents said and merges what the others' said (`shared`).

mod shared;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use portcullis_proto::limits;
use portcullis_proto::v1::{ClusterStatus, ReportStatusRequest};

#[derive(Clone, Debug, Default, PartialEq)]
struct AgentRecord {
    streams: usize,
    last_seen: Option<SystemTime>,
    agent_version: String,
    applied_epoch: String,
    applied_revision: u64,
    last_error: String,
    protection_state: String,
    events_dropped: u64,
    events_pending: u64,
}

/// Per-cluster agent status, shared by the agent and cluster services.
#[derive(Clone, Default)]
pub struct Fleet {
    agents: Arc<Mutex<HashMap<String, AgentRecord>>>,
    /// With several replicas: what this one shares and what the others said.
    shared: Option<Arc<shared::Shared>>,
}

/// Marks a cluster connected while it lives (one per open Sync stream).
pub struct Connection {
    fleet: Fleet,
    cluster: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.fleet.update(&self.cluster, |record| {
            record.streams = record.streams.saturating_sub(1);
            record.last_seen = Some(SystemTime::now());
        });
    }
}

impl Fleet {
    /// A fleet view shared with the other replicas on the database of `pool`: this replica's
    /// records are written there and the others' read back, about every second.
    pub fn shared(pool: deadpool_postgres::Pool) -> Self {
        let fleet = Self {
            agents: Arc::default(),
            shared: Some(Arc::new(shared::Shared::new(pool))),
        };
        tokio::spawn(shared::sync_periodically(fleet.clone()));
        fleet
    }

    fn update(&self, cluster: &str, f: impl FnOnce(&mut AgentRecord)) {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        f(agents.entry(cluster.to_owned()).or_default());
        if let Some(shared) = &self.shared {
            shared.changed(cluster);
        }
    }

    /// Records an open Sync stream until the returned guard drops.
    pub fn connected(&self, cluster: &str, agent_version: &str) -> Connection {
        self.update(cluster, |record| {
            record.streams += 1;
            record.last_seen = Some(SystemTime::now());
            if !agent_version.is_empty() {
                record.agent_version = agent_version.to_owned();
                limits::truncate(&mut record.agent_version, limits::cluster::MAX_STATUS_FIELD);
            }
        });
        Connection {
            fleet: self.clone(),
            cluster: cluster.to_owned(),
        }
    }

    /// Records a status report: an ACK moves the applied revision, a NACK sets the error.
    pub fn report(&self, cluster: &str, report: &ReportStatusRequest) {
        // Every text an agent sends is cut to its bound (`limits::cluster`): one agent must not
        // be able to grow the fleet view past what a listing can carry.
        let bounded = |text: &str, max: usize| {
            // Copy no more than the bound (and a character's width) of a long text.
            let mut end = text.len().min(max + 4);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let mut text = text[..end].to_owned();
            limits::truncate(&mut text, max);
            text
        };
        let field = limits::cluster::MAX_STATUS_FIELD;
        self.update(cluster, |record| {
            record.last_seen = Some(SystemTime::now());
            record.agent_version = bounded(&report.agent_version, field);
            record.applied_epoch = bounded(&report.applied_epoch, field);
            record.applied_revision = report.applied_revision;
            record.protection_state = bounded(&report.protection_state, field);
            record.events_dropped = report.events_dropped;
            record.events_pending = report.events_pending;
            let error = bounded(&report.error, limits::cluster::MAX_ERROR);
            record.last_error = if error.is_empty() || report.failed_revision == 0 {
                error
            } else {
                bounded(
                    &format!("revision {}: {error}", report.failed_revision),
                    limits::cluster::MAX_ERROR,
                )
            };
        });
    }

    /// Forgets a deleted cluster.
    pub fn remove(&self, cluster: &str) {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cluster);
        if let Some(shared) = &self.shared {
            shared.removed(cluster);
        }
    }

    /// The status of `cluster` against the store's (epoch, revision).
    pub fn status(&self, cluster: &str, epoch: &str, revision: u64) -> ClusterStatus {
        let local = self
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .cloned();
        // The newest report of any replica, connected when any live replica holds a stream.
        let record = match &self.shared {
            Some(shared) => shared.merged(cluster, local),
            None => local,
        };
        let Some(record) = record else {
            return ClusterStatus {
                lag: revision,
                ..Default::default()
            };
        };
        let applied = if record.applied_epoch == epoch {
            record.applied_revision
        } else {
            0
        };
        ClusterStatus {
            connected: record.streams > 0,
            last_seen: record.last_seen.map(timestamp),
            agent_version: record.agent_version.clone(),
            applied_epoch: record.applied_epoch.clone(),
            applied_revision: record.applied_revision,
            lag: revision.saturating_sub(applied),
            last_error: record.last_error.clone(),
            protection_state: record.protection_state.clone(),
            events_dropped: record.events_dropped,
            events_pending: record.events_pending,
            // Counted by the audit store; the cluster service fills it in.
            open_violations: 0,
        }
    }
}

use portcullis_runtime::clock::timestamp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ack_nack_and_lag() {
        let fleet = Fleet::default();
        assert_eq!(fleet.status("a", "e1", 5).lag, 5);
        let conn = fleet.connected("a", "0.1.0");
        assert!(fleet.status("a", "e1", 5).connected);
        let ack = ReportStatusRequest {
            applied_epoch: "e1".into(),
            applied_revision: 5,
            ..Default::default()
        };
        fleet.report("a", &ack);
        let status = fleet.status("a", "e1", 5);
        assert_eq!(
            (
                status.applied_revision,
                status.lag,
                status.last_error.as_str()
            ),
            (5, 0, "")
        );
        // An ACK from another epoch counts for nothing.
        assert_eq!(fleet.status("a", "e2", 7).lag, 7);
        let nack = ReportStatusRequest {
            applied_epoch: "e1".into(),
            applied_revision: 5,
            failed_revision: 6,
            error: "bad policy".into(),
            ..Default::default()
        };
        fleet.report("a", &nack);
        assert_eq!(
            fleet.status("a", "e1", 6).last_error,
            "revision 6: bad policy"
        );
        drop(conn);
        assert!(!fleet.status("a", "e1", 6).connected);
    }
}
