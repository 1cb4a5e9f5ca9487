//! The sync client: one long-lived `Sync` stream to the control plane. It applies a snapshot
//! atomically or deltas in order, persists each revision to the cache before swapping it in
//! for readers, reports ACK / NACK, and reconnects when the stream fails, goes quiet past the
//! heartbeat deadline, or shows a revision gap: to the next control plane endpoint at once,
//! and with jittered backoff after a round in which every endpoint failed.

pub mod apply;
mod connect;
pub mod endpoints;
mod failover;
#[cfg(test)]
mod failover_tests;
pub(crate) mod reconnect;
pub mod status;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::time::timeout;
use tonic::{Code, Status, Streaming};
use tracing::{Instrument, error, info, info_span};

use portcullis_proto::v1::{SyncRequest, SyncResponse, SyncStart, sync_response::Message};
use portcullis_proto::words::{SyncMode, UnknownWord};

use portcullis_engine::ScanIndex;
use portcullis_policy::scan::VulnerabilityDictionary;

use crate::{
    cache::{Cache, ScanPersist, StagedScans},
    state::{AgentState, StateHandle},
    stats::SyncStats,
};
use apply::ApplyError;
use connect::Credentials;
use endpoints::{ControlPlaneUrl, Endpoint};
use reconnect::Reconnect;
use status::{AgentClient, Outcome, StatusReporter};

/// Largest message accepted from the control plane.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// The first message must come within this time.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and who the agent is.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    pub cluster: String,
    /// The control plane's URLs (`--control-plane`, at least one), tried in this order.
    pub control_planes: Vec<ControlPlaneUrl>,
    pub token_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    /// Heartbeats missed in a row before the stream counts as dead.
    pub heartbeat_misses: u32,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

pub struct SyncClient {
    pub config: SyncConfig,
    pub cache: Arc<Cache>,
    pub state: StateHandle,
    pub stats: Arc<SyncStats>,
    pub reporter: StatusReporter,
    /// The token of the last connection attempt.
    pub last_token: std::sync::Mutex<Option<String>>,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Local(String),
    /// The error with every cause in its chain: tonic's own text is only "transport error",
    /// and the reason (a certificate the agent rejects, a refused connection) is below it.
    #[error("connecting: {0}")]
    Connect(String),
    #[error("control plane said {code:?}: {message}", code = .0.code(), message = .0.message())]
    Status(Status),
    #[error("no message for {0:?}: the stream is dead")]
    Dead(Duration),
    #[error("the control plane ended the stream")]
    Ended,
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Apply(#[from] ApplyError),
}

impl SessionError {
    /// A refusal of the agent (its token, its cluster, its request) that retrying soon will
    /// not fix.
    fn is_refusal(&self) -> bool {
        matches!(self, SessionError::Status(status) if matches!(
            status.code(),
            Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated
        ))
    }
}

/// A stream that got going: its start, and the state the agent held when it asked.
struct Opened {
    stream: Streaming<SyncResponse>,
    start: SyncStart,
    held: Arc<AgentState>,
}

impl SyncClient {
    /// Connects to `endpoint` and asks for the stream from the revision the agent holds;
    /// done when the stream's start has come.
    async fn open(
        &self,
        credentials: &Credentials,
        endpoint: &Endpoint,
    ) -> Result<(AgentClient, Opened), SessionError> {
        let mut client = connect::connect(credentials, endpoint).await?;
        let held = self.state.load_full();
        let request = SyncRequest {
            cluster: self.config.cluster.clone(),
            epoch: held.epoch.clone(),
            revision: held.revision,
            agent_version: crate::VERSION.into(),
        };
        let mut stream = client
            .sync(request)
            .await
            .map_err(SessionError::Status)?
            .into_inner();
        let start = match next(&mut stream, START_TIMEOUT).await? {
            Message::Start(start) => start,
            other => {
                return Err(SessionError::Protocol(format!(
                    "expected start, got {}",
                    kind(&other)
                )));
            }
        };
        Ok((
            client,
            Opened {
                stream,
                start,
                held,
            },
        ))
    }

