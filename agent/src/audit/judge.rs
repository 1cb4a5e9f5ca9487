//! The auditor: the watched objects the engine judges, their current violations, and which
//! objects a change touches. Pure and synchronous (the watch loop feeds it), so the re-judging
//! rules are tested without an API server:
//!
//! - an object added or changed is judged again (an update that changed nothing the engine
//!   reads is not);
//! - a policy put or deleted re-judges the objects it applies to, before or after, and those
//!   holding one of its violations;
//! - a scan put or deleted re-judges the objects running an image whose scan it changes;
//! - new protection settings re-judge everything; a new epoch (the control plane's store was
//!   replaced) re-judges everything and reports it as a full resync.
//!
//! Each judgement is diffed against what the object held: only opened, changed and resolved
//! violations go to the queue (`Pending`).

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, atomic::Ordering},
    time::SystemTime,
};

use kube::core::DynamicObject;
use tracing::warn;

use portcullis_engine::{Decision, Object, applicability, evaluate_object};
use portcullis_policy::{Action, Severity};
use portcullis_proto::limits;
use portcullis_proto::v1::{EventFinding, Violation};
use portcullis_proto::words::{ViolationAction, ViolationSeverity, ViolationState};

use super::{
    AuditStats,
    objects::{AuditKind, engine_object, judged_through_owner},
    pending::Pending,
};
use crate::state::AgentState;

/// Malformed objects logged by uid at most; past it they are only counted.
const MAX_LOGGED_MALFORMED: usize = 10_000;

/// A watched object's identity in violations.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: AuditKind,
    pub namespace: Box<str>,
    pub name: Box<str>,
}

/// One open violation as the auditor remembers it: enough to tell a change.
#[derive(Clone, Debug)]
struct Held {
    policy: Box<str>,
    fingerprint: u64,
    first_seen: SystemTime,
}

/// A judged object: what the engine reads of it, and its open violations.
struct Entry {
    uid: Box<str>,
    object: Object,
    /// Its containers' images, once each.
    images: Box<[Box<str>]>,
    held: Vec<Held>,
}

pub struct Auditor {
    cluster: String,
    exempt: Vec<String>,
    objects: HashMap<Arc<ObjectKey>, Entry>,
    /// Image (as written in the pod spec) -> the objects running it.
    by_image: HashMap<Box<str>, HashSet<Arc<ObjectKey>>>,
    /// Kinds being listed again (after a restart of their watch, e.g. a 410), with the
    /// objects the new listing has shown so far.
    relisting: HashMap<AuditKind, HashSet<Arc<ObjectKey>>>,
    /// Kinds whose first listing is complete.
    listed: HashSet<AuditKind>,
    /// Judging starts once every kind is listed and the agent holds a state.
    ready: bool,
    malformed_logged: HashSet<Box<str>>,
    pending: Arc<Mutex<Pending>>,
    stats: Arc<AuditStats>,
}

impl Auditor {
    pub fn new(
        cluster: &str,
        exempt: &[String],
        pending: Arc<Mutex<Pending>>,
        stats: Arc<AuditStats>,
    ) -> Self {
        Self {
            cluster: cluster.to_owned(),
            exempt: exempt.to_vec(),
            objects: HashMap::new(),
            by_image: HashMap::new(),
            relisting: HashMap::new(),
            listed: HashSet::new(),
            ready: false,
            malformed_logged: HashSet::new(),
            pending,
            stats,
        }
    }

    /// Whether the first judgement of everything has happened.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Objects judged on their own (not through an owner).
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The watch of `kind` (re)starts listing.
    pub fn relist_begin(&mut self, kind: AuditKind) {
        if self.listed.contains(&kind) {
            self.stats.relists.fetch_add(1, Ordering::Relaxed);
        }
        self.relisting.insert(kind, HashSet::new());
    }

    /// The listing of `kind` is complete: what it did not show is gone.
    pub fn relist_done(&mut self, kind: AuditKind, state: &AgentState, now: SystemTime) {
        let seen = self.relisting.remove(&kind).unwrap_or_default();
        let gone: Vec<Arc<ObjectKey>> = self
            .objects
            .keys()
            .filter(|k| k.kind == kind && !seen.contains(*k))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for key in gone {
            self.remove(&key, now, &mut out);
        }
        self.push(out);
        self.listed.insert(kind);
        self.maybe_ready(state, now);
    }

