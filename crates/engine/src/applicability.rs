//! Whether a policy applies to an admitted object (scope, then whitelist), with the reason when
//! it does not, for `portcullis explain`; and whether a container's image is whitelisted.
//!
//! A cluster-scoped object has the namespace `""`: namespace and workload globs are matched
//! against the empty string as they are, so only a pattern like `*` includes, excludes or
//! whitelists it, and a non-empty `include` without one leaves it out of scope.
//! `whitelist.clusters` only limits where the rest of the whitelist counts; alone it exempts
//! nothing.

use std::fmt;

use crate::glob::Glob;
use crate::k8s::{Map, Text};
use crate::reference::Parts;
use crate::{
    ImagePattern, Kind, LabelOperator, LabelRequirement, LabelSelector, Policy, Whitelist,
    WorkloadPattern,
};

/// The object being admitted, as the webhook sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub cluster: &'a str,
    /// `""` for a cluster-scoped object.
    pub namespace: &'a str,
    pub kind: Kind,
    pub name: &'a str,
    /// The object's own labels (for a workload, not its pod template's).
    pub labels: &'a Map<Text>,
}

/// The verdict of `applies`. Borrows from the policy and the target, so judging allocates
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applicability<'a> {
    Applies,
    NotApplicable(Reason<'a>),
}

impl Applicability<'_> {
    pub fn is_applicable(&self) -> bool {
        matches!(self, Self::Applies)
    }
}

/// Why a policy does not apply: the first check that failed, in the order disabled, cluster,
/// namespace, kind, labels, whitelist. `Display` gives the sentence `explain` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason<'a> {
    Disabled,
    ClusterNotInScope {
        cluster: &'a str,
        clusters: &'a [Glob],
    },
    NamespaceNotIncluded {
        namespace: &'a str,
        include: &'a [Glob],
    },
    NamespaceExcluded {
        namespace: &'a str,
        pattern: &'a Glob,
    },
    KindNotInScope {
        kind: Kind,
        kinds: &'a [Kind],
    },
    LabelsDoNotMatch(LabelMismatch<'a>),
    /// `limited_to` is the `whitelist.clusters` entry that let the whitelist count here, if
    /// the whitelist is limited to some clusters.
    WhitelistedNamespace {
        namespace: &'a str,
        pattern: &'a Glob,
        limited_to: Option<&'a Glob>,
    },
    WhitelistedWorkload {
        namespace: &'a str,
        name: &'a str,
        pattern: &'a WorkloadPattern,
        limited_to: Option<&'a Glob>,
    },
}

/// The first part of the label selector the object fails; `actual` is its value for the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelMismatch<'a> {
    Label {
        key: &'a str,
        expected: &'a str,
        actual: Option<&'a str>,
    },
    Expression {
        requirement: &'a LabelRequirement,
        actual: Option<&'a str>,
    },
}

/// Scope then whitelist, Kubernetes label-selector semantics included.
pub fn applies<'a>(policy: &'a Policy, target: &Target<'a>) -> Applicability<'a> {
    match not_applicable(policy, target) {
        Some(reason) => Applicability::NotApplicable(reason),
        None => Applicability::Applies,
    }
}

/// Whether a policy scoped to `clusters` (globs; none: every cluster) covers `cluster`. The one
/// rule for both sides: the engine judges admissions by it, and the control plane sends each
/// agent the policies that cover its cluster (`clusters_cover`).
#[inline]
pub fn covers_cluster(clusters: &[Glob], cluster: &str) -> bool {
    clusters.is_empty() || clusters.iter().any(|g| g.matches(cluster))
}

/// `covers_cluster` for a policy as stored (`scope.clusters` as written, validated when it
/// was applied; a pattern that does not parse covers nothing).
pub fn clusters_cover<S: AsRef<str>>(clusters: &[S], cluster: &str) -> bool {
    clusters.is_empty()
        || clusters
            .iter()
            .any(|pattern| Glob::new(pattern.as_ref()).is_ok_and(|g| covers_cluster(&[g], cluster)))
}

