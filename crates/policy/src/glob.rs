//! Glob patterns as operators write them for clusters, namespaces, images and sysctls: `*`
//! matches any run of characters (including `/` and `:`), `?` exactly one character, and every
//! other character itself. Matching allocates nothing and runs in O(pattern × text).

use std::fmt;

/// A validated glob pattern that keeps the text the operator wrote, so it can be shown in
/// errors and written back to the proto unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Glob {
    source: String,
    literal: bool,
    /// How many `/` the pattern holds (registry rules compare that many path components).
    slashes: usize,
}

/// Why a string is not a glob pattern.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern")]
    Empty,
    #[error("{} at position {index} is not allowed", describe(.character))]
    ForbiddenCharacter { character: char, index: usize },
}

fn describe(c: &char) -> String {
    if c.is_whitespace() {
        format!("whitespace {c:?}")
    } else {
        format!("control character U+{:04X}", u32::from(*c))
    }
}

impl Glob {
    /// Validates a pattern: non-empty, and no whitespace or control characters (a stray space
    /// or newline in a policy file is always a mistake, never a name).
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if let Some((index, character)) = pattern
            .char_indices()
            .find(|(_, c)| c.is_whitespace() || c.is_control())
        {
            return Err(GlobError::ForbiddenCharacter { character, index });
        }
        Ok(Self {
            literal: !pattern.contains(['*', '?']),
            slashes: pattern.bytes().filter(|&b| b == b'/').count(),
            source: pattern.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when the pattern has no `*` or `?`, i.e. it names exactly one value.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// How many `/` the pattern holds.
    pub fn slashes(&self) -> usize {
        self.slashes
    }

    /// Whether `text` matches the whole pattern. Inlined: most scope patterns are literal
    /// (`kube-system`), and the comparison is cheaper than the call.
    #[inline]
    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return self.source == text;
        }
        wildcard_match(self.source.as_bytes(), text.as_bytes())
    }
}

