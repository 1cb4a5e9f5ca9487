//! Syntax of the names a policy holds: DNS labels, Kubernetes label keys and values, image
//! tags, ids, and the glob flavours (namespace, cluster, sysctl, image, registry, workload).
//! Each check returns the domain value or a lower-case reason naming the offending text.

use crate::glob::{Glob, GlobError};
use crate::model::{ImagePattern, Kind, WorkloadKinds, WorkloadPattern};

/// Longest DNS label (RFC 1123), Kubernetes label name and label value.
const MAX_LABEL: usize = 63;
/// Longest DNS subdomain (label key prefix).
const MAX_SUBDOMAIN: usize = 253;
/// Longest image tag (OCI distribution spec).
const MAX_TAG: usize = 128;

/// A policy name: a DNS label, so it can name Kubernetes objects and metrics safely.
pub(crate) fn policy_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("required".into());
    }
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: expected a DNS label (lower-case letters, digits and '-', \
             starting and ending with a letter or digit, at most {MAX_LABEL} characters)"
        ))
    }
}

/// Whether `s` is a DNS label (RFC 1123): the names of policies, clusters and namespaces.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && starts_and_ends_alphanumeric(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_SUBDOMAIN && s.split('.').all(is_dns_label)
}

fn starts_and_ends_alphanumeric(s: &str) -> bool {
    let alnum = |c: Option<u8>| c.is_some_and(|b| b.is_ascii_alphanumeric());
    alnum(s.bytes().next()) && alnum(s.bytes().last())
}

/// A label name or non-empty label value: at most 63 of `[A-Za-z0-9._-]`, starting and
/// ending with a letter or digit.
fn is_label_name(s: &str) -> bool {
    s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && starts_and_ends_alphanumeric(s)
}

/// A Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain.
pub(crate) fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let reason = if key.is_empty() {
        "empty label key".to_owned()
    } else if prefix.is_some_and(|p| !is_dns_subdomain(p)) {
        format!(
            "invalid label key {key:?}: the prefix must be a DNS subdomain (lower-case \
             letters, digits, '-' and '.', at most {MAX_SUBDOMAIN} characters)"
        )
    } else if !is_label_name(name) {
        format!(
            "invalid label key {key:?}: the name must be at most {MAX_LABEL} letters, digits, \
             '-', '_' or '.', starting and ending with a letter or digit"
        )
    } else {
        return Ok(());
    };
    Err(reason)
}

/// A Kubernetes label value: empty, or like a label name.
pub(crate) fn label_value(value: &str) -> Result<String, String> {
    if value.is_empty() || is_label_name(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "invalid label value {value:?}: expected at most {MAX_LABEL} letters, digits, '-', \
             '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// An image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub(crate) fn image_tag(tag: &str) -> Result<String, String> {
    let valid = tag.len() <= MAX_TAG
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(tag.to_owned())
    } else {
        Err(format!(
            "invalid tag {tag:?}: expected at most {MAX_TAG} letters, digits, '_', '.' or '-', \
             not starting with '.' or '-'"
        ))
    }
}

/// An opaque identifier (vulnerability id, driver, profile or SELinux field): non-empty,
/// no whitespace or control characters.
pub(crate) fn token(what: &str, value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err(format!("empty {what}"));
    }
    match value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(format!(
            "invalid {what} {value:?}: character {c:?} is not allowed"
        )),
        None => Ok(value.to_owned()),
    }
}

fn glob(what: &str, pattern: &str) -> Result<Glob, String> {
    Glob::new(pattern).map_err(|e| match e {
        GlobError::Empty => format!("empty {what}"),
        e => format!("invalid {what} {pattern:?}: {e}"),
    })
}

/// A glob over a restricted character set (besides `*` and `?`).
fn charset_glob(
    what: &str,
    pattern: &str,
    allowed: impl Fn(char) -> bool,
    allowed_text: &str,
) -> Result<Glob, String> {
    let parsed = glob(what, pattern)?;
    match pattern
        .chars()
        .find(|&c| !allowed(c) && c != '*' && c != '?')
    {
        Some(c) => Err(format!(
            "invalid {what} {pattern:?}: character {c:?} is not allowed (expected \
             {allowed_text}, '*' or '?')"
        )),
        None => Ok(parsed),
    }
}

