//! Image and registry patterns: one glob semantics for every pattern that names images, matched
//! on the parsed reference's parts, never on the text as written.
//!
//! - `*` and `?` stay inside one path component; a whole component `**` spans any number of
//!   components. `*.corp.example.com/*` never matches `evil.com/x.corp.example.com/tool`.
//! - The pattern's registry is canonical, as an image's is: lower-case, `:443` dropped,
//!   Docker Hub's aliases as `docker.io`; a pattern without a registry is on Docker Hub, with
//!   `library/` before a single component (`nginx*` is `docker.io/library/nginx*`), unless it
//!   starts with `**`.
//! - Image patterns (whitelists): a pattern with `*` or `?` matches the repository, then its
//!   tag part (if written) the image's tag, and its digest (if written) the image's digest; a
//!   pattern with neither is a reference and names one image (`nginx` is `nginx:latest`;
//!   `nginx@sha256:…` is that digest whatever the tag).
//! - Registry patterns match whole leading components of the repository (see `hygiene`).

use crate::glob::Glob;
use crate::reference::{DOCKER_HUB, Parts, canonical_registry};

/// A whitelisted image pattern, parsed. Equality and display use the text as written.
#[derive(Clone, Debug)]
pub struct ImagePattern {
    source: Glob,
    kind: PatternKind,
}

#[derive(Clone, Debug)]
enum PatternKind {
    /// A reference without wildcards; compared as a reference.
    Reference,
    /// Wildcards: a canonical repository glob, and the tag and digest parts when written.
    Glob {
        repository: Glob,
        tag: Option<Glob>,
        digest: Option<String>,
    },
}

impl PartialEq for ImagePattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for ImagePattern {}

impl std::hash::Hash for ImagePattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.source.hash(state);
    }
}

impl ImagePattern {
    /// Parses a pattern (already a valid glob); the error is the reason, for the field's path.
    pub fn parse(source: Glob) -> Result<Self, String> {
        let text = source.as_str();
        if source.is_literal() {
            Parts::parse(text).map_err(|e| format!("invalid image reference {text:?}: {e}"))?;
            return Ok(Self {
                source,
                kind: PatternKind::Reference,
            });
        }
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let check = format!("localhost/image@{digest}");
                if digest.contains(['*', '?']) || Parts::parse(&check).is_err() {
                    return Err(format!(
                        "invalid image pattern {text:?}: a digest is written in full, \
                         such as sha256:<64 hex digits>"
                    ));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        // The tag starts at a `:` after the last `/` (a `:` before it is a registry's port).
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].find(':') {
            Some(i) => (
                &name_and_tag[..last_slash + i],
                Some(&name_and_tag[last_slash + i + 1..]),
            ),
            None => (name_and_tag, None),
        };
        let invalid = |reason: &str| format!("invalid image pattern {text:?}: {reason}");
        let repository = canonical_repository(name).map_err(|r| invalid(&r))?;
        let tag = match tag {
            Some("") => return Err(invalid("empty tag after ':'")),
            Some(tag) => Some(Glob::new(tag).map_err(|e| invalid(&e.to_string()))?),
            None => None,
        };
        Ok(Self {
            kind: PatternKind::Glob {
                repository: Glob::new(&repository).map_err(|e| invalid(&e.to_string()))?,
                tag,
                digest,
            },
            source,
        })
    }

    /// The glob as written.
    pub fn glob(&self) -> &Glob {
        &self.source
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.source.as_str()
    }

    /// Whether the pattern names `image` (parsed; see the module).
    pub fn matches(&self, image: &Parts<'_>, repository: &str) -> bool {
        match &self.kind {
            PatternKind::Reference => same_image(self.source.as_str(), image),
            PatternKind::Glob {
                repository: glob,
                tag,
                digest,
            } => {
                glob.matches_components(repository)
                    && tag.as_ref().is_none_or(|tag| {
                        image
                            .effective_tag()
                            .is_some_and(|written| tag.matches(written))
                    })
                    && digest
                        .as_deref()
                        .is_none_or(|digest| image.digest == Some(digest))
            }
        }
    }
}

