//! User and group id controls. `runAsUser` and `runAsGroup` read each container's effective
//! id (its own, else the pod's); `fsGroup` and `supplementalGroups` are pod-level.

use super::{Out, describe_ranges, in_ranges};
use crate::k8s::{Container, ContainerPath};
use crate::{IdRule, IdRuleKind};

/// Where an effective value comes from, for the finding's path.
#[derive(Clone, Copy)]
enum Source {
    Container,
    Pod,
}

/// The container's value if set, else the pod's.
fn effective<T: Copy>(container: Option<T>, pod: Option<T>) -> Option<(T, Source)> {
    container
        .map(|v| (v, Source::Container))
        .or(pod.map(|v| (v, Source::Pod)))
}

pub(super) fn run_as_user(out: &mut Out, rule: &IdRule) {
    let pod_id = out.pod.spec.security_context.run_as_user;
    container_ids(out, rule, "runAsUser", pod_id, |c| {
        c.security_context.run_as_user
    });
}

/// Validation only accepts `MustRunAs` and `MayRunAs` here.
pub(super) fn run_as_group(out: &mut Out, rule: &IdRule) {
    let pod_id = out.pod.spec.security_context.run_as_group;
    container_ids(out, rule, "runAsGroup", pod_id, |c| {
        c.security_context.run_as_group
    });
}

fn container_ids(
    out: &mut Out,
    rule: &IdRule,
    field: &'static str,
    pod_id: Option<i64>,
    own: impl Fn(&Container) -> Option<i64>,
) {
    let pod = out.pod;
    for (at, c) in pod.containers() {
        let id = effective(own(c), pod_id);
        if rule.rule == IdRuleKind::MustRunAsNonRoot && field == "runAsUser" {
            must_run_as_non_root(out, at, c, id);
            continue;
        }
        match id {
            Some((id, _)) if in_ranges(id, &rule.ranges) => {}
            Some((id, source)) => {
                let path = source_path(out, at, source, field);
                let message = format!(
                    "container {:?} runs with {field} {id}{} (allowed: {})",
                    c.name,
                    inherited(source),
                    describe_ranges(&rule.ranges)
                );
                out.push(field, Some(at), path, id.to_string(), message);
            }
            None if rule.rule == IdRuleKind::MustRunAs && out.linux_requirements_apply() => {
                let message = format!(
                    "container {:?} must set {field} (on the container or the pod) within {}",
                    c.name,
                    describe_ranges(&rule.ranges)
                );
                let path = at.field(&format!("securityContext.{field}"));
                out.push(field, Some(at), path, "", message);
            }
            None => {}
        }
    }
}

/// Admitted when the effective user is non-zero, or unset with an effective
/// `runAsNonRoot: true`. An explicit uid 0 is root whatever `runAsNonRoot` says.
fn must_run_as_non_root(
    out: &mut Out,
    at: ContainerPath,
    c: &Container,
    user: Option<(i64, Source)>,
) {
    match user {
        Some((0, source)) => {
            let path = source_path(out, at, source, "runAsUser");
            let message = format!(
                "container {:?} runs as root (runAsUser 0{})",
                c.name,
                inherited(source)
            );
            out.push("runAsUser", Some(at), path, "0", message);
        }
        Some(_) => {}
        None => {
            let non_root = effective(
                c.security_context.run_as_non_root,
                out.pod.spec.security_context.run_as_non_root,
            );
            let (path, value) = match non_root {
                Some((true, _)) => return,
                Some((false, source)) => (source_path(out, at, source, "runAsNonRoot"), "false"),
                None => (at.field("securityContext.runAsNonRoot"), ""),
            };
            let message = format!(
                "container {:?} must set runAsNonRoot: true or a non-zero runAsUser (on the container or the pod)",
                c.name
            );
            out.push("runAsUser", Some(at), path, value, message);
        }
    }
}

