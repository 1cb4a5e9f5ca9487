//! Validates the security-context controls of `rules.resource`: id rules (`runAsUser`,
//! `runAsGroup`, `fsGroup`, `supplementalGroups`), seccomp and AppArmor profiles, SELinux
//! options and procMount types.

use std::collections::HashMap;

use portcullis_proto::v1 as proto;

use super::errors::{Errors, Path, one_of, parse_list, unknown};
use super::syntax;
use crate::model::{
    IdRange, IdRule, IdRuleKind, ProcMountRule, ProcMountType, ProfileRule, ProfileType,
    SeLinuxOptions, SeLinuxRule,
};

/// The id fields; only `runAsUser` accepts `MustRunAsNonRoot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IdField {
    RunAsUser,
    RunAsGroup,
    FsGroup,
    SupplementalGroups,
}

impl IdField {
    fn json_name(self) -> &'static str {
        match self {
            Self::RunAsUser => "runAsUser",
            Self::RunAsGroup => "runAsGroup",
            Self::FsGroup => "fsGroup",
            Self::SupplementalGroups => "supplementalGroups",
        }
    }

    fn kinds(self) -> &'static [&'static str] {
        match self {
            Self::RunAsUser => IdRuleKind::NAMES,
            _ => &["MustRunAs", "MayRunAs"],
        }
    }
}

/// The rule at `path.<field>`, if present.
pub(super) fn id_rule(
    rule: Option<&proto::IdRule>,
    field: IdField,
    path: &Path,
    errors: &mut Errors,
) -> Option<IdRule> {
    let rule = rule?;
    let path = path.field(field.json_name());
    let kind = match rule.rule.as_str() {
        "" => Err(format!("required: expected {}", one_of(field.kinds()))),
        "MustRunAsNonRoot" if field != IdField::RunAsUser => Err(format!(
            "rule \"MustRunAsNonRoot\" is only valid for runAsUser: expected {}",
            one_of(field.kinds())
        )),
        name => IdRuleKind::from_name(name).ok_or_else(|| unknown("rule", name, field.kinds())),
    };
    let kind = errors.check(&path.field("rule"), kind);

    let ranges_path = path.field("ranges");
    let mut ranges = Vec::with_capacity(rule.ranges.len());
    let mut first_seen: HashMap<(u32, u32), usize> = HashMap::new();
    for (i, range) in rule.ranges.iter().enumerate() {
        let (min, max) = (range.min, range.max);
        if min > max {
            errors.push(
                &ranges_path.index(i),
                format!("min {min} is greater than max {max}"),
            );
        } else if let Some(first) = first_seen.get(&(min, max)) {
            let reason = format!("duplicate range {min}-{max} (also at index {first})");
            errors.push(&ranges_path.index(i), reason);
        } else {
            first_seen.insert((min, max), i);
            ranges.push(IdRange { min, max });
        }
    }
    match kind {
        Some(IdRuleKind::MustRunAsNonRoot) if !rule.ranges.is_empty() => {
            errors.push(&ranges_path, "MustRunAsNonRoot takes no ranges");
        }
        Some(kind @ (IdRuleKind::MustRunAs | IdRuleKind::MayRunAs)) if rule.ranges.is_empty() => {
            errors.push(&ranges_path, format!("{kind} needs at least one range"));
        }
        _ => {}
    }
    Some(IdRule {
        rule: kind?,
        ranges,
    })
}

/// `seccomp` or `appArmor`.
pub(super) fn profile_rule(
    rule: &proto::ProfileRule,
    path: &Path,
    errors: &mut Errors,
) -> ProfileRule {
    if rule.allow.is_empty() && !rule.allow_unset {
        errors.push(
            path,
            "admits no container: allow at least one profile or set allowUnset",
        );
    }
    ProfileRule {
        allow: parse_list(&rule.allow, &path.field("allow"), errors, profile_type),
        allow_unset: rule.allow_unset,
    }
}

