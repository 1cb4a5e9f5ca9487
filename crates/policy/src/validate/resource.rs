//! Validates `rules.resource`: that the section restricts something, Pod Security Standards,
//! capabilities, sysctls, volumes, resource limits and services. Host ports and paths are in
//! `host`, security-context controls in `security`.

use portcullis_proto::v1 as proto;

use super::errors::{Errors, Path, one_of, parse_list, unknown};
use super::{host, security, syntax};
use crate::model::{
    CapabilitiesRule, Capability, ComputeResource, HostNamespacesRule, LATEST_PSS_MINOR,
    PodSecurityLevel, PodSecurityRule, PodSecurityVersion, ResourceRules, ResourcesRule,
    ServiceRule, ServiceType, SysctlsRule, VolumeType, VolumesRule,
};

pub(super) fn resource_rules(
    rules: &proto::ResourceRules,
    path: &Path,
    errors: &mut Errors,
) -> ResourceRules {
    use security::IdField;
    let converted = ResourceRules {
        pod_security: rules
            .pod_security
            .as_ref()
            .and_then(|r| pod_security(r, &path.field("podSecurity"), errors)),
        forbid_privileged: rules.privileged.is_some(),
        host_namespaces: rules.host_namespaces.as_ref().map(|r| HostNamespacesRule {
            allow_network: r.allow_network,
            allow_pid: r.allow_pid,
            allow_ipc: r.allow_ipc,
        }),
        host_ports: rules
            .host_ports
            .as_ref()
            .map(|r| host::host_ports(r, &path.field("hostPorts"), errors)),
        host_path: rules
            .host_path
            .as_ref()
            .map(|r| host::host_path(r, &path.field("hostPath"), errors)),
        capabilities: rules
            .capabilities
            .as_ref()
            .map(|r| capabilities(r, &path.field("capabilities"), errors)),
        forbid_privilege_escalation: rules.allow_privilege_escalation == Some(false),
        require_read_only_root_filesystem: rules.read_only_root_filesystem == Some(true),
        run_as_user: security::id_rule(
            rules.run_as_user.as_ref(),
            IdField::RunAsUser,
            path,
            errors,
        ),
        run_as_group: security::id_rule(
            rules.run_as_group.as_ref(),
            IdField::RunAsGroup,
            path,
            errors,
        ),
        fs_group: security::id_rule(rules.fs_group.as_ref(), IdField::FsGroup, path, errors),
        supplemental_groups: security::id_rule(
            rules.supplemental_groups.as_ref(),
            IdField::SupplementalGroups,
            path,
            errors,
        ),
        seccomp: rules
            .seccomp
            .as_ref()
            .map(|r| security::profile_rule(r, &path.field("seccomp"), errors)),
        app_armor: rules
            .app_armor
            .as_ref()
            .map(|r| security::profile_rule(r, &path.field("appArmor"), errors)),
        se_linux: rules
            .se_linux
            .as_ref()
            .map(|r| security::se_linux_rule(r, &path.field("seLinux"), errors)),
        proc_mount: rules
            .proc_mount
            .as_ref()
            .map(|r| security::proc_mount_rule(r, &path.field("procMount"), errors)),
        sysctls: rules.sysctls.as_ref().map(|r| {
            let path = path.field("sysctls");
            SysctlsRule {
                allow: parse_list(&r.allow, &path.field("allow"), errors, syntax::sysctl_glob),
                forbid: parse_list(
                    &r.forbid,
                    &path.field("forbid"),
                    errors,
                    syntax::sysctl_glob,
                ),
            }
        }),
        volumes: rules
            .volumes
            .as_ref()
            .map(|r| volumes(r, &path.field("volumes"), errors)),
        forbid_windows_host_process: rules.windows_host_process.is_some(),
        forbid_host_probes: rules.host_probes.is_some(),
        resources: rules
            .resources
            .as_ref()
            .map(|r| resources(r, &path.field("resources"), errors)),
        service: rules
            .service
            .as_ref()
            .map(|r| service(r, &path.field("service"), errors)),
    };
    if restricts_nothing(rules) {
        errors.push(
            path,
            "empty rule set: set at least one control (podSecurity, privileged, hostPorts, ...)",
        );
    }
    converted
}

