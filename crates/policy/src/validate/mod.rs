//! Proto → domain: `Policy::try_from(&proto)` checks every field and reports every problem at
//! once, with its camelCase path; `validate_policy_set` does the same for a batch and rejects
//! duplicate names. Nothing invalid ever becomes a `Policy`.

mod errors;
mod host;
mod image;
mod resource;
mod scope;
mod security;
mod syntax;

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_proto::v1 as proto;

use errors::{Errors, Path, unknown};
pub use errors::{FieldError, InvalidPolicy, InvalidPolicySet};
pub use syntax::is_dns_label;

use crate::model::{Action, Policy, RuleFingerprints, Rules};

/// Longest accepted description, in characters.
const MAX_DESCRIPTION: usize = 1024;

impl TryFrom<&proto::Policy> for Policy {
    type Error = InvalidPolicy;

    fn try_from(policy: &proto::Policy) -> Result<Self, InvalidPolicy> {
        let mut errors = Errors::default();
        let root = Path::default();
        errors.check(&root.field("name"), syntax::policy_name(&policy.name));
        let length = policy.description.chars().count();
        if length > MAX_DESCRIPTION {
            errors.push(
                &root.field("description"),
                format!("too long: {length} characters, at most {MAX_DESCRIPTION} are allowed"),
            );
        }
        let action = match policy.action.as_str() {
            "" => Some(Action::Block),
            action => errors.check(
                &root.field("action"),
                Action::from_name(action).ok_or_else(|| unknown("action", action, Action::NAMES)),
            ),
        };
        // In field order, so errors are listed as the policy reads.
        let scope = scope::scope(policy.scope.as_ref(), &root.field("scope"), &mut errors);
        let whitelist = scope::whitelist(
            policy.whitelist.as_ref(),
            &root.field("whitelist"),
            &mut errors,
        );
        let rules = rules(policy.rules.as_ref(), &root.field("rules"), &mut errors);
        let converted = Policy {
            name: policy.name.clone(),
            description: policy.description.clone(),
            enabled: policy.enabled.unwrap_or(true),
            action: action.unwrap_or_default(),
            scope,
            whitelist,
            fingerprints: RuleFingerprints::of(&rules),
            rules,
            revision: policy.revision,
        };
        errors.into_result(converted)
    }
}

impl TryFrom<proto::Policy> for Policy {
    type Error = InvalidPolicy;

    fn try_from(policy: proto::Policy) -> Result<Self, InvalidPolicy> {
        Self::try_from(&policy)
    }
}

fn rules(rules: Option<&proto::Rules>, path: &Path, errors: &mut Errors) -> Rules {
    let Some(rules) = rules.filter(|r| r.image.is_some() || r.resource.is_some()) else {
        errors.push(
            path,
            "empty rule set: set image rules, resource rules or both",
        );
        return Rules::default();
    };
    Rules {
        image: rules
            .image
            .as_ref()
            .map(|r| Arc::new(image::image_rules(r, &path.field("image"), errors))),
        resource: rules
            .resource
            .as_ref()
            .map(|r| Arc::new(resource::resource_rules(r, &path.field("resource"), errors))),
    }
}