fn is_dns_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// A namespace glob: namespaces are DNS labels.
pub(crate) fn namespace_glob(pattern: &str) -> Result<Glob, String> {
    charset_glob("namespace glob", pattern, is_dns_char, "a-z, 0-9, '-'")
}

/// A cluster glob: cluster names are DNS labels.
pub(crate) fn cluster_glob(pattern: &str) -> Result<Glob, String> {
    charset_glob("cluster glob", pattern, is_dns_char, "a-z, 0-9, '-'")
}

/// A sysctl glob (`net.ipv4.tcp_*`; `/` is the alternative separator Kubernetes accepts).
pub(crate) fn sysctl_glob(pattern: &str) -> Result<Glob, String> {
    let allowed = |c: char| is_dns_char(c) || matches!(c, '_' | '.' | '/');
    charset_glob(
        "sysctl glob",
        pattern,
        allowed,
        "a-z, 0-9, '_', '.', '/', '-'",
    )
}

/// Image references never have a URL scheme; a pattern with one would never match.
fn reject_scheme(what: &str, pattern: &str) -> Result<(), String> {
    if pattern.contains("://") {
        Err(format!(
            "invalid {what} {pattern:?}: an image reference has no URL scheme"
        ))
    } else {
        Ok(())
    }
}

/// A whitelisted image: exact reference, glob, or `name@digest` (see `pattern`).
pub(crate) fn image_pattern(pattern: &str) -> Result<ImagePattern, String> {
    let parsed = glob("image pattern", pattern)?;
    reject_scheme("image pattern", pattern)?;
    ImagePattern::parse(parsed)
}

/// A registry or repository pattern (`registry.example.com`, `docker.io/library`), in
/// canonical form (see `pattern`).
pub(crate) fn registry_pattern(pattern: &str) -> Result<Glob, String> {
    glob("registry pattern", pattern)?;
    reject_scheme("registry pattern", pattern)?;
    let canonical = crate::pattern::canonical_registry_pattern(pattern)?;
    glob("registry pattern", &canonical)
}