    /// Starts judging once every kind is listed and a state is loaded: everything is judged
    /// and reported as a full resync.
    pub fn maybe_ready(&mut self, state: &AgentState, now: SystemTime) {
        if !self.ready
            && state.is_loaded()
            && AuditKind::ALL.iter().all(|k| self.listed.contains(k))
        {
            self.ready = true;
            self.judge_all(state, now);
            tracing::info!(
                objects = self.objects.len(),
                open = self.stats.open.load(Ordering::Relaxed),
                "Audit judged every object: reporting a full resync"
            );
        }
    }

    /// Judges every object again and reports every open violation as a full resync (at
    /// start, and when the control plane asks for one).
    pub fn judge_all(&mut self, state: &AgentState, now: SystemTime) {
        if !self.ready {
            return;
        }
        let keys: Vec<Arc<ObjectKey>> = self.objects.keys().cloned().collect();
        let mut out = Vec::new();
        for key in &keys {
            self.judge(key, state, now, true, &mut out);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.begin_resync();
        for violation in out {
            pending.push(violation);
        }
    }

    /// An object was added or changed (`listing`: seen by a listing).
    pub fn apply(
        &mut self,
        kind: AuditKind,
        object: DynamicObject,
        state: &AgentState,
        now: SystemTime,
    ) {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        if self.exempt.contains(&namespace) {
            return;
        }
        let key = Arc::new(ObjectKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        });
        if let Some(seen) = self.relisting.get_mut(&kind) {
            seen.insert(key.clone());
        }
        let owners = object.metadata.owner_references.as_deref().unwrap_or(&[]);
        let mut out = Vec::new();
        // Ephemeral containers (`kubectl debug`) are added to a running Pod, never to its
        // controller's template: such a Pod is judged on its own.
        let debugged = kind == AuditKind::Pod
            && object.data["spec"]["ephemeralContainers"]
                .as_array()
                .is_some_and(|c| !c.is_empty());
        if judged_through_owner(kind, owners) && !debugged {
            self.remove(&key, now, &mut out);
            self.push(out);
            return;
        }
        let uid: Box<str> = object.metadata.uid.clone().unwrap_or_default().into();
        let parsed = match engine_object(kind, object) {
            Ok(parsed) => parsed,
            Err(error) => {
                // Skipped: what it held stays (it is not known to be fixed).
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                if self.malformed_logged.len() < MAX_LOGGED_MALFORMED
                    && self.malformed_logged.insert(uid.clone())
                {
                    warn!(kind = kind.name(), namespace = %key.namespace, name = %key.name, %uid, %error, "Audit skips an object the engine cannot read");
                } else if self.malformed_logged.len() >= MAX_LOGGED_MALFORMED {
                    tracing::debug!(kind = kind.name(), %uid, "Audit skips a malformed object");
                }
                return;
            }
        };
        self.malformed_logged.remove(&uid);
        let held = match self.objects.get(&key) {
            Some(entry) if entry.uid == uid && entry.object == parsed => return,
            Some(entry) if entry.uid == uid => entry.held.clone(),
            // A new object, or a new one under an old name: what the old one held is diffed
            // against the new one's judgement.
            Some(entry) => entry.held.clone(),
            None => Vec::new(),
        };
        self.unindex(&key);
        let images: Box<[Box<str>]> = match &parsed {
            Object::Workload(workload) => {
                let mut seen = HashSet::new();
                workload
                    .pod
                    .images()
                    .filter(|(_, image)| seen.insert(*image))
                    .map(|(_, image)| image.into())
                    .collect()
            }
            Object::Service(_) => Box::default(),
        };
        for image in &images {
            self.by_image
                .entry(image.clone())
                .or_default()
                .insert(key.clone());
        }
        self.objects.insert(
            key.clone(),
            Entry {
                uid,
                object: parsed,
                images,
                held,
            },
        );
        self.stats
            .objects
            .store(self.objects.len() as u64, Ordering::Relaxed);
        if self.ready {
            self.judge(&key, state, now, false, &mut out);
            self.push(out);
        }
    }

    /// An object was deleted.
    pub fn delete(&mut self, kind: AuditKind, object: &DynamicObject, now: SystemTime) {
        let key = ObjectKey {
            kind,
            namespace: object.metadata.namespace.clone().unwrap_or_default().into(),
            name: object.metadata.name.clone().unwrap_or_default().into(),
        };
        let mut out = Vec::new();
        self.remove(&key, now, &mut out);
        self.push(out);
    }

    /// The agent's state changed from `old` to `new`: re-judges what the change touches.
    pub fn state_changed(&mut self, old: &AgentState, new: &AgentState, now: SystemTime) {
        if !self.ready {
            self.maybe_ready(new, now);
            return;
        }
        if old.epoch != new.epoch {
            // The control plane's store was replaced (restored, or rebuilt): what it knew of
            // this cluster's violations may be gone, so everything is reported again.
            self.judge_all(new, now);
            return;
        }
        let touched = self.touched(old, new);
        let mut out = Vec::new();
        for key in &touched {
            self.judge(key, new, now, false, &mut out);
        }
        self.push(out);
    }

