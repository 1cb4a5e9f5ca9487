//! One agent's Sync stream: decide snapshot or resume, send the snapshot in chunks, then the
//! deltas of every new revision (filtered to the agent's cluster), and heartbeats when idle.
//! Runs as its own task and ends when the agent goes away or its cluster is deleted.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tonic::Status;
use tracing::{Instrument, debug, info, info_span};

use prost::Message as _;

use portcullis_policy::scan::summary_of_stored;
use portcullis_proto::v1::{
    Delta, Heartbeat, ImageSummary, Policy, PolicyChange, ProtectionSettings, ScanChange,
    SnapshotChunk, SnapshotEnd, SyncRequest, SyncResponse, SyncStart, policy_change, scan_change,
    sync_response::Message,
};
use portcullis_proto::words::SyncMode;

use crate::store::{Change, ChangesSince, Store, StoreError, VulnerabilityIds};

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
    /// Turns `true` when the control plane shuts down: every stream then ends with
    /// `Unavailable`, so agents reconnect (to another replica) at once and the drain is not
    /// held up by streams that never end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
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

/// Whether `policy` is in scope for `cluster`, by the engine's rule
/// (`applicability::clusters_cover`).
pub fn in_scope(policy: &Policy, cluster: &str) -> bool {
    let clusters = policy
        .scope
        .as_ref()
        .map(|s| s.clusters.as_slice())
        .unwrap_or_default();
    portcullis_engine::applicability::clusters_cover(clusters, cluster)
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
    let mut available = store.availability();
    if !*available.borrow_and_update() {
        return Err(End::Error(lost_database()));
    }
    let mut shutdown = settings.shutdown.clone();
    let heartbeat_interval_ms = settings.heartbeat.as_millis().min(u32::MAX as u128) as u32;
    let snapshot_reason = if request.epoch.is_empty() {
        Some("new agent")
    } else if request.epoch != store.epoch() {
        Some("the agent holds another epoch")
    } else {
        match store.changes_since(request.revision, 1).await? {
            ChangesSince::Changes(_) => None,
            ChangesSince::SnapshotNeeded if request.revision > store.revision() => {
                Some("the agent is ahead of the store")
            }
            ChangesSince::SnapshotNeeded => Some("the agent is behind the compaction horizon"),
        }
    };

    let mut cursor = match snapshot_reason {
        Some(reason) => {
            send_snapshot(store, cluster, reason, heartbeat_interval_ms, tx)
                .instrument(info_span!("snapshot", %cluster, reason))
                .await?
        }
        None => {
            info!(%cluster, revision = request.revision, "Sync: resume");
            send(
                tx,
                Message::Start(SyncStart {
                    mode: SyncMode::Resume.as_str().into(),
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
            // A replica that lost its database ends its streams: the agents go to another.
            () = async {
                if available.wait_for(|up| !*up).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                return Err(End::Error(lost_database()));
            }
            () = async {
                // Without a sender there is no shutdown to wait for.
                if shutdown.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => {
                return Err(End::Error(Status::unavailable("the control plane is shutting down")));
            }
        }
    }
}

fn lost_database() -> Status {
    Status::unavailable("this control-plane replica lost its database: connect to another")
}

/// Sends a snapshot of what `cluster` may see: the start, the policies in scope, every image
/// summary, the end; the revision it is at.
async fn send_snapshot(
    store: &Store,
    cluster: &str,
    reason: &'static str,
    heartbeat_interval_ms: u32,
    tx: &Sender,
) -> Result<u64, End> {
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
            mode: SyncMode::Snapshot.as_str().into(),
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
                ..Default::default()
            }),
        )
        .await?;
    }
    send_scans(tx, store.scan_summaries(), store.vulnerability_ids()).await?;
    send(
        tx,
        Message::SnapshotEnd(SnapshotEnd {
            revision: snapshot.revision,
            protection: record.protection,
        }),
    )
    .await?;
    Ok(snapshot.revision)
}

