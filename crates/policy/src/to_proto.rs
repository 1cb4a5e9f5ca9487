//! Domain → proto: the normalised form of a policy, with defaults written out (`enabled`,
//! `action`, `unscanned`, Pod Security version) and names in canonical spelling (capabilities
//! without `CAP_`). Converting it back gives the same `Policy`.

use portcullis_proto::v1 as proto;

use crate::glob::Glob;
use crate::model::{
    CapabilitiesRule, HostPortsRule, IdRule, ImageRules, LabelSelector, Policy, ProfileRule,
    ResourceRules, Scope, SeLinuxOptions, VulnerabilityRule, Whitelist,
};

impl From<&Policy> for proto::Policy {
    fn from(policy: &Policy) -> Self {
        Self {
            name: policy.name.clone(),
            description: policy.description.clone(),
            enabled: Some(policy.enabled),
            action: policy.action.as_str().to_owned(),
            scope: Some(scope(&policy.scope)),
            whitelist: Some(whitelist(&policy.whitelist)),
            rules: Some(proto::Rules {
                image: policy.rules.image.as_deref().map(image_rules),
                resource: policy.rules.resource.as_deref().map(resource_rules),
            }),
            revision: policy.revision,
            // Server bookkeeping, not part of the policy model: the store sets them.
            create_time: None,
            update_time: None,
        }
    }
}

impl From<Policy> for proto::Policy {
    fn from(policy: Policy) -> Self {
        Self::from(&policy)
    }
}

fn globs(globs: &[Glob]) -> Vec<String> {
    globs.iter().map(|g| g.as_str().to_owned()).collect()
}

fn names<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

fn scope(scope: &Scope) -> proto::Scope {
    proto::Scope {
        clusters: globs(&scope.clusters),
        namespaces: Some(proto::NamespaceScope {
            include: globs(&scope.namespaces.include),
            exclude: globs(&scope.namespaces.exclude),
        }),
        kinds: names(&scope.kinds),
        label_selector: scope.label_selector.as_ref().map(label_selector),
    }
}

fn label_selector(selector: &LabelSelector) -> proto::LabelSelector {
    proto::LabelSelector {
        match_labels: selector
            .match_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        match_expressions: selector
            .match_expressions
            .iter()
            .map(|r| proto::LabelSelectorRequirement {
                key: r.key.clone(),
                operator: r.operator.as_str().to_owned(),
                values: r.values.clone(),
            })
            .collect(),
    }
}

fn whitelist(whitelist: &Whitelist) -> proto::Whitelist {
    proto::Whitelist {
        images: whitelist
            .images
            .iter()
            .map(|i| i.as_str().to_owned())
            .collect(),
        namespaces: globs(&whitelist.namespaces),
        workloads: names(&whitelist.workloads),
        clusters: globs(&whitelist.clusters),
    }
}

fn image_rules(rules: &ImageRules) -> proto::ImageRules {
    proto::ImageRules {
        vulnerabilities: rules.vulnerabilities.as_ref().map(vulnerability_rule),
        malicious_files: rules.malicious_files,
        baseline_failures: rules.baseline_failures,
        unscanned: rules.unscanned.as_str().to_owned(),
        registries: (!rules.registries.is_empty()).then(|| proto::RegistryRule {
            allow: globs(&rules.registries.allow),
            deny: globs(&rules.registries.deny),
        }),
        disallowed_tags: rules.disallowed_tags.clone(),
        require_digest: rules.require_digest,
    }
}

fn vulnerability_rule(rule: &VulnerabilityRule) -> proto::VulnerabilityRule {
    proto::VulnerabilityRule {
        severity: rule
            .severity
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        fixable_only: rule.fixable_only,
        block: rule.block.clone(),
        ignore: rule.ignore.clone(),
    }
}

