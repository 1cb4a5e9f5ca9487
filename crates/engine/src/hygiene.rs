//! Image hygiene: the image rules that need no scan data (`registries`, `disallowedTags`,
//! `requireDigest`), checked on one container image, parsed and normalised first.
//!
//! Registry entries match whole leading path components of the normalised `registry/path`
//! (`docker.io/library` covers `nginx`, never `docker.io/libraryx/app`). A reference with a
//! digest and no tag has no tag at all, so no `disallowedTags` entry (not even `latest`)
//! applies to it; an explicit tag is always checked, digest or not.

use crate::Finding;
use crate::glob::Glob;
use crate::hash::FastHash;
use crate::reference::{DEFAULT_TAG, MAX_NAME, Parts, ReferenceError, Spans, span_in};
use crate::{ImageRules, RegistryRule};
use std::borrow::Cow;
use std::cell::RefCell;
use std::hash::BuildHasher;
use std::rc::Rc;

/// Findings for one container image (`image` as written, at field `path`). A policy with no
/// hygiene rule returns nothing without parsing; otherwise an unparsable reference is one
/// `imageReference` finding, since none of the rules can be judged on it.
pub fn check(rules: &ImageRules, image: &str, path: &str) -> Vec<Finding> {
    if !has_rules(rules) {
        return Vec::new();
    }
    check_subject(rules, &Subject::new(image), || path)
}

/// Whether `rules` hold any hygiene rule (when not, no image needs parsing).
pub(crate) fn has_rules(rules: &ImageRules) -> bool {
    !rules.registries.is_empty() || !rules.disallowed_tags.is_empty() || rules.require_digest
}

/// One image as every policy's hygiene rules read it, prepared once per admitted object:
/// parsed, with its normalised repository path and where that path's components end.
pub(crate) struct Subject<'a> {
    pub image: &'a str,
    pub parsed: Result<Parts<'a>, ReferenceError>,
    /// The normalised `registry/path`; empty when the reference does not parse.
    repository: Repository<'a>,
    /// Where the components of `repository` end: the offsets of its `/`s.
    cuts: Cuts,
}

/// A normalised repository path: the image's own text when it is written that way (the usual
/// case for fully qualified images), else built once and shared through the memo.
#[derive(Clone)]
enum Repository<'a> {
    Written(&'a str),
    Normalised(Rc<str>),
}

impl Repository<'_> {
    fn as_str(&self) -> &str {
        match self {
            Repository::Written(text) => text,
            Repository::Normalised(text) => text,
        }
    }
}

/// The offsets of the `/`s in a repository path, held inline: a valid normalised name has at
/// most `MAX_NAME` (255) bytes, so at most 127 of them are `/` and every offset fits a `u8`.
#[derive(Clone, Copy)]
struct Cuts {
    at: [u8; MAX_NAME / 2],
    len: u8,
}

impl Cuts {
    fn of(repository: &str) -> Self {
        let mut cuts = Self {
            at: [0; MAX_NAME / 2],
            len: 0,
        };
        for (i, b) in repository.bytes().enumerate() {
            if b == b'/' {
                // Only a parsed (so bounded) repository gets here; the guards keep a longer
                // one from wrapping or overflowing, though none can reach them.
                let (Ok(offset), Some(slot)) =
                    (u8::try_from(i), cuts.at.get_mut(cuts.len as usize))
                else {
                    break;
                };
                *slot = offset;
                cuts.len += 1;
            }
        }
        cuts
    }

    fn len(&self) -> usize {
        self.len as usize
    }

    fn get(&self, index: usize) -> Option<usize> {
        self.at[..self.len()]
            .get(index)
            .map(|&offset| offset as usize)
    }
}

impl<'a> Subject<'a> {
    /// `image` prepared: taken from this thread's memo when an equal text was prepared
    /// recently (the same images come back admission after admission: a Deployment, its
    /// ReplicaSet, every one of its pods), else parsed and kept there.
    pub(crate) fn new(image: &'a str) -> Self {
        MEMO.with_borrow_mut(|memo| memo.subject(image))
    }

    /// `image` parsed and normalised, without the memo.
    fn prepare(image: &'a str) -> Self {
        let parsed = Parts::parse(image);
        let repository = match &parsed {
            Ok(parts) => match parts.repository_path() {
                Cow::Borrowed(text) => Repository::Written(text),
                Cow::Owned(text) => Repository::Normalised(text.into()),
            },
            Err(_) => Repository::Written(""),
        };
        let cuts = Cuts::of(repository.as_str());
        Self {
            image,
            parsed,
            repository,
            cuts,
        }
    }
}