fn not_applicable<'a>(policy: &'a Policy, t: &Target<'a>) -> Option<Reason<'a>> {
    let scope = &policy.scope;
    if !policy.enabled {
        return Some(Reason::Disabled);
    }
    if !covers_cluster(&scope.clusters, t.cluster) {
        return Some(Reason::ClusterNotInScope {
            cluster: t.cluster,
            clusters: &scope.clusters,
        });
    }
    let (include, exclude) = (&scope.namespaces.include, &scope.namespaces.exclude);
    if !include.is_empty() && !include.iter().any(|g| g.matches(t.namespace)) {
        return Some(Reason::NamespaceNotIncluded {
            namespace: t.namespace,
            include,
        });
    }
    if let Some(pattern) = exclude.iter().find(|g| g.matches(t.namespace)) {
        return Some(Reason::NamespaceExcluded {
            namespace: t.namespace,
            pattern,
        });
    }
    if !scope.kinds.is_empty() && !scope.kinds.contains(&t.kind) {
        return Some(Reason::KindNotInScope {
            kind: t.kind,
            kinds: &scope.kinds,
        });
    }
    if let Some(mismatch) = scope
        .label_selector
        .as_ref()
        .and_then(|s| mismatch(s, t.labels))
    {
        return Some(Reason::LabelsDoNotMatch(mismatch));
    }
    let Active(limited_to) = active(&policy.whitelist, t.cluster)?;
    whitelisted(&policy.whitelist, t, limited_to)
}

/// `Some(Active(None))`: the whitelist counts everywhere; `Some(Active(Some(g)))`: it counts
/// here because the cluster matches `g`; `None`: it does not count in this cluster.
struct Active<'a>(Option<&'a Glob>);

fn active<'a>(whitelist: &'a Whitelist, cluster: &str) -> Option<Active<'a>> {
    if whitelist.clusters.is_empty() {
        return Some(Active(None));
    }
    let pattern = whitelist.clusters.iter().find(|g| g.matches(cluster))?;
    Some(Active(Some(pattern)))
}

fn whitelisted<'a>(
    w: &'a Whitelist,
    t: &Target<'a>,
    limited_to: Option<&'a Glob>,
) -> Option<Reason<'a>> {
    if let Some(pattern) = w.namespaces.iter().find(|g| g.matches(t.namespace)) {
        return Some(Reason::WhitelistedNamespace {
            namespace: t.namespace,
            pattern,
            limited_to,
        });
    }
    let pattern = w
        .workloads
        .iter()
        .find(|w| w.matches(t.namespace, t.kind, t.name))?;
    Some(Reason::WhitelistedWorkload {
        namespace: t.namespace,
        name: t.name,
        pattern,
        limited_to,
    })
}

/// The first unmet part of `selector`: `matchLabels` need the key with that value; `In` needs
/// the key with a listed value, `NotIn` its absence or an unlisted value, `Exists` the key,
/// `DoesNotExist` its absence.
fn mismatch<'a>(selector: &'a LabelSelector, labels: &'a Map<Text>) -> Option<LabelMismatch<'a>> {
    let value = |key: &str| labels.get(key).map(Text::as_str);
    if let Some((key, expected)) = selector
        .match_labels
        .iter()
        .find(|(k, v)| value(k) != Some(v.as_str()))
    {
        return Some(LabelMismatch::Label {
            key,
            expected,
            actual: value(key),
        });
    }
    let requirement = selector.match_expressions.iter().find(|r| {
        let actual = value(&r.key);
        let listed = |v: &str| r.values.iter().any(|x| x == v);
        !match r.operator {
            LabelOperator::In => actual.is_some_and(listed),
            LabelOperator::NotIn => !actual.is_some_and(listed),
            LabelOperator::Exists => actual.is_some(),
            LabelOperator::DoesNotExist => actual.is_none(),
        }
    })?;
    Some(LabelMismatch::Expression {
        requirement,
        actual: value(&requirement.key),
    })
}

/// Whether the whitelist exempts containers running `image` (as written) in `cluster`.
pub fn image_whitelisted(policy: &Policy, cluster: &str, image: &str) -> bool {
    whitelisted_image_pattern(policy, cluster, image).is_some()
}