fn resource_rules(rules: &ResourceRules) -> proto::ResourceRules {
    proto::ResourceRules {
        pod_security: rules.pod_security.map(|r| proto::PodSecurityRule {
            level: r.level.as_str().to_owned(),
            version: r.version.to_string(),
        }),
        privileged: rules.forbid_privileged.then_some(proto::PrivilegedRule {}),
        host_namespaces: rules.host_namespaces.map(|r| proto::HostNamespacesRule {
            allow_network: r.allow_network,
            allow_pid: r.allow_pid,
            allow_ipc: r.allow_ipc,
        }),
        host_ports: rules.host_ports.map(host_ports),
        host_path: rules.host_path.as_ref().map(|r| proto::HostPathRule {
            allow: r
                .allow
                .iter()
                .map(|a| proto::HostPathAllow {
                    path_prefix: a.path_prefix.clone(),
                    read_only: a.read_only,
                })
                .collect(),
        }),
        capabilities: rules.capabilities.as_ref().map(capabilities),
        allow_privilege_escalation: rules.forbid_privilege_escalation.then_some(false),
        read_only_root_filesystem: rules.require_read_only_root_filesystem.then_some(true),
        run_as_user: rules.run_as_user.as_ref().map(id_rule),
        run_as_group: rules.run_as_group.as_ref().map(id_rule),
        fs_group: rules.fs_group.as_ref().map(id_rule),
        supplemental_groups: rules.supplemental_groups.as_ref().map(id_rule),
        seccomp: rules.seccomp.as_ref().map(profile_rule),
        app_armor: rules.app_armor.as_ref().map(profile_rule),
        se_linux: rules.se_linux.as_ref().map(|r| proto::SeLinuxRule {
            allow: r.allow.iter().map(se_linux_options).collect(),
        }),
        proc_mount: rules.proc_mount.as_ref().map(|r| proto::ProcMountRule {
            allow: names(&r.allow),
        }),
        sysctls: rules.sysctls.as_ref().map(|r| proto::SysctlsRule {
            allow: globs(&r.allow),
            forbid: globs(&r.forbid),
        }),
        volumes: rules.volumes.as_ref().map(|r| proto::VolumesRule {
            allow: names(&r.allow),
            flex_volume_drivers: r.flex_volume_drivers.clone(),
        }),
        windows_host_process: rules
            .forbid_windows_host_process
            .then_some(proto::WindowsHostProcessRule {}),
        host_probes: rules.forbid_host_probes.then_some(proto::HostProbesRule {}),
        resources: rules.resources.as_ref().map(|r| proto::ResourcesRule {
            require_limits: names(&r.require_limits),
        }),
        service: rules.service.as_ref().map(|r| proto::ServiceRule {
            disallow_types: names(&r.disallow_types),
            forbid_external_ips: r.forbid_external_ips,
        }),
    }
}

/// Both bounds written out, so `{min: 8000}` comes back as `{min: 8000, max: 65535}`.
fn host_ports(rule: HostPortsRule) -> proto::HostPortsRule {
    proto::HostPortsRule {
        min: rule.allowed.map(|r| u32::from(r.min)),
        max: rule.allowed.map(|r| u32::from(r.max)),
    }
}

fn capabilities(rule: &CapabilitiesRule) -> proto::CapabilitiesRule {
    proto::CapabilitiesRule {
        allow: names(&rule.allow),
        required_drop: names(&rule.required_drop),
    }
}

fn id_rule(rule: &IdRule) -> proto::IdRule {
    proto::IdRule {
        rule: rule.rule.as_str().to_owned(),
        ranges: rule
            .ranges
            .iter()
            .map(|r| proto::IdRange {
                min: r.min,
                max: r.max,
            })
            .collect(),
    }
}

fn profile_rule(rule: &ProfileRule) -> proto::ProfileRule {
    proto::ProfileRule {
        allow: names(&rule.allow),
        allow_unset: rule.allow_unset,
    }
}

