//! The audit store: reports (`reports`), and what operators read (`reads`).

use portcullis_proto::v1::{Cluster, ReportViolationsRequest};

use super::*;

mod reads;
mod reports;

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

async fn mk_audit(clusters: &[&str]) -> (Arc<ViolationStore>, Arc<Store>, tempfile::TempDir) {
    let (store, dir) = crate::store::test_support::temp_store();
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
    let audit = ViolationStore::open(store.clone(), AuditSettings::default()).unwrap();
    (Arc::new(audit), store, dir)
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

fn list_all(audit: &ViolationStore, filter: ViolationFilter) -> Vec<Violation> {
    audit.list(&filter, usize::MAX, None).unwrap().violations
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