impl Glob {
    /// Whether `text` matches the pattern component by component (`/` separates components,
    /// as in image and registry patterns): `*` and `?` stay inside one component, and a whole
    /// component `**` matches any number of components (none included). So
    /// `*.corp.example.com/*` never matches `evil.com/x.corp.example.com/tool`, and
    /// `registry.example.com/base/**` covers everything under `base`.
    ///
    /// Work is O(pattern components × text components) component matches, each bounded as
    /// `matches` is; no allocation for up to 16 text components.
    pub fn matches_components(&self, text: &str) -> bool {
        if self.literal {
            return self.source == text;
        }
        let texts: smallvec::SmallVec<[&str; 16]> = text.split('/').collect();
        // reachable[j]: the pattern's components so far match the first j text components.
        let mut reachable: smallvec::SmallVec<[bool; 17]> =
            smallvec::smallvec![false; texts.len() + 1];
        reachable[0] = true;
        for component in self.source.split('/') {
            if component == "**" {
                let mut any = false;
                for slot in reachable.iter_mut() {
                    any |= *slot;
                    *slot = any;
                }
                continue;
            }
            for j in (0..texts.len()).rev() {
                reachable[j + 1] =
                    reachable[j] && wildcard_match(component.as_bytes(), texts[j].as_bytes());
            }
            reachable[0] = false;
        }
        reachable[texts.len()]
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Two-pointer matching with a single backtrack point (the last `*`): on a mismatch the last
/// star absorbs one more character and matching resumes after it. Earlier stars never need to
/// be revisited, which bounds the work to O(pattern × text).
///
/// Both inputs are valid UTF-8. Literal characters compare byte by byte (a lead byte never
/// equals a continuation byte), while `?` and the star's advance step over whole characters,
/// so the text index only rests on character boundaries where it matters.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // (pattern index just after the last `*`, text index where that star's match ends)
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if let Some(&c) = pattern.get(p) {
            match c {
                b'*' => {
                    p += 1;
                    backtrack = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += utf8_len(text[t]);
                    continue;
                }
                _ if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match backtrack {
            Some((star_p, star_t)) => {
                let next = star_t + utf8_len(text[star_t]);
                backtrack = Some((star_p, next));
                p = star_p;
                t = next;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Length of the UTF-8 sequence that starts with `lead`.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xff => 4,
        // A continuation byte: never a starting point, step over it alone.
        0x80..=0xbf => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        let g = glob("kube-system");
        assert!(g.is_literal());
        assert!(g.matches("kube-system"));
        assert!(!g.matches("kube-system2"));
        assert!(!g.matches("kube-syste"));
        assert!(!g.matches(""));
    }

    #[test]
    fn star_matches_any_run_including_separators() {
        let g = glob("registry.example.com/base/*");
        assert!(!g.is_literal());
        assert!(g.matches("registry.example.com/base/"));
        assert!(g.matches("registry.example.com/base/alpine:3.20"));
        assert!(g.matches("registry.example.com/base/a/b/c@sha256:00"));
        assert!(!g.matches("registry.example.com/other/alpine"));
        assert!(glob("*").matches(""));
        assert!(glob("*").matches("anything/at:all"));
        assert!(glob("prod-*").matches("prod-eu-1"));
        assert!(!glob("prod-*").matches("staging-eu-1"));
        assert!(glob("*-prod").matches("eu-prod"));
        assert!(glob("a*b*c").matches("abc"));
        assert!(glob("a*b*c").matches("axxbyyc"));
        assert!(!glob("a*b*c").matches("axxbyy"));
        assert!(glob("**").matches("x"));
    }

    #[test]
    fn component_matching_keeps_stars_inside_a_component() {
        let cases = [
            (
                "*.corp.example.com/*",
                "registry.corp.example.com/tool",
                true,
            ),
            (
                "*.corp.example.com/*",
                "evil.com/x.corp.example.com/tool",
                false,
            ),
            ("*.corp.example.com/*", "a.corp.example.com/b/tool", false),
            (
                "registry.example.com/base/*",
                "registry.example.com/base/app",
                true,
            ),
            (
                "registry.example.com/base/*",
                "registry.example.com/base/a/b",
                false,
            ),
            (
                "registry.example.com/base/**",
                "registry.example.com/base/a/b",
                true,
            ),
            (
                "registry.example.com/base/**",
                "registry.example.com/base",
                true,
            ),
            (
                "registry.example.com/base/**",
                "registry.example.com/basement/a",
                false,
            ),
            ("**/nginx", "docker.io/library/nginx", true),
            ("**/nginx", "nginx", true),
            ("**", "a/b/c", true),
            ("a/**/z", "a/z", true),
            ("a/**/z", "a/b/c/z", true),
            ("a/**/z", "a/b/c/y", false),
            ("a?c/d", "a/c/d", false),
            ("docker.io/*/app", "docker.io/library/app", true),
            ("x/**y", "x/a/y", false),
            ("exact/name", "exact/name", true),
            ("exact/name", "exact/names", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob(pattern).matches_components(text),
                expected,
                "{pattern} vs {text}"
            );
        }
    }

    #[test]
    fn component_matching_is_linear_in_components() {
        let text = "a/".repeat(10_000) + "b";
        assert!(!glob("**/a/**/a/**/c").matches_components(&text));
        assert!(glob("**/a/**/b").matches_components(&text));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        let g = glob("node-?");
        assert!(g.matches("node-1"));
        assert!(!g.matches("node-"));
        assert!(!g.matches("node-12"));
        assert!(glob("??").matches("ab"));
        assert!(!glob("??").matches("a"));
        assert!(glob("a?c").matches("a/c"));
    }

    #[test]
    fn question_mark_and_star_step_over_whole_characters() {
        assert!(glob("caf?").matches("café"));
        assert!(!glob("caf??").matches("café"));
        assert!(glob("?é*").matches("xé-suffix"));
        assert!(glob("*é").matches("ééé"));
        assert!(glob("*?").matches("é"));
        assert!(!glob("*?é").matches("é"));
        assert!(glob("日本*語").matches("日本の語"));
    }

    #[test]
    fn pathological_patterns_finish_quickly() {
        let text = "a".repeat(20_000);
        assert!(!glob("a*a*a*a*a*b").matches(&text));
        assert!(glob("a*a*a*a*a*a").matches(&text));
        let pattern = "*a".repeat(200) + "b";
        assert!(!glob(&pattern).matches(&text));
        assert!(!glob("*?*?*?*?*?*?*?*?b").matches(&text));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert_eq!(
            Glob::new("a b"),
            Err(GlobError::ForbiddenCharacter {
                character: ' ',
                index: 1
            })
        );
        assert!(Glob::new("tab\there").is_err());
        assert!(Glob::new("line\n").is_err());
        assert!(Glob::new("nul\0").is_err());
        let message = Glob::new("x\ty").unwrap_err().to_string();
        assert_eq!(message, "whitespace '\\t' at position 1 is not allowed");
        let message = Glob::new("x\u{7}").unwrap_err().to_string();
        assert_eq!(
            message,
            "control character U+0007 at position 1 is not allowed"
        );
    }

    #[test]
    fn keeps_the_source_text() {
        let g = glob("sandbox-*");
        assert_eq!(g.as_str(), "sandbox-*");
        assert_eq!(g.to_string(), "sandbox-*");
    }
}
