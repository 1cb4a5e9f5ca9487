//! Controls on what a container may do: capabilities, privilege escalation, a read-only root
//! filesystem, the /proc mount type, and resource limits.

use super::{Out, describe_list};
use crate::{CapabilitiesRule, Capability, ProcMountRule, ProcMountType, ResourcesRule};

pub(super) fn capabilities(out: &mut Out, rule: &CapabilitiesRule) {
    let pod = out.pod;
    let require_drops = !rule.required_drop.is_empty() && out.linux_requirements_apply();
    for (at, c) in pod.containers() {
        let caps = &c.security_context.capabilities;
        for (i, added) in caps.add.iter().enumerate() {
            if !rule
                .allow
                .iter()
                .any(|allowed| same_capability(added, allowed))
            {
                let message = format!(
                    "container {:?} must not add capability {added:?} (allowed: {})",
                    c.name,
                    describe_list(&rule.allow)
                );
                let path = at.field(&format!("securityContext.capabilities.add[{i}]"));
                out.push("capabilities", Some(at), path, added.as_str(), message);
            }
        }
        if !require_drops || caps.drop.iter().any(|d| is_all(d)) {
            continue;
        }
        let dropped =
            |required: &&Capability| caps.drop.iter().any(|d| same_capability(d, required));
        if rule.required_drop.iter().all(|r| dropped(&r)) {
            continue;
        }
        let missing: Vec<&Capability> = rule.required_drop.iter().filter(|r| !dropped(r)).collect();
        let message = format!(
            "container {:?} must drop {} (or ALL)",
            c.name,
            describe_list(&missing)
        );
        let path = at.field("securityContext.capabilities.drop");
        out.push("capabilities", Some(at), path, "", message);
    }
}

/// Compares a capability as written in a container with a normalised one, ignoring case and
/// an optional `CAP_` prefix, without allocating.
fn same_capability(written: &str, capability: &Capability) -> bool {
    let bare = match written.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("CAP_") => &written[4..],
        _ => written,
    };
    bare.eq_ignore_ascii_case(capability.as_str())
}

fn is_all(written: &str) -> bool {
    written.eq_ignore_ascii_case("ALL") || written.eq_ignore_ascii_case("CAP_ALL")
}

pub(super) fn no_privilege_escalation(out: &mut Out) {
    if !out.linux_requirements_apply() {
        return;
    }
    let pod = out.pod;
    for (at, c) in pod.containers() {
        let value = c.security_context.allow_privilege_escalation;
        if value != Some(false) {
            let message = format!(
                "container {:?} must set securityContext.allowPrivilegeEscalation: false",
                c.name
            );
            let path = at.field("securityContext.allowPrivilegeEscalation");
            out.push(
                "allowPrivilegeEscalation",
                Some(at),
                path,
                bool_text(value),
                message,
            );
        }
    }
}

pub(super) fn read_only_root_filesystem(out: &mut Out) {
    if !out.linux_requirements_apply() {
        return;
    }
    let pod = out.pod;
    for (at, c) in pod.containers() {
        let value = c.security_context.read_only_root_filesystem;
        if value != Some(true) {
            let message = format!(
                "container {:?} must set securityContext.readOnlyRootFilesystem: true",
                c.name
            );
            let path = at.field("securityContext.readOnlyRootFilesystem");
            out.push(
                "readOnlyRootFilesystem",
                Some(at),
                path,
                bool_text(value),
                message,
            );
        }
    }
}

/// An unset procMount is the runtime default and always admitted; a set one must be allowed.
pub(super) fn proc_mount(out: &mut Out, rule: &ProcMountRule) {
    let pod = out.pod;
    for (at, c) in pod.containers() {
        let Some(mount) = &c.security_context.proc_mount else {
            continue;
        };
        let allowed = ProcMountType::from_name(mount).is_some_and(|t| rule.allow.contains(&t));
        if !allowed {
            let message = format!(
                "container {:?} must not set procMount {mount:?} (allowed: {})",
                c.name,
                describe_list(&rule.allow)
            );
            let path = at.field("securityContext.procMount");
            out.push("procMount", Some(at), path, mount.as_str(), message);
        }
    }
}

/// Ephemeral containers cannot declare resources, so they are not required to.
pub(super) fn resource_limits(out: &mut Out, rule: &ResourcesRule) {
    let pod = out.pod;
    for (at, c) in pod.containers() {
        if at.kind == crate::k8s::ContainerKind::EphemeralContainer {
            continue;
        }
        for resource in &rule.require_limits {
            if !c.resources.limits.contains_key(resource.as_str()) {
                let message = format!("container {:?} must set a {resource} limit", c.name);
                let path = at.field(&format!("resources.limits.{resource}"));
                out.push("resources", Some(at), path, "", message);
            }
        }
    }
}

