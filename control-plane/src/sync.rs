//! One agent's Sync stream: decide snapshot or resume, send the snapshot in chunks, then the
//! deltas of every new revision (filtered to the agent's cluster), and heartbeats when idle.
//! Runs as its own task and ends when the agent goes away or its cluster is deleted.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tonic::Status;
use tracing::{debug, info};

use prost::Message as _;

use portcullis_policy::scan::summary_of_stored;
use portcullis_proto::v1::{
    Delta, Heartbeat, ImageSummary, Policy, PolicyChange, ProtectionSettings, ScanChange,
    SnapshotChunk, SnapshotEnd, SyncRequest, SyncResponse, SyncStart, policy_change, scan_change,
    sync_response::Message,
};

use crate::store::{Change, ChangesSince, Store, StoreError};

/// Policies per snapshot chunk.
const CHUNK: usize = 100;
/// Encoded image summaries per snapshot chunk, in bytes (a chunk holds at least one).
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Revisions per delta when an agent catches up.
const DELTA_BATCH: usize = 500;

pub type Sender = mpsc::Sender<Result<SyncResponse, Status>>;

/// How a stream is set up.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    pub heartbeat: Duration,
}

/// Why a stream ended on the server's side.
enum End {
    /// The agent went away.
    Gone,
    /// Tell the agent why, then end.
    Error(Status),
}

impl From<StoreError> for End {
    fn from(error: StoreError) -> Self {
        End::Error(error.into())
    }
}

/// Whether `policy` is in scope for `cluster`: no cluster globs, or one that matches.
pub fn in_scope(policy: &Policy, cluster: &str) -> bool {
    let clusters = policy
        .scope
        .as_ref()
        .map(|s| s.clusters.as_slice())
        .unwrap_or_default();
    clusters.is_empty()
        || clusters
            .iter()
            .any(|glob| portcullis_policy::Glob::new(glob).is_ok_and(|g| g.matches(cluster)))
}

/// Serves one Sync stream into `tx` until it ends.
pub async fn serve(
    store: Arc<Store>,
    cluster: String,
    request: SyncRequest,
    settings: SyncSettings,
    tx: Sender,
) {
    match run(&store, &cluster, &request, &settings, &tx).await {
        End::Gone => debug!(%cluster, "Agent went away"),
        End::Error(status) => {
            info!(%cluster, code = ?status.code(), message = status.message(), "Ending Sync stream");
            let _ = tx.send(Err(status)).await;
        }
    }
}

async fn send(tx: &Sender, message: Message) -> Result<(), End> {
    tx.send(Ok(SyncResponse {
        message: Some(message),
    }))
    .await
    .map_err(|_| End::Gone)
}

async fn run(
    store: &Store,
    cluster: &str,
    request: &SyncRequest,
    settings: &SyncSettings,
    tx: &Sender,
) -> End {
    match stream(store, cluster, request, settings, tx).await {
        Ok(never) => match never {},
        Err(end) => end,
    }
}