/// Judged on the proto, so a section whose only control is invalid gets one error, not two.
/// `allowPrivilegeEscalation: true` and `readOnlyRootFilesystem: false` allow, so they do not
/// count.
fn restricts_nothing(rules: &proto::ResourceRules) -> bool {
    let forbids_escalation = rules.allow_privilege_escalation == Some(false);
    let requires_read_only = rules.read_only_root_filesystem == Some(true);
    let stripped = proto::ResourceRules {
        allow_privilege_escalation: None,
        read_only_root_filesystem: None,
        ..rules.clone()
    };
    stripped == proto::ResourceRules::default() && !forbids_escalation && !requires_read_only
}

fn pod_security(
    rule: &proto::PodSecurityRule,
    path: &Path,
    errors: &mut Errors,
) -> Option<PodSecurityRule> {
    let level = match rule.level.as_str() {
        "" => Err(format!(
            "required: expected {}",
            one_of(PodSecurityLevel::NAMES)
        )),
        level => PodSecurityLevel::from_name(level).ok_or_else(|| {
            unknown(
                "Pod Security Standards level",
                level,
                PodSecurityLevel::NAMES,
            )
        }),
    };
    let level = errors.check(&path.field("level"), level);
    let version = errors.check(&path.field("version"), pss_version(&rule.version));
    Some(PodSecurityRule {
        level: level?,
        version: version?,
    })
}

/// `""` or `latest`, or `v1.N` with `N` in `0..=LATEST_PSS_MINOR` written without leading zeros.
fn pss_version(version: &str) -> Result<PodSecurityVersion, String> {
    if matches!(version, "" | "latest") {
        return Ok(PodSecurityVersion::Latest);
    }
    version
        .strip_prefix("v1.")
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && (*n == "0" || !n.starts_with('0')))
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|&n| n <= LATEST_PSS_MINOR)
        .map(PodSecurityVersion::Minor)
        .ok_or_else(|| {
            format!(
                "unknown Pod Security Standards version {version:?}: expected latest or v1.0 \
                 to v1.{LATEST_PSS_MINOR}"
            )
        })
}

fn capabilities(
    rule: &proto::CapabilitiesRule,
    path: &Path,
    errors: &mut Errors,
) -> CapabilitiesRule {
    CapabilitiesRule {
        allow: parse_list(&rule.allow, &path.field("allow"), errors, |name| {
            capability(name).and_then(|c| {
                if c.is_all() {
                    Err(format!(
                        "capability {name:?} is only allowed in requiredDrop"
                    ))
                } else {
                    Ok(c)
                }
            })
        }),
        required_drop: parse_list(
            &rule.required_drop,
            &path.field("requiredDrop"),
            errors,
            capability,
        ),
    }
}

fn capability(name: &str) -> Result<Capability, String> {
    Capability::parse(name).ok_or_else(|| {
        format!(
            "invalid capability {name:?}: expected letters, digits and '_', optionally \
             prefixed with CAP_"
        )
    })
}

fn volumes(rule: &proto::VolumesRule, path: &Path, errors: &mut Errors) -> VolumesRule {
    let allow = parse_list(&rule.allow, &path.field("allow"), errors, |name| {
        VolumeType::from_name(name).ok_or_else(|| unknown("volume type", name, VolumeType::NAMES))
    });
    let drivers_path = path.field("flexVolumeDrivers");
    let flex_volume_drivers = parse_list(&rule.flex_volume_drivers, &drivers_path, errors, |d| {
        syntax::token("flexVolume driver", d)
    });
    let flex_allowed = rule
        .allow
        .iter()
        .any(|v| v == VolumeType::FlexVolume.as_str());
    if !rule.flex_volume_drivers.is_empty() && !flex_allowed {
        errors.push(
            &drivers_path,
            "has no effect unless \"flexVolume\" is in allow",
        );
    }
    VolumesRule {
        allow,
        flex_volume_drivers,
    }
}