/// A workload `namespace/name` (the workload controllers) or `namespace/kind/name` (`kind` as
/// in `scope.kinds`, or `*`); namespace and name are globs.
pub(crate) fn workload_pattern(pattern: &str) -> Result<WorkloadPattern, String> {
    let expected = "expected \"namespace/name\" or \"namespace/Kind/name\"";
    let parts: Vec<&str> = pattern.split('/').collect();
    let (namespace, kinds, name) = match parts.as_slice() {
        [namespace, name] => (*namespace, WorkloadKinds::Controllers, *name),
        [namespace, "*", name] => (*namespace, WorkloadKinds::Any, *name),
        [namespace, kind, name] => match Kind::from_name(kind) {
            Some(kind) => (*namespace, WorkloadKinds::Exactly(kind), *name),
            None => {
                return Err(format!(
                    "invalid workload {pattern:?}: unknown kind {kind:?} (expected one of {}, \
                     or *)",
                    Kind::NAMES.join(", ")
                ));
            }
        },
        _ => return Err(format!("invalid workload {pattern:?}: {expected}")),
    };
    let name_char = |c: char| is_dns_char(c) || c == '.';
    Ok(WorkloadPattern {
        namespace: charset_glob(
            "workload namespace",
            namespace,
            is_dns_char,
            "a-z, 0-9, '-'",
        )
        .map_err(|e| format!("in workload {pattern:?}: {e}"))?,
        kinds,
        name: charset_glob("workload name", name, name_char, "a-z, 0-9, '-', '.'")
            .map_err(|e| format!("in workload {pattern:?}: {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_are_dns_labels() {
        assert!(policy_name("no-high-vulns").is_ok());
        assert!(policy_name("a").is_ok());
        assert!(policy_name(&"a".repeat(63)).is_ok());
        assert_eq!(policy_name(""), Err("required".into()));
        for bad in ["-a", "a-", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            let reason = policy_name(bad).unwrap_err();
            assert!(
                reason.starts_with(&format!("invalid name {bad:?}")),
                "{reason}"
            );
        }
    }

    #[test]
    fn label_keys_follow_kubernetes() {
        for good in [
            "app",
            "app.kubernetes.io/name",
            "a-b_c.d",
            "x/Y",
            "example.com/A1",
        ] {
            assert!(label_key(good).is_ok(), "{good}");
        }
        assert_eq!(label_key(""), Err("empty label key".into()));
        for bad in [
            "-app",
            "app-",
            "/app",
            "Example.com/app",
            "a/b/c",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        assert!(
            label_key("ex_ample.com/app")
                .unwrap_err()
                .contains("prefix")
        );
    }

    #[test]
    fn label_values_may_be_empty() {
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3-x").is_ok());
        assert!(label_value("-x").is_err());
        assert!(label_value("a/b").is_err());
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn tags_follow_the_distribution_spec() {
        for good in ["latest", "v1.2.3", "_x", "1", &"a".repeat(128)] {
            assert!(image_tag(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", "late st", &"a".repeat(129)] {
            assert!(image_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespace_and_sysctl_globs_have_their_charsets() {
        assert!(namespace_glob("team-?-*").is_ok());
        assert_eq!(
            namespace_glob("Kube-*").unwrap_err(),
            r#"invalid namespace glob "Kube-*": character 'K' is not allowed (expected a-z, 0-9, '-', '*' or '?')"#
        );
        assert_eq!(namespace_glob("").unwrap_err(), "empty namespace glob");
        assert!(cluster_glob("prod_eu").is_err());
        assert!(sysctl_glob("net.ipv4.tcp_*").is_ok());
        assert!(sysctl_glob("net/ipv4/ip_forward").is_ok());
        assert!(sysctl_glob("Net.*").is_err());
    }

    #[test]
    fn workloads_are_namespace_slash_name_with_an_optional_kind() {
        let w = workload_pattern("payments/legacy-*").unwrap();
        assert_eq!(w.namespace.as_str(), "payments");
        assert_eq!(w.name.as_str(), "legacy-*");
        assert!(
            workload_pattern("payments")
                .unwrap_err()
                .contains("namespace/name")
        );
        assert!(
            workload_pattern("/x")
                .unwrap_err()
                .contains("empty workload namespace")
        );
        assert!(
            workload_pattern("a/")
                .unwrap_err()
                .contains("empty workload name")
        );
        assert!(
            workload_pattern("a/b/c")
                .unwrap_err()
                .contains(r#"unknown kind "b""#)
        );
        assert!(workload_pattern("a/b/c/d").is_err());
        assert!(workload_pattern("A/b").is_err());
        let w = workload_pattern("payments/Deployment/legacy-*").unwrap();
        assert_eq!(w.kinds, WorkloadKinds::Exactly(Kind::Deployment));
        assert_eq!(w.to_string(), "payments/Deployment/legacy-*");
        assert_eq!(
            workload_pattern("payments/*/x").unwrap().kinds,
            WorkloadKinds::Any
        );
        assert_eq!(
            workload_pattern("payments/x").unwrap().kinds,
            WorkloadKinds::Controllers
        );
        // Kinds are spelled as in `scope.kinds`.
        assert!(workload_pattern("payments/deployment/x").is_err());
    }

    #[test]
    fn image_patterns_reject_blanks_and_schemes() {
        // A literal is a reference, so a truncated digest (which could never match) is an error.
        assert!(
            image_pattern("nginx@sha256:4c0f")
                .unwrap_err()
                .contains("invalid image reference")
        );
        assert!(image_pattern(&format!("nginx@sha256:{}", "4c".repeat(32))).is_ok());
        assert!(image_pattern("registry.example.com/base/*").is_ok());
        assert!(registry_pattern("docker.io/**").is_err());
        assert_eq!(
            registry_pattern("Registry-1.Docker.io:443/library")
                .unwrap()
                .as_str(),
            "docker.io/library"
        );
        assert_eq!(image_pattern("").unwrap_err(), "empty image pattern");
        assert!(
            image_pattern("nginx latest")
                .unwrap_err()
                .contains("whitespace")
        );
        assert!(
            registry_pattern("https://registry.example.com")
                .unwrap_err()
                .contains("scheme")
        );
    }

    #[test]
    fn tokens_reject_blanks() {
        assert_eq!(
            token("vulnerability id", "CVE-2021-44228"),
            Ok("CVE-2021-44228".into())
        );
        assert_eq!(
            token("vulnerability id", ""),
            Err("empty vulnerability id".into())
        );
        assert!(
            token("vulnerability id", "CVE 1")
                .unwrap_err()
                .contains("' '")
        );
    }
}
