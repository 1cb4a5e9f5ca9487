//! Controls on access to the host: privileged containers, host namespaces, host ports,
//! Windows HostProcess, and hosts named in probes and lifecycle hooks.

use super::Out;
use crate::{HostNamespacesRule, HostPortsRule};

pub(super) fn privileged(out: &mut Out) {
    let pod = out.pod;
    for (at, c) in pod.containers() {
        if c.security_context.privileged == Some(true) {
            let message = format!("container {:?} must not be privileged", c.name);
            let path = at.field("securityContext.privileged");
            out.push("privileged", Some(at), path, "true", message);
        }
    }
}

pub(super) fn namespaces(out: &mut Out, rule: &HostNamespacesRule) {
    let pod = out.pod;
    let spec = &pod.spec;
    for (set, allowed, field) in [
        (spec.host_network, rule.allow_network, "hostNetwork"),
        (spec.host_pid, rule.allow_pid, "hostPID"),
        (spec.host_ipc, rule.allow_ipc, "hostIPC"),
    ] {
        if set && !allowed {
            let message = format!("{field}: true is not allowed");
            out.push(
                "hostNamespaces",
                None,
                pod.spec_field(field),
                "true",
                message,
            );
        }
    }
}

pub(super) fn ports(out: &mut Out, rule: &HostPortsRule) {
    let pod = out.pod;
    for (at, c) in pod.containers() {
        for (i, port) in c.ports.iter().enumerate() {
            let host_port = port.host_port;
            if host_port == 0 {
                continue;
            }
            let allowed = rule
                .allowed
                .is_some_and(|r| i32::from(r.min) <= host_port && host_port <= i32::from(r.max));
            if !allowed {
                let range = match rule.allowed {
                    Some(r) => format!("allowed: {}-{}", r.min, r.max),
                    None => "no host port is allowed".to_owned(),
                };
                let message = format!(
                    "container {:?} uses host port {host_port} ({range})",
                    c.name
                );
                let path = at.field(&format!("ports[{i}].hostPort"));
                out.push("hostPorts", Some(at), path, host_port.to_string(), message);
            }
        }
    }
}

pub(super) fn windows_host_process(out: &mut Out) {
    let pod = out.pod;
    if pod.spec.security_context.windows_options.host_process == Some(true) {
        let path = pod.spec_field("securityContext.windowsOptions.hostProcess");
        let message = "the pod must not run as a Windows HostProcess".to_owned();
        out.push("windowsHostProcess", None, path, "true", message);
    }
    for (at, c) in pod.containers() {
        if c.security_context.windows_options.host_process == Some(true) {
            let path = at.field("securityContext.windowsOptions.hostProcess");
            let message = format!(
                "container {:?} must not run as a Windows HostProcess",
                c.name
            );
            out.push("windowsHostProcess", Some(at), path, "true", message);
        }
    }
}

