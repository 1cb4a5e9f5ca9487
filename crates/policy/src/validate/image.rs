//! Validates `rules.image`: severities, vulnerability ids, the unscanned action, registry
//! patterns and tags, and that the section blocks something.

use std::collections::HashSet;

use portcullis_proto::v1 as proto;

use super::errors::{Errors, Path, parse_list, unknown};
use super::syntax;
use crate::model::{ImageRules, RegistryRule, Severity, UnscannedAction, VulnerabilityRule};

pub(super) fn image_rules(
    rules: &proto::ImageRules,
    path: &Path,
    errors: &mut Errors,
) -> ImageRules {
    if restricts_nothing(rules) {
        errors.push(
            path,
            "empty rule set: set vulnerabilities, maliciousFiles, baselineFailures, unscanned, \
             registries, disallowedTags or requireDigest",
        );
    }
    let unscanned = match rules.unscanned.as_str() {
        "" => Some(UnscannedAction::Allow),
        action => errors.check(
            &path.field("unscanned"),
            UnscannedAction::from_name(action)
                .ok_or_else(|| unknown("unscanned action", action, UnscannedAction::NAMES)),
        ),
    };
    let registries = rules
        .registries
        .as_ref()
        .map_or_else(RegistryRule::default, |r| {
            let path = path.field("registries");
            RegistryRule {
                allow: parse_list(
                    &r.allow,
                    &path.field("allow"),
                    errors,
                    syntax::registry_pattern,
                ),
                deny: parse_list(
                    &r.deny,
                    &path.field("deny"),
                    errors,
                    syntax::registry_pattern,
                ),
            }
        });
    ImageRules {
        vulnerabilities: rules
            .vulnerabilities
            .as_ref()
            .map(|v| vulnerability_rule(v, &path.field("vulnerabilities"), errors)),
        malicious_files: rules.malicious_files,
        baseline_failures: rules.baseline_failures,
        unscanned: unscanned.unwrap_or_default(),
        registries,
        disallowed_tags: parse_list(
            &rules.disallowed_tags,
            &path.field("disallowedTags"),
            errors,
            syntax::image_tag,
        ),
        require_digest: rules.require_digest,
    }
}

/// Judged on the proto, so a section whose only rule is invalid gets one error, not two.
fn restricts_nothing(rules: &proto::ImageRules) -> bool {
    let registries_empty = rules
        .registries
        .as_ref()
        .is_none_or(|r| r.allow.is_empty() && r.deny.is_empty());
    rules.vulnerabilities.is_none()
        && !rules.malicious_files
        && !rules.baseline_failures
        && matches!(rules.unscanned.as_str(), "" | "allow")
        && registries_empty
        && rules.disallowed_tags.is_empty()
        && !rules.require_digest
}