async fn stream(
    store: &Store,
    cluster: &str,
    request: &SyncRequest,
    settings: &SyncSettings,
    tx: &Sender,
) -> Result<std::convert::Infallible, End> {
    let mut durable = store.subscribe();
    let heartbeat_interval_ms = settings.heartbeat.as_millis().min(u32::MAX as u128) as u32;
    let snapshot_reason = if request.epoch.is_empty() {
        Some("new agent")
    } else if request.epoch != store.epoch() {
        Some("the agent holds another epoch")
    } else {
        match store.changes_since(request.revision, 1)? {
            ChangesSince::Changes(_) => None,
            ChangesSince::SnapshotNeeded if request.revision > store.revision() => {
                Some("the agent is ahead of the store")
            }
            ChangesSince::SnapshotNeeded => Some("the agent is behind the compaction horizon"),
        }
    };

    let mut cursor = match snapshot_reason {
        Some(reason) => {
            let snapshot = store.snapshot(cluster).await?;
            let Some(record) = snapshot.cluster else {
                return Err(End::Error(Status::not_found(format!(
                    "cluster {cluster:?} was deleted"
                ))));
            };
            info!(%cluster, revision = snapshot.revision, reason, "Sync: snapshot");
            send(
                tx,
                Message::Start(SyncStart {
                    mode: "snapshot".into(),
                    epoch: snapshot.epoch.clone(),
                    revision: snapshot.revision,
                    heartbeat_interval_ms,
                    reason: reason.into(),
                }),
            )
            .await?;
            let policies: Vec<Policy> = snapshot
                .policies
                .into_iter()
                .filter(|p| in_scope(p, cluster))
                .collect();
            for chunk in policies.chunks(CHUNK) {
                send(
                    tx,
                    Message::SnapshotChunk(SnapshotChunk {
                        policies: chunk.to_vec(),
                        scans: Vec::new(),
                    }),
                )
                .await?;
            }
            send_scans(tx, store.scan_summaries()).await?;
            send(
                tx,
                Message::SnapshotEnd(SnapshotEnd {
                    revision: snapshot.revision,
                    protection: record.protection,
                }),
            )
            .await?;
            snapshot.revision
        }
        None => {
            info!(%cluster, revision = request.revision, "Sync: resume");
            send(
                tx,
                Message::Start(SyncStart {
                    mode: "resume".into(),
                    epoch: store.epoch().to_owned(),
                    revision: store.revision(),
                    heartbeat_interval_ms,
                    reason: String::new(),
                }),
            )
            .await?;
            request.revision
        }
    };

    loop {
        while cursor < store.revision() {
            cursor = send_delta(store, cluster, cursor, tx).await?;
        }
        tokio::select! {
            changed = durable.changed() => {
                if changed.is_err() {
                    return Err(End::Error(Status::unavailable("the control plane is shutting down")));
                }
            }
            () = tokio::time::sleep(settings.heartbeat) => {
                let now = crate::store::timestamp_from_millis(crate::store::now_millis());
                send(tx, Message::Heartbeat(Heartbeat { revision: cursor, time: Some(now) })).await?;
            }
            () = tx.closed() => return Err(End::Gone),
        }
    }
}

/// Sends every image summary in chunks of about `SCAN_CHUNK_BYTES`, read and decoded on a
/// blocking thread (sled reads may hit the disk) while earlier chunks are on the wire.
async fn send_scans(
    tx: &Sender,
    encoded: impl Iterator<Item = Result<sled::IVec, StoreError>> + Send + 'static,
) -> Result<(), End> {
    let tx = tx.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), End> {
        let mut scans = Vec::new();
        let mut bytes = 0;
        let send = |scans: Vec<ImageSummary>| {
            tx.blocking_send(Ok(SyncResponse {
                message: Some(Message::SnapshotChunk(SnapshotChunk {
                    policies: Vec::new(),
                    scans,
                })),
            }))
            .map_err(|_| End::Gone)
        };
        for value in encoded {
            let value = value?;
            if !scans.is_empty() && bytes + value.len() > SCAN_CHUNK_BYTES {
                send(std::mem::take(&mut scans))?;
                bytes = 0;
            }
            bytes += value.len();
            let summary = ImageSummary::decode(value.as_ref())
                .map_err(|e| End::Error(Status::internal(format!("stored image summary: {e}"))))?;
            scans.push(summary);
        }
        if !scans.is_empty() {
            send(scans)?;
        }
        Ok(())
    });
    reader
        .await
        .map_err(|e| End::Error(Status::internal(format!("reading scans: {e}"))))?
}

