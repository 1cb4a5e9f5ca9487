//! The admission engine: `evaluate(input, cluster, policies, scans) -> Decision`. Which
//! policies apply (scope, minus whitelisted namespaces and workloads), every finding of their
//! rules (field path, offending value, message), minus findings about containers that run a
//! whitelisted image, and the outcome: any finding whose action is `block` blocks; `alert`
//! findings admit with warnings. A finding's action is its policy's, lowered to `alert` where
//! the rule says so (`unscanned: alert`). Findings come in a deterministic order: policy, then
//! path, then rule. Pure and synchronous: the webhook calls it on its hot path, the CLI offline.
//!
//! Also what it reads and checks with: the Kubernetes object model (`k8s`), the resource
//! controls, Pod Security Standards, image hygiene and applicability. The policy model comes
//! from `portcullis-policy` without its proto conversions: the engine has no wire types.

pub mod applicability;
pub mod controls;
pub mod hygiene;
pub mod k8s;
pub mod pss;

mod cache;
mod object;
mod scans;
mod verdict;

pub use object::Object;
pub use scans::{IndexedScan, ScanIndex};
pub use verdict::{ImageVerdict, image_verdict};

// The policy model, named at the crate root as where it was written (`crate::Kind`).
#[allow(unused_imports)]
use portcullis_policy::*;

use crate::{
    Action, Finding, Kind, Policy,
    applicability::{Applicability, Target},
    k8s::{ContainerPath, PodFinding},
};
use cache::PodCache;
use scans::ContainerScans;

/// The admission operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    Other,
}

impl Operation {
    pub fn parse(text: &str) -> Self {
        match text {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            _ => Operation::Other,
        }
    }
}

/// One admission request as the engine needs it (objects as raw JSON).
#[derive(Clone, Copy, Debug)]
pub struct AdmissionInput<'a> {
    pub operation: Operation,
    /// `request.kind.kind`.
    pub kind: &'a str,
    pub sub_resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub object: Option<&'a str>,
    pub old_object: Option<&'a str>,
}

/// What the request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    /// Admitted with warnings.
    Alert,
    Block,
    /// The object does not fit its kind.
    Invalid(String),
}

/// A finding and the policy it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFinding {
    pub policy: String,
    /// What this finding does: the policy's action, or `alert` where the rule only alerts
    /// (`unscanned: alert` in a `block` policy). A rule never raises an `alert` policy to
    /// `block`. The outcome, warnings and audit annotations all follow this, not the policy.
    pub action: Action,
    pub finding: Finding,
}

impl Outcome {
    /// The outcome in one word: `allow`, `alert`, `block` or `invalid`.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Alert => "alert",
            Outcome::Block => "block",
            Outcome::Invalid(_) => "invalid",
        }
    }
}

/// The engine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub findings: Vec<PolicyFinding>,
    /// Why no policy was evaluated at all (DELETE, unknown kind, unchanged UPDATE, ...).
    pub skipped: Option<&'static str>,
    /// The images of the object's containers, once each in pod-spec order; filled only when
    /// there are findings (for events), empty otherwise.
    pub images: Vec<String>,
}

impl Decision {
    fn skipped(reason: &'static str) -> Self {
        Self {
            outcome: Outcome::Allow,
            findings: Vec::new(),
            skipped: Some(reason),
            images: Vec::new(),
        }
    }

    /// The policies with findings, in order, once each.
    pub fn policy_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.findings.iter().map(|f| f.policy.as_str()).collect();
        names.dedup();
        names
    }

    /// The policies with findings whose action is `action`.
    pub fn policy_names_with(&self, action: Action) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.action == action)
            .map(|f| f.policy.as_str())
            .collect();
        names.dedup();
        names
    }
}