fn resources(rule: &proto::ResourcesRule, path: &Path, errors: &mut Errors) -> ResourcesRule {
    let path = path.field("requireLimits");
    if rule.require_limits.is_empty() {
        errors.push(
            &path,
            format!("empty: expected {}", one_of(ComputeResource::NAMES)),
        );
    }
    ResourcesRule {
        require_limits: parse_list(&rule.require_limits, &path, errors, |name| {
            ComputeResource::from_name(name)
                .ok_or_else(|| unknown("resource", name, ComputeResource::NAMES))
        }),
    }
}

fn service(rule: &proto::ServiceRule, path: &Path, errors: &mut Errors) -> ServiceRule {
    if rule.disallow_types.is_empty() && !rule.forbid_external_ips {
        errors.push(
            path,
            "restricts nothing: set disallowTypes, forbidExternalIPs or both",
        );
    }
    ServiceRule {
        disallow_types: parse_list(
            &rule.disallow_types,
            &path.field("disallowTypes"),
            errors,
            |name| {
                ServiceType::from_name(name)
                    .ok_or_else(|| unknown("service type", name, ServiceType::NAMES))
            },
        ),
        forbid_external_ips: rule.forbid_external_ips,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;
    use crate::testing::{assert_error, errors_of, strings, with_resource};

    fn convert(rules: proto::ResourceRules) -> ResourceRules {
        let rules = Policy::try_from(&with_resource(rules)).unwrap().rules;
        ResourceRules::clone(&rules.resource.unwrap())
    }

    #[test]
    fn pod_security_versions() {
        assert_eq!(pss_version(""), Ok(PodSecurityVersion::Latest));
        assert_eq!(pss_version("latest"), Ok(PodSecurityVersion::Latest));
        assert_eq!(pss_version("v1.0"), Ok(PodSecurityVersion::Minor(0)));
        assert_eq!(pss_version("v1.35"), Ok(PodSecurityVersion::Minor(35)));
        for bad in [
            "v1.36", "v1.99", "v2.0", "1.25", "v1.", "v1.025", "v1.+5", "Latest",
        ] {
            assert!(pss_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_pss_version() {
        let p = with_resource(proto::ResourceRules {
            pod_security: Some(proto::PodSecurityRule {
                level: "restricted".into(),
                version: "v1.99".into(),
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.podSecurity.version",
            r#"unknown Pod Security Standards version "v1.99": expected latest or v1.0 to v1.35"#,
        );
        assert_eq!(errors_of(&p).len(), 1);
    }

    #[test]
    fn pss_level_required_and_known() {
        for (level, fragment) in [
            ("", "required: expected baseline or restricted"),
            ("strict", r#"unknown Pod Security Standards level "strict""#),
        ] {
            let p = with_resource(proto::ResourceRules {
                pod_security: Some(proto::PodSecurityRule {
                    level: level.into(),
                    version: String::new(),
                }),
                ..Default::default()
            });
            assert_error(&p, "rules.resource.podSecurity.level", fragment);
        }
    }

    #[test]
    fn capabilities_normalise_and_reject_bad_names() {
        let caps = convert(proto::ResourceRules {
            capabilities: Some(proto::CapabilitiesRule {
                allow: strings(&["cap_net_bind_service", "CHOWN"]),
                required_drop: strings(&["all"]),
            }),
            ..Default::default()
        })
        .capabilities
        .unwrap();
        let names: Vec<_> = caps.allow.iter().map(Capability::as_str).collect();
        assert_eq!(names, ["NET_BIND_SERVICE", "CHOWN"]);
        assert!(caps.required_drop[0].is_all());

        let p = with_resource(proto::ResourceRules {
            capabilities: Some(proto::CapabilitiesRule {
                allow: strings(&["NET-ADMIN", "ALL", "net_admin", "CAP_NET_ADMIN"]),
                required_drop: strings(&[""]),
            }),
            ..Default::default()
        });
        let path = "rules.resource.capabilities";
        assert_error(
            &p,
            &format!("{path}.allow[0]"),
            r#"invalid capability "NET-ADMIN""#,
        );
        assert_error(
            &p,
            &format!("{path}.allow[1]"),
            r#"capability "ALL" is only allowed in requiredDrop"#,
        );
        assert_error(
            &p,
            &format!("{path}.allow[3]"),
            r#"duplicate "CAP_NET_ADMIN" (also at index 2)"#,
        );
        assert_error(
            &p,
            &format!("{path}.requiredDrop[0]"),
            r#"invalid capability """#,
        );
    }

    #[test]
    fn bad_sysctl_glob() {
        let p = with_resource(proto::ResourceRules {
            sysctls: Some(proto::SysctlsRule {
                allow: strings(&["net.ipv4.tcp_*", "Kernel.*"]),
                forbid: strings(&["kernel.*", "kernel.*"]),
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.sysctls.allow[1]",
            r#"invalid sysctl glob "Kernel.*""#,
        );
        assert_error(&p, "rules.resource.sysctls.forbid[1]", "duplicate");
    }

    #[test]
    fn unknown_volume_type_and_stray_flex_drivers() {
        let p = with_resource(proto::ResourceRules {
            volumes: Some(proto::VolumesRule {
                allow: strings(&["configMap", "configmap", "nfs"]),
                flex_volume_drivers: strings(&["example/lvm"]),
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.volumes.allow[1]",
            r#"unknown volume type "configmap""#,
        );
        assert_error(
            &p,
            "rules.resource.volumes.allow[1]",
            r#"did you mean "configMap"?"#,
        );
        assert_error(
            &p,
            "rules.resource.volumes.flexVolumeDrivers",
            "has no effect unless",
        );
    }

    #[test]
    fn require_limits_known_and_non_empty() {
        let p = with_resource(proto::ResourceRules {
            resources: Some(proto::ResourcesRule {
                require_limits: strings(&["cpu", "gpu"]),
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.resources.requireLimits[1]",
            r#"unknown resource "gpu": expected cpu or memory"#,
        );
        let p = with_resource(proto::ResourceRules {
            resources: Some(proto::ResourcesRule::default()),
            ..Default::default()
        });
        assert_error(&p, "rules.resource.resources.requireLimits", "empty");
    }

    #[test]
    fn service_types_known_and_rule_non_empty() {
        let p = with_resource(proto::ResourceRules {
            service: Some(proto::ServiceRule {
                disallow_types: strings(&["NodePort", "Nodeport", "NodePort"]),
                forbid_external_ips: false,
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.service.disallowTypes[1]",
            r#"unknown service type "Nodeport""#,
        );
        assert_error(&p, "rules.resource.service.disallowTypes[2]", "duplicate");
        let p = with_resource(proto::ResourceRules {
            service: Some(proto::ServiceRule::default()),
            ..Default::default()
        });
        assert_error(&p, "rules.resource.service", "restricts nothing");
    }

    #[test]
    fn empty_resource_section() {
        for rules in [
            proto::ResourceRules::default(),
            proto::ResourceRules {
                allow_privilege_escalation: Some(true),
                read_only_root_filesystem: Some(false),
                ..Default::default()
            },
        ] {
            let p = with_resource(rules);
            assert_error(&p, "rules.resource", "empty rule set");
            assert_eq!(errors_of(&p).len(), 1);
        }
    }

    #[test]
    fn marker_controls_become_flags() {
        let rules = convert(proto::ResourceRules {
            privileged: Some(proto::PrivilegedRule {}),
            windows_host_process: Some(proto::WindowsHostProcessRule {}),
            host_probes: Some(proto::HostProbesRule {}),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        });
        assert!(rules.forbid_privileged);
        assert!(rules.forbid_windows_host_process);
        assert!(rules.forbid_host_probes);
        assert!(rules.forbid_privilege_escalation);
        assert!(rules.require_read_only_root_filesystem);
        assert_eq!(rules.host_ports, None);
    }
}
