//! The individual resource controls of `ResourceRules` (all but `podSecurity`), evaluated on a
//! pod with the semantics of POLICY-FORMAT.md, plus the Service rules. Each finding's rule is
//! the control's field name (`hostPath`, `runAsUser`, `service`, ...). Container findings name
//! their container (`PodFinding::container`), including findings about values a container
//! inherits from the pod, so the engine can drop those of whitelisted containers.
//!
//! Windows pods (`spec.os.name: windows`) cannot set Linux-only fields, so the requirements to
//! set one (allowPrivilegeEscalation, readOnlyRootFilesystem, capabilities.requiredDrop, a
//! seccomp or AppArmor profile, and a `MustRunAs` id) do not apply to them, as in Pod Security
//! Admission; every prohibition still does.

mod host;
mod ids;
mod privilege;
mod profiles;
mod service;
mod volumes;

pub use service::check_service;

use crate::ResourceRules;
use crate::k8s::{ContainerPath, PodFinding, PodTemplate};
use crate::{Finding, IdRange};

/// Evaluates every control set in `rules`. Findings are sorted by path, then rule; a container
/// finding's path starts with its container's path unless the value is inherited from the pod
/// or set by an annotation.
pub fn check(rules: &ResourceRules, pod: &PodTemplate) -> Vec<PodFinding> {
    let mut out = Out {
        pod,
        findings: Vec::new(),
    };
    if rules.forbid_privileged {
        host::privileged(&mut out);
    }
    if let Some(rule) = &rules.host_namespaces {
        host::namespaces(&mut out, rule);
    }
    if let Some(rule) = &rules.host_ports {
        host::ports(&mut out, rule);
    }
    if let Some(rule) = &rules.host_path {
        volumes::host_path(&mut out, rule);
    }
    if let Some(rule) = &rules.capabilities {
        privilege::capabilities(&mut out, rule);
    }
    if rules.forbid_privilege_escalation {
        privilege::no_privilege_escalation(&mut out);
    }
    if rules.require_read_only_root_filesystem {
        privilege::read_only_root_filesystem(&mut out);
    }
    if let Some(rule) = &rules.run_as_user {
        ids::run_as_user(&mut out, rule);
    }
    if let Some(rule) = &rules.run_as_group {
        ids::run_as_group(&mut out, rule);
    }
    if let Some(rule) = &rules.fs_group {
        ids::fs_group(&mut out, rule);
    }
    if let Some(rule) = &rules.supplemental_groups {
        ids::supplemental_groups(&mut out, rule);
    }
    if let Some(rule) = &rules.seccomp {
        profiles::seccomp(&mut out, rule);
    }
    if let Some(rule) = &rules.app_armor {
        profiles::app_armor(&mut out, rule);
    }
    if let Some(rule) = &rules.se_linux {
        profiles::se_linux(&mut out, rule);
    }
    if let Some(rule) = &rules.proc_mount {
        privilege::proc_mount(&mut out, rule);
    }
    if let Some(rule) = &rules.sysctls {
        volumes::sysctls(&mut out, rule);
    }
    if let Some(rule) = &rules.volumes {
        volumes::volume_types(&mut out, rule);
    }
    if rules.forbid_windows_host_process {
        host::windows_host_process(&mut out);
    }
    if rules.forbid_host_probes {
        host::probes(&mut out);
    }
    if let Some(rule) = &rules.resources {
        privilege::resource_limits(&mut out, rule);
    }
    let mut findings = out.findings;
    findings.sort_by(|a, b| {
        (&a.finding.path, &a.finding.rule).cmp(&(&b.finding.path, &b.finding.rule))
    });
    findings
}

/// The pod under evaluation and the findings so far.
struct Out<'a> {
    pod: &'a PodTemplate,
    findings: Vec<PodFinding>,
}

impl Out<'_> {
    fn push(
        &mut self,
        rule: &'static str,
        container: Option<ContainerPath>,
        path: String,
        value: impl Into<String>,
        message: String,
    ) {
        let finding = Finding::new(rule, path, value, message);
        self.findings.push(PodFinding { container, finding });
    }

    /// Whether requirements to set Linux-only fields apply (see the module documentation).
    fn linux_requirements_apply(&self) -> bool {
        !self.pod.spec.is_windows()
    }
}

/// Whether an id lies in one of the inclusive ranges.
fn in_ranges(id: i64, ranges: &[IdRange]) -> bool {
    ranges
        .iter()
        .any(|r| i64::from(r.min) <= id && id <= i64::from(r.max))
}

/// Ranges as written in messages: `1000-65535, 70000-70010`.
fn describe_ranges(ranges: &[IdRange]) -> String {
    let items: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}-{}", r.min, r.max))
        .collect();
    items.join(", ")
}

/// A list of names for messages: `a, b, c`, or `none` when empty.
fn describe_list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    items.join(", ")
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::{mk_pod, paths};
    use super::*;
    use crate::{HostNamespacesRule, HostPortsRule};

    #[test]
    fn no_rules_no_findings() {
        let pod = mk_pod(json!({"hostNetwork": true, "containers": [{"name": "a",
            "securityContext": {"privileged": true}}]}));
        assert!(check(&ResourceRules::default(), &pod).is_empty());
    }

    #[test]
    fn findings_are_sorted_by_path_then_rule() {
        let pod = mk_pod(json!({"hostNetwork": true, "containers": [{"name": "a",
            "ports": [{"hostPort": 80}], "securityContext": {"privileged": true}}]}));
        let rules = ResourceRules {
            forbid_privileged: true,
            host_namespaces: Some(HostNamespacesRule::default()),
            host_ports: Some(HostPortsRule::default()),
            ..ResourceRules::default()
        };
        assert_eq!(
            paths(&check(&rules, &pod)),
            vec![
                "hostPorts spec.containers[0].ports[0].hostPort",
                "privileged spec.containers[0].securityContext.privileged",
                "hostNamespaces spec.hostNetwork",
            ]
        );
    }

    #[test]
    fn workload_findings_are_under_the_pod_template() {
        let object = json!({"spec": {"template": {"spec": {
            "hostIPC": true,
            "initContainers": [{"name": "i", "securityContext": {"privileged": true}}],
        }}}});
        let pod = crate::k8s::test_pod(crate::Kind::StatefulSet, &object);
        let rules = ResourceRules {
            forbid_privileged: true,
            host_namespaces: Some(HostNamespacesRule::default()),
            ..ResourceRules::default()
        };
        assert_eq!(
            paths(&check(&rules, &pod)),
            vec![
                "hostNamespaces spec.template.spec.hostIPC",
                "privileged spec.template.spec.initContainers[0].securityContext.privileged",
            ]
        );
    }

    #[test]
    fn ranges_are_inclusive() {
        let ranges = [IdRange { min: 10, max: 20 }, IdRange { min: 30, max: 30 }];
        assert!(in_ranges(10, &ranges) && in_ranges(20, &ranges) && in_ranges(30, &ranges));
        assert!(!in_ranges(9, &ranges) && !in_ranges(21, &ranges) && !in_ranges(-1, &ranges));
        assert_eq!(describe_ranges(&ranges), "10-20, 30-30");
    }
}
