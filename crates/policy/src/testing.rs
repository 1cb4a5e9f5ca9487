//! Builders and assertions shared by the unit tests.

use portcullis_proto::v1 as proto;

use crate::{FieldError, Policy};

/// A valid proto policy with one image rule; tests change the part they exercise.
pub(crate) fn mk_policy(name: &str) -> proto::Policy {
    proto::Policy {
        name: name.into(),
        rules: Some(proto::Rules {
            image: Some(proto::ImageRules {
                malicious_files: true,
                ..Default::default()
            }),
            resource: None,
        }),
        ..Default::default()
    }
}

/// A policy whose only section is these image rules.
pub(crate) fn with_image(image: proto::ImageRules) -> proto::Policy {
    proto::Policy {
        rules: Some(proto::Rules {
            image: Some(image),
            resource: None,
        }),
        ..mk_policy("p")
    }
}

/// A policy whose only section is these resource rules.
pub(crate) fn with_resource(resource: proto::ResourceRules) -> proto::Policy {
    proto::Policy {
        rules: Some(proto::Rules {
            image: None,
            resource: Some(resource),
        }),
        ..mk_policy("p")
    }
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The validation errors of a policy (empty when it is valid).
pub(crate) fn errors_of(policy: &proto::Policy) -> Vec<FieldError> {
    Policy::try_from(policy)
        .err()
        .map(|e| e.errors)
        .unwrap_or_default()
}

/// Asserts one error has exactly `path` and a reason containing `fragment`.
#[track_caller]
pub(crate) fn assert_error(policy: &proto::Policy, path: &str, fragment: &str) {
    let errors = errors_of(policy);
    assert!(
        errors
            .iter()
            .any(|e| e.path == path && e.reason.contains(fragment)),
        "no error at {path:?} containing {fragment:?}; got:\n{}",
        errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