/// The whitelist entry that exempts `image`, for `explain`. Patterns match the parsed
/// reference's parts (see `pattern`): an image that does not parse is never exempt (no runtime
/// can pull it, and its text must not satisfy a glob by its spelling). The normalised
/// repository is built once per image, and only for patterns that need it.
pub fn whitelisted_image_pattern<'p>(
    policy: &'p Policy,
    cluster: &str,
    image: &str,
) -> Option<&'p ImagePattern> {
    let whitelist = &policy.whitelist;
    if whitelist.images.is_empty() {
        return None;
    }
    active(whitelist, cluster)?;
    let parts = Parts::parse(image).ok()?;
    let repository = parts.repository_path();
    whitelist
        .images
        .iter()
        .find(|p| p.matches(&parts, &repository))
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("the policy is disabled"),
            Self::ClusterNotInScope { cluster, clusters } => {
                write!(
                    f,
                    "cluster {cluster:?} is not in scope.clusters ({})",
                    list(clusters)
                )
            }
            Self::NamespaceNotIncluded { namespace, include } => write!(
                f,
                "{} is not in scope.namespaces.include ({})",
                Namespace(namespace),
                list(include)
            ),
            Self::NamespaceExcluded { namespace, pattern } => write!(
                f,
                "{} is excluded by scope.namespaces.exclude entry {:?}",
                Namespace(namespace),
                pattern.as_str()
            ),
            Self::KindNotInScope { kind, kinds } => {
                write!(f, "kind {kind} is not in scope.kinds ({})", list(kinds))
            }
            Self::LabelsDoNotMatch(mismatch) => write!(f, "{mismatch}"),
            Self::WhitelistedNamespace {
                namespace,
                pattern,
                limited_to,
            } => {
                write!(
                    f,
                    "{} is whitelisted by whitelist.namespaces entry {:?}",
                    Namespace(namespace),
                    pattern.as_str()
                )?;
                limited(f, *limited_to)
            }
            Self::WhitelistedWorkload {
                namespace,
                name,
                pattern,
                limited_to,
            } => {
                write!(
                    f,
                    "workload \"{namespace}/{name}\" is whitelisted by whitelist.workloads entry \"{pattern}\""
                )?;
                limited(f, *limited_to)
            }
        }
    }
}

impl fmt::Display for LabelMismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, actual) = match self {
            Self::Label {
                key,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "label {key}={expected} of scope.labelSelector.matchLabels"
                )?;
                (*key, *actual)
            }
            Self::Expression {
                requirement: r,
                actual,
            } => {
                write!(f, "requirement \"{} {}", r.key, r.operator)?;
                if !r.values.is_empty() {
                    write!(f, " ({})", r.values.join(", "))?;
                }
                f.write_str("\" of scope.labelSelector.matchExpressions")?;
                (r.key.as_str(), *actual)
            }
        };
        match actual {
            Some(value) => write!(f, " is not met: the object has {key}={value}"),
            None => write!(f, " is not met: the object has no label {key}"),
        }
    }
}

/// A namespace for messages; cluster-scoped objects have none.
struct Namespace<'a>(&'a str);

impl fmt::Display for Namespace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            "" => f.write_str("the cluster-scoped object (no namespace)"),
            namespace => write!(f, "namespace {namespace:?}"),
        }
    }
}

fn limited(f: &mut fmt::Formatter<'_>, limited_to: Option<&Glob>) -> fmt::Result {
    match limited_to {
        Some(g) => write!(
            f,
            " (the whitelist counts in clusters matching {:?})",
            g.as_str()
        ),
        None => Ok(()),
    }
}