fn source_path(out: &Out, at: ContainerPath, source: Source, field: &str) -> String {
    match source {
        Source::Container => at.field(&format!("securityContext.{field}")),
        Source::Pod => out.pod.spec_field(&format!("securityContext.{field}")),
    }
}

fn inherited(source: Source) -> &'static str {
    match source {
        Source::Container => "",
        Source::Pod => ", inherited from the pod",
    }
}

pub(super) fn fs_group(out: &mut Out, rule: &IdRule) {
    let pod = out.pod;
    let path = || pod.spec_field("securityContext.fsGroup");
    match pod.spec.security_context.fs_group {
        Some(id) if in_ranges(id, &rule.ranges) => {}
        Some(id) => {
            let message = format!(
                "fsGroup {id} is not allowed (allowed: {})",
                describe_ranges(&rule.ranges)
            );
            out.push("fsGroup", None, path(), id.to_string(), message);
        }
        None if rule.rule != IdRuleKind::MayRunAs && out.linux_requirements_apply() => {
            let message = format!(
                "the pod must set fsGroup within {}",
                describe_ranges(&rule.ranges)
            );
            out.push("fsGroup", None, path(), "", message);
        }
        None => {}
    }
}

pub(super) fn supplemental_groups(out: &mut Out, rule: &IdRule) {
    let pod = out.pod;
    let groups = &pod.spec.security_context.supplemental_groups;
    if groups.is_empty() {
        if rule.rule != IdRuleKind::MayRunAs && out.linux_requirements_apply() {
            let path = pod.spec_field("securityContext.supplementalGroups");
            let message = format!(
                "the pod must set supplementalGroups within {}",
                describe_ranges(&rule.ranges)
            );
            out.push("supplementalGroups", None, path, "", message);
        }
        return;
    }
    for (i, &id) in groups.iter().enumerate() {
        if !in_ranges(id, &rule.ranges) {
            let path = pod.spec_field(&format!("securityContext.supplementalGroups[{i}]"));
            let message = format!(
                "supplemental group {id} is not allowed (allowed: {})",
                describe_ranges(&rule.ranges)
            );
            out.push("supplementalGroups", None, path, id.to_string(), message);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::testing::check;
    use super::super::testing::{TestPod, mk_pod, paths, values};
    use crate::{IdRange, IdRule, IdRuleKind, ResourceRules};

    fn id_rule(rule: IdRuleKind) -> IdRule {
        let ranges = match rule {
            IdRuleKind::MustRunAsNonRoot => vec![],
            _ => vec![IdRange {
                min: 1000,
                max: 2000,
            }],
        };
        IdRule { rule, ranges }
    }

    fn users(rule: IdRuleKind) -> ResourceRules {
        ResourceRules {
            run_as_user: Some(id_rule(rule)),
            ..Default::default()
        }
    }

    /// A pod with this pod-level security context and one container per context.
    fn pod_with(pod_sc: Value, containers: &[Value]) -> TestPod {
        let containers: Vec<Value> = containers
            .iter()
            .enumerate()
            .map(|(i, sc)| json!({"name": format!("c{i}"), "securityContext": sc}))
            .collect();
        mk_pod(json!({"securityContext": pod_sc, "containers": containers}))
    }

    #[test]
    fn must_run_as_non_root_accepts_a_flag_or_a_non_zero_user() {
        let pod = pod_with(
            json!({}),
            &[
                json!({"runAsNonRoot": true}),
                json!({"runAsUser": 1000}),
                json!({}),
                json!({"runAsUser": 0, "runAsNonRoot": true}),
                json!({"runAsNonRoot": false}),
            ],
        );
        let findings = check(&users(IdRuleKind::MustRunAsNonRoot), &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "runAsUser spec.containers[2].securityContext.runAsNonRoot",
                "runAsUser spec.containers[3].securityContext.runAsUser",
                "runAsUser spec.containers[4].securityContext.runAsNonRoot",
            ]
        );
        assert_eq!(values(&findings), vec!["", "0", "false"]);
    }

    #[test]
    fn container_settings_take_precedence_over_the_pod() {
        let pod = pod_with(
            json!({"runAsNonRoot": true, "runAsUser": 0}),
            &[json!({"runAsUser": 1001}), json!({})],
        );
        let findings = check(&users(IdRuleKind::MustRunAsNonRoot), &pod);
        assert_eq!(
            paths(&findings),
            vec!["runAsUser spec.securityContext.runAsUser"]
        );
        assert_eq!(findings[0].container.map(|c| c.index), Some(1));
        assert!(
            findings[0]
                .finding
                .message
                .contains("inherited from the pod")
        );
        let pod = pod_with(json!({"runAsNonRoot": true}), &[json!({})]);
        assert!(check(&users(IdRuleKind::MustRunAsNonRoot), &pod).is_empty());
    }

    #[test]
    fn must_run_as_requires_an_id_in_range() {
        let pod = pod_with(
            json!({"runAsUser": 1500}),
            &[
                json!({}),
                json!({"runAsUser": 999}),
                json!({"runAsUser": 2000}),
            ],
        );
        let findings = check(&users(IdRuleKind::MustRunAs), &pod);
        assert_eq!(
            paths(&findings),
            vec!["runAsUser spec.containers[1].securityContext.runAsUser"]
        );
        let unset = pod_with(json!({}), &[json!({})]);
        assert_eq!(
            values(&check(&users(IdRuleKind::MustRunAs), &unset)),
            vec![""]
        );
    }

    #[test]
    fn may_run_as_accepts_unset_ids() {
        let pod = pod_with(json!({}), &[json!({}), json!({"runAsUser": 3000})]);
        assert_eq!(
            values(&check(&users(IdRuleKind::MayRunAs), &pod)),
            vec!["3000"]
        );
    }

    #[test]
    fn run_as_group_reads_groups() {
        let rules = ResourceRules {
            run_as_group: Some(id_rule(IdRuleKind::MustRunAs)),
            ..Default::default()
        };
        let pod = pod_with(
            json!({"runAsGroup": 5, "runAsUser": 1500}),
            &[json!({}), json!({"runAsGroup": 1000})],
        );
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec!["runAsGroup spec.securityContext.runAsGroup"]
        );
        assert_eq!(values(&findings), vec!["5"]);
    }

    #[test]
    fn fs_group_is_a_pod_setting() {
        let rules = |kind| ResourceRules {
            fs_group: Some(id_rule(kind)),
            ..Default::default()
        };
        let unset = pod_with(json!({}), &[json!({})]);
        assert_eq!(
            paths(&check(&rules(IdRuleKind::MustRunAs), &unset)),
            vec!["fsGroup spec.securityContext.fsGroup"]
        );
        assert!(check(&rules(IdRuleKind::MayRunAs), &unset).is_empty());
        let bad = pod_with(json!({"fsGroup": 1}), &[]);
        let findings = check(&rules(IdRuleKind::MayRunAs), &bad);
        assert_eq!(values(&findings), vec!["1"]);
        assert_eq!(findings[0].container, None);
    }

    #[test]
    fn supplemental_groups_must_all_be_in_range() {
        let rules = |kind| ResourceRules {
            supplemental_groups: Some(id_rule(kind)),
            ..Default::default()
        };
        let pod = pod_with(json!({"supplementalGroups": [1000, 7, 2000]}), &[]);
        let findings = check(&rules(IdRuleKind::MayRunAs), &pod);
        assert_eq!(
            paths(&findings),
            vec!["supplementalGroups spec.securityContext.supplementalGroups[1]"]
        );
        let none = pod_with(json!({}), &[]);
        assert_eq!(
            values(&check(&rules(IdRuleKind::MustRunAs), &none)),
            vec![""]
        );
        assert!(check(&rules(IdRuleKind::MayRunAs), &none).is_empty());
    }
}