/// Sends every image summary in chunks of about `SCAN_CHUNK_BYTES`, read on a blocking thread
/// (sled reads may hit the disk) while earlier chunks are on the wire. Stored summaries number
/// their vulnerabilities: they go as stored, and each id goes once, in the dictionary of the
/// chunk of the first summary that uses it.
async fn send_scans(
    tx: &Sender,
    encoded: impl Iterator<Item = Result<Vec<u8>, StoreError>> + Send + 'static,
    ids: VulnerabilityIds,
) -> Result<(), End> {
    let tx = tx.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<(), End> {
        let mut chunk = ChunkBuilder::new(tx);
        // How many ids, numbered from 0, the snapshot has sent so far.
        let mut read = 0usize;
        for value in encoded {
            let value = value?;
            let summary = ImageSummary::decode(value.as_ref())
                .map_err(|e| End::Error(Status::internal(format!("stored image summary: {e}"))))?;
            let needed = summary
                .vulnerability_refs
                .iter()
                .max()
                .map_or(0, |&n| n as usize + 1);
            if needed > read {
                // Every id numbered by now: in one read for the first summary, and again only
                // when a scan imported during the snapshot brought new ones.
                let more = ids.from(read as u32)?;
                read += more.len();
                if needed > read {
                    return Err(End::Error(Status::internal(format!(
                        "stored image summary {:?} refers to vulnerability id number {}, which \
                         the store does not have",
                        summary.id,
                        needed - 1
                    ))));
                }
                for id in more {
                    chunk.add_id(id)?;
                }
            }
            chunk.add_scan(summary, value.len())?;
        }
        chunk.finish()
    });
    reader
        .await
        .map_err(|e| End::Error(Status::internal(format!("reading scans: {e}"))))?
}

/// Gathers a snapshot's scan chunks up to about `SCAN_CHUNK_BYTES` each and sends them.
struct ChunkBuilder {
    tx: Sender,
    chunk: SnapshotChunk,
    bytes: usize,
}

impl ChunkBuilder {
    fn new(tx: Sender) -> Self {
        Self {
            tx,
            chunk: SnapshotChunk::default(),
            bytes: 0,
        }
    }

    fn add_id(&mut self, id: String) -> Result<(), End> {
        self.make_room(field_len(id.len()))?;
        self.chunk.vulnerability_dictionary.push(id);
        Ok(())
    }

    fn add_scan(&mut self, summary: ImageSummary, size: usize) -> Result<(), End> {
        self.make_room(field_len(size))?;
        self.chunk.scans.push(summary);
        Ok(())
    }

    /// Sends the chunk so far if `size` more bytes would take it over the budget.
    fn make_room(&mut self, size: usize) -> Result<(), End> {
        if self.bytes > 0 && self.bytes + size > SCAN_CHUNK_BYTES {
            self.send()?;
        }
        self.bytes += size;
        Ok(())
    }

    fn send(&mut self) -> Result<(), End> {
        self.bytes = 0;
        let chunk = std::mem::take(&mut self.chunk);
        self.tx
            .blocking_send(Ok(SyncResponse {
                message: Some(Message::SnapshotChunk(chunk)),
            }))
            .map_err(|_| End::Gone)
    }

    fn finish(mut self) -> Result<(), End> {
        if self.bytes > 0 {
            self.send()?;
        }
        Ok(())
    }
}

/// Bytes of a length-delimited field of `len` bytes in a chunk (one-byte tag, length, bytes).
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

