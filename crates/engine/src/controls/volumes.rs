//! Pod-level controls: volume sources, hostPath prefixes, and sysctls.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{Out, describe_list};
use crate::k8s::{Container, ContainerPath};
use crate::{HostPathAllow, HostPathRule, SysctlsRule, VolumeType, VolumesRule};

pub(super) fn volume_types(out: &mut Out, rule: &VolumesRule) {
    let pod = out.pod;
    for (i, volume) in pod.spec.volumes.iter().enumerate() {
        for source in volume.sources.iter() {
            if !rule.allow.contains(&source) {
                let message = format!(
                    "volume {:?} uses {source}, which is not allowed (allowed: {})",
                    volume.name,
                    describe_list(&rule.allow)
                );
                let path = pod.spec_field(&format!("volumes[{i}].{source}"));
                out.push("volumes", None, path, source.as_str(), message);
                continue;
            }
            let driver = volume.flex_volume_driver.as_deref().unwrap_or_default();
            let drivers = &rule.flex_volume_drivers;
            if source == VolumeType::FlexVolume
                && !drivers.is_empty()
                && !drivers.iter().any(|d| d == driver)
            {
                let message = format!(
                    "volume {:?} uses flexVolume driver {driver:?}, which is not allowed (allowed: {})",
                    volume.name,
                    describe_list(drivers)
                );
                let path = pod.spec_field(&format!("volumes[{i}].flexVolume.driver"));
                out.push("volumes", None, path, driver, message);
            }
        }
    }
}

/// A writable volume mount: its container, its index in the container's mounts.
type WritableMount<'a> = (ContainerPath, usize, &'a Container);

/// A hostPath volume must lie under an allowed prefix. When every prefix it lies under is
/// `readOnly`, each mount of the volume must be read-only; those findings name the container.
pub(super) fn host_path(out: &mut Out, rule: &HostPathRule) {
    let pod = out.pod;
    // Mounts by volume name, gathered at the first read-only volume that needs them: one pass
    // over every container's mounts, not one per volume.
    let mut mounts: Option<HashMap<&str, Vec<WritableMount>>> = None;
    for (i, volume) in pod.spec.volumes.iter().enumerate() {
        let Some(path) = &volume.host_path else {
            continue;
        };
        let mut covering = rule
            .allow
            .iter()
            .filter(|a| under_prefix(path, &a.path_prefix));
        let Some(first) = covering.next() else {
            let message = format!(
                "hostPath {path:?} of volume {:?} is not under an allowed prefix (allowed: {})",
                volume.name,
                describe_prefixes(&rule.allow)
            );
            let field = pod.spec_field(&format!("volumes[{i}].hostPath.path"));
            out.push("hostPath", None, field, path.as_str(), message);
            continue;
        };
        if !first.read_only || covering.any(|a| !a.read_only) {
            continue;
        }
        let writable = mounts.get_or_insert_with(|| {
            let mut by_volume: HashMap<&str, Vec<_>> = HashMap::new();
            for (at, c) in pod.containers() {
                for (j, mount) in c.volume_mounts.iter().enumerate() {
                    if !mount.read_only {
                        by_volume
                            .entry(mount.name.as_str())
                            .or_default()
                            .push((at, j, c));
                    }
                }
            }
            by_volume
        });
        for &(at, j, c) in writable.get(volume.name.as_str()).into_iter().flatten() {
            let message = format!(
                "container {:?} must mount hostPath volume {:?} ({path}) read-only",
                c.name, volume.name
            );
            let field = at.field(&format!("volumeMounts[{j}].readOnly"));
            out.push("hostPath", Some(at), field, "false", message);
        }
    }
}

/// Whether `path` is `prefix` or below it, comparing whole components. `.` and empty
/// components are ignored; a relative path or one with `..` is under no prefix.
fn under_prefix(path: &str, prefix: &str) -> bool {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return false;
    }
    let mut parts = path.split('/').filter(|c| !c.is_empty() && *c != ".");
    prefix
        .split('/')
        .filter(|c| !c.is_empty())
        .all(|want| parts.next() == Some(want))
}

