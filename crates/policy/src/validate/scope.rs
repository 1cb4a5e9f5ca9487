//! Validates `scope` and `whitelist`: globs with their character sets, kinds, the label
//! selector, and `namespace/name` workloads.

use std::collections::{BTreeMap, HashMap};

use portcullis_proto::v1 as proto;

use super::errors::{Errors, Path, duplicate, parse_list, unknown};
use super::syntax;
use crate::model::{
    Kind, LabelOperator, LabelRequirement, LabelSelector, NamespaceScope, Scope, Whitelist,
};

/// `scope`; absent means everywhere.
pub(super) fn scope(scope: Option<&proto::Scope>, path: &Path, errors: &mut Errors) -> Scope {
    let Some(scope) = scope else {
        return Scope::default();
    };
    let namespaces = scope
        .namespaces
        .as_ref()
        .map_or_else(NamespaceScope::default, |ns| {
            let path = path.field("namespaces");
            NamespaceScope {
                include: parse_list(
                    &ns.include,
                    &path.field("include"),
                    errors,
                    syntax::namespace_glob,
                ),
                exclude: parse_list(
                    &ns.exclude,
                    &path.field("exclude"),
                    errors,
                    syntax::namespace_glob,
                ),
            }
        });
    Scope {
        clusters: parse_list(
            &scope.clusters,
            &path.field("clusters"),
            errors,
            syntax::cluster_glob,
        ),
        namespaces,
        kinds: parse_list(&scope.kinds, &path.field("kinds"), errors, |k| {
            Kind::from_name(k).ok_or_else(|| unknown("kind", k, Kind::NAMES))
        }),
        label_selector: scope
            .label_selector
            .as_ref()
            .and_then(|s| label_selector(s, &path.field("labelSelector"), errors)),
    }
}

/// A label selector; an empty one selects everything and becomes `None`.
fn label_selector(
    selector: &proto::LabelSelector,
    path: &Path,
    errors: &mut Errors,
) -> Option<LabelSelector> {
    let mut match_labels = BTreeMap::new();
    // Sorted, so errors come out in a stable order.
    let sorted: BTreeMap<_, _> = selector.match_labels.iter().collect();
    for (key, value) in sorted {
        let path = path.field("matchLabels").key(key);
        let key_ok = errors.check(&path, syntax::label_key(key)).is_some();
        let value = errors.check(&path, syntax::label_value(value));
        if let (true, Some(value)) = (key_ok, value) {
            match_labels.insert(key.clone(), value);
        }
    }

    let mut match_expressions = Vec::with_capacity(selector.match_expressions.len());
    let mut first_seen: HashMap<LabelRequirement, usize> = HashMap::new();
    for (i, requirement) in selector.match_expressions.iter().enumerate() {
        let path = path.field("matchExpressions").index(i);
        let Some(parsed) = label_requirement(requirement, &path, errors) else {
            continue;
        };
        if let Some(first) = first_seen.get(&parsed) {
            errors.push(&path, duplicate(&requirement.key, *first));
        } else {
            first_seen.insert(parsed.clone(), i);
            match_expressions.push(parsed);
        }
    }

    let empty = selector.match_labels.is_empty() && selector.match_expressions.is_empty();
    (!empty).then_some(LabelSelector {
        match_labels,
        match_expressions,
    })
}

