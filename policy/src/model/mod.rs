//! The policy model after validation: every string the operator wrote is parsed into a typed
//! value, every default is explicit, and nothing here needs checking again. Build it from the
//! proto with `Policy::try_from(&proto)`; the evaluation engine reads it as is.

mod image;
mod resource;
mod scope;
mod security;

pub use image::{ImageRules, RegistryRule, Severity, UnscannedAction, VulnerabilityRule};
pub use resource::{
    CapabilitiesRule, Capability, ComputeResource, HostNamespacesRule, HostPathAllow, HostPathRule,
    HostPortsRule, LATEST_PSS_MINOR, PodSecurityLevel, PodSecurityRule, PodSecurityVersion,
    PortRange, ResourceRules, ResourcesRule, ServiceRule, ServiceType, SysctlsRule, VolumeType,
    VolumesRule,
};
pub use scope::{
    ImagePattern, Kind, LabelOperator, LabelRequirement, LabelSelector, NamespaceScope, Scope,
    Whitelist, WorkloadPattern,
};
pub use security::{
    IdRange, IdRule, IdRuleKind, ProcMountRule, ProcMountType, ProfileRule, ProfileType,
    SeLinuxOptions, SeLinuxRule,
};

/// Declares a closed set of names as they appear in policy files, with the exact-case lookup
/// the validator uses and the spelling the proto conversion writes back.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order the policy format lists them.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The spellings of `ALL`, for "expected one of ..." messages.
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            /// The spelling used in policy files.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// Looks up the exact (case-sensitive) spelling used in policy files.
            pub fn from_name(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

/// A validated protection policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Unique DNS label; events and errors refer to the policy by it.
    pub name: String,
    pub description: String,
    /// A disabled policy is kept and synced but never evaluated.
    pub enabled: bool,
    pub action: Action,
    pub scope: Scope,
    pub whitelist: Whitelist,
    pub rules: Rules,
    /// Store revision of the last change (0 before the control plane stores it).
    pub revision: u64,
    /// Hashes of `rules`, for sharing work between policies with the same rules.
    pub fingerprints: RuleFingerprints,
}

/// Hashes of a policy's rule sections, computed when the policy is validated. The engine checks
/// each distinct resource rule set and image rule set once per admission and gives its findings
/// to every policy that has the same rules: a hash only narrows the search, and a match is
/// confirmed by comparing the rules, so a stale or colliding hash costs time, never a wrong
/// finding. Not part of the policy's value: any two compare equal.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleFingerprints {
    pub resource: u64,
    pub image: u64,
}

impl RuleFingerprints {
    pub fn of(rules: &Rules) -> Self {
        use std::hash::BuildHasher;
        let hash =
            |section: &dyn std::fmt::Debug| crate::hash::FastHash.hash_one(format!("{section:?}"));
        Self {
            resource: hash(&rules.resource),
            image: hash(&rules.image),
        }
    }
}

impl PartialEq for RuleFingerprints {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RuleFingerprints {}

named_enum! {
    /// What happens to an object that violates the policy.
    #[derive(Default)]
    pub enum Action {
        /// Deny admission and record an event.
        #[default]
        Block => "block",
        /// Admit with a Kubernetes admission warning and record an event.
        Alert => "alert",
    }
}

/// The checks of a policy. Validation guarantees at least one section is present and that each
/// present section restricts something.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub image: Option<ImageRules>,
    pub resource: Option<ResourceRules>,
}