thread_local! {
    static MEMO: RefCell<Memo> = const { RefCell::new(Memo { slots: Vec::new() }) };
}

/// Slots of the memo, per thread.
const MEMO_SLOTS: usize = 256;

/// Recently prepared images, per thread: a direct-mapped table (an image's hash picks its one
/// slot, a newer image in the same slot replaces it), so a lookup is one hash and one
/// comparison, memory is bounded (256 images of at most 526 bytes), and no choice of image
/// names can make lookups slower than a miss. Only references that parse are kept.
struct Memo {
    slots: Vec<Option<Kept>>,
}

/// A prepared image without borrows: its text, and where the pieces are in it.
struct Kept {
    image: Box<str>,
    spans: Spans,
    repository: KeptRepository,
    cuts: Cuts,
}

/// `Repository` without the borrow: where the image spells it, or the shared normalised path.
enum KeptRepository {
    Written((u16, u16)),
    Normalised(Rc<str>),
}

impl Memo {
    fn slot_of(image: &str) -> usize {
        (FastHash.hash_one(image) % MEMO_SLOTS as u64) as usize
    }

    fn subject<'a>(&mut self, image: &'a str) -> Subject<'a> {
        if self.slots.is_empty() {
            self.slots.resize_with(MEMO_SLOTS, || None);
        }
        let slot = &mut self.slots[Memo::slot_of(image)];
        if let Some(kept) = slot.as_ref().filter(|kept| *kept.image == *image)
            && let Some(subject) = kept.subject(image)
        {
            return subject;
        }
        let subject = Subject::prepare(image);
        if let Some(kept) = Kept::of(&subject) {
            *slot = Some(kept);
        }
        subject
    }
}

impl Kept {
    /// `subject` kept, when its reference parsed.
    fn of(subject: &Subject<'_>) -> Option<Self> {
        let image = subject.image;
        let spans = subject.parsed.as_ref().ok()?.spans(image)?;
        let repository = match &subject.repository {
            Repository::Written(text) => KeptRepository::Written(span_in(image, text)?),
            Repository::Normalised(text) => KeptRepository::Normalised(Rc::clone(text)),
        };
        Some(Self {
            image: image.into(),
            spans,
            repository,
            cuts: subject.cuts,
        })
    }

    /// The kept preparation, for `image` (an equal text).
    fn subject<'a>(&self, image: &'a str) -> Option<Subject<'a>> {
        let repository = match &self.repository {
            KeptRepository::Normalised(text) => Repository::Normalised(Rc::clone(text)),
            KeptRepository::Written((start, end)) => {
                Repository::Written(image.get(usize::from(*start)..usize::from(*end))?)
            }
        };
        Some(Subject {
            image,
            parsed: Ok(Parts::from_spans(image, &self.spans)?),
            repository,
            cuts: self.cuts,
        })
    }
}

/// Whether `check_subject` finds nothing: the same judgement without writing any finding,
/// for the common case of an image every rule accepts.
#[inline]
pub(crate) fn passes(rules: &ImageRules, subject: &Subject<'_>) -> bool {
    if !has_rules(rules) {
        return true;
    }
    let Ok(parts) = &subject.parsed else {
        return false;
    };
    let registries = &rules.registries;
    let registry_ok = registries.is_empty()
        || (!registries.deny.iter().any(|p| covers(p, subject))
            && (registries.allow.is_empty()
                || registries.allow.iter().any(|p| covers(p, subject))));
    registry_ok
        && parts
            .effective_tag()
            .is_none_or(|tag| !rules.disallowed_tags.iter().any(|t| t == tag))
        && !(rules.require_digest && parts.digest.is_none())
}

/// `check` on an image prepared once for every policy (the engine's per-object cache); `path`
/// is asked for only when there is a finding.
pub(crate) fn check_subject<'p>(
    rules: &ImageRules,
    subject: &Subject<'_>,
    path: impl Fn() -> &'p str,
) -> Vec<Finding> {
    let (registries, image) = (&rules.registries, subject.image);
    let parts = match &subject.parsed {
        Ok(parts) => parts,
        Err(error) => {
            let message = format!("invalid image reference: {error}");
            return vec![Finding::new("imageReference", path(), image, message)];
        }
    };
    let mut findings = Vec::new();
    if !registries.is_empty()
        && let Some(message) = registry_violation(registries, subject)
    {
        findings.push(Finding::new("registries", path(), image, message));
    }
    if let Some(tag) = parts.effective_tag()
        && rules.disallowed_tags.iter().any(|t| t == tag)
    {
        let message = tag_message(&rules.disallowed_tags, tag, parts.tag.is_none());
        findings.push(Finding::new("disallowedTags", path(), image, message));
    }
    if rules.require_digest && parts.digest.is_none() {
        let message = "image must be pinned by digest (name@sha256:<64 hex digits>)";
        findings.push(Finding::new("requireDigest", path(), image, message));
    }
    findings
}

