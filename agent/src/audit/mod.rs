//! Continuous audit (Kubernetes mode, on the replica holding the Lease): the running
//! workloads and Services are watched (list + watch with bookmarks; a watch that expires,
//! 410 Gone, is listed again and what the new listing lacks counts as deleted), judged with
//! the admission engine (`judge`), and the changes of their violations are reported to the
//! control plane (`sender`). Each run — a replica becoming leader — starts with a full resync
//! (replace semantics on the control plane), so a restart, a lost lease or a control plane
//! that lost its state leaves nothing stale and duplicates nothing.

pub mod judge;
pub mod objects;
pub mod pending;
pub mod sender;

#[cfg(test)]
mod sender_tests;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::{StreamExt, stream::SelectAll};
use kube::{
    Api, Client,
    core::DynamicObject,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::{state::StateHandle, sync::status::AgentClient};
use judge::Auditor;
use objects::AuditKind;
use pending::{Pending, new_run};

/// How the audit reports.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub cluster: String,
    pub exempt_namespaces: Vec<String>,
    /// Violations per `ReportViolations` call, and about their encoded bytes.
    pub batch_size: usize,
    pub batch_bytes: usize,
    pub retry_max: Duration,
    /// How often the agent's state is checked for a change to re-judge.
    pub state_check: Duration,
    /// How long a replica whose run was superseded waits before it starts a new one.
    pub superseded_pause: Duration,
    /// With nothing to send for this long, an empty report checks that the control plane
    /// still knows the run (a store restored from a backup does not: it asks for a resync).
    pub run_check: Duration,
}

impl AuditConfig {
    pub fn new(cluster: &str, exempt_namespaces: &[String]) -> Self {
        Self {
            cluster: cluster.to_owned(),
            exempt_namespaces: exempt_namespaces.to_vec(),
            batch_size: portcullis_proto::limits::violation::MAX_PER_REPORT,
            batch_bytes: 2 * 1024 * 1024,
            retry_max: Duration::from_secs(10),
            state_check: Duration::from_millis(100),
            superseded_pause: Duration::from_secs(5),
            run_check: Duration::from_secs(60),
        }
    }
}

/// What the audit did, for metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Objects judged on their own (not through an owner).
    pub objects: AtomicU64,
    /// Open violations.
    pub open: AtomicI64,
    /// Violation changes waiting for the control plane.
    pub pending: AtomicU64,
    /// Judgements made.
    pub judged: AtomicU64,
    /// Watched objects the engine could not read (skipped).
    pub malformed: AtomicU64,
    /// Listings after the first (a watch restarted, e.g. after 410 Gone).
    pub relists: AtomicU64,
    /// Watch errors (retried with backoff).
    pub watch_errors: AtomicU64,
    /// Violation changes the control plane acknowledged, and refused for good.
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
    /// 1 while this replica runs the audit.
    pub running: AtomicU64,
    /// 1 once every kind is listed and everything judged (this run).
    pub ready: AtomicU64,
    /// The last watch error (a missing permission shows here), cleared when the run is ready.
    pub last_error: Mutex<String>,
}

impl AuditStats {
    fn adjust_open(&self, by: i64) {
        self.open.fetch_add(by, Ordering::Relaxed);
    }

    fn set_error(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error.to_owned();
    }

