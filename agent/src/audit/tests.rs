//! The auditor's rules without an API server: what is judged, what a change of state
//! touches, what is reported, and the queue's coalescing and resync flags.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use kube::core::DynamicObject;
use serde_json::{Value, json};

use portcullis_policy::{
    Severity,
    scan::{ImageIdentity, ScanSummary, SeverityCounts},
};
use portcullis_proto::v1::Violation;

use super::{
    AuditStats,
    judge::{Auditor, ObjectKey},
    objects::{AuditKind, judged_through_owner},
    pending::{Batch, Pending},
};
use crate::state::{AgentState, LoadedPolicy};

const NO_PRIVILEGED: &str = "name: no-privileged\nrules: {resource: {privileged: {}}}\n";
const NO_HIGH: &str = "name: no-high\nrules: {image: {vulnerabilities: {severity: high}}}\n";
const NO_HOST_NETWORK_IN_TEAM_A: &str = "name: no-host-network\nscope: {namespaces: {include: [team-a]}}\nrules: {resource: {hostNamespaces: {}}}\n";

fn state(revision: u64, yaml: &str) -> AgentState {
    let mut policies = BTreeMap::new();
    for mut proto in portcullis_policy::parse_policy_documents(yaml).unwrap() {
        proto.revision = revision;
        let loaded = LoadedPolicy::load(proto).unwrap();
        policies.insert(loaded.proto.name.clone(), Arc::new(loaded));
    }
    AgentState {
        epoch: "e".into(),
        revision,
        policies,
        ..Default::default()
    }
}

fn with_scan(mut state: AgentState, image: &str, cve: &str, severity: Severity) -> AgentState {
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let identity = ImageIdentity {
        repository: repository.into(),
        tags: vec![tag.into()],
        ..Default::default()
    };
    let summary = ScanSummary::new(
        SeverityCounts([0, 0, 0, 1, 0]),
        [(cve, severity, true)],
        [],
        [],
    );
    state.scans.put(image, identity, summary, state.revision);
    state
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn pod(namespace: &str, name: &str, privileged: bool, image: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": image,
            "securityContext": {"privileged": privileged}}]},
        "status": {"phase": "Pending"}
    }))
}

fn deployment(namespace: &str, name: &str, host_network: bool, image: &str) -> DynamicObject {
    object(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"hostNetwork": host_network, "containers": [{"name": "c", "image": image}]}}}
    }))
}

struct Harness {
    auditor: Auditor,
    pending: Arc<Mutex<Pending>>,
    stats: Arc<AuditStats>,
    now: SystemTime,
}

impl Harness {
    fn new() -> Self {
        let pending = Arc::new(Mutex::new(Pending::new("run-1".into())));
        let stats = Arc::new(AuditStats::default());
        let auditor = Auditor::new(
            "c1",
            &["kube-system".to_owned()],
            pending.clone(),
            stats.clone(),
        );
        Self {
            auditor,
            pending,
            stats,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        }
    }

    /// Lists every kind with `objects` and makes the auditor ready under `state`.
    fn listed(state: &AgentState, objects: Vec<(AuditKind, DynamicObject)>) -> Self {
        let mut h = Self::new();
        for kind in AuditKind::ALL {
            h.auditor.relist_begin(kind);
        }
        for (kind, object) in objects {
            h.auditor.apply(kind, object, state, h.now);
        }
        for kind in AuditKind::ALL {
            h.auditor.relist_done(kind, state, h.now);
        }
        assert!(h.auditor.is_ready());
        h
    }

    /// Everything queued since the last drain, as (kind/namespace/name/policy, state).
    fn drain(&self) -> (Batch, Vec<(String, String)>) {
        let mut pending = self.pending.lock().unwrap();
        let batch = pending.batch(10_000, usize::MAX).unwrap_or_default();
        pending.acknowledge(&batch);
        let seen = batch
            .violations
            .iter()
            .map(|v| {
                (
                    format!("{}/{}/{}/{}", v.kind, v.namespace, v.name, v.policy),
                    v.state.clone(),
                )
            })
            .collect();
        (batch, seen)
    }
}

fn pair(key: &str, state: &str) -> (String, String) {
    (key.to_owned(), state.to_owned())
}