fn vulnerability_rule(
    rule: &proto::VulnerabilityRule,
    path: &Path,
    errors: &mut Errors,
) -> VulnerabilityRule {
    let severity = match rule.severity.as_str() {
        "" => None,
        name => errors.check(
            &path.field("severity"),
            Severity::from_policy_name(name).ok_or_else(|| {
                let levels = Severity::POLICY_LEVELS.map(Severity::as_str);
                unknown("severity", name, &levels)
            }),
        ),
    };
    if rule.severity.is_empty() && rule.block.is_empty() {
        errors.push(path, "blocks nothing: set severity, block or both");
    }
    let id = |id: &str| syntax::token("vulnerability id", id);
    let block = parse_list(&rule.block, &path.field("block"), errors, id);
    let ignore = parse_list(&rule.ignore, &path.field("ignore"), errors, id);
    let blocked: HashSet<&str> = rule.block.iter().map(String::as_str).collect();
    for (i, id) in rule.ignore.iter().enumerate() {
        if blocked.contains(id.as_str()) {
            errors.push(
                &path.field("ignore").index(i),
                format!("{id:?} is also in block: an id is either always blocked or ignored"),
            );
        }
    }
    VulnerabilityRule {
        severity,
        fixable_only: rule.fixable_only,
        block,
        ignore,
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{assert_error, errors_of, mk_policy, strings, with_image};
    use crate::{Policy, Severity, UnscannedAction};
    use portcullis_proto::v1 as proto;

    fn vulns(rule: proto::VulnerabilityRule) -> proto::Policy {
        with_image(proto::ImageRules {
            vulnerabilities: Some(rule),
            ..Default::default()
        })
    }

    #[test]
    fn valid_image_rules_convert() {
        let p = with_image(proto::ImageRules {
            vulnerabilities: Some(proto::VulnerabilityRule {
                severity: "high".into(),
                fixable_only: true,
                block: strings(&["CVE-2021-44228"]),
                ignore: strings(&["CVE-2019-1010022"]),
            }),
            unscanned: "alert".into(),
            registries: Some(proto::RegistryRule {
                allow: strings(&["registry.example.com", "docker.io/library"]),
                deny: vec![],
            }),
            disallowed_tags: strings(&["latest"]),
            ..Default::default()
        });
        let image =
            std::sync::Arc::unwrap_or_clone(Policy::try_from(&p).unwrap().rules.image.unwrap());
        let v = image.vulnerabilities.unwrap();
        assert_eq!(v.severity, Some(Severity::High));
        assert!(v.fixable_only);
        assert_eq!(v.block, ["CVE-2021-44228"]);
        assert_eq!(image.unscanned, UnscannedAction::Alert);
        assert_eq!(image.registries.allow.len(), 2);
        assert_eq!(image.disallowed_tags, ["latest"]);
    }

    #[test]
    fn unknown_severity() {
        let p = vulns(proto::VulnerabilityRule {
            severity: "hihg".into(),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.image.vulnerabilities.severity",
            r#"unknown severity "hihg": expected one of critical, high, medium, low"#,
        );
        // The bad severity is the only error: no "blocks nothing" on top.
        assert_eq!(errors_of(&p).len(), 1);
    }

    #[test]
    fn unknown_is_not_a_policy_severity() {
        let p = vulns(proto::VulnerabilityRule {
            severity: "unknown".into(),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.image.vulnerabilities.severity",
            r#"unknown severity "unknown""#,
        );
    }

    #[test]
    fn vulnerability_rule_must_block_something() {
        let p = vulns(proto::VulnerabilityRule {
            fixable_only: true,
            ..Default::default()
        });
        assert_error(&p, "rules.image.vulnerabilities", "blocks nothing");
        assert_eq!(errors_of(&p).len(), 1);
    }

    #[test]
    fn bad_vulnerability_ids() {
        let p = vulns(proto::VulnerabilityRule {
            block: strings(&["CVE-1", "", "CVE 2", "CVE-1"]),
            ignore: strings(&["CVE-1", "GHSA-x"]),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.image.vulnerabilities.block[1]",
            "empty vulnerability id",
        );
        assert_error(
            &p,
            "rules.image.vulnerabilities.block[2]",
            r#"invalid vulnerability id "CVE 2""#,
        );
        assert_error(
            &p,
            "rules.image.vulnerabilities.block[3]",
            r#"duplicate "CVE-1""#,
        );
        assert_error(
            &p,
            "rules.image.vulnerabilities.ignore[0]",
            r#""CVE-1" is also in block"#,
        );
        assert_eq!(errors_of(&p).len(), 4);
    }

    #[test]
    fn unknown_unscanned_action() {
        let p = with_image(proto::ImageRules {
            unscanned: "deny".into(),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.image.unscanned",
            r#"unknown unscanned action "deny": expected one of allow, alert, block"#,
        );
        assert_eq!(errors_of(&p).len(), 1);
    }

    #[test]
    fn bad_disallowed_tag() {
        let p = with_image(proto::ImageRules {
            disallowed_tags: strings(&["latest", ".hidden", "latest"]),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.image.disallowedTags[1]",
            r#"invalid tag ".hidden""#,
        );
        assert_error(&p, "rules.image.disallowedTags[2]", r#"duplicate "latest""#);
    }

    #[test]
    fn bad_registry_pattern() {
        let p = with_image(proto::ImageRules {
            registries: Some(proto::RegistryRule {
                allow: vec![],
                deny: strings(&["https://evil.example.com", ""]),
            }),
            ..Default::default()
        });
        assert_error(&p, "rules.image.registries.deny[0]", "no URL scheme");
        assert_error(
            &p,
            "rules.image.registries.deny[1]",
            "empty registry pattern",
        );
    }

    #[test]
    fn empty_image_section() {
        for rules in [
            proto::ImageRules::default(),
            proto::ImageRules {
                unscanned: "allow".into(),
                registries: Some(proto::RegistryRule::default()),
                ..Default::default()
            },
        ] {
            let p = with_image(rules);
            assert_error(&p, "rules.image", "empty rule set");
            assert_eq!(errors_of(&p).len(), 1);
        }
    }

    #[test]
    fn each_image_rule_alone_is_enough() {
        let single_rules = [
            proto::ImageRules {
                malicious_files: true,
                ..Default::default()
            },
            proto::ImageRules {
                baseline_failures: true,
                ..Default::default()
            },
            proto::ImageRules {
                unscanned: "block".into(),
                ..Default::default()
            },
            proto::ImageRules {
                require_digest: true,
                ..Default::default()
            },
            proto::ImageRules {
                disallowed_tags: strings(&["latest"]),
                ..Default::default()
            },
        ];
        for rules in single_rules {
            let p = proto::Policy {
                rules: Some(proto::Rules {
                    image: Some(rules),
                    resource: None,
                }),
                ..mk_policy("p")
            };
            assert!(Policy::try_from(&p).is_ok());
        }
    }
}