/// Whether the engine evaluates this request at all, and the object if it does.
pub enum Prepared {
    Evaluate { kind: Kind, object: Object },
    Skip(&'static str),
    Invalid(String),
}

/// Parses what the request needs: DELETE and CONNECT, subresources other than ephemeral
/// containers, and unknown kinds are not evaluated; an UPDATE that changed nothing the checks
/// read is admitted.
pub fn prepare(input: &AdmissionInput<'_>) -> Prepared {
    match input.operation {
        Operation::Create | Operation::Update => {}
        Operation::Delete => return Prepared::Skip("DELETE is not evaluated"),
        Operation::Connect => return Prepared::Skip("CONNECT is not evaluated"),
        Operation::Other => return Prepared::Skip("operation is not evaluated"),
    }
    if !input.sub_resource.is_empty() && input.sub_resource != "ephemeralcontainers" {
        return Prepared::Skip("subresource is not evaluated");
    }
    let Some(kind) = Kind::from_name(input.kind) else {
        return Prepared::Skip("kind is not protected");
    };
    let Some(raw) = input.object else {
        return Prepared::Invalid("request.object: required for CREATE and UPDATE".into());
    };
    let object = match Object::parse(kind, raw) {
        Ok(object) => object,
        Err(error) => return Prepared::Invalid(error.to_string()),
    };
    if input.operation == Operation::Update
        && let Some(old) = input
            .old_object
            .and_then(|raw| Object::parse(kind, raw).ok())
        && !object.checked_parts_differ(&old)
    {
        return Prepared::Skip("UPDATE changed no pod spec, image or Service spec");
    }
    Prepared::Evaluate { kind, object }
}

/// Decides a request against `policies` for `cluster`; image rules read `scans` (an image
/// the index does not hold is unscanned).
pub fn evaluate<'p>(
    input: &AdmissionInput<'_>,
    cluster: &str,
    policies: impl IntoIterator<Item = &'p Policy>,
    scans: &ScanIndex,
) -> Decision {
    match prepare(input) {
        Prepared::Skip(reason) => Decision::skipped(reason),
        Prepared::Invalid(reason) => Decision {
            outcome: Outcome::Invalid(reason),
            findings: Vec::new(),
            skipped: None,
            images: Vec::new(),
        },
        Prepared::Evaluate { kind, object } => {
            let target = Target {
                cluster,
                namespace: input.namespace,
                kind,
                name: input.name,
                labels: &object.metadata().labels,
            };
            evaluate_object(&object, &target, policies, scans)
        }
    }
}

/// Decides a parsed object (the part of `evaluate` after parsing).
pub fn evaluate_object<'p>(
    object: &Object,
    target: &Target<'_>,
    policies: impl IntoIterator<Item = &'p Policy>,
    scans: &ScanIndex,
) -> Decision {
    let mut findings = Vec::new();
    let mut container_scans = ContainerScans::new(scans);
    let mut pod_cache = PodCache::default();
    // One policy's findings at a time (reused: most policies have none).
    let mut found = Vec::new();
    for policy in policies {
        if !applicability::applies(policy, target).is_applicable() {
            continue;
        }
        check_policy(
            policy,
            object,
            target.cluster,
            &mut container_scans,
            &mut pod_cache,
            &mut found,
        );
        if !found.is_empty() {
            findings.extend(found.drain(..).map(|(pod_finding, action)| PolicyFinding {
                policy: policy.name.clone(),
                action,
                finding: pod_finding.finding,
            }));
        }
    }
    findings.sort_by(|a, b| {
        (&a.policy, &a.finding.path, &a.finding.rule).cmp(&(
            &b.policy,
            &b.finding.path,
            &b.finding.rule,
        ))
    });
    let outcome = outcome_of(&findings);
    let mut images = Vec::new();
    if let (false, Object::Workload(workload)) = (findings.is_empty(), object) {
        // Once each, in pod-spec order: a set of those seen, not a scan of the list per image
        // (a hostile pod may hold tens of thousands).
        let mut seen = std::collections::HashSet::new();
        for (_, image) in workload.pod.images() {
            if seen.insert(image) {
                images.push(image.to_owned());
            }
        }
    }
    Decision {
        outcome,
        findings,
        skipped: None,
        images,
    }
}

/// Block if any finding blocks, alert if there are findings, else allow.
fn outcome_of(findings: &[PolicyFinding]) -> Outcome {
    if findings.iter().any(|f| f.action == Action::Block) {
        Outcome::Block
    } else if findings.is_empty() {
        Outcome::Allow
    } else {
        Outcome::Alert
    }
}