#[test]
fn the_first_judgement_is_a_full_resync_of_every_violation() {
    let state = state(1, NO_PRIVILEGED);
    let h = Harness::listed(
        &state,
        vec![
            (AuditKind::Pod, pod("ns", "bad", true, "nginx:1.25")),
            (AuditKind::Pod, pod("ns", "good", false, "nginx:1.25")),
            (
                AuditKind::Pod,
                pod("kube-system", "exempt", true, "nginx:1.25"),
            ),
        ],
    );
    let (batch, seen) = h.drain();
    assert!(batch.resync_start && batch.resync_end, "{batch:?}");
    assert_eq!(seen, vec![pair("Pod/ns/bad/no-privileged", "open")]);
    let v = &batch.violations[0];
    assert_eq!((v.cluster.as_str(), v.uid.as_str()), ("c1", "uid-bad"));
    assert_eq!((v.action.as_str(), v.policy_revision), ("block", 1));
    assert_eq!(v.severity, "none");
    assert_eq!(v.images, ["nginx:1.25"]);
    assert_eq!(
        v.findings[0].path,
        "spec.containers[0].securityContext.privileged"
    );
    assert!(v.first_seen.is_some() && v.last_seen == v.first_seen);
    // The exempt namespace's object is not even kept.
    assert_eq!(h.auditor.len(), 2);
    assert_eq!(h.stats.open.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn nothing_is_judged_before_every_kind_is_listed_and_a_state_is_loaded() {
    let mut h = Harness::new();
    let empty = AgentState::default();
    for kind in AuditKind::ALL {
        h.auditor.relist_begin(kind);
        h.auditor.relist_done(kind, &empty, h.now);
    }
    h.auditor
        .apply(AuditKind::Pod, pod("ns", "bad", true, "x:1"), &empty, h.now);
    assert!(!h.auditor.is_ready());
    assert!(h.pending.lock().unwrap().batch(10, usize::MAX).is_none());
    // The first state arrives: everything is judged at once.
    let loaded = state(1, NO_PRIVILEGED);
    h.auditor.state_changed(&empty, &loaded, h.now);
    assert!(h.auditor.is_ready());
    let (batch, seen) = h.drain();
    assert!(batch.resync_start);
    assert_eq!(seen, vec![pair("Pod/ns/bad/no-privileged", "open")]);
}

#[test]
fn an_object_fixed_or_deleted_resolves_and_an_unchanged_update_reports_nothing() {
    let state = state(1, NO_PRIVILEGED);
    let mut h = Harness::listed(
        &state,
        vec![
            (AuditKind::Pod, pod("ns", "a", true, "x:1")),
            (AuditKind::Pod, pod("ns", "b", true, "x:1")),
        ],
    );
    h.drain();
    // A status-only update: nothing the engine reads changed.
    let mut same = pod("ns", "a", true, "x:1");
    same.data["status"] = json!({"phase": "Running"});
    h.auditor.apply(AuditKind::Pod, same, &state, h.now);
    assert_eq!(h.drain().1, vec![]);
    h.auditor
        .apply(AuditKind::Pod, pod("ns", "a", false, "x:1"), &state, h.now);
    h.auditor
        .delete(AuditKind::Pod, &pod("ns", "b", true, "x:1"), h.now);
    let (batch, seen) = h.drain();
    assert!(!batch.resync_start && !batch.resync_end);
    assert_eq!(
        seen,
        vec![
            pair("Pod/ns/a/no-privileged", "resolved"),
            pair("Pod/ns/b/no-privileged", "resolved"),
        ]
    );
    assert!(batch.violations[0].resolved_time.is_some());
    assert_eq!(h.stats.open.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn owned_pods_and_replica_sets_are_judged_through_their_controller() {
    let owner = |kind: &str, api: &str| json!([{"apiVersion": api, "kind": kind, "name": "o", "uid": "u", "controller": true}]);
    let refs = |v: Value| -> Vec<_> { serde_json::from_value(v).unwrap() };
    assert!(judged_through_owner(
        AuditKind::Pod,
        &refs(owner("ReplicaSet", "apps/v1"))
    ));
    assert!(judged_through_owner(
        AuditKind::Pod,
        &refs(owner("Job", "batch/v1"))
    ));
    assert!(judged_through_owner(
        AuditKind::ReplicaSet,
        &refs(owner("Deployment", "apps/v1"))
    ));
    assert!(judged_through_owner(
        AuditKind::Job,
        &refs(owner("CronJob", "batch/v1"))
    ));
    // A controller the audit does not watch, or an owner that is not the controller.
    assert!(!judged_through_owner(
        AuditKind::Pod,
        &refs(owner("Node", "v1"))
    ));
    assert!(!judged_through_owner(
        AuditKind::Pod,
        &refs(json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "o", "uid": "u"}]))
    ));

    let state = state(1, NO_PRIVILEGED);
    let mut owned = pod("ns", "web-abc", true, "x:1");
    owned.metadata.owner_references = Some(refs(owner("ReplicaSet", "apps/v1")));
    let mut h = Harness::listed(&state, vec![(AuditKind::Pod, owned.clone())]);
    assert_eq!(h.drain().1, vec![]);
    assert_eq!(h.auditor.len(), 0);
    // Orphaned: judged on its own from then on; adopted again: its violation resolves.
    let mut orphan = owned.clone();
    orphan.metadata.owner_references = None;
    h.auditor.apply(AuditKind::Pod, orphan, &state, h.now);
    assert_eq!(
        h.drain().1,
        vec![pair("Pod/ns/web-abc/no-privileged", "open")]
    );
    h.auditor.apply(AuditKind::Pod, owned, &state, h.now);
    assert_eq!(
        h.drain().1,
        vec![pair("Pod/ns/web-abc/no-privileged", "resolved")]
    );
}

#[test]
fn a_policy_change_re_judges_only_the_objects_in_its_scope_or_holding_its_violations() {
    let both = format!("{NO_PRIVILEGED}---\n{NO_HOST_NETWORK_IN_TEAM_A}");
    let old = state(1, &both);
    let h = Harness::listed(
        &old,
        vec![
            (
                AuditKind::Deployment,
                deployment("team-a", "a", true, "x:1"),
            ),
            (
                AuditKind::Deployment,
                deployment("team-b", "b", true, "x:1"),
            ),
            (AuditKind::Pod, pod("team-b", "p", true, "x:1")),
        ],
    );
    h.drain();
    // no-host-network changes (a new revision, same scope): team-a's Deployment only.
    let mut new = old.clone();
    let mut proto = new.policies["no-host-network"].proto.clone();
    proto.revision = 2;
    new.policies.insert(
        "no-host-network".into(),
        Arc::new(LoadedPolicy::load(proto).unwrap()),
    );
    let touched = h.auditor.touched(&old, &new);
    let names: Vec<&str> = touched.iter().map(|k: &Arc<ObjectKey>| &*k.name).collect();
    assert_eq!(names, ["a"]);
    // Its scope widened to team-b: both Deployments (the Pod runs no host network but is in
    // scope too).
    let widened = state(
        3,
        &format!(
            "{NO_PRIVILEGED}---\nname: no-host-network\nrules: {{resource: {{hostNamespaces: {{}}}}}}\n"
        ),
    );
    let mut names: Vec<String> = h
        .auditor
        .touched(
            &new,
            &AgentState {
                epoch: new.epoch.clone(),
                ..widened.clone()
            },
        )
        .iter()
        .map(|k| k.name.to_string())
        .collect();
    names.sort();
    // Every policy of `widened` has a new revision: everything in their scopes.
    assert_eq!(names, ["a", "b", "p"]);
    // Deleted: the objects that held its violations.
    let mut deleted = old.clone();
    deleted.policies.remove("no-host-network");
    let names: Vec<String> = h
        .auditor
        .touched(&old, &deleted)
        .iter()
        .map(|k| k.name.to_string())
        .collect();
    assert_eq!(names, ["a"]);
    // Protection settings or epoch: everything.
    let mut protected = old.clone();
    protected.protection = Some(Default::default());
    assert_eq!(h.auditor.touched(&old, &protected).len(), 3);
}

#[test]
fn a_scan_change_re_judges_the_objects_running_that_image_and_reports_severity() {
    let old = state(1, NO_HIGH);
    let mut h = Harness::listed(
        &old,
        vec![
            (AuditKind::Pod, pod("ns", "uses-nginx", false, "nginx:1.25")),
            (AuditKind::Pod, pod("ns", "uses-redis", false, "redis:7")),
            (
                AuditKind::Deployment,
                deployment("ns", "web", false, "docker.io/library/nginx:1.25"),
            ),
        ],
    );
    h.drain();
    let new = with_scan(
        old.clone(),
        "docker.io/library/nginx:1.25",
        "CVE-2024-0001",
        Severity::Critical,
    );
    let mut names: Vec<String> = h
        .auditor
        .touched(&old, &new)
        .iter()
        .map(|k| k.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["uses-nginx", "web"]);
    h.auditor.state_changed(&old, &new, h.now);
    let (batch, seen) = h.drain();
    assert_eq!(
        seen,
        vec![
            pair("Pod/ns/uses-nginx/no-high", "open"),
            pair("Deployment/ns/web/no-high", "open"),
        ]
    );
    assert_eq!(batch.violations[0].severity, "critical");
    assert_eq!(batch.violations[0].findings[0].cve_ids, ["CVE-2024-0001"]);
    // The same scan again (a new state, same index): nothing touched.
    let again = new.clone();
    assert!(h.auditor.touched(&new, &again).is_empty());
    // The scan deleted: resolved.
    let mut cleaned = new.clone();
    cleaned.scans.remove("docker.io/library/nginx:1.25");
    h.auditor.state_changed(&new, &cleaned, h.now);
    assert_eq!(
        h.drain().1,
        vec![
            pair("Pod/ns/uses-nginx/no-high", "resolved"),
            pair("Deployment/ns/web/no-high", "resolved"),
        ]
    );
}

#[test]
fn a_relist_after_an_expired_watch_resolves_what_it_no_longer_shows() {
    let state = state(1, NO_PRIVILEGED);
    let mut h = Harness::listed(
        &state,
        vec![
            (AuditKind::Pod, pod("ns", "stays", true, "x:1")),
            (AuditKind::Pod, pod("ns", "gone", true, "x:1")),
        ],
    );
    h.drain();
    h.auditor.relist_begin(AuditKind::Pod);
    h.auditor.apply(
        AuditKind::Pod,
        pod("ns", "stays", true, "x:1"),
        &state,
        h.now,
    );
    h.auditor
        .apply(AuditKind::Pod, pod("ns", "new", true, "x:1"), &state, h.now);
    h.auditor.relist_done(AuditKind::Pod, &state, h.now);
    // Nothing for the unchanged one: no duplicate.
    assert_eq!(
        h.drain().1,
        vec![
            pair("Pod/ns/new/no-privileged", "open"),
            pair("Pod/ns/gone/no-privileged", "resolved"),
        ]
    );
    assert_eq!(
        h.stats.relists.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_malformed_object_is_skipped_and_counted_and_keeps_what_it_held() {
    let state = state(1, NO_PRIVILEGED);
    let mut h = Harness::listed(&state, vec![(AuditKind::Pod, pod("ns", "p", true, "x:1"))]);
    h.drain();
    let mut bad = pod("ns", "p", true, "x:1");
    bad.data["spec"]["containers"] = json!("not a list");
    h.auditor.apply(AuditKind::Pod, bad.clone(), &state, h.now);
    h.auditor.apply(AuditKind::Pod, bad, &state, h.now);
    assert_eq!(h.drain().1, vec![]);
    assert_eq!(
        h.stats.malformed.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(h.auditor.len(), 1);
    // A malformed object never seen before is not kept at all.
    let mut other = pod("ns", "q", true, "x:1");
    other.data["spec"] = json!(7);
    h.auditor.apply(AuditKind::Pod, other, &state, h.now);
    assert_eq!(h.auditor.len(), 1);
}

#[test]
fn a_resync_confirms_every_open_violation_and_keeps_first_seen() {
    let state = state(1, NO_PRIVILEGED);
    let mut h = Harness::listed(&state, vec![(AuditKind::Pod, pod("ns", "p", true, "x:1"))]);
    let (first, _) = h.drain();
    let later = h.now + Duration::from_secs(60);
    h.auditor.judge_all(&state, later);
    let (batch, seen) = h.drain();
    assert!(batch.resync_start && batch.resync_end);
    assert_eq!(seen, vec![pair("Pod/ns/p/no-privileged", "open")]);
    assert_eq!(
        batch.violations[0].first_seen,
        first.violations[0].first_seen
    );
    assert_ne!(batch.violations[0].last_seen, first.violations[0].last_seen);
}

fn violation(name: &str, state: &str) -> Violation {
    Violation {
        kind: "Pod".into(),
        namespace: "ns".into(),
        name: name.into(),
        policy: "p".into(),
        state: state.into(),
        ..Default::default()
    }
}

#[test]
fn the_queue_coalesces_per_violation_and_removes_only_what_was_acknowledged() {
    let mut pending = Pending::new("r".into());
    pending.push(violation("a", "open"));
    pending.push(violation("b", "open"));
    pending.push(violation("a", "resolved"));
    assert_eq!(pending.len(), 2);
    let batch = pending.batch(10, usize::MAX).unwrap();
    let order: Vec<_> = batch
        .violations
        .iter()
        .map(|v| (&*v.name, &*v.state))
        .collect();
    assert_eq!(order, [("b", "open"), ("a", "resolved")]);
    // `a` changes while the batch is on its way: its newer state stays queued.
    pending.push(violation("a", "open"));
    pending.acknowledge(&batch);
    assert_eq!(pending.len(), 1);
    let batch = pending.batch(10, usize::MAX).unwrap();
    assert_eq!(batch.violations[0].state, "open");
    // Batches are bounded in count and bytes, and hold at least one.
    let mut pending = Pending::new("r".into());
    for i in 0..10 {
        pending.push(violation(&format!("v{i}"), "open"));
    }
    assert_eq!(pending.batch(3, usize::MAX).unwrap().violations.len(), 3);
    assert_eq!(pending.batch(100, 1).unwrap().violations.len(), 1);
}

#[test]
fn a_resync_starts_with_its_first_batch_and_ends_with_the_one_that_empties_the_queue() {
    let mut pending = Pending::new("r".into());
    assert!(pending.batch(10, usize::MAX).is_none());
    // A cluster without violations still resyncs: one empty batch starts and ends it.
    pending.begin_resync();
    let empty = pending.batch(10, usize::MAX).unwrap();
    assert!(empty.resync_start && empty.resync_end && empty.violations.is_empty());
    pending.acknowledge(&empty);
    assert!(pending.batch(10, usize::MAX).is_none());

    pending.begin_resync();
    for i in 0..5 {
        pending.push(violation(&format!("v{i}"), "open"));
    }
    let first = pending.batch(2, usize::MAX).unwrap();
    assert!(first.resync_start && !first.resync_end);
    pending.acknowledge(&first);
    let second = pending.batch(2, usize::MAX).unwrap();
    assert!(!second.resync_start && !second.resync_end);
    // A newer resync begins before the answer: the old answer cannot end it.
    pending.begin_resync();
    pending.acknowledge(&second);
    let third = pending.batch(10, usize::MAX).unwrap();
    assert!(third.resync_start && third.resync_end);
    assert_eq!(third.violations.len(), 1);
    pending.acknowledge(&third);
    assert!(!pending.resyncing());
}

#[test]
fn the_queue_is_durable_and_what_a_stopped_run_left_is_read_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (mut pending, leftovers) = Pending::open(db.open_tree("q").unwrap(), "run-1".into());
    assert!(leftovers.entries.is_empty());
    pending.push(violation("a", "open"));
    pending.push(violation("b", "open"));
    pending.push(violation("a", "resolved"));
    let batch = pending.batch(1, usize::MAX).unwrap();
    pending.acknowledge(&batch);
    drop(pending);
    // One entry is damaged on disk: dropped and counted, never decoded as something else.
    let tree = db.open_tree("q").unwrap();
    let (first, _) = tree.first().unwrap().unwrap();
    let mut damaged = tree.get(&first).unwrap().unwrap().to_vec();
    *damaged.last_mut().unwrap() ^= 1;
    tree.insert(&first, damaged).unwrap();
    let (mut again, leftovers) = Pending::open(tree.clone(), "run-2".into());
    assert_eq!(leftovers.unreadable, 1);
    assert_eq!(leftovers.entries.len(), 0);

    // What survives a restart: the entries not acknowledged, under their run, oldest first.
    again.push(violation("c", "open"));
    again.push(violation("d", "resolved"));
    drop(again);
    let (third, mut leftovers) = Pending::open(tree.clone(), "run-3".into());
    let (run, sequences, violations) = leftovers.batch(10).unwrap();
    assert_eq!(run, "run-2");
    let names: Vec<_> = violations.iter().map(|v| (&*v.name, &*v.state)).collect();
    assert_eq!(names, [("c", "open"), ("d", "resolved")]);
    leftovers.remove(third.tree(), &sequences);
    assert!(leftovers.entries.is_empty());
    drop(third);
    let (_, leftovers) = Pending::open(tree, "run-4".into());
    assert!(leftovers.entries.is_empty(), "{leftovers:?}");
}

#[test]
fn a_new_epoch_reports_everything_again_as_a_resync() {
    let old = state(1, NO_PRIVILEGED);
    let mut h = Harness::listed(&old, vec![(AuditKind::Pod, pod("ns", "p", true, "x:1"))]);
    h.drain();
    // The same policy at the same revision in a new store: nothing differs but the epoch.
    let mut new = old.clone();
    new.epoch = "e2".into();
    h.auditor.state_changed(&old, &new, h.now);
    let (batch, seen) = h.drain();
    assert!(batch.resync_start && batch.resync_end);
    assert_eq!(seen, vec![pair("Pod/ns/p/no-privileged", "open")]);
}

#[test]
fn the_engine_model_keeps_what_checks_read_and_drops_the_last_applied_copy() {
    let mut p = pod("ns", "p", true, "x:1");
    p.metadata.annotations = Some(
        [
            (
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "x".repeat(100_000),
            ),
            (
                "container.apparmor.security.beta.kubernetes.io/c".to_owned(),
                "unconfined".to_owned(),
            ),
        ]
        .into(),
    );
    let object = super::objects::engine_object(AuditKind::Pod, p).unwrap();
    let annotations = &object.metadata().annotations;
    assert!(
        annotations
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none()
    );
    assert_eq!(
        annotations
            .get("container.apparmor.security.beta.kubernetes.io/c")
            .map(|v| v.as_str()),
        Some("unconfined")
    );
}

#[test]
fn a_queue_grown_past_its_bound_is_replaced_by_a_resync() {
    let state = state(1, NO_PRIVILEGED);
    let mut h = Harness::listed(
        &state,
        vec![(AuditKind::Pod, pod("ns", "keep", true, "x:1"))],
    );
    h.drain();
    *h.pending.lock().unwrap() = Pending::new("run-1".into()).with_max(3);
    // Pods that come and go while the control plane is away: one resolution each.
    for i in 0..4 {
        let name = format!("job-{i}");
        h.auditor
            .apply(AuditKind::Pod, pod("ns", &name, true, "x:1"), &state, h.now);
        h.auditor
            .delete(AuditKind::Pod, &pod("ns", &name, true, "x:1"), h.now);
    }
    let overflowed = {
        let mut pending = h.pending.lock().unwrap();
        let overflowed = pending.take_overflow();
        if overflowed {
            pending.clear();
        }
        overflowed
    };
    assert!(overflowed);
    h.auditor.judge_all(&state, h.now);
    let (batch, seen) = h.drain();
    // Only what is open now, as a resync: the control plane resolves the rest.
    assert!(batch.resync_start && batch.resync_end);
    assert_eq!(seen, vec![pair("Pod/ns/keep/no-privileged", "open")]);
    assert!(!h.pending.lock().unwrap().take_overflow());
}

#[test]
fn a_controlled_pod_with_ephemeral_containers_is_judged_on_its_own() {
    let state = state(1, NO_PRIVILEGED);
    let owner: Vec<_> = serde_json::from_value(json!([{"apiVersion": "apps/v1",
        "kind": "ReplicaSet", "name": "o", "uid": "u", "controller": true}]))
    .unwrap();
    let mut owned = pod("ns", "web-abc", false, "x:1");
    owned.metadata.owner_references = Some(owner);
    let mut h = Harness::listed(&state, vec![(AuditKind::Pod, owned.clone())]);
    assert_eq!(h.auditor.len(), 0);
    // `kubectl debug` adds a privileged ephemeral container to the running Pod.
    owned.data["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox",
        "securityContext": {"privileged": true}}]);
    h.auditor.apply(AuditKind::Pod, owned, &state, h.now);
    assert_eq!(h.auditor.len(), 1);
    assert_eq!(
        h.drain().1,
        vec![pair("Pod/ns/web-abc/no-privileged", "open")]
    );
}