fn list(items: &[impl fmt::Display]) -> String {
    let names: Vec<String> = items.iter().map(ToString::to_string).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, LabelOperator as Op, Rules};
    use std::collections::BTreeMap;

    const D: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
    const NO_LABELS: &Map<Text> = &Map::new();

    fn globs(patterns: &[&str]) -> Vec<Glob> {
        patterns.iter().map(|p| Glob::new(p).unwrap()).collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn object_labels(pairs: &[(&str, &str)]) -> Map<Text> {
        pairs.iter().map(|(k, v)| (*k, Text::from(*v))).collect()
    }

    fn mk_policy() -> Policy {
        Policy {
            name: "p".into(),
            description: String::new(),
            enabled: true,
            action: Action::Block,
            scope: Default::default(),
            whitelist: Default::default(),
            rules: Rules::default(),
            revision: 0,
            fingerprints: Default::default(),
        }
    }

    /// A Deployment `web` in cluster `prod-1`.
    fn mk_target<'a>(namespace: &'a str, labels: &'a Map<Text>) -> Target<'a> {
        let (cluster, kind, name) = ("prod-1", Kind::Deployment, "web");
        Target {
            cluster,
            namespace,
            kind,
            name,
            labels,
        }
    }

    /// `None` when the policy applies, else the reason as `explain` prints it.
    fn why(policy: &Policy, target: Target<'_>) -> Option<String> {
        match applies(policy, &target) {
            Applicability::Applies => None,
            Applicability::NotApplicable(reason) => Some(reason.to_string()),
        }
    }

    fn why_ns(policy: &Policy, namespace: &str) -> Option<String> {
        why(policy, mk_target(namespace, NO_LABELS))
    }

    #[test]
    fn an_unscoped_policy_applies_everywhere_unless_disabled() {
        let mut policy = mk_policy();
        assert!(applies(&policy, &mk_target("default", NO_LABELS)).is_applicable());
        assert_eq!(why_ns(&policy, ""), None);
        policy.enabled = false;
        assert_eq!(
            why_ns(&policy, "default").as_deref(),
            Some("the policy is disabled")
        );
    }

    #[test]
    fn clusters_and_kinds_empty_mean_all() {
        let mut policy = mk_policy();
        let staging = Target {
            cluster: "staging",
            ..mk_target("default", NO_LABELS)
        };
        let service = Target {
            kind: Kind::Service,
            ..mk_target("default", NO_LABELS)
        };
        assert_eq!((why(&policy, staging), why(&policy, service)), (None, None));
        policy.scope.clusters = globs(&["prod-*", "edge"]);
        policy.scope.kinds = vec![Kind::Pod, Kind::Deployment];
        assert_eq!(why_ns(&policy, "default"), None);
        let expected = r#"cluster "staging" is not in scope.clusters (prod-*, edge)"#;
        assert_eq!(why(&policy, staging).as_deref(), Some(expected));
        let expected = "kind Service is not in scope.kinds (Pod, Deployment)";
        assert_eq!(why(&policy, service).as_deref(), Some(expected));
    }

    #[test]
    fn namespaces_are_included_then_excluded() {
        let mut policy = mk_policy();
        policy.scope.namespaces.include = globs(&["team-*", "default"]);
        policy.scope.namespaces.exclude = globs(&["team-secret*"]);
        assert_eq!(
            (why_ns(&policy, "team-a"), why_ns(&policy, "default")),
            (None, None)
        );
        let text = why_ns(&policy, "kube-system").unwrap();
        assert_eq!(
            text,
            r#"namespace "kube-system" is not in scope.namespaces.include (team-*, default)"#
        );
        let text = why_ns(&policy, "team-secret-1").unwrap();
        assert_eq!(
            text,
            r#"namespace "team-secret-1" is excluded by scope.namespaces.exclude entry "team-secret*""#
        );
        policy.scope.namespaces.include.clear();
        assert_eq!(why_ns(&policy, "anything"), None);
    }

    #[test]
    fn cluster_scoped_objects_meet_only_patterns_matching_no_namespace() {
        let mut policy = mk_policy();
        policy.scope.namespaces.exclude = globs(&["kube-*"]);
        policy.whitelist.namespaces = globs(&["sandbox-*"]);
        policy.whitelist.workloads = vec![workload("default", "web")];
        assert_eq!(why_ns(&policy, ""), None);
        policy.scope.namespaces.include = globs(&["team-a"]);
        let text = why_ns(&policy, "").unwrap();
        assert_eq!(
            text,
            "the cluster-scoped object (no namespace) is not in scope.namespaces.include (team-a)"
        );
        policy.scope.namespaces.include = globs(&["*"]);
        assert_eq!(why_ns(&policy, ""), None);
    }

    fn selector(match_labels: &[(&str, &str)], exprs: &[(&str, Op, &[&str])]) -> Policy {
        let requirement = |(key, operator, values): &(&str, Op, &[&str])| LabelRequirement {
            key: (*key).into(),
            operator: *operator,
            values: values.iter().map(|v| (*v).into()).collect(),
        };
        let match_expressions = exprs.iter().map(requirement).collect();
        let mut policy = mk_policy();
        let match_labels = labels(match_labels);
        policy.scope.label_selector = Some(LabelSelector {
            match_labels,
            match_expressions,
        });
        policy
    }

    /// Object labels in a table row.
    type Labels = &'static [(&'static str, &'static str)];

    #[test]
    fn label_selectors_follow_kubernetes() {
        let env = |values: &'static [&'static str], op| selector(&[], &[("env", op, values)]);
        let both = selector(&[("a", "1")], &[("b", Op::Exists, &[])]);
        let tier = selector(&[("tier", "web")], &[]);
        #[rustfmt::skip]
        let cases: [(Policy, Labels, bool); 15] = [
            (tier.clone(), &[("tier", "web"), ("x", "y")], true),
            (tier.clone(), &[("tier", "db")], false),
            (tier, &[], false),
            (env(&["prod", "qa"], Op::In), &[("env", "qa")], true),
            (env(&["prod", "qa"], Op::In), &[("env", "dev")], false),
            (env(&["prod"], Op::In), &[], false),
            (env(&["dev"], Op::NotIn), &[("env", "prod")], true),
            (env(&["dev"], Op::NotIn), &[], true),
            (env(&["dev"], Op::NotIn), &[("env", "dev")], false),
            (env(&[], Op::Exists), &[("env", "")], true),
            (env(&[], Op::Exists), &[], false),
            (env(&[], Op::DoesNotExist), &[], true),
            (env(&[], Op::DoesNotExist), &[("env", "x")], false),
            // matchLabels AND every expression.
            (both.clone(), &[("a", "1")], false),
            (both, &[("a", "1"), ("b", "")], true),
        ];
        for (i, (policy, object, expected)) in cases.iter().enumerate() {
            let object = object_labels(object);
            let applies = applies(policy, &mk_target("default", &object)).is_applicable();
            assert_eq!(applies, *expected, "case {i}");
        }
    }

    #[test]
    fn label_mismatches_are_explained() {
        let object = object_labels(&[("tier", "db")]);
        let text = |policy: Policy| why(&policy, mk_target("default", &object)).unwrap();
        assert_eq!(
            text(selector(&[("tier", "web")], &[])),
            "label tier=web of scope.labelSelector.matchLabels is not met: the object has tier=db"
        );
        assert_eq!(
            text(selector(&[], &[("env", Op::In, &["prod", "qa"])])),
            r#"requirement "env In (prod, qa)" of scope.labelSelector.matchExpressions is not met: the object has no label env"#
        );
        let does_not_exist = text(selector(&[], &[("tier", Op::DoesNotExist, &[])]));
        assert!(does_not_exist.starts_with(r#"requirement "tier DoesNotExist" of"#));
    }

    fn workload(namespace: &str, name: &str) -> WorkloadPattern {
        let (namespace, name) = (Glob::new(namespace).unwrap(), Glob::new(name).unwrap());
        WorkloadPattern {
            namespace,
            kinds: crate::WorkloadKinds::Controllers,
            name,
        }
    }

    #[test]
    fn whitelisted_namespaces_and_workloads_exempt_the_object() {
        let mut policy = mk_policy();
        policy.whitelist.namespaces = globs(&["sandbox-*"]);
        policy.whitelist.workloads = vec![workload("payments", "legacy-*")];
        let text = why_ns(&policy, "sandbox-1").unwrap();
        assert_eq!(
            text,
            r#"namespace "sandbox-1" is whitelisted by whitelist.namespaces entry "sandbox-*""#
        );
        let legacy = Target {
            name: "legacy-batch",
            ..mk_target("payments", NO_LABELS)
        };
        let text = why(&policy, legacy).unwrap();
        assert_eq!(
            text,
            r#"workload "payments/legacy-batch" is whitelisted by whitelist.workloads entry "payments/legacy-*""#
        );
        assert_eq!(why_ns(&policy, "payments"), None);
        // `namespace/name` names workload controllers: a bare Pod with the name is not exempt.
        let pod = Target {
            kind: Kind::Pod,
            ..legacy
        };
        assert_eq!(why(&policy, pod), None);
        // Scope reasons come first.
        policy.scope.namespaces.exclude = globs(&["sandbox-*"]);
        assert!(
            why_ns(&policy, "sandbox-1")
                .unwrap()
                .contains("excluded by scope")
        );
    }

    #[test]
    fn whitelist_clusters_limit_where_the_whitelist_counts() {
        let mut policy = mk_policy();
        policy.whitelist.clusters = globs(&["prod-*"]);
        // Alone, whitelist.clusters exempts nothing.
        assert_eq!(why_ns(&policy, "sandbox"), None);
        policy.whitelist.namespaces = globs(&["sandbox"]);
        let text = why_ns(&policy, "sandbox").unwrap();
        assert!(text.ends_with(r#"(the whitelist counts in clusters matching "prod-*")"#));
        let dev = Target {
            cluster: "dev-1",
            ..mk_target("sandbox", NO_LABELS)
        };
        assert_eq!(why(&policy, dev), None);
    }

    fn with_images(patterns: &[&str], clusters: &[&str]) -> Policy {
        let mut policy = mk_policy();
        let pattern = |p: &&str| ImagePattern::parse(Glob::new(&expand(p)).unwrap()).unwrap();
        policy.whitelist.images = patterns.iter().map(pattern).collect();
        policy.whitelist.clusters = globs(clusters);
        policy
    }

    fn expand(s: &str) -> String {
        s.replace("@D", &format!("@{D}"))
    }

    /// Whether `pattern` exempts `image` (`@D` expands to a digest).
    fn exempts(pattern: &str, image: &str) -> bool {
        image_whitelisted(&with_images(&[pattern], &[]), "prod-1", &expand(image))
    }

    #[test]
    fn image_patterns_match_the_parsed_reference() {
        #[rustfmt::skip]
        let cases = [
            ("registry.example.com/base/*", "registry.example.com/base/alpine:3.20", true),
            ("registry.example.com/base/*", "registry.example.com/base/alpine@D", true),
            // `*` stays inside a component; `**` spans components.
            ("registry.example.com/base/*", "registry.example.com/base/a/b@D", false),
            ("registry.example.com/base/**", "registry.example.com/base/a/b@D", true),
            ("registry.example.com/base/*", "registry.example.com/other:1", false),
            ("*.corp.example.com/*", "evil.com/x.corp.example.com/tool:1", false),
            ("*.corp.example.com/*", "registry.corp.example.com/tool:1", true),
            ("*.corp.example.com/*", "evil.com:443/x.corp.example.com/tool:1", false),
            // Both sides normalised: `nginx` is docker.io/library/nginx:latest.
            ("docker.io/library/nginx:*", "nginx", true),
            ("nginx:*", "docker.io/library/nginx:1.25", true),
            ("nginx:*", "registry-1.docker.io/library/nginx:1.25", true),
            ("docker.io/library/*", "nginx:1.25", true),
            ("docker.io/library/nginx:latest", "nginx", true),
            ("*/nginx:1.25", "nginx:1.25", true),
            ("docker.io/library/nginx:*", "nginx@D", false),
            ("nginx*", "nginx-unprivileged:1", true),
            ("nginx*", "evil.example.com/nginx:1", false),
            ("**/nginx:*", "evil.example.com/team/nginx:1", true),
            ("**", "anything.example.com/at/all:1", true),
            ("registry.example.com:443/*", "registry.example.com/app:1", true),
            ("registry.example.com/*", "registry.example.com:443/app:1", true),
            ("registry.example.com/*", "registry.example.com:5000/app:1", false),
            // An image that does not parse is never exempt.
            ("Foo*", "Foo:1", false),
            ("docker.io/*", "Foo:1", false),
            // Tag and digest parts of a glob pattern.
            ("registry.example.com/*:1.*", "registry.example.com/app:1.2", true),
            ("registry.example.com/*:1.*", "registry.example.com/app:2.0", false),
            ("registry.example.com/*@D", "registry.example.com/app:9@D", true),
            ("registry.example.com/*@D", "registry.example.com/app:9", false),
            // Literals compare as references.
            ("nginx:1.25", "docker.io/library/nginx:1.25", true),
            ("nginx", "index.docker.io/library/nginx:latest", true),
            ("nginx", "registry-1.docker.io/nginx", true),
            ("Registry.Example.com/app:1", "registry.example.com/app:1", true),
            ("nginx", "nginx:1.25", false),
            ("nginx:1.25", "nginx:1.26", false),
            ("nginx:1.25", "nginx:1.25@D", false),
            // A digest pattern matches that repository at that digest, whatever the tag.
            ("nginx@D", "nginx@D", true),
            ("nginx@D", "docker.io/library/nginx:1.25@D", true),
            ("nginx:1.0@D", "nginx:1.25@D", true),
            ("nginx@D", "nginx:1.25", false),
            ("nginx@D", "nginx", false),
            ("nginx@D", "other@D", false),
        ];
        for (pattern, image, expected) in cases {
            assert_eq!(exempts(pattern, image), expected, "{pattern} vs {image}");
        }
    }

    #[test]
    fn image_whitelist_respects_whitelist_clusters() {
        let policy = with_images(&["redis", "nginx"], &["prod-*"]);
        assert!(image_whitelisted(&policy, "prod-1", "nginx"));
        assert!(!image_whitelisted(&policy, "dev-1", "nginx"));
        let found = whitelisted_image_pattern(&policy, "prod-1", "docker.io/library/nginx");
        assert_eq!(found.map(ImagePattern::as_str), Some("nginx"));
        assert!(!image_whitelisted(&mk_policy(), "prod-1", "nginx"));
    }
}