/// Every finding of one applicable policy with its action, without those about whitelisted
/// containers, into `found` (empty on entry). Always inlined into the loop over policies: as
/// a call, saving and restoring its registers for each of fifty policies cost ~2,400
/// instructions per admission.
#[inline(always)]
fn check_policy<'o, 'p>(
    policy: &'p Policy,
    object: &'o Object,
    cluster: &str,
    container_scans: &mut ContainerScans<'_>,
    pod_cache: &mut PodCache<'o, 'p>,
    found: &mut Vec<(PodFinding, Action)>,
) {
    let action = policy.action;
    match object {
        Object::Workload(workload) => {
            let pod = &workload.pod;
            if let Some(resource) = &policy.rules.resource {
                if let Some(rule) = &resource.pod_security {
                    let pss = pod_cache.pod_security(rule.level, rule.version, pod);
                    found.extend(pss.iter().cloned().map(|f| (f, action)));
                }
                let controls = pod_cache.controls(policy.fingerprints.resource, resource, pod);
                found.extend(controls.iter().cloned().map(|f| (f, action)));
            }
            if let Some(image) = &policy.rules.image {
                let reads_scans = scans::reads_scans(image);
                if hygiene::has_rules(image) {
                    let hash = policy.fingerprints.image;
                    let findings = pod_cache.hygiene(hash, image, pod).to_vec();
                    for (ordinal, finding) in findings {
                        let container = pod_cache.images(pod)[ordinal].path;
                        let finding = PodFinding {
                            container: Some(container),
                            finding,
                        };
                        found.push((finding, action));
                    }
                }
                if reads_scans {
                    for (ordinal, entry) in pod_cache.images(pod).iter().enumerate() {
                        let (path, written) = (entry.path, entry.subject.image);
                        let at = |finding| PodFinding {
                            container: Some(path),
                            finding,
                        };
                        let scan = container_scans.get(pod, ordinal);
                        for (finding, most) in scans::check(image, written, scan, entry.field()) {
                            found.push((at(finding), weaker(action, most)));
                        }
                    }
                }
            }
            if !policy.whitelist.images.is_empty() && !found.is_empty() {
                // Sorted for a binary search per finding (a hostile pod may have thousands of
                // both).
                let mut exempt: Vec<ContainerPath> = pod
                    .images()
                    .filter(|(_, image)| applicability::image_whitelisted(policy, cluster, image))
                    .map(|(path, _)| path)
                    .collect();
                exempt.sort_unstable();
                found.retain(|(f, _)| {
                    f.container
                        .is_none_or(|c| exempt.binary_search(&c).is_err())
                });
            }
        }
        Object::Service(service) => {
            if let Some(rule) = policy
                .rules
                .resource
                .as_ref()
                .and_then(|r| r.service.as_ref())
            {
                let findings = controls::check_service(rule, &service.spec, "spec");
                let at = |finding| PodFinding {
                    container: None,
                    finding,
                };
                found.extend(findings.into_iter().map(|f| (at(f), action)));
            }
        }
    }
}

/// The milder of two actions: a rule can lower its policy's action, never raise it.
fn weaker(a: Action, b: Action) -> Action {
    match (a, b) {
        (Action::Block, Action::Block) => Action::Block,
        _ => Action::Alert,
    }
}

/// Why each policy did or did not apply to a request (`portcullis explain`).
pub fn explain<'p>(
    input: &AdmissionInput<'_>,
    cluster: &str,
    policies: impl IntoIterator<Item = &'p Policy>,
) -> Vec<(String, String)> {
    let Prepared::Evaluate { kind, object } = prepare(input) else {
        return Vec::new();
    };
    let target = Target {
        cluster,
        namespace: input.namespace,
        kind,
        name: input.name,
        labels: &object.metadata().labels,
    };
    policies
        .into_iter()
        .map(|policy| {
            let why = match applicability::applies(policy, &target) {
                Applicability::Applies => "applies".to_owned(),
                Applicability::NotApplicable(reason) => format!("does not apply: {reason}"),
            };
            (policy.name.clone(), why)
        })
        .collect()
}

#[cfg(test)]
mod scan_tests;
#[cfg(test)]
mod tests;