fn se_linux_options(options: &SeLinuxOptions) -> proto::SeLinuxOptions {
    let field = |f: &Option<String>| f.clone().unwrap_or_default();
    proto::SeLinuxOptions {
        user: field(&options.user),
        role: field(&options.role),
        r#type: field(&options.type_),
        level: field(&options.level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mk_policy, strings, with_image, with_resource};

    /// proto → domain → proto → domain is stable, and the normalised proto is a fixed point.
    #[track_caller]
    fn assert_round_trip(original: &proto::Policy) -> proto::Policy {
        let domain = Policy::try_from(original).unwrap();
        let normalised = proto::Policy::from(&domain);
        let again = Policy::try_from(&normalised).unwrap();
        assert_eq!(again, domain);
        assert_eq!(proto::Policy::from(&again), normalised);
        normalised
    }

    #[test]
    fn defaults_are_written_out() {
        let normalised = assert_round_trip(&mk_policy("p"));
        assert_eq!(normalised.enabled, Some(true));
        assert_eq!(normalised.action, "block");
        let image = normalised.rules.unwrap().image.unwrap();
        assert_eq!(image.unscanned, "allow");
        assert_eq!(image.registries, None);
    }

    #[test]
    fn names_are_normalised() {
        let p = with_resource(proto::ResourceRules {
            capabilities: Some(proto::CapabilitiesRule {
                allow: strings(&["cap_net_bind_service"]),
                required_drop: strings(&["all"]),
            }),
            pod_security: Some(proto::PodSecurityRule {
                level: "baseline".into(),
                version: String::new(),
            }),
            host_ports: Some(proto::HostPortsRule {
                min: Some(8000),
                max: None,
            }),
            ..Default::default()
        });
        let resource = assert_round_trip(&p).rules.unwrap().resource.unwrap();
        let caps = resource.capabilities.unwrap();
        assert_eq!(caps.allow, ["NET_BIND_SERVICE"]);
        assert_eq!(caps.required_drop, ["ALL"]);
        assert_eq!(resource.pod_security.unwrap().version, "latest");
        assert_eq!(resource.host_ports.unwrap().max, Some(65535));
    }

    #[test]
    fn every_resource_control_round_trips() {
        let id = |rule: &str, ranges: Vec<proto::IdRange>| {
            Some(proto::IdRule {
                rule: rule.into(),
                ranges,
            })
        };
        let p = with_resource(proto::ResourceRules {
            pod_security: Some(proto::PodSecurityRule {
                level: "restricted".into(),
                version: "v1.30".into(),
            }),
            privileged: Some(proto::PrivilegedRule {}),
            host_namespaces: Some(proto::HostNamespacesRule {
                allow_network: true,
                allow_pid: false,
                allow_ipc: true,
            }),
            host_ports: Some(proto::HostPortsRule::default()),
            host_path: Some(proto::HostPathRule {
                allow: vec![proto::HostPathAllow {
                    path_prefix: "/var/log".into(),
                    read_only: true,
                }],
            }),
            capabilities: Some(proto::CapabilitiesRule::default()),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: id("MustRunAsNonRoot", vec![]),
            run_as_group: id("MustRunAs", vec![proto::IdRange { min: 1, max: 2 }]),
            fs_group: id("MayRunAs", vec![proto::IdRange { min: 3, max: 4 }]),
            supplemental_groups: id("MayRunAs", vec![proto::IdRange { min: 5, max: 6 }]),
            seccomp: Some(proto::ProfileRule {
                allow: strings(&["RuntimeDefault", "Localhost/audit.json"]),
                allow_unset: false,
            }),
            app_armor: Some(proto::ProfileRule {
                allow: strings(&["Unconfined", "Localhost"]),
                allow_unset: true,
            }),
            se_linux: Some(proto::SeLinuxRule {
                allow: vec![proto::SeLinuxOptions {
                    r#type: "container_t".into(),
                    ..Default::default()
                }],
            }),
            proc_mount: Some(proto::ProcMountRule {
                allow: strings(&["Default"]),
            }),
            sysctls: Some(proto::SysctlsRule {
                allow: strings(&["net.*"]),
                forbid: strings(&["net.core.*"]),
            }),
            volumes: Some(proto::VolumesRule {
                allow: strings(&["configMap", "flexVolume"]),
                flex_volume_drivers: strings(&["example/lvm"]),
            }),
            windows_host_process: Some(proto::WindowsHostProcessRule {}),
            host_probes: Some(proto::HostProbesRule {}),
            resources: Some(proto::ResourcesRule {
                require_limits: strings(&["memory"]),
            }),
            service: Some(proto::ServiceRule {
                disallow_types: strings(&["NodePort"]),
                forbid_external_ips: true,
            }),
        });
        let normalised = assert_round_trip(&p);
        // Already canonical apart from the outer defaults, so the rules come back unchanged.
        assert_eq!(normalised.rules, p.rules);
    }

    #[test]
    fn scope_whitelist_and_image_rules_round_trip() {
        let mut p = with_image(proto::ImageRules {
            vulnerabilities: Some(proto::VulnerabilityRule {
                severity: String::new(),
                fixable_only: false,
                block: strings(&["CVE-2021-44228"]),
                ignore: vec![],
            }),
            registries: Some(proto::RegistryRule {
                allow: vec![],
                deny: strings(&["evil.example.com"]),
            }),
            disallowed_tags: strings(&["latest"]),
            ..Default::default()
        });
        p.action = "alert".into();
        p.enabled = Some(false);
        p.scope = Some(proto::Scope {
            clusters: strings(&["prod-*"]),
            namespaces: None,
            kinds: strings(&["Deployment"]),
            label_selector: Some(proto::LabelSelector {
                match_labels: [("app".to_owned(), "web".to_owned())].into(),
                match_expressions: vec![proto::LabelSelectorRequirement {
                    key: "env".into(),
                    operator: "Exists".into(),
                    values: vec![],
                }],
            }),
        });
        p.whitelist = Some(proto::Whitelist {
            images: strings(&["nginx:*"]),
            namespaces: strings(&["sandbox-*"]),
            workloads: strings(&["payments/legacy-*"]),
            clusters: strings(&["dev"]),
        });
        let normalised = assert_round_trip(&p);
        assert_eq!(normalised.whitelist, p.whitelist);
        assert_eq!(
            normalised.scope.unwrap().label_selector,
            p.scope.unwrap().label_selector
        );
    }
}