/// Why the image's normalised repository breaks the rule, if it does: a `deny` match wins
/// over any `allow`; a non-empty `allow` list must match.
fn registry_violation(rule: &RegistryRule, subject: &Subject<'_>) -> Option<String> {
    let repository = subject.repository.as_str();
    let allowed = || match rule.allow.as_slice() {
        [] => String::new(),
        allow => format!("; allowed are {}", quoted(allow)),
    };
    if let Some(denied) = rule.deny.iter().find(|p| covers(p, subject)) {
        let (denied, allowed) = (denied.as_str(), allowed());
        return Some(format!(
            "image repository {repository:?} is denied by registries.deny entry {denied:?}{allowed}"
        ));
    }
    if rule.allow.is_empty() || rule.allow.iter().any(|p| covers(p, subject)) {
        return None;
    }
    let allowed = allowed();
    Some(format!(
        "image repository {repository:?} is not in an allowed registry or repository{allowed}"
    ))
}

/// Whether `pattern` matches the leading components of the repository, as many as the pattern
/// has (`a/b` is compared with `x/y` of `x/y/z`); a trailing `/` (`docker.io/library/`) means
/// "strictly under". Because the compared text has exactly the pattern's number of `/`, every
/// `/` of the text meets a literal `/` of the pattern: `*` cannot reach across components,
/// so `*.example.com` never matches `evil.com/x.example.com`.
fn covers(pattern: &Glob, subject: &Subject<'_>) -> bool {
    let (p, repository, cuts) = (pattern.as_str(), subject.repository.as_str(), &subject.cuts);
    let slashes = pattern.slashes();
    let candidate = if p.ends_with('/') {
        cuts.get(slashes - 1).map(|i| &repository[..=i])
    } else {
        match cuts.get(slashes) {
            Some(i) => Some(&repository[..i]),
            None => (cuts.len() == slashes).then_some(repository),
        }
    };
    candidate.is_some_and(|c| pattern.matches(c))
}

fn tag_message(disallowed: &[String], tag: &str, implicit: bool) -> String {
    let list = disallowed.join(", ");
    if implicit {
        format!(
            "image has no tag, which means {DEFAULT_TAG:?}, and that tag is not allowed \
             (disallowed tags: {list}); set a tag or pin a digest"
        )
    } else {
        format!("tag {tag:?} is not allowed (disallowed tags: {list}); use another tag or a digest")
    }
}

