//! Work done once per admitted pod and shared by every policy that needs it: Pod Security
//! results per (level, version), each container's image reference parsed and normalised once
//! with its field path (from the thread's memo of recently prepared images, see
//! `hygiene::Subject::new`, when the image was seen before), and the findings of each distinct
//! resource rule set and image hygiene rule set (policies often share rules and differ in scope
//! or action). Fifty policies on a four-container pod otherwise parse the same images and run
//! the same checks dozens of times.

use std::cell::OnceCell;

use crate::hygiene::{self, Subject};
use crate::{
    Finding, ImageRules, PodSecurityLevel, PodSecurityVersion, ResourceRules, controls,
    k8s::{ContainerPath, PodFinding, PodTemplate},
    pss,
};

/// One image the pod pulls (a container's, or an image volume's): where it is, and parsed.
pub(crate) struct ContainerImage<'o> {
    pub path: ContainerPath,
    /// `…containers[i].image`, written out when a finding needs it.
    field: OnceCell<String>,
    /// Parsed and normalised once for every policy's image rules.
    pub subject: Subject<'o>,
}

impl ContainerImage<'_> {
    /// The image's field path (`…containers[i].image`, `…volumes[i].image.reference`).
    pub fn field(&self) -> &str {
        self.field
            .get_or_init(|| self.path.field(self.path.kind.image_field()))
    }
}

/// Per-pod results, filled on first use.
#[derive(Default)]
pub(crate) struct PodCache<'o, 'p> {
    pod_security: Vec<((PodSecurityLevel, PodSecurityVersion), Vec<PodFinding>)>,
    images: Option<Vec<ContainerImage<'o>>>,
    /// The individual controls' findings per distinct resource rule set.
    controls: PerRuleSet<'p, ResourceRules, Vec<PodFinding>>,
    /// The hygiene findings per distinct image rule set, each with its image's place in
    /// `images` (usually none, so nothing is allocated).
    hygiene: PerRuleSet<'p, ImageRules, Vec<(usize, Finding)>>,
}

/// Results per distinct rule set, found by the rules' hash and confirmed by address (rule sets
/// held once, see `SharedRules`) or else by comparing the rules themselves.
struct PerRuleSet<'p, R, T> {
    entries: Vec<(u64, &'p R, T)>,
    /// Bit `hash % 64` of every held hash: a rule set whose bit is clear is new, and its
    /// search is skipped (with many distinct rule sets, most lookups are of new ones).
    seen: u64,
}

impl<R, T> Default for PerRuleSet<'_, R, T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            seen: 0,
        }
    }
}

/// Whether two rule sets are equal, compared field by field: the rare case (shared rule sets
/// are recognised by address first). Out of line: inlined into the search, the compiler
/// loaded every field of the rules in front of each search, even when the address matched
/// (~2,000 instructions per admission).
#[cold]
#[inline(never)]
fn equal<R: PartialEq>(a: &R, b: &R) -> bool {
    a == b
}

impl<'p, R: PartialEq, T> PerRuleSet<'p, R, T> {
    /// The result for `rules` (whose hash is `hash`), computed by `compute` the first time.
    fn get_or_insert_with(&mut self, hash: u64, rules: &'p R, compute: impl FnOnce() -> T) -> &T {
        let bit = 1u64 << (hash % 64);
        let found = if self.seen & bit == 0 {
            None
        } else {
            (self.entries.iter())
                .position(|(h, r, _)| *h == hash && (std::ptr::eq(*r, rules) || equal(*r, rules)))
        };
        self.seen |= bit;
        let index = match found {
            Some(index) => index,
            None => {
                if self.entries.capacity() == 0 {
                    // Room for the usual number of distinct rule sets at once: growing
                    // 4 -> 8 -> 16 cost two reallocations per admission.
                    self.entries.reserve(16);
                }
                self.entries.push((hash, rules, compute()));
                self.entries.len() - 1
            }
        };
        &self.entries[index].2
    }
}