    /// What `/state` shows of the audit.
    pub fn to_json(&self) -> serde_json::Value {
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        serde_json::json!({
            "running": read(&self.running) == 1,
            "ready": read(&self.ready) == 1,
            "objects": read(&self.objects),
            "open": self.open.load(Ordering::Relaxed).max(0),
            "pending": read(&self.pending),
            "judged": read(&self.judged),
            "malformed": read(&self.malformed),
            "relists": read(&self.relists),
            "watchErrors": read(&self.watch_errors),
            "delivered": read(&self.delivered),
            "refused": read(&self.refused),
            "lastError": self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

/// Runs the audit while this replica leads (`leader`), forever.
pub async fn run(
    client: Client,
    db: sled::Db,
    config: AuditConfig,
    state: StateHandle,
    mut leader: watch::Receiver<bool>,
    agent: watch::Receiver<Option<AgentClient>>,
    stats: Arc<AuditStats>,
) {
    loop {
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return;
            }
        }
        let run = new_run();
        info!(%run, "Audit starts: this replica leads");
        stats.running.store(1, Ordering::Relaxed);
        let span = info_span!("audit", %run);
        tokio::select! {
            () = run_once(client.clone(), &db, config.clone(), state.clone(), agent.clone(), stats.clone(), run).instrument(span) => {}
            () = async {
                while *leader.borrow_and_update() {
                    if leader.changed().await.is_err() {
                        break;
                    }
                }
            } => {
                info!("Audit stops: this replica no longer leads");
            }
        }
        stats.running.store(0, Ordering::Relaxed);
        stats.ready.store(0, Ordering::Relaxed);
        stats.open.store(0, Ordering::Relaxed);
        stats.objects.store(0, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type KindEvents = futures::stream::BoxStream<
    'static,
    (
        AuditKind,
        Result<watcher::Event<DynamicObject>, watcher::Error>,
    ),
>;

/// The watches of every audited kind, outside the exempt namespaces, as one stream.
fn watches(client: &Client, exempt: &[String]) -> SelectAll<KindEvents> {
    let selector = exempt
        .iter()
        .map(|n| format!("metadata.namespace!={n}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut all = SelectAll::new();
    for kind in AuditKind::ALL {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
        let config = watcher::Config::default().fields(&selector);
        let stream: KindEvents = watcher(api, config)
            .default_backoff()
            .map(move |event| (kind, event))
            .boxed();
        all.push(stream);
    }
    all
}

async fn run_once(
    client: Client,
    db: &sled::Db,
    config: AuditConfig,
    state: StateHandle,
    agent: watch::Receiver<Option<AgentClient>>,
    stats: Arc<AuditStats>,
    run: String,
) {
    let (pending, leftovers) = match db.open_tree(pending::TREE) {
        Ok(tree) => Pending::open(tree, run),
        Err(error) => {
            // Audited all the same; only a restart before delivery would lose changes, and
            // the next run's resync covers that.
            tracing::error!(%error, "Cannot open the audit outbox: changes are kept in memory only");
            (Pending::new(run), Default::default())
        }
    };
    let pending = Arc::new(Mutex::new(pending));
    let queued = Arc::new(Notify::new());
    let resync = Arc::new(Notify::new());
    let _sender = AbortOnDrop(tokio::spawn(
        sender::run_sender(
            config.cluster.clone(),
            pending.clone(),
            leftovers,
            queued.clone(),
            resync.clone(),
            agent,
            stats.clone(),
            config.clone(),
        )
        .in_current_span(),
    ));
    let mut auditor = Auditor::new(
        &config.cluster,
        &config.exempt_namespaces,
        pending.clone(),
        stats.clone(),
    );
    let mut events = watches(&client, &config.exempt_namespaces);
    let mut current = state.load_full();
    let mut tick = tokio::time::interval(config.state_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error = String::new();
    loop {
        let pushed_before = pending.lock().map(|p| p.pushed()).unwrap_or(0);
        tokio::select! {
            event = events.next() => {
                let Some((kind, event)) = event else {
                    warn!("Audit watches ended");
                    return;
                };
                let now = SystemTime::now();
                match event {
                    Ok(watcher::Event::Init) => auditor.relist_begin(kind),
                    Ok(watcher::Event::InitApply(object) | watcher::Event::Apply(object)) => {
                        auditor.apply(kind, object, &current, now);
                    }
                    Ok(watcher::Event::InitDone) => auditor.relist_done(kind, &current, now),
                    Ok(watcher::Event::Delete(object)) => auditor.delete(kind, &object, now),
                    Err(error) => {
                        stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                        let text = error.to_string();
                        // Logged when it changes: a missing permission would repeat it forever.
                        if text != last_error {
                            warn!(kind = kind.name(), error = %text, "Audit watch failed; retrying with backoff");
                            stats.set_error(&format!("{}: {text}", kind.name()));
                            last_error = text;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let new = state.load_full();
                if !Arc::ptr_eq(&new, &current) {
                    auditor.state_changed(&current, &new, SystemTime::now());
                    current = new;
                }
            }
            () = resync.notified() => {
                auditor.judge_all(&current, SystemTime::now());
            }
        }
        let overflowed = pending.lock().is_ok_and(|mut p| {
            let overflowed = p.take_overflow();
            if overflowed {
                warn!(
                    changes = p.len(),
                    "The audit outbox is full: replacing it with a resync"
                );
                p.clear();
            }
            overflowed
        });
        if overflowed {
            auditor.judge_all(&current, SystemTime::now());
        }
        if auditor.is_ready() && stats.ready.swap(1, Ordering::Relaxed) == 0 {
            stats.set_error("");
            last_error.clear();
        }
        let (pushed, resyncing, len) = pending
            .lock()
            .map(|p| (p.pushed(), p.resyncing(), p.len()))
            .unwrap_or_default();
        stats.pending.store(len as u64, Ordering::Relaxed);
        if pushed != pushed_before || resyncing {
            queued.notify_one();
        }
    }
}