    /// The objects a change of state touches (see the module's rules).
    pub fn touched(&self, old: &AgentState, new: &AgentState) -> Vec<Arc<ObjectKey>> {
        if old.epoch != new.epoch || old.protection != new.protection {
            return self.objects.keys().cloned().collect();
        }
        let changed: Vec<&str> = changed_policies(old, new);
        let mut touched: HashSet<Arc<ObjectKey>> = HashSet::new();
        if !changed.is_empty() {
            for (key, entry) in &self.objects {
                let target = target(&self.cluster, key, &entry.object);
                let hit = changed.iter().any(|name| {
                    entry.held.iter().any(|h| &*h.policy == *name)
                        || [old, new].iter().any(|state| {
                            state.policies.get(*name).is_some_and(|p| {
                                applicability::applies(&p.policy, &target).is_applicable()
                            })
                        })
                });
                if hit {
                    touched.insert(key.clone());
                }
            }
        }
        if !scans_equal(old, new) {
            for (image, keys) in &self.by_image {
                let before = old
                    .scans
                    .lookup_scan(image)
                    .map(|s| (&*s.id, s.revision, s));
                let after = new
                    .scans
                    .lookup_scan(image)
                    .map(|s| (&*s.id, s.revision, s));
                let same = match (before, after) {
                    (None, None) => true,
                    (Some(a), Some(b)) => std::ptr::eq(a.2, b.2) || (a.0, a.1) == (b.0, b.1),
                    _ => false,
                };
                if !same {
                    touched.extend(keys.iter().cloned());
                }
            }
        }
        let mut touched: Vec<_> = touched.into_iter().collect();
        touched.sort();
        touched
    }

    /// Judges one object and queues what changed in its violations (`confirm`: queue every
    /// open one, changed or not, as a resync does).
    fn judge(
        &mut self,
        key: &Arc<ObjectKey>,
        state: &AgentState,
        now: SystemTime,
        confirm: bool,
        out: &mut Vec<Violation>,
    ) {
        let Some(entry) = self.objects.get_mut(key) else {
            return;
        };
        let target = target(&self.cluster, key, &entry.object);
        let decision = evaluate_object(
            &entry.object,
            &target,
            state.policies.values().map(|p| &p.policy),
            &state.scans,
        );
        self.stats.judged.fetch_add(1, Ordering::Relaxed);
        let found = violations(&self.cluster, key, &entry.uid, &decision, state);
        let mut held = Vec::with_capacity(found.len());
        for mut violation in found {
            let fingerprint = fingerprint(&violation);
            let before = entry.held.iter().find(|h| *h.policy == violation.policy);
            let first_seen = before.map_or(now, |h| h.first_seen);
            if confirm || before.is_none_or(|h| h.fingerprint != fingerprint) {
                violation.first_seen = Some(portcullis_runtime::clock::timestamp(first_seen));
                violation.last_seen = Some(portcullis_runtime::clock::timestamp(now));
                out.push(violation.clone());
            }
            held.push(Held {
                policy: violation.policy.into(),
                fingerprint,
                first_seen,
            });
        }
        for gone in entry
            .held
            .iter()
            .filter(|h| !held.iter().any(|n| n.policy == h.policy))
        {
            out.push(resolved(&self.cluster, key, &entry.uid, &gone.policy, now));
        }
        let open_before = entry.held.len() as i64;
        let open_after = held.len() as i64;
        entry.held = held;
        self.stats.adjust_open(open_after - open_before);
    }

    /// Forgets an object, resolving what it held.
    fn remove(&mut self, key: &ObjectKey, now: SystemTime, out: &mut Vec<Violation>) {
        self.unindex(key);
        if let Some(entry) = self.objects.remove(key) {
            for held in &entry.held {
                out.push(resolved(&self.cluster, key, &entry.uid, &held.policy, now));
            }
            self.stats.adjust_open(-(entry.held.len() as i64));
            self.stats
                .objects
                .store(self.objects.len() as u64, Ordering::Relaxed);
        }
    }

    fn unindex(&mut self, key: &ObjectKey) {
        let Some(entry) = self.objects.get(key) else {
            return;
        };
        for image in &entry.images {
            if let Some(keys) = self.by_image.get_mut(image) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_image.remove(image);
                }
            }
        }
    }

    fn push(&self, out: Vec<Violation>) {
        if out.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for violation in out {
            pending.push(violation);
        }
    }
}