/// A tri-state boolean as written: `true`, `false`, or empty when unset.
fn bool_text(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "true",
        Some(false) => "false",
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::check;
    use super::super::testing::{mk_pod, paths, values, with_context};
    use crate::{
        CapabilitiesRule, Capability, ComputeResource, ProcMountRule, ProcMountType, ResourceRules,
        ResourcesRule,
    };

    fn caps(allow: &[&str], required_drop: &[&str]) -> ResourceRules {
        let parse = |names: &[&str]| {
            names
                .iter()
                .map(|n| Capability::parse(n).unwrap())
                .collect()
        };
        let rule = CapabilitiesRule {
            allow: parse(allow),
            required_drop: parse(required_drop),
        };
        ResourceRules {
            capabilities: Some(rule),
            ..Default::default()
        }
    }

    #[test]
    fn added_capabilities_must_be_allowed_ignoring_case_and_prefix() {
        let pod = with_context(
            json!({"capabilities": {"add": ["cap_net_bind_service", "NET_ADMIN", "ALL", "bad name"]}}),
        );
        let findings = check(&caps(&["NET_BIND_SERVICE"], &[]), &pod);
        assert_eq!(values(&findings), vec!["NET_ADMIN", "ALL", "bad name"]);
        assert_eq!(
            findings[0].finding.path,
            "spec.containers[0].securityContext.capabilities.add[1]"
        );
    }

    #[test]
    fn an_empty_capabilities_rule_forbids_adding_any() {
        let pod = with_context(json!({"capabilities": {"add": ["CHOWN"]}}));
        assert_eq!(values(&check(&caps(&[], &[]), &pod)), vec!["CHOWN"]);
        assert!(check(&caps(&[], &[]), &with_context(json!({}))).is_empty());
    }

    #[test]
    fn required_drops_are_satisfied_by_name_or_by_all() {
        let rules = caps(&[], &["NET_RAW", "SYS_ADMIN"]);
        let pod = mk_pod(json!({"containers": [
            {"name": "a", "securityContext": {"capabilities": {"drop": ["all"]}}},
            {"name": "b", "securityContext": {"capabilities": {"drop": ["CAP_NET_RAW", "sys_admin"]}}},
            {"name": "c", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
            {"name": "d"},
        ]}));
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "capabilities spec.containers[2].securityContext.capabilities.drop",
                "capabilities spec.containers[3].securityContext.capabilities.drop",
            ]
        );
        assert!(
            findings[0]
                .finding
                .message
                .contains("must drop SYS_ADMIN (or ALL)"),
            "{}",
            findings[0].finding.message
        );
        assert!(findings[1].finding.message.contains("NET_RAW, SYS_ADMIN"));
    }

    #[test]
    fn privilege_escalation_must_be_explicitly_false() {
        let pod = mk_pod(json!({"containers": [
            {"name": "a", "securityContext": {"allowPrivilegeEscalation": false}},
            {"name": "b", "securityContext": {"allowPrivilegeEscalation": true}},
            {"name": "c"},
        ]}));
        let rules = ResourceRules {
            forbid_privilege_escalation: true,
            ..Default::default()
        };
        let findings = check(&rules, &pod);
        assert_eq!(values(&findings), vec!["true", ""]);
        assert_eq!(
            findings[1].finding.path,
            "spec.containers[2].securityContext.allowPrivilegeEscalation"
        );
    }

    #[test]
    fn root_filesystem_must_be_explicitly_read_only() {
        let pod = mk_pod(json!({"containers": [
            {"name": "a", "securityContext": {"readOnlyRootFilesystem": true}},
            {"name": "b", "securityContext": {"readOnlyRootFilesystem": false}},
            {"name": "c"},
        ]}));
        let rules = ResourceRules {
            require_read_only_root_filesystem: true,
            ..Default::default()
        };
        assert_eq!(values(&check(&rules, &pod)), vec!["false", ""]);
    }

    #[test]
    fn windows_pods_are_not_required_to_set_linux_fields() {
        let pod = mk_pod(json!({"os": {"name": "windows"}, "containers": [{"name": "a"}]}));
        let rules = ResourceRules {
            forbid_privilege_escalation: true,
            require_read_only_root_filesystem: true,
            ..caps(&[], &["ALL"])
        };
        assert!(check(&rules, &pod).is_empty());
    }

    #[test]
    fn proc_mount_must_be_allowed_when_set() {
        let pod = mk_pod(json!({"containers": [
            {"name": "a"},
            {"name": "b", "securityContext": {"procMount": "Default"}},
            {"name": "c", "securityContext": {"procMount": "Unmasked"}},
            {"name": "d", "securityContext": {"procMount": "Weird"}},
        ]}));
        let rules = |allow| ResourceRules {
            proc_mount: Some(ProcMountRule { allow }),
            ..Default::default()
        };
        assert_eq!(
            values(&check(&rules(vec![ProcMountType::Default]), &pod)),
            vec!["Unmasked", "Weird"]
        );
        assert_eq!(
            values(&check(&rules(vec![]), &pod)),
            vec!["Default", "Unmasked", "Weird"]
        );
    }

    #[test]
    fn limits_are_required_on_regular_and_init_containers() {
        let pod = mk_pod(json!({
            "containers": [{"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                           {"name": "b", "resources": {"limits": {"cpu": 2}, "requests": {"memory": "1Gi"}}}],
            "initContainers": [{"name": "i"}],
            "ephemeralContainers": [{"name": "debug"}],
        }));
        let rule = ResourcesRule {
            require_limits: vec![ComputeResource::Cpu, ComputeResource::Memory],
        };
        let rules = ResourceRules {
            resources: Some(rule),
            ..Default::default()
        };
        assert_eq!(
            paths(&check(&rules, &pod)),
            vec![
                "resources spec.containers[1].resources.limits.memory",
                "resources spec.initContainers[0].resources.limits.cpu",
                "resources spec.initContainers[0].resources.limits.memory",
            ]
        );
    }
}