/// A literal pattern names the image: same repository, and the same digest when the pattern
/// has one, else the same effective tag and no digest (a digest could be any content).
fn same_image(pattern: &str, image: &Parts<'_>) -> bool {
    let Ok(pattern) = Parts::parse(pattern) else {
        return false;
    };
    pattern.same_repository(image)
        && match pattern.digest {
            Some(digest) => image.digest == Some(digest),
            None => image.digest.is_none() && pattern.effective_tag() == image.effective_tag(),
        }
}

/// A pattern's `registry/path` in the form images are compared in (see the module), or why it
/// cannot name a repository.
fn canonical_repository(name: &str) -> Result<String, String> {
    if name.split('/').any(str::is_empty) {
        return Err("empty path component: '/' must separate non-empty components".into());
    }
    let (first, rest) = match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    let is_host = first == "localhost" || first.contains(['.', ':']);
    match rest {
        Some(rest) if is_host => {
            let registry = canonical_registry(first).to_ascii_lowercase();
            let official = registry == DOCKER_HUB && !rest.contains('/') && rest != "**";
            let library = if official { "library/" } else { "" };
            Ok(format!("{registry}/{library}{rest}"))
        }
        _ if first == "**" => Ok(name.to_owned()),
        Some(_) => Ok(format!("{DOCKER_HUB}/{name}")),
        None => Ok(format!("{DOCKER_HUB}/library/{name}")),
    }
}

/// A registry rule's pattern in canonical form (see the module): the host lower-case, the
/// default port dropped and Docker Hub's aliases as `docker.io`. Registry rules compare
/// leading components, so `**` (any number of them) has no place in one.
pub fn canonical_registry_pattern(pattern: &str) -> Result<String, String> {
    if pattern.split('/').any(|c| c == "**") {
        return Err(format!(
            "invalid registry pattern {pattern:?}: '**' is for image patterns; a registry \
             pattern already covers everything under it"
        ));
    }
    let (host, rest) = match pattern.split_once('/') {
        Some((host, rest)) => (host, Some(rest)),
        None => (pattern, None),
    };
    let host = canonical_registry(host).to_ascii_lowercase();
    Ok(match rest {
        Some(rest) => format!("{host}/{rest}"),
        None => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_repositories_are_canonical() {
        let cases = [
            ("nginx*", "docker.io/library/nginx*"),
            ("*/app", "docker.io/*/app"),
            ("**/app", "**/app"),
            ("**", "**"),
            (
                "Registry.Example.com:443/base/*",
                "registry.example.com/base/*",
            ),
            ("registry-1.docker.io/ngin?", "docker.io/library/ngin?"),
            ("index.docker.io/team/*", "docker.io/team/*"),
            ("docker.io/**", "docker.io/**"),
            ("*.corp.example.com/*", "*.corp.example.com/*"),
            ("localhost/*", "localhost/*"),
        ];
        for (pattern, expected) in cases {
            assert_eq!(
                canonical_repository(pattern).unwrap(),
                expected,
                "{pattern}"
            );
        }
        assert!(canonical_repository("a//b*").is_err());
        assert!(canonical_repository("a/*/").is_err());
    }

    #[test]
    fn registry_patterns_are_canonical() {
        let cases = [
            ("EVIL.example.com:443", "evil.example.com"),
            ("evil.example.com:8443", "evil.example.com:8443"),
            ("registry-1.docker.io/library", "docker.io/library"),
            ("Index.Docker.io", "docker.io"),
            ("*.example.com", "*.example.com"),
            ("docker.io/Team", "docker.io/Team"),
        ];
        for (pattern, expected) in cases {
            assert_eq!(canonical_registry_pattern(pattern).unwrap(), expected);
        }
        assert!(
            canonical_registry_pattern("docker.io/**")
                .unwrap_err()
                .contains("'**' is for image patterns")
        );
    }

    fn pattern(text: &str) -> Result<ImagePattern, String> {
        ImagePattern::parse(Glob::new(text).unwrap())
    }

    #[test]
    fn invalid_patterns_say_why() {
        let cases = [
            ("nginx:", "invalid image reference"),
            ("Nginx", "must be lower-case"),
            ("a//b*", "empty path component"),
            ("nginx*:", "empty tag"),
            ("nginx*@sha256:12", "a digest is written in full"),
            ("nginx@sha256:*", "a digest is written in full"),
        ];
        for (text, fragment) in cases {
            let error = pattern(text).unwrap_err();
            assert!(error.contains(fragment), "{text}: {error}");
        }
    }
}
