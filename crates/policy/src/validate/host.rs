//! Validates the host controls of `rules.resource` that take parameters: the allowed host
//! port range (`hostPorts`) and the allowed hostPath prefixes (`hostPath`).

use std::collections::HashMap;

use portcullis_proto::v1 as proto;

use super::errors::{Errors, Path, duplicate};
use crate::model::{HostPathAllow, HostPathRule, HostPortsRule, PortRange};

/// `{}` forbids every host port; one bound alone defaults the other to 0 or 65535.
pub(super) fn host_ports(
    rule: &proto::HostPortsRule,
    path: &Path,
    errors: &mut Errors,
) -> HostPortsRule {
    if rule.min.is_none() && rule.max.is_none() {
        return HostPortsRule { allowed: None };
    }
    let mut port = |field: &str, value: u32| {
        errors.check(
            &path.field(field),
            u16::try_from(value)
                .map_err(|_| format!("port {value} is out of range: expected 0 to 65535")),
        )
    };
    let min = port("min", rule.min.unwrap_or(0));
    let max = port("max", rule.max.unwrap_or(u32::from(u16::MAX)));
    let (min, max) = (min.unwrap_or(0), max.unwrap_or(u16::MAX));
    if min > max {
        errors.push(path, format!("min {min} is greater than max {max}"));
    }
    HostPortsRule {
        allowed: Some(PortRange { min, max }),
    }
}

pub(super) fn host_path(
    rule: &proto::HostPathRule,
    path: &Path,
    errors: &mut Errors,
) -> HostPathRule {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut allow = Vec::with_capacity(rule.allow.len());
    for (i, entry) in rule.allow.iter().enumerate() {
        let path = path.field("allow").index(i).field("pathPrefix");
        let prefix = entry.path_prefix.as_str();
        if errors.check(&path, path_prefix(prefix)).is_none() {
            continue;
        }
        if let Some(&first) = first_seen.get(prefix) {
            errors.push(&path, duplicate(prefix, first));
            continue;
        }
        first_seen.insert(prefix, i);
        allow.push(HostPathAllow {
            path_prefix: prefix.to_owned(),
            read_only: entry.read_only,
        });
    }
    HostPathRule { allow }
}

/// Absolute and normalised, so prefixes compare component by component.
fn path_prefix(prefix: &str) -> Result<(), String> {
    let problem = if prefix.is_empty() {
        return Err("required: an absolute path such as \"/var/log\"".into());
    } else if !prefix.starts_with('/') {
        "it is not absolute"
    } else if prefix.chars().any(char::is_control) {
        "control characters are not allowed"
    } else if prefix == "/" {
        return Ok(());
    } else if prefix.ends_with('/') {
        "remove the trailing '/'"
    } else {
        match prefix[1..]
            .split('/')
            .find(|c| matches!(*c, "" | "." | ".."))
        {
            Some("") => "empty components ('//') are not allowed",
            Some(".") => "'.' components are not allowed",
            Some(_) => "'..' components are not allowed",
            None => return Ok(()),
        }
    };
    Err(format!("invalid path prefix {prefix:?}: {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Policy;
    use crate::testing::{assert_error, with_resource};

    fn convert(rules: proto::ResourceRules) -> crate::ResourceRules {
        let policy = Policy::try_from(&with_resource(rules)).unwrap();
        crate::ResourceRules::clone(&policy.rules.resource.unwrap())
    }

    #[test]
    fn host_ports_defaults_and_ranges() {
        let ports = |min, max| {
            convert(proto::ResourceRules {
                host_ports: Some(proto::HostPortsRule { min, max }),
                ..Default::default()
            })
            .host_ports
            .unwrap()
            .allowed
        };
        assert_eq!(ports(None, None), None);
        assert_eq!(
            ports(Some(8000), None),
            Some(PortRange {
                min: 8000,
                max: 65535
            })
        );
        assert_eq!(
            ports(None, Some(8080)),
            Some(PortRange { min: 0, max: 8080 })
        );
        assert_eq!(
            ports(Some(80), Some(80)),
            Some(PortRange { min: 80, max: 80 })
        );
    }

    #[test]
    fn host_ports_min_greater_than_max() {
        let p = with_resource(proto::ResourceRules {
            host_ports: Some(proto::HostPortsRule {
                min: Some(9000),
                max: Some(8000),
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.hostPorts",
            "min 9000 is greater than max 8000",
        );
    }

    #[test]
    fn host_ports_out_of_range() {
        let p = with_resource(proto::ResourceRules {
            host_ports: Some(proto::HostPortsRule {
                min: Some(70000),
                max: Some(80000),
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.hostPorts.min",
            "port 70000 is out of range",
        );
        assert_error(
            &p,
            "rules.resource.hostPorts.max",
            "port 80000 is out of range",
        );
    }

    #[test]
    fn host_path_prefixes_are_absolute_and_normalised() {
        assert!(path_prefix("/").is_ok());
        assert!(path_prefix("/var/log").is_ok());
        assert!(path_prefix("/var/..log").is_ok());
        for (bad, fragment) in [
            ("", "required"),
            ("var/log", "not absolute"),
            ("/var/log/", "trailing"),
            ("/var//log", "empty components"),
            ("/var/./log", "'.' components"),
            ("/var/../etc", "'..' components"),
            ("/..", "'..' components"),
        ] {
            let reason = path_prefix(bad).unwrap_err();
            assert!(reason.contains(fragment), "{bad}: {reason}");
        }
        let p = with_resource(proto::ResourceRules {
            host_path: Some(proto::HostPathRule {
                allow: vec![
                    proto::HostPathAllow {
                        path_prefix: "/var/log".into(),
                        read_only: true,
                    },
                    proto::HostPathAllow {
                        path_prefix: "/var/../etc".into(),
                        read_only: true,
                    },
                    proto::HostPathAllow {
                        path_prefix: "/var/log".into(),
                        read_only: false,
                    },
                ],
            }),
            ..Default::default()
        });
        assert_error(
            &p,
            "rules.resource.hostPath.allow[1].pathPrefix",
            r#"invalid path prefix "/var/../etc""#,
        );
        assert_error(
            &p,
            "rules.resource.hostPath.allow[2].pathPrefix",
            r#"duplicate "/var/log" (also at index 0)"#,
        );
    }
}