    /// Follows a stream that got going until it fails.
    async fn follow(
        &self,
        opened: Opened,
        reconnect: &mut Reconnect,
    ) -> Result<std::convert::Infallible, SessionError> {
        let Opened {
            mut stream,
            start,
            held,
        } = opened;
        self.stats.heard();
        self.stats.set_connected(true);
        let deadline = Duration::from_millis(u64::from(start.heartbeat_interval_ms).max(100))
            * self.config.heartbeat_misses.max(1);
        let mode: SyncMode = start
            .mode
            .parse()
            .map_err(|e: UnknownWord| SessionError::Protocol(e.to_string()))?;
        match mode {
            SyncMode::Snapshot => self.receive_snapshot(&mut stream, &start, deadline).await?,
            SyncMode::Resume if start.epoch == held.epoch => {
                info!(revision = held.revision, "Resuming");
                self.stats.set_mode(SyncMode::Resume);
            }
            SyncMode::Resume => {
                return Err(SessionError::Protocol(format!(
                    "resume offered in epoch {}, the agent holds {}",
                    start.epoch, held.epoch
                )));
            }
        }
        reconnect.reset();
        loop {
            match next(&mut stream, deadline).await? {
                Message::Delta(delta) => {
                    self.stats.heard();
                    let revision = delta.revision;
                    let current = self.state.load_full();
                    let (result, writes) = match apply::delta(&current, delta, crate::now_ms()) {
                        Ok((next, writes)) => (Ok(next), writes),
                        Err(error) => (Err(error), Vec::new()),
                    };
                    self.commit(&current, result, revision, ScanPersist::Changes(&writes))
                        .await?;
                    self.stats
                        .deltas
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Message::Heartbeat(_) => self.stats.heard(),
                other => {
                    return Err(SessionError::Protocol(format!(
                        "unexpected {} mid-stream",
                        kind(&other)
                    )));
                }
            }
        }
    }

    async fn receive_snapshot(
        &self,
        stream: &mut Streaming<SyncResponse>,
        start: &SyncStart,
        deadline: Duration,
    ) -> Result<(), SessionError> {
        info!(epoch = %start.epoch, revision = start.revision, reason = %start.reason, "Receiving snapshot");
        let staged = self
            .cache
            .stage_scans()
            .map_err(|e| SessionError::Local(format!("writing the cache: {e}")))?;
        let started = std::time::Instant::now();
        let span = info_span!("snapshot", epoch = %start.epoch, revision = start.revision, reason = %start.reason);
        match self
            .receive_snapshot_into(stream, start, deadline, &staged)
            .instrument(span)
            .await
        {
            Ok((end, result)) => {
                let received_ms = started.elapsed().as_millis() as u64;
                let current = self.state.load_full();
                self.commit(&current, result, end, ScanPersist::Replace(staged))
                    .await?;
                info!(
                    received_ms,
                    committed_ms = started.elapsed().as_millis() as u64,
                    "Snapshot applied"
                );
            }
            Err(error) => {
                self.cache.discard(staged);
                return Err(error);
            }
        }
        self.stats
            .snapshots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.stats.set_mode(SyncMode::Snapshot);
        Ok(())
    }

    /// Receives the rest of a snapshot: scans go to the index and the staged tree chunk by
    /// chunk (so 100,000 images never sit in memory as messages); returns the revision and
    /// the state to commit.
    async fn receive_snapshot_into(
        &self,
        stream: &mut Streaming<SyncResponse>,
        start: &SyncStart,
        deadline: Duration,
        staged: &StagedScans,
    ) -> Result<(u64, Result<AgentState, ApplyError>), SessionError> {
        let mut policies = Vec::new();
        let mut scans = ScanIndex::default();
        let mut dictionary = VulnerabilityDictionary::default();
        let mut invalid = None;
        let end = loop {
            match next(stream, deadline).await? {
                Message::SnapshotChunk(mut chunk) => {
                    self.stats.heard();
                    policies.append(&mut chunk.policies);
                    if invalid.is_none()
                        && !(chunk.scans.is_empty() && chunk.vulnerability_dictionary.is_empty())
                    {
                        // Encoding and writing the chunk to the cache runs beside indexing
                        // it: both only read the chunk, and the index is the longer of the
                        // two. A chunk of an invalid snapshot is written too, and discarded
                        // with the rest of it.
                        let (indexed, written) = std::thread::scope(|scope| {
                            let writer = scope.spawn(|| self.cache.stage_chunk(staged, &chunk));
                            let indexed = apply::add_scans(&mut scans, &mut dictionary, &chunk);
                            (indexed, writer.join())
                        });
                        match written {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                return Err(SessionError::Local(format!("writing the cache: {e}")));
                            }
                            Err(_) => {
                                return Err(SessionError::Local(
                                    "writing the cache: the writer panicked".into(),
                                ));
                            }
                        }
                        if let Err(error) = indexed {
                            invalid = Some(error);
                        }
                    }
                }
                Message::SnapshotEnd(end) => break end,
                other => {
                    return Err(SessionError::Protocol(format!(
                        "unexpected {} in a snapshot",
                        kind(&other)
                    )));
                }
            }
        };
        self.stats.heard();
        let result = match invalid {
            Some(error) => Err(error),
            None => apply::snapshot(
                &start.epoch,
                end.revision,
                policies,
                scans,
                end.protection,
                crate::now_ms(),
            ),
        };
        Ok((end.revision, result))
    }

