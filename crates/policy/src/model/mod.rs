//! The policy model after validation: every string the operator wrote is parsed into a typed
//! value, every default is explicit, and nothing here needs checking again. Build it from the
//! proto with `Policy::try_from(&proto)`; the evaluation engine reads it as is.

use std::collections::HashMap;
use std::sync::Arc;

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
    Whitelist, WorkloadKinds, WorkloadPattern,
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

/// The distinct rule sections seen so far, by fingerprint. `share` makes a policy hold the
/// seen value equal to each of its sections (or records its own), so policies with equal rules
/// hold the same values. The engine checks a rule set once per admission for every policy that
/// has it; a shared value is recognised by its address, an equal copy only by comparing the two
/// (which costs more than some of the checks it saves).
#[derive(Default)]
pub struct SharedRules {
    resources: HashMap<u64, Vec<Arc<ResourceRules>>>,
    images: HashMap<u64, Vec<Arc<ImageRules>>>,
}

impl SharedRules {
    /// Records the sections of `policy` (already held elsewhere, so not changed) for later
    /// policies to share.
    pub fn record(&mut self, policy: &Policy) {
        self.share_sections(&mut policy.rules.clone(), policy.fingerprints);
    }

    /// Replaces each section of `policy` by a recorded equal one, or records it.
    pub fn share(&mut self, policy: &mut Policy) {
        self.share_sections(&mut policy.rules, policy.fingerprints);
    }

    fn share_sections(&mut self, rules: &mut Rules, hashes: RuleFingerprints) {
        share_section(&mut rules.resource, hashes.resource, &mut self.resources);
        share_section(&mut rules.image, hashes.image, &mut self.images);
    }
}

/// `SharedRules::share` within a set: each policy shares with the first before it that has
/// equal rules. Candidates are found by the rules' fingerprints, so a set of thousands of
/// policies (an agent's snapshot) is shared in one pass.
pub fn share_rules<'a>(policies: impl IntoIterator<Item = &'a mut Policy>) {
    let mut shared = SharedRules::default();
    for policy in policies {
        shared.share(policy);
    }
}

/// Replaces `section` by an equal one among `seen` (by fingerprint), or adds it there.
fn share_section<R: PartialEq>(
    section: &mut Option<Arc<R>>,
    hash: u64,
    seen: &mut HashMap<u64, Vec<Arc<R>>>,
) {
    let Some(rules) = section else {
        return;
    };
    let same_hash = seen.entry(hash).or_default();
    match same_hash.iter().find(|other| *other == rules) {
        Some(other) => *rules = Arc::clone(other),
        None => same_hash.push(Arc::clone(rules)),
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
/// present section restricts something. Sections are shared (`Arc`): policies with equal rules
/// can hold the same values (`share_rules`), which the engine then recognises by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub image: Option<Arc<ImageRules>>,
    pub resource: Option<Arc<ResourceRules>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Vec<Policy> {
        crate::parse_policy_documents(yaml)
            .unwrap()
            .iter()
            .map(|p| Policy::try_from(p).unwrap())
            .collect()
    }

    #[test]
    fn equal_rule_sections_become_one_value_and_different_ones_stay_apart() {
        let mut all = policies(
            "---\nname: a\nrules: {resource: {privileged: {}}, image: {disallowedTags: [latest]}}\n\
             ---\nname: b\nrules: {resource: {privileged: {}}, image: {disallowedTags: [dev]}}\n\
             ---\nname: c\nrules: {resource: {privileged: {}}}\n\
             ---\nname: d\nrules: {image: {disallowedTags: [dev]}}\n\
             ---\nname: e\nrules: {resource: {readOnlyRootFilesystem: true}}\n",
        );
        let before = all.clone();
        // A forced hash match between different rules is confirmed by comparing them.
        all[4].fingerprints = all[0].fingerprints;
        share_rules(&mut all);
        let resource = |i: usize| all[i].rules.resource.as_ref().unwrap();
        let image = |i: usize| all[i].rules.image.as_ref().unwrap();
        assert!(Arc::ptr_eq(resource(0), resource(1)));
        assert!(Arc::ptr_eq(resource(0), resource(2)));
        assert!(!Arc::ptr_eq(resource(0), resource(4)));
        assert!(!Arc::ptr_eq(image(0), image(1)));
        assert!(Arc::ptr_eq(image(1), image(3)));
        assert!(all[2].rules.image.is_none() && all[3].rules.resource.is_none());
        // Sharing changes no policy's value.
        assert_eq!(all, before);
    }

    #[test]
    fn recorded_policies_stay_as_they_are_and_later_ones_share_with_them() {
        let held = policies(
            "---\nname: a\nrules: {resource: {privileged: {}}, image: {disallowedTags: [latest]}}\n",
        );
        let mut incoming = policies(
            "---\nname: b\nrules: {resource: {privileged: {}}}\n\
             ---\nname: c\nrules: {image: {disallowedTags: [latest]}, resource: {hostNamespaces: {}}}\n\
             ---\nname: d\nrules: {resource: {hostNamespaces: {}}}\n",
        );
        let before = held.clone();
        let mut shared = SharedRules::default();
        shared.record(&held[0]);
        for policy in &mut incoming {
            shared.share(policy);
        }
        let resource = |p: &Policy| Arc::clone(p.rules.resource.as_ref().unwrap());
        let image = |p: &Policy| Arc::clone(p.rules.image.as_ref().unwrap());
        assert!(Arc::ptr_eq(&resource(&incoming[0]), &resource(&held[0])));
        assert!(Arc::ptr_eq(&image(&incoming[1]), &image(&held[0])));
        // New sections are recorded as they come: `d` shares with `c`.
        assert!(Arc::ptr_eq(
            &resource(&incoming[2]),
            &resource(&incoming[1])
        ));
        assert!(!Arc::ptr_eq(&resource(&incoming[1]), &resource(&held[0])));
        assert_eq!(held, before);
    }
}