/// Validates policies that are applied together (a file, an `ApplyPolicies` request): each
/// one fully, plus unique names. All or nothing, so a batch is never half-applied.
pub fn validate_policy_set(policies: &[proto::Policy]) -> Result<Vec<Policy>, InvalidPolicySet> {
    let mut errors = Vec::new();
    let mut valid = Vec::with_capacity(policies.len());
    let mut first_with_name: HashMap<&str, usize> = HashMap::with_capacity(policies.len());
    for (i, policy) in policies.iter().enumerate() {
        match Policy::try_from(policy) {
            Ok(policy) => valid.push(policy),
            Err(invalid) => errors.extend(invalid.errors.into_iter().map(|e| FieldError {
                path: format!("policies[{i}].{}", e.path),
                reason: e.reason,
            })),
        }
        if policy.name.is_empty() {
            continue;
        }
        if let Some(first) = first_with_name.get(policy.name.as_str()) {
            errors.push(FieldError {
                path: format!("policies[{i}].name"),
                reason: format!("duplicate name {:?} (also policies[{first}])", policy.name),
            });
        } else {
            first_with_name.insert(&policy.name, i);
        }
    }
    if errors.is_empty() {
        Ok(valid)
    } else {
        Err(InvalidPolicySet { errors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ResourceRules;
    use crate::testing::{assert_error, errors_of, mk_policy, with_image, with_resource};

    #[test]
    fn minimal_policy_gets_the_defaults() {
        let policy = Policy::try_from(&mk_policy("p")).unwrap();
        assert_eq!(policy.name, "p");
        assert!(policy.enabled);
        assert_eq!(policy.action, Action::Block);
        assert_eq!(policy.scope, Default::default());
        assert_eq!(policy.whitelist, Default::default());
        assert!(policy.rules.image.is_some());
        assert_eq!(policy.rules.resource, None);
    }

    #[test]
    fn explicit_fields_are_kept() {
        let p = proto::Policy {
            description: "d".into(),
            enabled: Some(false),
            action: "alert".into(),
            revision: 42,
            ..mk_policy("p")
        };
        let policy = Policy::try_from(p).unwrap();
        assert!(!policy.enabled);
        assert_eq!(policy.action, Action::Alert);
        assert_eq!(policy.description, "d");
        assert_eq!(policy.revision, 42);
    }

    #[test]
    fn name_is_required() {
        assert_error(&mk_policy(""), "name", "required");
    }

    #[test]
    fn name_is_a_dns_label() {
        assert_error(
            &mk_policy("No_Vulns"),
            "name",
            r#"invalid name "No_Vulns": expected a DNS label"#,
        );
    }

    #[test]
    fn description_is_bounded() {
        let ok = proto::Policy {
            description: "é".repeat(1024),
            ..mk_policy("p")
        };
        assert!(Policy::try_from(&ok).is_ok());
        let long = proto::Policy {
            description: "x".repeat(1025),
            ..mk_policy("p")
        };
        assert_error(
            &long,
            "description",
            "too long: 1025 characters, at most 1024",
        );
    }

    #[test]
    fn unknown_action() {
        let p = proto::Policy {
            action: "Block".into(),
            ..mk_policy("p")
        };
        assert_error(
            &p,
            "action",
            r#"unknown action "Block": expected block or alert (did you mean "block"?)"#,
        );
    }

    #[test]
    fn rules_are_required() {
        let missing = proto::Policy {
            rules: None,
            ..mk_policy("p")
        };
        assert_error(&missing, "rules", "empty rule set");
        let empty = proto::Policy {
            rules: Some(proto::Rules::default()),
            ..mk_policy("p")
        };
        assert_error(&empty, "rules", "empty rule set");
    }

    #[test]
    fn both_sections_may_be_present() {
        let mut p = with_resource(proto::ResourceRules {
            privileged: Some(proto::PrivilegedRule {}),
            ..Default::default()
        });
        p.rules.as_mut().unwrap().image = with_image(proto::ImageRules {
            require_digest: true,
            ..Default::default()
        })
        .rules
        .unwrap()
        .image;
        let policy = Policy::try_from(&p).unwrap();
        assert!(policy.rules.image.unwrap().require_digest);
        let expected = ResourceRules {
            forbid_privileged: true,
            ..Default::default()
        };
        assert_eq!(policy.rules.resource.as_deref(), Some(&expected));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let p = proto::Policy {
            name: "Bad Name".into(),
            action: "deny".into(),
            scope: Some(proto::Scope {
                kinds: vec!["Pod".into(), "Ingress".into()],
                ..Default::default()
            }),
            rules: Some(proto::Rules {
                image: Some(proto::ImageRules {
                    vulnerabilities: Some(proto::VulnerabilityRule {
                        severity: "hihg".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                resource: Some(proto::ResourceRules {
                    host_ports: Some(proto::HostPortsRule {
                        min: Some(10),
                        max: Some(1),
                    }),
                    ..Default::default()
                }),
            }),
            ..mk_policy("x")
        };
        let paths: Vec<_> = errors_of(&p).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "name",
                "action",
                "scope.kinds[1]",
                "rules.image.vulnerabilities.severity",
                "rules.resource.hostPorts",
            ]
        );
        let message = Policy::try_from(&p).unwrap_err().to_string();
        assert!(
            message.starts_with(r#"name: invalid name "Bad Name""#),
            "{message}"
        );
        assert!(
            message.contains(r#"; action: unknown action "deny""#),
            "{message}"
        );
    }

    #[test]
    fn policy_set_rejects_duplicate_names() {
        let set = [
            mk_policy("a"),
            mk_policy("x"),
            mk_policy("b"),
            mk_policy("x"),
        ];
        let err = validate_policy_set(&set).unwrap_err();
        assert_eq!(
            err.errors,
            [FieldError {
                path: "policies[3].name".into(),
                reason: r#"duplicate name "x" (also policies[1])"#.into(),
            }]
        );
        assert_eq!(
            err.to_string(),
            r#"policies[3].name: duplicate name "x" (also policies[1])"#
        );
    }

    #[test]
    fn policy_set_prefixes_paths_and_collects_every_policy() {
        let mut bad_kind = mk_policy("b");
        bad_kind.scope = Some(proto::Scope {
            kinds: vec!["Secret".into()],
            ..Default::default()
        });
        let set = [mk_policy("a"), mk_policy(""), bad_kind];
        let paths: Vec<_> = validate_policy_set(&set)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["policies[1].name", "policies[2].scope.kinds[0]"]);
    }

    #[test]
    fn valid_policy_set_converts_in_order() {
        let set = [mk_policy("a"), mk_policy("b")];
        let names: Vec<_> = validate_policy_set(&set)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(validate_policy_set(&[]), Ok(vec![]));
    }
}