/// `object` under `key` as the engine's scopes see it.
fn target<'a>(
    cluster: &'a str,
    key: &'a ObjectKey,
    object: &'a Object,
) -> applicability::Target<'a> {
    applicability::Target {
        cluster,
        namespace: &key.namespace,
        kind: key.kind.engine_kind(),
        name: &key.name,
        labels: &object.metadata().labels,
    }
}

/// Policies put, changed or deleted between `old` and `new`.
fn changed_policies<'a>(old: &'a AgentState, new: &'a AgentState) -> Vec<&'a str> {
    let mut changed: Vec<&str> = new
        .policies
        .iter()
        .filter(|(name, p)| {
            old.policies
                .get(*name)
                .is_none_or(|o| !Arc::ptr_eq(o, p) && o.proto.revision != p.proto.revision)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    changed.extend(
        old.policies
            .keys()
            .filter(|name| !new.policies.contains_key(*name))
            .map(String::as_str),
    );
    changed
}

/// Whether two states hold the same scans (cheap: the same index, or both empty).
fn scans_equal(old: &AgentState, new: &AgentState) -> bool {
    old.scans == new.scans
}

/// One violation per policy with findings in `decision`.
fn violations(
    cluster: &str,
    key: &ObjectKey,
    uid: &str,
    decision: &Decision,
    state: &AgentState,
) -> Vec<Violation> {
    let mut out: Vec<(Violation, Severity, bool)> = Vec::new();
    for finding in &decision.findings {
        if out
            .last()
            .is_none_or(|(v, _, _)| v.policy != finding.policy)
        {
            let violation = Violation {
                cluster: cluster.to_owned(),
                kind: key.kind.name().to_owned(),
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
                uid: uid.to_owned(),
                policy: finding.policy.clone(),
                policy_revision: state
                    .policies
                    .get(&finding.policy)
                    .map_or(0, |p| p.proto.revision),
                action: ViolationAction::Alert.as_str().into(),
                images: decision.images.clone(),
                state: ViolationState::Open.as_str().into(),
                ..Default::default()
            };
            out.push((violation, Severity::Unknown, false));
        }
        let Some((violation, severity, any)) = out.last_mut() else {
            continue;
        };
        if finding.action == Action::Block {
            violation.action = ViolationAction::Block.as_str().into();
        }
        let f = &finding.finding;
        if !f.ids.is_empty() {
            let summary = state.scans.lookup(&f.value);
            for id in &f.ids {
                let found = summary
                    .and_then(|s| s.vulnerability(id))
                    .map_or(Severity::Unknown, |v| v.severity);
                if !*any || rank(found) > rank(*severity) {
                    *severity = found;
                }
                *any = true;
            }
        }
        violation.findings.push(EventFinding {
            rule: f.rule.clone(),
            path: f.path.clone(),
            value: f.value.clone(),
            message: f.message.clone(),
            cve_ids: f.ids.clone(),
        });
    }
    out.into_iter()
        .map(|(mut violation, severity, any)| {
            violation.severity = if any {
                severity_word(severity)
            } else {
                ViolationSeverity::None
            }
            .as_str()
            .into();
            if limits::fit_violation(&mut violation) {
                warn!(kind = %violation.kind, namespace = %violation.namespace, name = %violation.name, policy = %violation.policy, "Violation over the control plane's limits: long fields cut, extra findings counted");
            }
            violation
        })
        .collect()
}

fn rank(severity: Severity) -> u8 {
    match severity {
        Severity::Unknown => 0,
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

fn severity_word(severity: Severity) -> ViolationSeverity {
    match severity {
        Severity::Unknown => ViolationSeverity::Unknown,
        Severity::Low => ViolationSeverity::Low,
        Severity::Medium => ViolationSeverity::Medium,
        Severity::High => ViolationSeverity::High,
        Severity::Critical => ViolationSeverity::Critical,
    }
}

/// What a report of a violation says, times aside.
fn fingerprint(violation: &Violation) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    prost::Message::encode_to_vec(violation).hash(&mut hasher);
    hasher.finish()
}

/// The report that `policy`'s violation on `key` ended at `now`.
fn resolved(cluster: &str, key: &ObjectKey, uid: &str, policy: &str, now: SystemTime) -> Violation {
    let time = portcullis_runtime::clock::timestamp(now);
    Violation {
        cluster: cluster.to_owned(),
        kind: key.kind.name().to_owned(),
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
        uid: uid.to_owned(),
        policy: policy.to_owned(),
        state: ViolationState::Resolved.as_str().into(),
        last_seen: Some(time),
        resolved_time: Some(time),
        ..Default::default()
    }
}