/// Sends the changes after `cursor` (up to a batch) as one delta; returns the new cursor.
async fn send_delta(store: &Store, cluster: &str, cursor: u64, tx: &Sender) -> Result<u64, End> {
    let records = match store.changes_since(cursor, DELTA_BATCH).await? {
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
            Some(Change::ScanSummaryPut(summary)) => delta.scan_changes.push(ScanChange {
                change: Some(scan_change::Change::Put(*summary)),
            }),
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
    use crate::store::sled::SledVulnerabilityIds;
    use crate::store::test_support::{mk_scan_of, temp_store};
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
        shutdown: tokio::sync::watch::Sender<bool>,
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
            Self {
                store,
                shutdown: tokio::sync::watch::channel(false).0,
                _dir: dir,
            }
        }

        fn open(&self, epoch: &str, revision: u64) -> mpsc::Receiver<Result<SyncResponse, Status>> {
            self.open_with(SyncRequest {
                cluster: "c1".into(),
                epoch: epoch.into(),
                revision,
                ..Default::default()
            })
        }

        fn open_with(&self, request: SyncRequest) -> mpsc::Receiver<Result<SyncResponse, Status>> {
            let (tx, rx) = mpsc::channel(16);
            let settings = SyncSettings {
                heartbeat: Duration::from_secs(5),
                shutdown: self.shutdown.subscribe(),
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
    async fn streams_end_unavailable_when_the_control_plane_shuts_down() {
        let h = Harness::new().await;
        let mut rx = h.open("", 0);
        loop {
            if let Message::SnapshotEnd(_) = next(&mut rx).await.unwrap() {
                break;
            }
        }
        h.shutdown.send(true).unwrap();
        let status = next(&mut rx).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("shutting down"), "{status:?}");
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

    /// Every chunk of a snapshot's scans, up to its end.
    async fn scan_chunks(
        rx: &mut mpsc::Receiver<Result<SyncResponse, Status>>,
    ) -> Vec<SnapshotChunk> {
        assert!(matches!(next(rx).await.unwrap(), Message::Start(_)));
        let mut chunks = Vec::new();
        loop {
            match next(rx).await.unwrap() {
                Message::SnapshotChunk(chunk) => chunks.push(chunk),
                Message::SnapshotEnd(_) => return chunks,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_snapshot_sends_each_id_once() {
        let h = Harness::new().await;
        h.store
            .put_scan(mk_scan_of("1.25", &["CVE-2", "CVE-1"]))
            .await
            .unwrap();
        h.store
            .put_scan(mk_scan_of("1.26", &["CVE-3", "CVE-1"]))
            .await
            .unwrap();
        let mut rx = h.open("", 0);
        let chunks = scan_chunks(&mut rx).await;
        assert_eq!(chunks.len(), 1);
        // Numbered as first imported: CVE-1 and CVE-2 with the first scan, then CVE-3.
        assert_eq!(
            chunks[0].vulnerability_dictionary,
            ["CVE-1", "CVE-2", "CVE-3"]
        );
        let refs: Vec<(&str, &[u32], &[u8])> = chunks[0]
            .scans
            .iter()
            .map(|s| {
                assert!(s.vulnerability_ids.is_empty());
                (
                    s.id.as_str(),
                    s.vulnerability_refs.as_slice(),
                    s.vulnerability_flags.as_slice(),
                )
            })
            .collect();
        assert_eq!(
            refs,
            [
                ("docker.io/library/nginx:1.25", &[0, 1][..], &[11, 11][..]),
                ("docker.io/library/nginx:1.26", &[0, 2][..], &[11, 11][..]),
            ]
        );
    }

    #[tokio::test]
    async fn ids_numbered_during_a_snapshot_come_before_the_summary_using_them() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("vulnerability_ids").unwrap();
        SledVulnerabilityIds::put_block(&tree, 0, &["CVE-1"]);
        let summary = |id: &str, refs: Vec<u32>| -> Result<Vec<u8>, StoreError> {
            let flags = vec![3; refs.len()];
            Ok(ImageSummary {
                id: id.into(),
                vulnerability_refs: refs,
                vulnerability_flags: flags,
                ..Default::default()
            }
            .encode_to_vec())
        };
        // The second summary was imported after the snapshot read the ids: its new id is read
        // when it is, and a big id list is split over chunks of its own.
        let late_tree = tree.clone();
        let long = |n: u32| format!("{n}-{}", "x".repeat(1000));
        let late_long = long;
        let values = vec![summary("a", vec![0])]
            .into_iter()
            .chain(std::iter::once_with(move || {
                for n in 1..=1500u32 {
                    SledVulnerabilityIds::put_block(&late_tree, n, &[&late_long(n)]);
                }
                summary("b", vec![1500, 0])
            }))
            .chain(std::iter::once(summary("c", vec![7])));
        let (tx, mut rx) = mpsc::channel(16);
        send_scans(
            &tx,
            values,
            VulnerabilityIds::Sled(SledVulnerabilityIds::from_tree(tree)),
        )
        .await
        .ok()
        .unwrap();
        drop(tx);
        let mut chunks = Vec::new();
        let mut error = None;
        while let Some(response) = rx.recv().await {
            match response {
                Ok(SyncResponse {
                    message: Some(Message::SnapshotChunk(chunk)),
                }) => chunks.push(chunk),
                other => error = Some(other),
            }
        }
        assert!(error.is_none(), "{error:?}");
        let shape: Vec<(usize, Vec<&str>)> = chunks
            .iter()
            .map(|c| {
                (
                    c.vulnerability_dictionary.len(),
                    c.scans.iter().map(|s| s.id.as_str()).collect(),
                )
            })
            .collect();
        // Over 1.5 MB of ids: two chunks at least; "a" in the first, with CVE-1; "b" (and "c")
        // in the chunk with the last of the ids, which come in number order.
        assert!(chunks.len() >= 2, "{shape:?}");
        assert_eq!(shape[0].1, ["a"]);
        assert_eq!(chunks[0].vulnerability_dictionary[0], "CVE-1");
        assert_eq!(shape.last().unwrap().1, ["b", "c"]);
        assert!(
            shape[1..shape.len() - 1]
                .iter()
                .all(|(_, scans)| scans.is_empty())
        );
        let dictionary: Vec<&String> = chunks
            .iter()
            .flat_map(|c| &c.vulnerability_dictionary)
            .collect();
        assert_eq!(dictionary.len(), 1501);
        assert!((1..=1500u32).all(|n| *dictionary[n as usize] == long(n)));
        for chunk in &chunks {
            assert!(
                chunk.encoded_len() <= SCAN_CHUNK_BYTES,
                "{}",
                chunk.encoded_len()
            );
        }
    }

    #[tokio::test]
    async fn a_summary_numbering_an_id_the_store_lacks_ends_the_snapshot() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("vulnerability_ids").unwrap();
        SledVulnerabilityIds::put_block(&tree, 0, &["CVE-1"]);
        let value = ImageSummary {
            id: "a".into(),
            vulnerability_refs: vec![0, 4],
            vulnerability_flags: vec![3, 3],
            ..Default::default()
        }
        .encode_to_vec();
        let (tx, _rx) = mpsc::channel(16);
        let Err(End::Error(status)) = send_scans(
            &tx,
            std::iter::once(Ok(value)),
            VulnerabilityIds::Sled(SledVulnerabilityIds::from_tree(tree)),
        )
        .await
        else {
            panic!("expected an error");
        };
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(
            status.message().contains(
                "\"a\" refers to vulnerability id number 4, which the store does not have"
            ),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn large_snapshots_split_scans_into_bounded_chunks() {
        let values: Vec<Result<Vec<u8>, StoreError>> = (0..5)
            .map(|i| {
                let summary = ImageSummary {
                    id: format!("id{i}"),
                    malware: vec!["x".repeat(SCAN_CHUNK_BYTES / 2)],
                    ..Default::default()
                };
                Ok(summary.encode_to_vec())
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(16);
        let (store, _dir) = temp_store();
        send_scans(&tx, values.into_iter(), store.vulnerability_ids())
            .await
            .ok()
            .unwrap();
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