    /// Persists and swaps in an applied state and ACKs it, or NACKs the failure.
    async fn commit(
        &self,
        current: &AgentState,
        result: Result<AgentState, ApplyError>,
        revision: u64,
        scans: ScanPersist<'_>,
    ) -> Result<(), SessionError> {
        let next = match result {
            Ok(next) => next,
            Err(error) => {
                if let ScanPersist::Replace(staged) = scans {
                    self.cache.discard(staged);
                }
                if !matches!(error, ApplyError::Gap { .. }) {
                    error!(%error, revision, "Cannot apply revision: keeping the last good state");
                    self.stats
                        .nacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.reporter.report(Outcome::Nack {
                        revision,
                        error: error.to_string(),
                    });
                }
                return Err(error.into());
            }
        };
        if let Err(error) = self.cache.persist(current, &next, scans).await {
            let message = format!("writing the cache: {error}");
            error!(%error, revision, "Cannot persist revision: keeping the last good state");
            self.reporter.report(Outcome::Nack {
                revision,
                error: message.clone(),
            });
            return Err(SessionError::Local(message));
        }
        let (epoch, policies, scans) = (next.epoch.clone(), next.policies.len(), next.scans.len());
        self.state.store(Arc::new(next));
        info!(%epoch, revision, policies, scans, "Applied");
        self.reporter.report(Outcome::Ack);
        Ok(())
    }
}

async fn next(
    stream: &mut Streaming<SyncResponse>,
    deadline: Duration,
) -> Result<Message, SessionError> {
    match timeout(deadline, stream.message()).await {
        Err(_) => Err(SessionError::Dead(deadline)),
        Ok(Err(status)) => Err(SessionError::Status(status)),
        Ok(Ok(None)) => Err(SessionError::Ended),
        Ok(Ok(Some(SyncResponse {
            message: Some(message),
        }))) => Ok(message),
        Ok(Ok(Some(SyncResponse { message: None }))) => {
            Err(SessionError::Protocol("empty message".into()))
        }
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Start(_) => "start",
        Message::SnapshotChunk(_) => "snapshot chunk",
        Message::SnapshotEnd(_) => "snapshot end",
        Message::Delta(_) => "delta",
        Message::Heartbeat(_) => "heartbeat",
    }
}
