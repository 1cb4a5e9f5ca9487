//! Where a policy applies (`Scope`) and what it exempts (`Whitelist`). Empty lists mean "every"
//! for the scope and "nothing" for the whitelist.

use std::collections::BTreeMap;

use super::named_enum;
use crate::glob::Glob;
pub use crate::pattern::ImagePattern;

/// Which objects a policy looks at. An object is in scope when every part matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    /// Empty = every cluster.
    pub clusters: Vec<Glob>,
    pub namespaces: NamespaceScope,
    /// Empty = every supported kind.
    pub kinds: Vec<Kind>,
    /// `None` = any labels (an empty selector is normalised to `None`).
    pub label_selector: Option<LabelSelector>,
}

/// Namespaces in scope: those matching `include` (empty = all) and no `exclude` glob.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceScope {
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
}

named_enum! {
    /// The object kinds Portcullis admits. Pod rules apply to the pod template of every
    /// workload kind; `Service` is only checked by service rules.
    pub enum Kind {
        Pod => "Pod",
        Deployment => "Deployment",
        ReplicaSet => "ReplicaSet",
        StatefulSet => "StatefulSet",
        DaemonSet => "DaemonSet",
        Job => "Job",
        CronJob => "CronJob",
        Service => "Service",
    }
}

/// A Kubernetes label selector (`metav1.LabelSelector`): every label and every requirement
/// must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelRequirement>,
}

/// One `matchExpressions` entry. Validation guarantees `values` is non-empty for `In`/`NotIn`
/// and empty for `Exists`/`DoesNotExist`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelRequirement {
    pub key: String,
    pub operator: LabelOperator,
    pub values: Vec<String>,
}

named_enum! {
    /// Label selector operators, spelled as in Kubernetes.
    pub enum LabelOperator {
        In => "In",
        NotIn => "NotIn",
        Exists => "Exists",
        DoesNotExist => "DoesNotExist",
    }
}

/// Exemptions. A whitelisted image exempts the containers that run it; a whitelisted
/// namespace or workload exempts the whole object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Whitelist {
    pub images: Vec<ImagePattern>,
    pub namespaces: Vec<Glob>,
    pub workloads: Vec<WorkloadPattern>,
    /// The whitelist applies only in these clusters; empty = every cluster.
    pub clusters: Vec<Glob>,
}

/// A whitelisted workload: `namespace/kind/name` (the kind exact, as in `scope.kinds`, or `*`
/// for any kind), or `namespace/name` for the workload controllers only (Deployment,
/// ReplicaSet, StatefulSet, DaemonSet, Job, CronJob): never a bare Pod or a Service, so an
/// object of another kind cannot borrow a whitelisted workload's name. Namespace and name are
/// globs, so a whole family of workloads can be exempted at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadPattern {
    pub namespace: Glob,
    pub kinds: WorkloadKinds,
    pub name: Glob,
}

/// Which kinds a `WorkloadPattern` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkloadKinds {
    /// `namespace/name`: the workload controllers.
    Controllers,
    /// `namespace/Kind/name`.
    Exactly(Kind),
    /// `namespace/*/name`.
    Any,
}

impl WorkloadKinds {
    pub fn covers(self, kind: Kind) -> bool {
        match self {
            Self::Controllers => !matches!(kind, Kind::Pod | Kind::Service),
            Self::Exactly(named) => named == kind,
            Self::Any => true,
        }
    }
}

impl WorkloadPattern {
    /// Whether the pattern names this object.
    pub fn matches(&self, namespace: &str, kind: Kind, name: &str) -> bool {
        self.kinds.covers(kind) && self.namespace.matches(namespace) && self.name.matches(name)
    }
}

impl std::fmt::Display for WorkloadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kinds {
            WorkloadKinds::Controllers => write!(f, "{}/{}", self.namespace, self.name),
            WorkloadKinds::Exactly(kind) => write!(f, "{}/{kind}/{}", self.namespace, self.name),
            WorkloadKinds::Any => write!(f, "{}/*/{}", self.namespace, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_exact_case() {
        assert_eq!(Kind::from_name("StatefulSet"), Some(Kind::StatefulSet));
        assert_eq!(Kind::from_name("statefulset"), None);
        assert_eq!(Kind::ALL.len(), 8);
        assert_eq!(Kind::CronJob.to_string(), "CronJob");
    }

    #[test]
    fn workload_pattern_displays_as_written() {
        let mut w = WorkloadPattern {
            namespace: Glob::new("payments").unwrap(),
            kinds: WorkloadKinds::Controllers,
            name: Glob::new("legacy-*").unwrap(),
        };
        assert_eq!(w.to_string(), "payments/legacy-*");
        assert!(w.matches("payments", Kind::Deployment, "legacy-batch"));
        assert!(w.matches("payments", Kind::CronJob, "legacy-batch"));
        assert!(!w.matches("payments", Kind::Pod, "legacy-batch"));
        assert!(!w.matches("payments", Kind::Service, "legacy-batch"));
        w.kinds = WorkloadKinds::Exactly(Kind::Pod);
        assert_eq!(w.to_string(), "payments/Pod/legacy-*");
        assert!(w.matches("payments", Kind::Pod, "legacy-batch"));
        assert!(!w.matches("payments", Kind::Deployment, "legacy-batch"));
        w.kinds = WorkloadKinds::Any;
        assert_eq!(w.to_string(), "payments/*/legacy-*");
        assert!(w.matches("payments", Kind::Service, "legacy-batch"));
    }
}
