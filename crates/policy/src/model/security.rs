//! Security-context rules: user and group ids, seccomp and AppArmor profiles, SELinux options,
//! and procMount. Each restricts the effective value (container setting, else the pod's).

use std::fmt;

use super::named_enum;

/// A rule on a user or group id (`runAsUser`, `runAsGroup`, `fsGroup`, `supplementalGroups`).
/// Validation guarantees `ranges` is non-empty for `MustRunAs`/`MayRunAs` and empty for
/// `MustRunAsNonRoot` (which only `runAsUser` accepts).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdRule {
    pub rule: IdRuleKind,
    pub ranges: Vec<IdRange>,
}

named_enum! {
    /// How an id rule treats the effective id.
    pub enum IdRuleKind {
        /// `runAsNonRoot: true` or a non-zero `runAsUser`; both unset violates.
        MustRunAsNonRoot => "MustRunAsNonRoot",
        /// The id must be set and inside a range.
        MustRunAs => "MustRunAs",
        /// Unset is fine; when set, the id must be inside a range.
        MayRunAs => "MayRunAs",
    }
}

/// An inclusive id range; validation guarantees `min <= max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdRange {
    pub min: u32,
    pub max: u32,
}

/// Allowed seccomp or AppArmor profiles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileRule {
    pub allow: Vec<ProfileType>,
    /// Whether a container with no profile at all is admitted.
    pub allow_unset: bool,
}

/// A profile entry: `RuntimeDefault`, `Unconfined`, `Localhost` (any local profile, `None`) or
/// `Localhost/<name>` (that one).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProfileType {
    RuntimeDefault,
    Unconfined,
    Localhost(Option<String>),
}

impl fmt::Display for ProfileType {
    /// The policy-file spelling, which the proto conversion writes back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RuntimeDefault => f.write_str("RuntimeDefault"),
            Self::Unconfined => f.write_str("Unconfined"),
            Self::Localhost(None) => f.write_str("Localhost"),
            Self::Localhost(Some(name)) => write!(f, "Localhost/{name}"),
        }
    }
}

/// Allowed SELinux options: the effective options are allowed when some entry equals them on
/// every field the object sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeLinuxRule {
    pub allow: Vec<SeLinuxOptions>,
}

/// One allowed combination; `None` is a field the entry leaves empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeLinuxOptions {
    pub user: Option<String>,
    pub role: Option<String>,
    pub type_: Option<String>,
    pub level: Option<String>,
}

/// Allowed `procMount` types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcMountRule {
    pub allow: Vec<ProcMountType>,
}

named_enum! {
    /// Kubernetes `procMount` values.
    pub enum ProcMountType {
        Default => "Default",
        Unmasked => "Unmasked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_types_display_as_in_policy_files() {
        assert_eq!(ProfileType::RuntimeDefault.to_string(), "RuntimeDefault");
        assert_eq!(ProfileType::Localhost(None).to_string(), "Localhost");
        let named = ProfileType::Localhost(Some("profiles/audit.json".into()));
        assert_eq!(named.to_string(), "Localhost/profiles/audit.json");
    }

    #[test]
    fn id_rule_kinds_are_exact_case() {
        assert_eq!(
            IdRuleKind::from_name("MayRunAs"),
            Some(IdRuleKind::MayRunAs)
        );
        assert_eq!(IdRuleKind::from_name("mayrunas"), None);
    }
}