fn label_requirement(
    requirement: &proto::LabelSelectorRequirement,
    path: &Path,
    errors: &mut Errors,
) -> Option<LabelRequirement> {
    let key = errors.check(&path.field("key"), syntax::label_key(&requirement.key));
    let op = &requirement.operator;
    let operator = errors.check(
        &path.field("operator"),
        LabelOperator::from_name(op).ok_or_else(|| unknown("operator", op, LabelOperator::NAMES)),
    );
    let values_path = path.field("values");
    let values = parse_list(
        &requirement.values,
        &values_path,
        errors,
        syntax::label_value,
    );
    match operator {
        Some(LabelOperator::In | LabelOperator::NotIn) if requirement.values.is_empty() => {
            errors.push(
                &values_path,
                format!("operator {op} needs at least one value"),
            );
        }
        Some(LabelOperator::Exists | LabelOperator::DoesNotExist)
            if !requirement.values.is_empty() =>
        {
            errors.push(&values_path, format!("operator {op} takes no values"));
        }
        _ => {}
    }
    key?;
    Some(LabelRequirement {
        key: requirement.key.clone(),
        operator: operator?,
        values,
    })
}

/// `whitelist`; absent means no exemption.
pub(super) fn whitelist(
    whitelist: Option<&proto::Whitelist>,
    path: &Path,
    errors: &mut Errors,
) -> Whitelist {
    let Some(whitelist) = whitelist else {
        return Whitelist::default();
    };
    Whitelist {
        images: parse_list(
            &whitelist.images,
            &path.field("images"),
            errors,
            syntax::image_pattern,
        ),
        namespaces: parse_list(
            &whitelist.namespaces,
            &path.field("namespaces"),
            errors,
            syntax::namespace_glob,
        ),
        workloads: parse_list(
            &whitelist.workloads,
            &path.field("workloads"),
            errors,
            syntax::workload_pattern,
        ),
        clusters: parse_list(
            &whitelist.clusters,
            &path.field("clusters"),
            errors,
            syntax::cluster_glob,
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_error, mk_policy, strings};
    use crate::{Kind, Policy};
    use portcullis_proto::v1 as proto;

    fn with_scope(scope: proto::Scope) -> proto::Policy {
        proto::Policy {
            scope: Some(scope),
            ..mk_policy("p")
        }
    }

    fn with_selector(selector: proto::LabelSelector) -> proto::Policy {
        with_scope(proto::Scope {
            label_selector: Some(selector),
            ..Default::default()
        })
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> proto::LabelSelectorRequirement {
        proto::LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: strings(values),
        }
    }

    #[test]
    fn valid_scope_converts() {
        let p = with_scope(proto::Scope {
            clusters: strings(&["prod-*"]),
            namespaces: Some(proto::NamespaceScope {
                include: strings(&["*"]),
                exclude: strings(&["kube-system"]),
            }),
            kinds: strings(&["Pod", "CronJob", "Service"]),
            label_selector: Some(proto::LabelSelector {
                match_labels: [("tier".to_owned(), "frontend".to_owned())].into(),
                match_expressions: vec![requirement("env", "NotIn", &["dev"])],
            }),
        });
        let policy = Policy::try_from(&p).unwrap();
        assert_eq!(
            policy.scope.kinds,
            [Kind::Pod, Kind::CronJob, Kind::Service]
        );
        assert_eq!(policy.scope.clusters[0].as_str(), "prod-*");
        assert_eq!(policy.scope.namespaces.exclude[0].as_str(), "kube-system");
        let selector = policy.scope.label_selector.unwrap();
        assert_eq!(selector.match_labels["tier"], "frontend");
        assert_eq!(selector.match_expressions[0].values, ["dev"]);
    }

    #[test]
    fn bad_namespace_glob() {
        let p = with_scope(proto::Scope {
            namespaces: Some(proto::NamespaceScope {
                include: strings(&["a", "b", "Team A"]),
                exclude: vec![],
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "scope.namespaces.include[2]",
            r#"invalid namespace glob "Team A""#,
        );
    }

    #[test]
    fn bad_cluster_glob() {
        let p = with_scope(proto::Scope {
            clusters: strings(&["prod_eu"]),
            ..Default::default()
        });
        assert_error(&p, "scope.clusters[0]", "character '_' is not allowed");
    }

    #[test]
    fn unknown_kind() {
        let p = with_scope(proto::Scope {
            kinds: strings(&["Pod", "pod", "Ingress"]),
            ..Default::default()
        });
        assert_error(&p, "scope.kinds[1]", r#"unknown kind "pod""#);
        assert_error(&p, "scope.kinds[1]", r#"did you mean "Pod"?"#);
        assert_error(
            &p,
            "scope.kinds[2]",
            r#"unknown kind "Ingress": expected one of Pod,"#,
        );
    }

    #[test]
    fn duplicate_kind() {
        let p = with_scope(proto::Scope {
            kinds: strings(&["Pod", "Job", "Pod"]),
            ..Default::default()
        });
        assert_error(&p, "scope.kinds[2]", r#"duplicate "Pod" (also at index 0)"#);
    }

    #[test]
    fn bad_label_selector_key_and_value() {
        let p = with_selector(proto::LabelSelector {
            match_labels: [
                ("-bad".to_owned(), "ok".to_owned()),
                ("ok".to_owned(), "bad value".to_owned()),
            ]
            .into(),
            match_expressions: vec![],
        });
        assert_error(
            &p,
            r#"scope.labelSelector.matchLabels["-bad"]"#,
            r#"invalid label key "-bad""#,
        );
        assert_error(
            &p,
            r#"scope.labelSelector.matchLabels["ok"]"#,
            r#"invalid label value "bad value""#,
        );
    }

    #[test]
    fn bad_label_selector_operators() {
        let p = with_selector(proto::LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![
                requirement("env", "In", &[]),
                requirement("env", "Exists", &["x"]),
                requirement("env", "Equals", &["x"]),
                requirement("Bad Key", "DoesNotExist", &[]),
                requirement("env", "NotIn", &["ok", "-no"]),
            ],
        });
        let e = "scope.labelSelector.matchExpressions";
        assert_error(
            &p,
            &format!("{e}[0].values"),
            "operator In needs at least one value",
        );
        assert_error(
            &p,
            &format!("{e}[1].values"),
            "operator Exists takes no values",
        );
        assert_error(
            &p,
            &format!("{e}[2].operator"),
            r#"unknown operator "Equals""#,
        );
        assert_error(&p, &format!("{e}[3].key"), r#"invalid label key "Bad Key""#);
        assert_error(
            &p,
            &format!("{e}[4].values[1]"),
            r#"invalid label value "-no""#,
        );
    }

    #[test]
    fn duplicate_label_requirement() {
        let p = with_selector(proto::LabelSelector {
            match_labels: Default::default(),
            match_expressions: vec![
                requirement("env", "Exists", &[]),
                requirement("env", "Exists", &[]),
            ],
        });
        assert_error(&p, "scope.labelSelector.matchExpressions[1]", "duplicate");
    }

    #[test]
    fn empty_label_selector_is_none() {
        let p = with_selector(proto::LabelSelector::default());
        assert_eq!(Policy::try_from(&p).unwrap().scope.label_selector, None);
    }

    #[test]
    fn bad_whitelist_entries() {
        let p = proto::Policy {
            whitelist: Some(proto::Whitelist {
                images: strings(&["nginx", "", "nginx"]),
                namespaces: strings(&["sandbox-*", "Sandbox"]),
                workloads: strings(&["payments/legacy-batch", "legacy-batch"]),
                clusters: strings(&["prod-*", "prod-*"]),
            }),
            ..mk_policy("p")
        };
        assert_error(&p, "whitelist.images[1]", "empty image pattern");
        assert_error(&p, "whitelist.images[2]", r#"duplicate "nginx""#);
        assert_error(
            &p,
            "whitelist.namespaces[1]",
            r#"invalid namespace glob "Sandbox""#,
        );
        assert_error(
            &p,
            "whitelist.workloads[1]",
            r#"invalid workload "legacy-batch": expected "namespace/name""#,
        );
        assert_error(&p, "whitelist.clusters[1]", r#"duplicate "prod-*""#);
    }
}