/// Sends the changes after `cursor` (up to a batch) as one delta; returns the new cursor.
async fn send_delta(store: &Store, cluster: &str, cursor: u64, tx: &Sender) -> Result<u64, End> {
    let records = match store.changes_since(cursor, DELTA_BATCH)? {
        ChangesSince::Changes(records) => records,
        ChangesSince::SnapshotNeeded => {
            return Err(End::Error(Status::aborted(
                "the agent fell behind the change log: reconnect for a snapshot",
            )));
        }
    };
    let Some(last) = records.last().map(|r| r.revision) else {
        return Ok(cursor);
    };
    let mut delta = Delta {
        prev_revision: cursor,
        revision: last,
        ..Default::default()
    };
    for record in records {
        match record.change {
            Some(Change::PolicyPut(policy)) => {
                let change = if in_scope(&policy, cluster) {
                    policy_change::Change::Put(*policy)
                } else {
                    policy_change::Change::Deleted(policy.name)
                };
                delta.changes.push(PolicyChange {
                    change: Some(change),
                });
            }
            Some(Change::PolicyDeleted(name)) => {
                delta.changes.push(PolicyChange {
                    change: Some(policy_change::Change::Deleted(name)),
                });
            }
            Some(Change::ClusterPut(record)) if record.name == cluster => {
                delta.protection = Some(
                    record
                        .protection
                        .unwrap_or_else(ProtectionSettings::default),
                );
            }
            Some(Change::ClusterDeleted(name)) if name == cluster => {
                return Err(End::Error(Status::unauthenticated(format!(
                    "cluster {cluster:?} was deleted and its agent token revoked"
                ))));
            }
            Some(Change::ClusterPut(_) | Change::ClusterDeleted(_)) | None => {}
            Some(Change::ScanPut(scan)) => delta.scan_changes.push(ScanChange {
                change: Some(scan_change::Change::Put(summary_of_stored(&scan))),
            }),
            Some(Change::ScanDeleted(id)) => delta.scan_changes.push(ScanChange {
                change: Some(scan_change::Change::Deleted(id)),
            }),
        }
    }
    send(tx, Message::Delta(delta)).await?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use portcullis_proto::v1::{Cluster, Scope};

    fn scoped(name: &str, clusters: &[&str]) -> Policy {
        Policy {
            name: name.into(),
            scope: Some(Scope {
                clusters: clusters.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scope_by_cluster_globs() {
        assert!(in_scope(&Policy::default(), "any"));
        assert!(in_scope(&scoped("p", &[]), "any"));
        assert!(in_scope(&scoped("p", &["prod-*"]), "prod-eu-1"));
        assert!(!in_scope(&scoped("p", &["prod-*"]), "dev-1"));
        assert!(in_scope(&scoped("p", &["dev-1", "prod-?"]), "prod-2"));
    }

    struct Harness {
        store: Arc<Store>,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        async fn new() -> Self {
            let (store, dir) = temp_store();
            let store = Arc::new(store);
            let cluster = Cluster {
                name: "c1".into(),
                ..Default::default()
            };
            store.register_cluster(cluster, [1; 32]).await.unwrap();
            Self { store, _dir: dir }
        }

        fn open(&self, epoch: &str, revision: u64) -> mpsc::Receiver<Result<SyncResponse, Status>> {
            let (tx, rx) = mpsc::channel(16);
            let request = SyncRequest {
                cluster: "c1".into(),
                epoch: epoch.into(),
                revision,
                ..Default::default()
            };
            let settings = SyncSettings {
                heartbeat: Duration::from_secs(5),
            };
            tokio::spawn(serve(
                self.store.clone(),
                "c1".into(),
                request,
                settings,
                tx,
            ));
            rx
        }
    }

    async fn next(
        rx: &mut mpsc::Receiver<Result<SyncResponse, Status>>,
    ) -> Result<Message, Status> {
        rx.recv()
            .await
            .expect("stream open")
            .map(|r| r.message.expect("message"))
    }

    #[tokio::test]
    async fn new_agent_gets_a_scoped_snapshot_then_deltas() {
        let h = Harness::new().await;
        h.store
            .create_policy(scoped("mine", &["c*"]))
            .await
            .unwrap();
        h.store
            .create_policy(scoped("other", &["d1"]))
            .await
            .unwrap();
        let mut rx = h.open("", 0);
        let Message::Start(start) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            (start.mode.as_str(), start.reason.as_str()),
            ("snapshot", "new agent")
        );
        let Message::SnapshotChunk(chunk) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            chunk
                .policies
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["mine"]
        );
        let Message::SnapshotEnd(end) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(end.revision, 3);

        // A policy moving out of scope arrives as a delete; settings changes travel too.
        h.store
            .apply_policies(vec![scoped("mine", &["d1"])])
            .await
            .unwrap();
        let Message::Delta(delta) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!((delta.prev_revision, delta.revision), (3, 4));
        assert_eq!(
            delta.changes[0].change,
            Some(policy_change::Change::Deleted("mine".into()))
        );
        let settings = ProtectionSettings {
            enabled: false,
            failure_policy: "fail".into(),
            timeout_seconds: 3,
        };
        h.store
            .set_protection("c1", settings.clone())
            .await
            .unwrap();
        let Message::Delta(delta) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!((delta.revision, delta.protection), (5, Some(settings)));
        assert!(delta.changes.is_empty());
    }

    fn mk_scan(tag: &str, cve: &str) -> portcullis_proto::v1::ImageScan {
        use portcullis_proto::v1::{ImageIdentity, ImageScan, ScanVulnerability};
        ImageScan {
            image: Some(ImageIdentity {
                repository: "docker.io/library/nginx".into(),
                tags: vec![tag.into()],
                ..Default::default()
            }),
            vulnerabilities: vec![ScanVulnerability {
                id: cve.into(),
                severity: "high".into(),
                fixed_version: "2".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn scans_travel_as_summaries_in_snapshots_and_deltas() {
        let h = Harness::new().await;
        h.store.put_scan(mk_scan("1.25", "CVE-1")).await.unwrap();
        let mut rx = h.open("", 0);
        assert!(matches!(next(&mut rx).await.unwrap(), Message::Start(_)));
        let Message::SnapshotChunk(chunk) = next(&mut rx).await.unwrap() else {
            panic!("expected the scans chunk")
        };
        assert_eq!(chunk.scans.len(), 1);
        let summary = &chunk.scans[0];
        assert_eq!(
            (summary.id.as_str(), summary.vulnerability_ids.as_slice()),
            (
                "docker.io/library/nginx:1.25",
                ["CVE-1".to_string()].as_slice()
            )
        );
        assert_eq!(summary.vulnerability_flags, [3 | 8]);
        assert!(matches!(
            next(&mut rx).await.unwrap(),
            Message::SnapshotEnd(_)
        ));

        // A re-import and a delete arrive as deltas of their own revisions.
        h.store.put_scan(mk_scan("1.25", "CVE-2")).await.unwrap();
        let Message::Delta(delta) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        let Some(scan_change::Change::Put(put)) = &delta.scan_changes[0].change else {
            panic!("expected a put")
        };
        assert_eq!(put.vulnerability_ids, ["CVE-2"]);
        assert_eq!(put.revision, delta.revision);
        h.store.delete_scan("nginx:1.25").await.unwrap();
        let Message::Delta(delta) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            delta.scan_changes[0].change,
            Some(scan_change::Change::Deleted(
                "docker.io/library/nginx:1.25".into()
            ))
        );
    }

    #[tokio::test]
    async fn large_snapshots_split_scans_into_bounded_chunks() {
        let values: Vec<Result<sled::IVec, StoreError>> = (0..5)
            .map(|i| {
                let summary = ImageSummary {
                    id: format!("id{i}"),
                    malware: vec!["x".repeat(SCAN_CHUNK_BYTES / 2)],
                    ..Default::default()
                };
                Ok(summary.encode_to_vec().into())
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(16);
        send_scans(&tx, values.into_iter()).await.ok().unwrap();
        drop(tx);
        let mut sizes = Vec::new();
        while let Some(Ok(SyncResponse {
            message: Some(Message::SnapshotChunk(chunk)),
        })) = rx.recv().await
        {
            sizes.push(chunk.scans.len());
        }
        // Each summary is just over half the budget: one per chunk, none lost.
        assert_eq!(sizes, [1, 1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn known_agent_resumes_and_foreign_epoch_gets_a_snapshot() {
        let h = Harness::new().await;
        h.store.create_policy(scoped("a", &[])).await.unwrap();
        h.store.create_policy(scoped("b", &[])).await.unwrap();
        let epoch = h.store.epoch().to_owned();
        let mut rx = h.open(&epoch, 2);
        let Message::Start(start) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(start.mode, "resume");
        let Message::Delta(delta) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            (delta.prev_revision, delta.revision, delta.changes.len()),
            (2, 3, 1)
        );

        let mut rx = h.open("another-epoch", 3);
        let Message::Start(start) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(start.mode, "snapshot");
        let mut rx = h.open(&epoch, 99);
        let Message::Start(start) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(
            (start.mode.as_str(), start.reason.as_str()),
            ("snapshot", "the agent is ahead of the store")
        );
    }

    #[tokio::test]
    async fn behind_the_horizon_gets_a_snapshot() {
        let h = Harness::new().await;
        for name in ["a", "b", "c", "d"] {
            h.store.create_policy(scoped(name, &[])).await.unwrap();
        }
        h.store.compact(1).await.unwrap();
        let mut rx = h.open(h.store.epoch(), 1);
        let Message::Start(start) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(start.reason, "the agent is behind the compaction horizon");
    }

    #[tokio::test]
    async fn heartbeats_when_idle_and_deletion_ends_the_stream() {
        tokio::time::pause();
        let h = Harness::new().await;
        let mut rx = h.open(h.store.epoch(), 1);
        let Message::Start(_) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        let Message::Heartbeat(beat) = next(&mut rx).await.unwrap() else {
            panic!()
        };
        assert_eq!(beat.revision, 1);
        h.store.delete_cluster("c1").await.unwrap();
        // Paused time runs on while sled flushes: more heartbeats may come first.
        let status = loop {
            match next(&mut rx).await {
                Ok(Message::Heartbeat(_)) => continue,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(rx.recv().await.is_none(), "the stream is closed");
    }
}