fn profile_type(entry: &str) -> Result<ProfileType, String> {
    match entry {
        "RuntimeDefault" => Ok(ProfileType::RuntimeDefault),
        "Unconfined" => Ok(ProfileType::Unconfined),
        "Localhost" => Ok(ProfileType::Localhost(None)),
        _ => match entry.strip_prefix("Localhost/") {
            Some(name) => syntax::token("profile name", name)
                .map(|name| ProfileType::Localhost(Some(name)))
                .map_err(|reason| format!("in {entry:?}: {reason}")),
            None => Err(unknown(
                "profile",
                entry,
                &[
                    "RuntimeDefault",
                    "Unconfined",
                    "Localhost",
                    "Localhost/<name>",
                ],
            )),
        },
    }
}

pub(super) fn se_linux_rule(
    rule: &proto::SeLinuxRule,
    path: &Path,
    errors: &mut Errors,
) -> SeLinuxRule {
    let mut allow = Vec::with_capacity(rule.allow.len());
    let mut first_seen: HashMap<SeLinuxOptions, usize> = HashMap::new();
    for (i, entry) in rule.allow.iter().enumerate() {
        let path = path.field("allow").index(i);
        let mut field = |name: &str, value: &str| -> Option<Option<String>> {
            if value.is_empty() {
                return Some(None);
            }
            let what = format!("SELinux {name}");
            errors
                .check(&path.field(name), syntax::token(&what, value))
                .map(Some)
        };
        // Every field is checked before any is given up on, so all errors are reported.
        let (user, role) = (field("user", &entry.user), field("role", &entry.role));
        let (type_, level) = (field("type", &entry.r#type), field("level", &entry.level));
        let (Some(user), Some(role), Some(type_), Some(level)) = (user, role, type_, level) else {
            continue;
        };
        let options = SeLinuxOptions {
            user,
            role,
            type_,
            level,
        };
        if let Some(first) = first_seen.get(&options) {
            errors.push(&path, format!("duplicate entry (also at index {first})"));
        } else {
            first_seen.insert(options.clone(), i);
            allow.push(options);
        }
    }
    SeLinuxRule { allow }
}

pub(super) fn proc_mount_rule(
    rule: &proto::ProcMountRule,
    path: &Path,
    errors: &mut Errors,
) -> ProcMountRule {
    ProcMountRule {
        allow: parse_list(&rule.allow, &path.field("allow"), errors, |name| {
            ProcMountType::from_name(name)
                .ok_or_else(|| unknown("procMount type", name, ProcMountType::NAMES))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;
    use crate::testing::{assert_error, errors_of, strings, with_resource};

    fn id(rule: &str, ranges: &[(u32, u32)]) -> Option<proto::IdRule> {
        Some(proto::IdRule {
            rule: rule.into(),
            ranges: ranges
                .iter()
                .map(|&(min, max)| proto::IdRange { min, max })
                .collect(),
        })
    }

    #[test]
    fn valid_id_rules_convert() {
        let p = with_resource(proto::ResourceRules {
            run_as_user: id("MustRunAsNonRoot", &[]),
            run_as_group: id("MustRunAs", &[(1000, 65535)]),
            fs_group: id("MayRunAs", &[(1000, 2000), (3000, 3000)]),
            ..Default::default()
        });
        let rules =
            std::sync::Arc::unwrap_or_clone(Policy::try_from(&p).unwrap().rules.resource.unwrap());
        assert_eq!(
            rules.run_as_user.unwrap().rule,
            IdRuleKind::MustRunAsNonRoot
        );
        let group = rules.run_as_group.unwrap();
        assert_eq!(
            group.ranges,
            [IdRange {
                min: 1000,
                max: 65535
            }]
        );
        assert_eq!(rules.fs_group.unwrap().ranges.len(), 2);
        assert_eq!(rules.supplemental_groups, None);
    }

    #[test]
    fn id_range_min_greater_than_max() {
        let p = with_resource(proto::ResourceRules {
            run_as_user: id("MustRunAs", &[(2000, 1000)]),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.runAsUser.ranges[0]",
            "min 2000 is greater than max 1000",
        );
    }

    #[test]
    fn id_rule_required_and_known_for_the_field() {
        let p = with_resource(proto::ResourceRules {
            run_as_user: id("", &[]),
            run_as_group: id("MustRunAsNonRoot", &[]),
            fs_group: id("RunAsAny", &[(1, 2)]),
            supplemental_groups: id("mustrunas", &[(1, 2)]),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.runAsUser.rule",
            "required: expected one of MustRunAsNonRoot, MustRunAs, MayRunAs",
        );
        assert_error(
            &p,
            "rules.resource.runAsGroup.rule",
            r#"rule "MustRunAsNonRoot" is only valid for runAsUser"#,
        );
        assert_error(
            &p,
            "rules.resource.fsGroup.rule",
            r#"unknown rule "RunAsAny": expected MustRunAs or MayRunAs"#,
        );
        assert_error(
            &p,
            "rules.resource.supplementalGroups.rule",
            r#"did you mean "MustRunAs"?"#,
        );
        assert_eq!(errors_of(&p).len(), 4);
    }

    #[test]
    fn id_rule_ranges_match_the_rule() {
        let p = with_resource(proto::ResourceRules {
            run_as_user: id("MustRunAsNonRoot", &[(1, 2)]),
            run_as_group: id("MustRunAs", &[]),
            fs_group: id("MayRunAs", &[(5, 6), (5, 6)]),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.runAsUser.ranges",
            "MustRunAsNonRoot takes no ranges",
        );
        assert_error(
            &p,
            "rules.resource.runAsGroup.ranges",
            "MustRunAs needs at least one range",
        );
        assert_error(
            &p,
            "rules.resource.fsGroup.ranges[1]",
            "duplicate range 5-6 (also at index 0)",
        );
    }

    #[test]
    fn profile_entries() {
        assert_eq!(
            profile_type("RuntimeDefault"),
            Ok(ProfileType::RuntimeDefault)
        );
        assert_eq!(profile_type("Localhost"), Ok(ProfileType::Localhost(None)));
        assert_eq!(
            profile_type("Localhost/profiles/audit.json"),
            Ok(ProfileType::Localhost(Some("profiles/audit.json".into())))
        );
        assert!(
            profile_type("Localhost/")
                .unwrap_err()
                .contains("empty profile name")
        );
        assert!(
            profile_type("runtime/default")
                .unwrap_err()
                .contains(r#"unknown profile "runtime/default""#)
        );
        assert!(
            profile_type("localhost")
                .unwrap_err()
                .contains(r#"did you mean "Localhost"?"#)
        );
    }

    #[test]
    fn bad_profile_rules() {
        let p = with_resource(proto::ResourceRules {
            seccomp: Some(proto::ProfileRule {
                allow: strings(&["RuntimeDefault", "Runtime/Default", "RuntimeDefault"]),
                allow_unset: false,
            }),
            app_armor: Some(proto::ProfileRule::default()),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.seccomp.allow[1]",
            r#"unknown profile "Runtime/Default""#,
        );
        assert_error(&p, "rules.resource.seccomp.allow[2]", "duplicate");
        assert_error(&p, "rules.resource.appArmor", "admits no container");
    }

    #[test]
    fn se_linux_options() {
        let entry = |user: &str, level: &str| proto::SeLinuxOptions {
            user: user.into(),
            role: String::new(),
            r#type: "container_t".into(),
            level: level.into(),
        };
        let p = with_resource(proto::ResourceRules {
            se_linux: Some(proto::SeLinuxRule {
                allow: vec![
                    entry("", "s0:c1,c2"),
                    entry("system u", ""),
                    entry("", "s0:c1,c2"),
                ],
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.seLinux.allow[1].user",
            r#"invalid SELinux user "system u""#,
        );
        assert_error(&p, "rules.resource.seLinux.allow[2]", "duplicate");
        assert_eq!(errors_of(&p).len(), 2);

        let p = with_resource(proto::ResourceRules {
            se_linux: Some(proto::SeLinuxRule {
                allow: vec![entry("", "s0")],
            }),
            ..Default::default()
        });
        let rule = Policy::try_from(&p)
            .unwrap()
            .rules
            .resource
            .unwrap()
            .se_linux
            .clone()
            .unwrap();
        assert_eq!(
            rule.allow,
            [SeLinuxOptions {
                user: None,
                role: None,
                type_: Some("container_t".into()),
                level: Some("s0".into()),
            }]
        );
    }

    #[test]
    fn unknown_proc_mount_type() {
        let p = with_resource(proto::ResourceRules {
            proc_mount: Some(proto::ProcMountRule {
                allow: strings(&["Default", "unmasked"]),
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.procMount.allow[1]",
            r#"unknown procMount type "unmasked": expected Default or Unmasked"#,
        );
    }
}
