//! Where a policy applies (`Scope`) and what it exempts (`Whitelist`). Empty lists mean "every"
//! for the scope and "nothing" for the whitelist.

use std::collections::BTreeMap;

use super::named_enum;
use crate::glob::Glob;

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

/// An image reference pattern (exact reference, glob, or `name@digest`). The engine matches it
/// against the reference as written and against its normalised form
/// (`nginx` = `docker.io/library/nginx:latest`), which is why it is not a bare `Glob`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImagePattern(Glob);

impl ImagePattern {
    /// Wraps a validated glob.
    pub fn new(glob: Glob) -> Self {
        Self(glob)
    }

    /// The glob to match reference strings with.
    pub fn glob(&self) -> &Glob {
        &self.0
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A workload written `namespace/name`, each part a glob, so a whole family of workloads can be
/// exempted at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadPattern {
    pub namespace: Glob,
    pub name: Glob,
}

impl std::fmt::Display for WorkloadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
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
        let w = WorkloadPattern {
            namespace: Glob::new("payments").unwrap(),
            name: Glob::new("legacy-*").unwrap(),
        };
        assert_eq!(w.to_string(), "payments/legacy-*");
    }
}