fn quoted(patterns: &[Glob]) -> String {
    let quoted: Vec<String> = patterns
        .iter()
        .map(|p| format!("{:?}", p.as_str()))
        .collect();
    quoted.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
    const PATH: &str = "spec.containers[0].image";

    fn globs(patterns: &[&str]) -> Vec<Glob> {
        patterns.iter().map(|p| Glob::new(p).unwrap()).collect()
    }

    fn mk_rules(allow: &[&str], deny: &[&str], tags: &[&str], require_digest: bool) -> ImageRules {
        ImageRules {
            registries: RegistryRule {
                allow: globs(allow),
                deny: globs(deny),
            },
            disallowed_tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            require_digest,
            ..ImageRules::default()
        }
    }

    /// The rules of the findings for `image` (`@D` expands to a digest).
    fn rules_hit(rules: &ImageRules, image: &str) -> Vec<String> {
        let image = image.replace("@D", &format!("@{D}"));
        let findings = check(rules, &image, PATH);
        // The engine's shortcut judges every case as the full check does.
        assert_eq!(
            passes(rules, &Subject::new(&image)),
            findings.is_empty(),
            "{image}"
        );
        findings.into_iter().map(|f| f.rule).collect()
    }

    fn allowed(allow: &[&str], image: &str) -> bool {
        rules_hit(&mk_rules(allow, &[], &[], false), image).is_empty()
    }

    /// The parts of a preparation that checks read, comparable.
    fn seen<'a>(subject: &Subject<'a>) -> (Result<Parts<'a>, ReferenceError>, String, Vec<usize>) {
        let cuts = (0..subject.cuts.len())
            .map(|i| subject.cuts.get(i).unwrap())
            .collect();
        (
            subject.parsed.clone(),
            subject.repository.as_str().to_owned(),
            cuts,
        )
    }

    const MEMO_CASES: [&str; 14] = [
        "nginx",
        "nginx:1.25",
        "library/nginx@D",
        "docker.io/library/nginx:1.25",
        "index.docker.io/team/app:v1",
        "Registry.Example.COM:5000/shop/web:1.4.2",
        "registry.example.com/shop/web:1.4.2@D",
        "localhost/app",
        "[::1]:5000/a/b/c/d:tag",
        "ghcr.io/org/team/tool",
        // Never kept: they do not parse.
        "",
        "UPPER/case",
        "registry.example.com/shop/web:bad tag",
        "a//b",
    ];

    #[test]
    fn the_memo_gives_what_preparing_afresh_gives() {
        for image in MEMO_CASES {
            let image = image.replace("@D", &format!("@{D}"));
            let fresh = Subject::prepare(&image);
            // The first may be kept (a miss), the second comes from the memo if it was.
            for _ in 0..2 {
                // A new copy of the text each time: the memo matches text, not addresses.
                let copy = image.clone();
                assert_eq!(seen(&Subject::new(&copy)), seen(&fresh), "{image}");
            }
            let kept = MEMO.with_borrow(|memo| {
                memo.slots[Memo::slot_of(&image)]
                    .as_ref()
                    .is_some_and(|kept| *kept.image == *image)
            });
            assert_eq!(kept, fresh.parsed.is_ok(), "{image}");
        }
    }

    #[test]
    fn images_sharing_a_memo_slot_replace_each_other_and_stay_correct() {
        // Two valid images whose hashes pick the same slot.
        let first = "registry.example.com/app-0:1";
        let slot = Memo::slot_of(first);
        let second = (1..)
            .map(|i| format!("docker.io/team/app-{i}"))
            .find(|image| Memo::slot_of(image) == slot)
            .unwrap();
        for _ in 0..3 {
            for image in [first, second.as_str()] {
                let fresh = Subject::prepare(image);
                assert_eq!(seen(&Subject::new(image)), seen(&fresh), "{image}");
                assert_eq!(seen(&Subject::new(image)), seen(&fresh), "{image}");
            }
        }
    }

    #[test]
    fn allow_matches_whole_components_of_the_normalised_reference() {
        let allow = ["registry.example.com", "docker.io/library"];
        for image in [
            "nginx",
            "nginx:1.25",
            "library/redis@D",
            "docker.io/nginx",
            "index.docker.io/library/a",
        ] {
            assert!(allowed(&allow, image), "{image}");
        }
        for image in [
            "user/app",
            "docker.io/libraryx/app",
            "registry.example.com.evil.io/app",
            "registry.example.comx/a",
        ] {
            assert!(!allowed(&allow, image), "{image}");
        }
        assert!(allowed(&allow, "registry.example.com/team/app:1"));
        assert!(allowed(&allow, "REGISTRY.example.com/team/app"));
        assert!(allowed(&["localhost:5000"], "localhost:5000/app"));
        assert!(!allowed(&["localhost"], "localhost:5000/app"));
        assert!(allowed(&["docker.io/library/nginx"], "nginx:1"));
        assert!(!allowed(&["docker.io/library/nginx"], "nginx-unprivileged"));
    }

    #[test]
    fn allow_globs_stay_within_components() {
        assert!(allowed(&["*.example.com"], "registry.example.com/app"));
        assert!(!allowed(&["*.example.com"], "evil.com/x.example.com"));
        assert!(allowed(
            &["registry.example.com/team-*"],
            "registry.example.com/team-a/app"
        ));
        assert!(!allowed(
            &["registry.example.com/team-*"],
            "registry.example.com/other/team-a"
        ));
        assert!(allowed(&["*/library"], "nginx"));
        assert!(allowed(&["*"], "anything.io/x/y"));
        assert!(allowed(&["docker.io/*"], "user/app"));
        assert!(allowed(&["docker.io/library/"], "nginx"));
        assert!(!allowed(&["reg.io/team/"], "reg.io/team"));
        assert!(allowed(&["reg.io/team/"], "reg.io/team/app"));
        assert!(!allowed(&["a.io/b/c/d"], "a.io/b/c"));
    }

    #[test]
    fn registries_are_compared_by_identity_not_spelling() {
        let rules = mk_rules(
            &[],
            &["evil.example.com", "docker.io/library/nginx"],
            &[],
            false,
        );
        for image in [
            "evil.example.com/x",
            "evil.example.com:443/x",
            "EVIL.example.com:443/x:1",
            "nginx",
            "registry-1.docker.io/library/nginx",
            "registry-1.docker.io/nginx:1",
            "index.docker.io/nginx",
            "docker.io:443/nginx",
            "registry.hub.docker.com/library/nginx",
        ] {
            assert_eq!(rules_hit(&rules, image), ["registries"], "{image}");
        }
        // Another port is another endpoint.
        assert!(rules_hit(&rules, "evil.example.com:5000/x").is_empty());
    }

    #[test]
    fn deny_wins_over_allow() {
        let rules = mk_rules(&["docker.io"], &["docker.io/library/nginx"], &[], false);
        assert_eq!(rules_hit(&rules, "redis"), Vec::<String>::new());
        assert_eq!(rules_hit(&rules, "nginx:1.25"), ["registries"]);
        let only_deny = mk_rules(&[], &["evil.io"], &[], false);
        assert_eq!(rules_hit(&only_deny, "Evil.IO/x"), ["registries"]);
        assert!(rules_hit(&only_deny, "good.io/evil.io").is_empty());
        let finding = &check(&rules, "nginx", PATH)[0];
        assert_eq!(
            (finding.path.as_str(), finding.value.as_str()),
            (PATH, "nginx")
        );
        assert!(
            finding
                .message
                .contains(r#""docker.io/library/nginx" is denied"#),
            "{}",
            finding.message
        );
    }

    #[test]
    fn not_allowed_message_lists_the_allowed_entries() {
        let finding = &check(
            &mk_rules(&["a.io", "b.io/team"], &[], &[], false),
            "c.io/x:1",
            PATH,
        )[0];
        assert_eq!(finding.rule, "registries");
        assert_eq!(finding.value, "c.io/x:1");
        assert!(
            finding.message.contains(r#""c.io/x" is not in an allowed"#),
            "{}",
            finding.message
        );
        assert!(
            finding
                .message
                .ends_with(r#"allowed are "a.io", "b.io/team""#),
            "{}",
            finding.message
        );
    }

    #[test]
    fn no_tag_counts_as_latest_unless_a_digest_pins_the_image() {
        let rules = mk_rules(&[], &[], &["latest", "dev"], false);
        for image in ["nginx", "nginx:latest", "reg.io/a:dev", "nginx:latest@D"] {
            assert_eq!(rules_hit(&rules, image), ["disallowedTags"], "{image}");
        }
        for image in ["nginx@D", "nginx:1.25", "nginx:Latest", "nginx:1.25@D"] {
            assert!(rules_hit(&rules, image).is_empty(), "{image}");
        }
        let implicit = &check(&rules, "nginx", PATH)[0].message;
        assert!(
            implicit.starts_with(r#"image has no tag, which means "latest""#),
            "{implicit}"
        );
        let explicit = &check(&rules, "a:dev", PATH)[0].message;
        assert!(explicit.starts_with(r#"tag "dev" is not allowed (disallowed tags: latest, dev)"#));
    }

    #[test]
    fn require_digest() {
        let rules = mk_rules(&[], &[], &[], true);
        assert_eq!(rules_hit(&rules, "nginx:1.25"), ["requireDigest"]);
        assert!(rules_hit(&rules, "nginx@D").is_empty());
        assert!(rules_hit(&rules, "nginx:1.25@D").is_empty());
    }

    #[test]
    fn every_violated_rule_is_reported() {
        let rules = mk_rules(&["reg.io"], &[], &["latest"], true);
        assert_eq!(
            rules_hit(&rules, "nginx"),
            ["registries", "disallowedTags", "requireDigest"]
        );
        assert!(rules_hit(&rules, "reg.io/app:1@D").is_empty());
    }

    #[test]
    fn unparsable_references_are_one_finding() {
        let rules = mk_rules(&["reg.io"], &[], &["latest"], true);
        let findings = check(&rules, "Nginx:1", PATH);
        assert_eq!(findings.len(), 1);
        let f = &findings[0];
        assert_eq!(
            (f.rule.as_str(), f.path.as_str(), f.value.as_str()),
            ("imageReference", PATH, "Nginx:1")
        );
        assert!(
            f.message
                .starts_with("invalid image reference: repository name"),
            "{}",
            f.message
        );
        assert_eq!(rules_hit(&rules, ""), ["imageReference"]);
        assert_eq!(rules_hit(&rules, " nginx"), ["imageReference"]);
    }

    #[test]
    fn rules_without_hygiene_do_not_parse() {
        let rules = ImageRules {
            malicious_files: true,
            ..ImageRules::default()
        };
        assert!(check(&rules, "not a reference", PATH).is_empty());
    }
}
