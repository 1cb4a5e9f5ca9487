//! The audit store: reports (`reports`), what operators read (`reads`), and replicas sharing
//! one PostgreSQL database (`replicas`). The behavioural tests run on both backends
//! (`on_each_backend`): sled in a temporary dir, then PostgreSQL in a fresh database of the
//! test binary's private server (skipped, saying why, when PostgreSQL is not installed).

use std::future::Future;

use portcullis_proto::v1::{Cluster, ReportViolationsRequest};
use portcullis_testkit::fresh_database;

use super::*;
use crate::store::{postgres::PgSettings, test_support::reopen};

mod reads;
mod replicas;
mod reports;

/// A store (a replica) on PostgreSQL at `url`.
async fn connect(url: &str) -> Store {
    Store::connect_postgres(&PgSettings::new(url))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// An audit store and the store it is on, on either backend.
struct Fixture {
    audit: Arc<ViolationStore>,
    store: Arc<Store>,
    /// The database's URL on PostgreSQL.
    url: Option<String>,
    /// The sled data dir, or the replicas' local dirs.
    dir: tempfile::TempDir,
    /// Times the data was opened (each PostgreSQL replica gets a local dir of its own).
    opened: u32,
}

impl Fixture {
    /// A sled store in a new temporary dir, with `clusters` registered.
    async fn sled(clusters: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        Self::with_clusters(store, None, dir, clusters).await
    }

    /// A store on the PostgreSQL database at `url`, with `clusters` registered.
    async fn postgres(url: &str, clusters: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = connect(url).await;
        let fixture = Self::with_clusters(store, Some(url.to_owned()), dir, clusters).await;
        assert!(
            matches!(fixture.audit.backend, Backend::Postgres(_)),
            "a PostgreSQL store keeps its violations in PostgreSQL"
        );
        fixture
    }

    async fn with_clusters(
        store: Store,
        url: Option<String>,
        dir: tempfile::TempDir,
        clusters: &[&str],
    ) -> Self {
        let store = Arc::new(store);
        for (i, name) in clusters.iter().enumerate() {
            let cluster = Cluster {
                name: name.to_string(),
                ..Default::default()
            };
            store
                .register_cluster(cluster, [i as u8; 32])
                .await
                .unwrap();
        }
        let audit = ViolationStore::open(store.clone(), AuditSettings::default())
            .await
            .unwrap();
        Self {
            audit: Arc::new(audit),
            store,
            url,
            dir,
            opened: 1,
        }
    }

    /// The same data opened again, as after a restart.
    async fn reopen(self) -> Self {
        let Self {
            audit,
            store,
            url,
            dir,
            opened,
        } = self;
        drop(audit);
        drop(store);
        let store = match &url {
            None => reopen(dir.path()),
            Some(url) => connect(url).await,
        };
        let store = Arc::new(store);
        let audit = ViolationStore::open(store.clone(), AuditSettings::default())
            .await
            .unwrap();
        Self {
            audit: Arc::new(audit),
            store,
            url,
            dir,
            opened: opened + 1,
        }
    }

    fn agent<'a>(&'a self, cluster: &'a str) -> Agent<'a> {
        Agent {
            audit: &self.audit,
            cluster,
        }
    }

    /// The clusters that have a stored audit run, in order.
    async fn runs(&self) -> Vec<String> {
        match &self.audit.backend {
            Backend::Sled(sled) => sled
                .tree()
                .iter()
                .keys()
                .map(Result::unwrap)
                .filter_map(|key| record::run_cluster(&key).ok())
                .collect(),
            Backend::Postgres(_) => self
                .sql("SELECT cluster FROM audit_runs ORDER BY cluster")
                .await
                .iter()
                .map(|row| String::from_utf8(row.get(0)).unwrap())
                .collect(),
        }
    }

    /// How many violation records are stored, whatever their state.
    async fn records(&self) -> usize {
        match &self.audit.backend {
            Backend::Sled(sled) => sled.tree().scan_prefix(record::all_violations()).count(),
            Backend::Postgres(_) => self.sql("SELECT key FROM violations").await.len(),
        }
    }

    /// Runs `sql` on the PostgreSQL database.
    async fn sql(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let pool = self.store.postgres_pool().expect("a PostgreSQL store");
        pool.get().await.unwrap().query(sql, &[]).await.unwrap()
    }

    /// The sled tree of a sled fixture.
    fn tree(&self) -> &::sled::Tree {
        match &self.audit.backend {
            Backend::Sled(sled) => sled.tree(),
            Backend::Postgres(_) => panic!("not a sled store"),
        }
    }
}

/// Runs `test` on a sled store, then on a PostgreSQL one (in a fresh database; skipped, saying
/// why, without PostgreSQL), each with `clusters` registered.
async fn on_each_backend<F, Fut>(name: &str, clusters: &[&str], test: F)
where
    F: Fn(Fixture) -> Fut,
    Fut: Future<Output = ()>,
{
    test(Fixture::sled(clusters).await).await;
    if let Some(url) = fresh_database(name) {
        test(Fixture::postgres(&url, clusters).await).await;
    }
}

/// The id of the `n`th audit run (later runs sort after earlier ones).
fn run(n: u16) -> String {
    format!("0190f3a0-{n:04x}-7000-8000-000000000000")
}

fn secs(s: i64) -> Option<pbjson_types::Timestamp> {
    Some(pbjson_types::Timestamp {
        seconds: s,
        nanos: 0,
    })
}

fn mk_open(name: &str, policy: &str) -> Violation {
    Violation {
        kind: "Deployment".into(),
        namespace: "ns".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        policy: policy.into(),
        policy_revision: 1,
        action: "block".into(),
        severity: "high".into(),
        state: "open".into(),
        images: vec![format!("registry.example.com/{name}:1")],
        first_seen: secs(1_700_000_000),
        last_seen: secs(1_700_000_100),
        ..Default::default()
    }
}

fn mk_resolved(name: &str, policy: &str) -> Violation {
    Violation {
        kind: "Deployment".into(),
        namespace: "ns".into(),
        name: name.into(),
        policy: policy.into(),
        state: "resolved".into(),
        resolved_time: secs(1_700_000_200),
        ..Default::default()
    }
}

/// A cluster's agent: reports as it sends them, through validation.
struct Agent<'a> {
    audit: &'a Arc<ViolationStore>,
    cluster: &'a str,
}

impl Agent<'_> {
    async fn report(
        &self,
        run: &str,
        (resync_start, resync_end): (bool, bool),
        violations: Vec<Violation>,
    ) -> Result<Reported, AuditError> {
        let request = ReportViolationsRequest {
            cluster: self.cluster.into(),
            run: run.into(),
            resync_start,
            resync_end,
            violations,
        };
        let report = validate_report(self.cluster, request).unwrap();
        self.audit.report(report).await
    }
}

const PLAIN: (bool, bool) = (false, false);
const START: (bool, bool) = (true, false);
const END: (bool, bool) = (false, true);
const WHOLE: (bool, bool) = (true, true);

async fn list_all(audit: &ViolationStore, filter: ViolationFilter) -> Vec<Violation> {
    audit
        .list(&filter, usize::MAX, None)
        .await
        .unwrap()
        .violations
}

fn names(violations: &[Violation]) -> Vec<(String, String)> {
    violations
        .iter()
        .map(|v| (v.name.clone(), v.state.clone()))
        .collect()
}

fn open_only() -> ViolationFilter {
    ViolationFilter {
        state: "open".into(),
        ..Default::default()
    }
}