fn describe_prefixes(allow: &[HostPathAllow]) -> String {
    let items: Vec<String> = allow
        .iter()
        .map(|a| {
            if a.read_only {
                format!("{} (read-only)", a.path_prefix)
            } else {
                a.path_prefix.clone()
            }
        })
        .collect();
    describe_list(&items)
}

/// A sysctl must match an `allow` glob and no `forbid` glob.
pub(super) fn sysctls(out: &mut Out, rule: &SysctlsRule) {
    let pod = out.pod;
    for (i, sysctl) in pod.spec.security_context.sysctls.iter().enumerate() {
        let name = dotted(&sysctl.name);
        let allowed = rule.allow.iter().any(|g| g.matches(&name));
        let forbidden = rule.forbid.iter().any(|g| g.matches(&name));
        if allowed && !forbidden {
            continue;
        }
        let reason = if forbidden {
            "matches a forbidden pattern".to_owned()
        } else {
            format!("is not allowed (allowed: {})", describe_list(&rule.allow))
        };
        let message = format!("sysctl {:?} {reason}", sysctl.name);
        let path = pod.spec_field(&format!("securityContext.sysctls[{i}].name"));
        out.push("sysctls", None, path, sysctl.name.as_str(), message);
    }
}

/// The dotted form of a sysctl name: Kubernetes also accepts `/` as the separator, and when
/// the first separator is `/` it swaps `/` and `.` (`net/ipv4/conf/eth0.1/rp_filter` is
/// `net.ipv4.conf.eth0/1.rp_filter`). Allocates only for slash-separated names.
fn dotted(name: &str) -> Cow<'_, str> {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => Cow::Owned(
            name.chars()
                .map(|c| match c {
                    '/' => '.',
                    '.' => '/',
                    c => c,
                })
                .collect(),
        ),
        _ => Cow::Borrowed(name),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::check;
    use super::super::testing::{TestPod, mk_pod, paths, values};
    use super::{dotted, under_prefix};
    use crate::{
        Glob, HostPathAllow, HostPathRule, ResourceRules, SysctlsRule, VolumeType, VolumesRule,
    };

    fn host_paths(allow: &[(&str, bool)]) -> ResourceRules {
        let allow = allow
            .iter()
            .map(|&(prefix, read_only)| HostPathAllow {
                path_prefix: prefix.to_owned(),
                read_only,
            })
            .collect();
        ResourceRules {
            host_path: Some(HostPathRule { allow }),
            ..Default::default()
        }
    }

    fn host_path_pod(path: &str, mounts: &[bool]) -> TestPod {
        let containers: Vec<_> = mounts
            .iter()
            .enumerate()
            .map(|(i, ro)| json!({"name": format!("c{i}"), "volumeMounts": [
                {"name": "other", "mountPath": "/x"}, {"name": "host", "mountPath": "/h", "readOnly": ro}]}))
            .collect();
        mk_pod(json!({"containers": containers, "volumes": [
            {"name": "other", "emptyDir": {}}, {"name": "host", "hostPath": {"path": path}}]}))
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(under_prefix("/foo", "/foo"));
        assert!(under_prefix("/foo/bar", "/foo"));
        assert!(under_prefix("/foo//./bar/", "/foo/bar"));
        assert!(under_prefix("/anything", "/"));
        assert!(!under_prefix("/fool", "/foo"));
        assert!(!under_prefix("/", "/foo"));
        assert!(!under_prefix("/foo/../etc", "/foo"));
        assert!(!under_prefix("foo/bar", "/foo"));
    }

    #[test]
    fn an_empty_host_path_rule_forbids_every_host_path() {
        let findings = check(&host_paths(&[]), &host_path_pod("/var/log", &[true]));
        assert_eq!(
            paths(&findings),
            vec!["hostPath spec.volumes[1].hostPath.path"]
        );
        assert_eq!(values(&findings), vec!["/var/log"]);
        assert_eq!(findings[0].container, None);
    }

    #[test]
    fn host_paths_must_lie_under_an_allowed_prefix() {
        let rules = host_paths(&[("/var/log", false)]);
        assert!(check(&rules, &host_path_pod("/var/log/app", &[false])).is_empty());
        assert_eq!(
            values(&check(&rules, &host_path_pod("/var/logs", &[false]))),
            vec!["/var/logs"]
        );
    }

    #[test]
    fn read_only_prefixes_require_every_mount_read_only() {
        let rules = host_paths(&[("/var/log", true)]);
        assert!(check(&rules, &host_path_pod("/var/log", &[true, true])).is_empty());
        let findings = check(&rules, &host_path_pod("/var/log", &[true, false]));
        assert_eq!(
            paths(&findings),
            vec!["hostPath spec.containers[1].volumeMounts[1].readOnly"]
        );
        assert_eq!(findings[0].container.map(|c| c.index), Some(1));
        // A writable entry that also covers the path admits writable mounts.
        let either = host_paths(&[("/var/log", true), ("/var", false)]);
        assert!(check(&either, &host_path_pod("/var/log", &[false])).is_empty());
    }

    #[test]
    fn volume_sources_must_be_allowed() {
        let pod = mk_pod(json!({"volumes": [
            {"name": "a", "configMap": {"name": "c"}},
            {"name": "b", "hostPath": {"path": "/"}},
            {"name": "c"},
            {"name": "d", "flexVolume": {"driver": "example/lvm"}},
            {"name": "e", "flexVolume": {"driver": "evil/driver"}},
        ]}));
        let rule = |allow: Vec<VolumeType>, drivers: &[&str]| ResourceRules {
            volumes: Some(VolumesRule {
                allow,
                flex_volume_drivers: drivers.iter().map(|d| (*d).to_owned()).collect(),
            }),
            ..Default::default()
        };
        let allow = vec![
            VolumeType::ConfigMap,
            VolumeType::EmptyDir,
            VolumeType::FlexVolume,
        ];
        let findings = check(&rule(allow.clone(), &["example/lvm"]), &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "volumes spec.volumes[1].hostPath",
                "volumes spec.volumes[4].flexVolume.driver"
            ]
        );
        assert_eq!(values(&findings), vec!["hostPath", "evil/driver"]);
        assert_eq!(check(&rule(allow, &[]), &pod).len(), 1);
        assert_eq!(check(&rule(vec![], &[]), &pod).len(), 5);
    }

    fn sysctl_rules(allow: &[&str], forbid: &[&str]) -> ResourceRules {
        let globs = |list: &[&str]| list.iter().map(|g| Glob::new(g).unwrap()).collect();
        let rule = SysctlsRule {
            allow: globs(allow),
            forbid: globs(forbid),
        };
        ResourceRules {
            sysctls: Some(rule),
            ..Default::default()
        }
    }

    #[test]
    fn sysctls_must_match_allow_and_not_forbid() {
        let pod = mk_pod(json!({"securityContext": {"sysctls": [
            {"name": "net.ipv4.tcp_syncookies", "value": "1"},
            {"name": "kernel.shm_rmid_forced", "value": "1"},
            {"name": "kernel/msgmax", "value": "1"},
            {"name": "vm.swappiness", "value": "1"},
        ]}}));
        let findings = check(
            &sysctl_rules(&["net.ipv4.tcp_*", "kernel.*"], &["kernel.msg*"]),
            &pod,
        );
        assert_eq!(values(&findings), vec!["kernel/msgmax", "vm.swappiness"]);
        assert_eq!(
            findings[0].finding.path,
            "spec.securityContext.sysctls[2].name"
        );
        assert!(findings[0].finding.message.contains("forbidden"));
        assert_eq!(check(&sysctl_rules(&[], &[]), &pod).len(), 4);
        assert_eq!(check(&sysctl_rules(&["*"], &["vm.*"]), &pod).len(), 1);
    }

    #[test]
    fn slash_separated_sysctls_read_as_dotted() {
        assert_eq!(dotted("net.ipv4.ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(dotted("kernel/shm_rmid_forced"), "kernel.shm_rmid_forced");
        assert_eq!(
            dotted("net/ipv4/conf/eth0.1/rp_filter"),
            "net.ipv4.conf.eth0/1.rp_filter"
        );
    }
}
