//! Validation errors and the collector the field validators share: every problem is recorded
//! with its camelCase field path (`scope.namespaces.include[2]`) and validation goes on, so one
//! answer lists everything that is wrong.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

/// One invalid field: its path as written in the policy file and why it is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FieldError {
    /// camelCase JSON path with indices, e.g. `rules.resource.runAsUser.ranges[0]`.
    pub path: String,
    /// Lower-case reason naming the offending value.
    pub reason: String,
}

/// A policy that cannot be accepted, with every invalid field (never just the first).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.errors))]
pub struct InvalidPolicy {
    pub errors: Vec<FieldError>,
}

/// A set of policies that cannot be applied together; paths start with `policies[i].`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.errors))]
pub struct InvalidPolicySet {
    pub errors: Vec<FieldError>,
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(FieldError::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A field path under construction.
#[derive(Clone, Debug, Default)]
pub(crate) struct Path(String);

impl Path {
    /// `self.name`, or `name` at the root.
    pub(crate) fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// `self[i]`.
    pub(crate) fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// `self["key"]`, for map entries such as label selectors.
    pub(crate) fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key:?}]", self.0))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects field errors while a policy is converted.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: &Path, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.0.clone(),
            reason: reason.into(),
        });
    }

    /// Records the error of a field check, if any, and passes the value on.
    pub(crate) fn check<T>(&mut self, path: &Path, result: Result<T, String>) -> Option<T> {
        result.map_err(|reason| self.push(path, reason)).ok()
    }

    pub(crate) fn into_result<T>(self, value: T) -> Result<T, InvalidPolicy> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(InvalidPolicy { errors: self.0 })
        }
    }
}

/// Parses every entry of a string list, reporting invalid entries and duplicates (compared
/// after parsing, so `CAP_NET_ADMIN` and `net_admin` are duplicates) at `path[i]`.
pub(crate) fn parse_list<T: Clone + Eq + Hash>(
    items: &[String],
    path: &Path,
    errors: &mut Errors,
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> Vec<T> {
    let mut first_seen: HashMap<T, usize> = HashMap::with_capacity(items.len());
    let mut parsed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(value) = errors.check(&path.index(i), parse(item)) else {
            continue;
        };
        if let Some(first) = first_seen.get(&value) {
            errors.push(&path.index(i), duplicate(item, *first));
        } else {
            first_seen.insert(value.clone(), i);
            parsed.push(value);
        }
    }
    parsed
}

/// The reason for a repeated list entry.
pub(crate) fn duplicate(item: impl fmt::Debug, first: usize) -> String {
    format!("duplicate {item:?} (also at index {first})")
}

/// The reason for a value outside a closed set, with a hint when only the case is wrong.
pub(crate) fn unknown(what: &str, value: &str, expected: &[&str]) -> String {
    let mut reason = format!("unknown {what} {value:?}: expected {}", one_of(expected));
    if let Some(hint) = expected.iter().find(|e| e.eq_ignore_ascii_case(value)) {
        reason.push_str(&format!(" (did you mean {hint:?}?)"));
    }
    reason
}

/// `a or b`, or `one of a, b, c`.
pub(crate) fn one_of(expected: &[&str]) -> String {
    match expected {
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", expected.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_use_dots_indices_and_quoted_keys() {
        let p = Path::default()
            .field("scope")
            .field("namespaces")
            .field("include");
        assert_eq!(p.index(2).to_string(), "scope.namespaces.include[2]");
        let k = Path::default()
            .field("matchLabels")
            .key("app.kubernetes.io/name");
        assert_eq!(k.to_string(), r#"matchLabels["app.kubernetes.io/name"]"#);
    }

    #[test]
    fn invalid_policy_displays_every_error() {
        let err = InvalidPolicy {
            errors: vec![
                FieldError {
                    path: "name".into(),
                    reason: "required".into(),
                },
                FieldError {
                    path: "rules".into(),
                    reason: "empty rule set".into(),
                },
            ],
        };
        assert_eq!(err.to_string(), "name: required; rules: empty rule set");
    }

    #[test]
    fn parse_list_reports_bad_entries_and_duplicates() {
        let mut errors = Errors::default();
        let items = ["a", "B", "a", "c"].map(String::from);
        let parsed = parse_list(&items, &Path::default().field("xs"), &mut errors, |s| {
            if s.chars().all(|c| c.is_ascii_lowercase()) {
                Ok(s.to_owned())
            } else {
                Err(format!("bad {s:?}"))
            }
        });
        assert_eq!(parsed, ["a", "c"]);
        let err = errors.into_result(()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"xs[1]: bad "B"; xs[2]: duplicate "a" (also at index 0)"#
        );
    }

    #[test]
    fn unknown_values_list_the_choices_and_hint_at_case() {
        assert_eq!(
            unknown("action", "deny", &["block", "alert"]),
            r#"unknown action "deny": expected block or alert"#
        );
        assert_eq!(
            unknown("kind", "pod", &["Pod", "Deployment", "Job"]),
            r#"unknown kind "pod": expected one of Pod, Deployment, Job (did you mean "Pod"?)"#
        );
    }
}