impl<'o, 'p> PodCache<'o, 'p> {
    /// The findings of `rules`' individual controls (Pod Security aside), computed once per
    /// distinct rule set (`hash` is the rules' fingerprint).
    pub fn controls(
        &mut self,
        hash: u64,
        rules: &'p ResourceRules,
        pod: &PodTemplate,
    ) -> &[PodFinding] {
        self.controls
            .get_or_insert_with(hash, rules, || controls::check(rules, pod))
    }

    /// The hygiene findings of `rules` for the images of `pod`, each with its image's place in
    /// container order, computed once per distinct rule set, as `controls`.
    pub fn hygiene(
        &mut self,
        hash: u64,
        rules: &'p ImageRules,
        pod: &'o PodTemplate,
    ) -> &[(usize, Finding)] {
        let images = self.images.get_or_insert_with(|| container_images(pod));
        self.hygiene.get_or_insert_with(hash, rules, || {
            let mut findings = Vec::new();
            for (ordinal, entry) in images.iter().enumerate() {
                if hygiene::passes(rules, &entry.subject) {
                    continue;
                }
                let found = hygiene::check_subject(rules, &entry.subject, || entry.field());
                findings.extend(found.into_iter().map(|finding| (ordinal, finding)));
            }
            findings
        })
    }

    /// The standards' findings for `pod` at this level and version, computed once.
    pub fn pod_security(
        &mut self,
        level: PodSecurityLevel,
        version: PodSecurityVersion,
        pod: &PodTemplate,
    ) -> &[PodFinding] {
        let key = (level, version);
        let index = match self.pod_security.iter().position(|(k, _)| *k == key) {
            Some(index) => index,
            None => {
                self.pod_security
                    .push((key, pss::check(level, version, pod)));
                self.pod_security.len() - 1
            }
        };
        &self.pod_security[index].1
    }

    /// Every image of the pod, parsed once (in `PodTemplate::images` order).
    pub fn images(&mut self, pod: &'o PodTemplate) -> &[ContainerImage<'o>] {
        self.images.get_or_insert_with(|| container_images(pod))
    }
}

fn container_images(pod: &PodTemplate) -> Vec<ContainerImage<'_>> {
    pod.images()
        .map(|(path, image)| ContainerImage {
            path,
            field: OnceCell::new(),
            subject: Subject::new(image),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::PerRuleSet;
    use std::cell::Cell;

    /// Looks `rules` up under `hash`, counting how often the result had to be computed.
    fn get<'p>(
        set: &mut PerRuleSet<'p, String, String>,
        hash: u64,
        rules: &'p String,
        computed: &Cell<u32>,
    ) -> String {
        set.get_or_insert_with(hash, rules, || {
            computed.set(computed.get() + 1);
            format!("result of {rules}")
        })
        .clone()
    }

    #[test]
    fn each_distinct_rule_set_is_computed_once_whatever_its_hash_shares() {
        let (a, b, c) = ("a".to_owned(), "b".to_owned(), "c".to_owned());
        let a_again = a.clone();
        let computed = Cell::new(0);
        let mut set = PerRuleSet::default();
        // `a` and `b` share a hash; `c`'s hash differs but falls on the same bit (mod 64).
        assert_eq!(get(&mut set, 7, &a, &computed), "result of a");
        assert_eq!(get(&mut set, 7, &b, &computed), "result of b");
        assert_eq!(get(&mut set, 7 + 64, &c, &computed), "result of c");
        assert_eq!(computed.get(), 3);
        // Found again: by address, and by value for an equal set held elsewhere.
        assert_eq!(get(&mut set, 7, &a, &computed), "result of a");
        assert_eq!(get(&mut set, 7, &a_again, &computed), "result of a");
        assert_eq!(get(&mut set, 7, &b, &computed), "result of b");
        assert_eq!(get(&mut set, 7 + 64, &c, &computed), "result of c");
        assert_eq!(computed.get(), 3);
        // Equal rules under another hash are another entry (hashes come from the rules, so
        // this does not happen in the engine; the cache still answers correctly).
        assert_eq!(get(&mut set, 8, &a, &computed), "result of a");
        assert_eq!(computed.get(), 4);
    }
}
