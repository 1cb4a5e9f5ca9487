//! Image rules: blocking from scan results (vulnerabilities, malicious files, baseline
//! failures, unscanned images) and image hygiene (registries, tags, digests).

use std::fmt;

use super::named_enum;
use crate::glob::Glob;

/// Image checks. Validation guarantees at least one of them restricts something.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRules {
    pub vulnerabilities: Option<VulnerabilityRule>,
    /// Block images in which the scanner found malicious files.
    pub malicious_files: bool,
    /// Block images with misconfigurations (FAIL) or embedded secrets.
    pub baseline_failures: bool,
    pub unscanned: UnscannedAction,
    pub registries: RegistryRule,
    /// An image with no tag counts as `latest`.
    pub disallowed_tags: Vec<String>,
    pub require_digest: bool,
}

/// Which vulnerabilities block an image. Validation guarantees it blocks something: a
/// severity threshold, or named ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VulnerabilityRule {
    /// Block findings at or above this severity; `None` = only the `block` list.
    pub severity: Option<Severity>,
    /// Only count findings that have a fixed version (the threshold, not the `block` list).
    pub fixable_only: bool,
    /// Always block these ids, whatever their severity.
    pub block: Vec<String>,
    /// Never block for these ids (validation guarantees no id is in both lists).
    pub ignore: Vec<String>,
}

/// Vulnerability severity, ordered so that `finding >= threshold` is the check.
///
/// `Unknown` exists because scanners report it; it sorts below `Low` so no threshold a policy
/// can express ever blocks it, and policy files cannot name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// The thresholds a policy file may name, highest first (the order used in messages).
    pub const POLICY_LEVELS: [Self; 4] = [Self::Critical, Self::High, Self::Medium, Self::Low];

    /// The lower-case spelling used in policy files (`unknown` for `Unknown`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Parses a policy-file threshold: `critical`, `high`, `medium` or `low`, exact case.
    pub fn from_policy_name(name: &str) -> Option<Self> {
        Self::POLICY_LEVELS
            .iter()
            .copied()
            .find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

named_enum! {
    /// What to do with an image that has no scan result.
    #[derive(Default)]
    pub enum UnscannedAction {
        #[default]
        Allow => "allow",
        Alert => "alert",
        Block => "block",
    }
}

/// Registry and repository patterns (`registry.example.com`, `docker.io/library`, globs).
/// An empty `allow` list allows every registry not denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistryRule {
    pub allow: Vec<Glob>,
    pub deny: Vec<Glob>,
}

impl RegistryRule {
    /// True when the rule restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_are_ordered_with_unknown_lowest() {
        assert!(Severity::Unknown < Severity::Low);
        assert!(Severity::Low < Severity::Medium);
        assert!(Severity::Medium < Severity::High);
        assert!(Severity::High < Severity::Critical);
    }

    #[test]
    fn policy_files_cannot_name_unknown() {
        assert_eq!(Severity::from_policy_name("high"), Some(Severity::High));
        assert_eq!(Severity::from_policy_name("unknown"), None);
        assert_eq!(Severity::from_policy_name("HIGH"), None);
    }
}