pub(super) fn probes(out: &mut Out) {
    let pod = out.pod;
    for (at, c) in pod.containers() {
        for (field, target) in c.host_targets() {
            if !target.host.is_empty() {
                let message = format!(
                    "container {:?} must not name a host in {field} (the kubelet would connect to {:?})",
                    c.name, target.host
                );
                let path = at.field(&format!("{field}.host"));
                out.push("hostProbes", Some(at), path, target.host.as_str(), message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::check;
    use super::super::testing::{mk_pod, paths, values, with_context};
    use crate::{HostNamespacesRule, HostPortsRule, PortRange, ResourceRules};

    #[test]
    fn privileged_containers_are_forbidden_in_every_list() {
        let pod = mk_pod(json!({
            "containers": [{"name": "a", "securityContext": {"privileged": false}}],
            "initContainers": [{"name": "i", "securityContext": {"privileged": true}}],
            "ephemeralContainers": [{"name": "e", "securityContext": {"privileged": true}}],
        }));
        let rules = ResourceRules {
            forbid_privileged: true,
            ..Default::default()
        };
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "privileged spec.ephemeralContainers[0].securityContext.privileged",
                "privileged spec.initContainers[0].securityContext.privileged",
            ]
        );
        assert!(findings.iter().all(|f| f.container.is_some()));
        assert!(check(&rules, &with_context(json!({}))).is_empty());
    }

    #[test]
    fn host_namespaces_are_forbidden_unless_allowed() {
        let pod = mk_pod(json!({"hostNetwork": true, "hostPID": true, "hostIPC": true}));
        let rules = |rule| ResourceRules {
            host_namespaces: Some(rule),
            ..Default::default()
        };
        let all = check(&rules(HostNamespacesRule::default()), &pod);
        assert_eq!(
            paths(&all),
            vec![
                "hostNamespaces spec.hostIPC",
                "hostNamespaces spec.hostNetwork",
                "hostNamespaces spec.hostPID"
            ]
        );
        assert!(all.iter().all(|f| f.container.is_none()));
        let some = HostNamespacesRule {
            allow_network: true,
            allow_pid: true,
            allow_ipc: false,
        };
        assert_eq!(
            paths(&check(&rules(some), &pod)),
            vec!["hostNamespaces spec.hostIPC"]
        );
        assert!(check(&rules(HostNamespacesRule::default()), &mk_pod(json!({}))).is_empty());
    }

    #[test]
    fn host_ports_outside_the_range_are_forbidden() {
        let pod = mk_pod(json!({"containers": [{"name": "a", "ports": [
            {"containerPort": 80}, {"hostPort": 0}, {"hostPort": 8000}, {"hostPort": 8080}, {"hostPort": 8081}, {"hostPort": 80},
        ]}]}));
        let range = Some(PortRange {
            min: 8000,
            max: 8080,
        });
        let rules = ResourceRules {
            host_ports: Some(HostPortsRule { allowed: range }),
            ..Default::default()
        };
        let findings = check(&rules, &pod);
        assert_eq!(values(&findings), vec!["8081", "80"]);
        assert_eq!(
            findings[0].finding.path,
            "spec.containers[0].ports[4].hostPort"
        );
    }

    #[test]
    fn an_empty_host_ports_rule_forbids_every_host_port_but_zero() {
        let pod = mk_pod(
            json!({"containers": [{"name": "a", "ports": [{"hostPort": 0}, {"hostPort": 9000}]}]}),
        );
        let rules = ResourceRules {
            host_ports: Some(HostPortsRule::default()),
            ..Default::default()
        };
        assert_eq!(values(&check(&rules, &pod)), vec!["9000"]);
    }

    #[test]
    fn windows_host_process_is_forbidden_at_pod_and_container_level() {
        let pod = mk_pod(json!({
            "securityContext": {"windowsOptions": {"hostProcess": true}},
            "containers": [{"name": "a", "securityContext": {"windowsOptions": {"hostProcess": true}}},
                           {"name": "b", "securityContext": {"windowsOptions": {"hostProcess": false}}}],
        }));
        let rules = ResourceRules {
            forbid_windows_host_process: true,
            ..Default::default()
        };
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "windowsHostProcess spec.containers[0].securityContext.windowsOptions.hostProcess",
                "windowsHostProcess spec.securityContext.windowsOptions.hostProcess",
            ]
        );
        assert_eq!(findings[1].container, None);
    }

    #[test]
    fn hosts_in_probes_and_hooks_are_forbidden() {
        let pod = mk_pod(json!({"containers": [{"name": "a",
            "livenessProbe": {"httpGet": {"host": "", "port": 80}},
            "readinessProbe": {"httpGet": {"host": "169.254.169.254", "port": 80}},
            "lifecycle": {"postStart": {"tcpSocket": {"host": "db", "port": 5432}}},
        }]}));
        let rules = ResourceRules {
            forbid_host_probes: true,
            ..Default::default()
        };
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "hostProbes spec.containers[0].lifecycle.postStart.tcpSocket.host",
                "hostProbes spec.containers[0].readinessProbe.httpGet.host",
            ]
        );
        assert_eq!(values(&findings), vec!["db", "169.254.169.254"]);
    }
}
