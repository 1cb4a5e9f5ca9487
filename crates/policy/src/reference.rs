//! Container image references as the runtime reads them: the distribution/reference grammar
//! (`[host[:port]/]path[:tag][@digest]`) with Docker's normalisation (`nginx` is
//! `docker.io/library/nginx:latest`). Parsing borrows the input and allocates nothing; an owned
//! `ImageReference` costs one allocation, its normalised text.
//!
//! Deliberate choices: the registry host is lower-cased (hosts are case-insensitive, so a deny
//! list cannot be dodged with `EVIL.com`); a first component is a registry only when it holds
//! `.` or `:` or is `localhost` (Docker also takes an upper-case one as a host; we reject it as
//! an upper-case repository: blocking beats guessing); a digest-only reference has no tag,
//! not even an implicit `latest`, because the digest alone decides what runs.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Docker Hub, the registry of names written without one.
pub const DOCKER_HUB: &str = "docker.io";
/// Other names of Docker Hub's registry: `index.docker.io` (the legacy index, which Docker
/// itself normalises), `registry-1.docker.io` (the endpoint `docker.io` resolves to) and
/// `registry.hub.docker.com`. An image written with any of them is pulled from Docker Hub, so
/// it is judged as `docker.io` (official images included: `library/` is added the same way).
const DOCKER_HUB_ALIASES: [&str; 3] = [
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];
/// The port a registry is reached on when none is written (HTTPS): `host:443` is `host`.
const DEFAULT_PORT_SUFFIX: &str = ":443";

/// The registry a written host names, as rules and scans compare it: the default port
/// dropped (`evil.example.com:443` is `evil.example.com`, so a deny list cannot be dodged by
/// spelling the port), Docker Hub's aliases as `docker.io`. The result is a slice of `host`
/// or `DOCKER_HUB`; case is left as written (compare ASCII-case-insensitively).
pub fn canonical_registry(host: &str) -> &str {
    let host = host.strip_suffix(DEFAULT_PORT_SUFFIX).unwrap_or(host);
    let hub = host.eq_ignore_ascii_case(DOCKER_HUB)
        || DOCKER_HUB_ALIASES
            .iter()
            .any(|alias| host.eq_ignore_ascii_case(alias));
    if hub { DOCKER_HUB } else { host }
}
const OFFICIAL_PREFIX: &str = "library/";
/// The tag of a reference written with neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (`registry/path`, normalised), as in distribution/reference.
pub const MAX_NAME: usize = 255;
/// Longest tag.
pub const MAX_TAG: usize = 128;
/// Longest valid input: a name (plus 6 for a legacy `index.` that normalisation removes),
/// `:` and a tag, `@sha512:` and 128 hex digits.
const MAX_REFERENCE: usize = MAX_NAME + 6 + 1 + MAX_TAG + 1 + 7 + 128;
/// The digest algorithms container runtimes verify, with their hex length.
const DIGEST_ALGORITHMS: [(&str, usize); 3] = [("sha256", 64), ("sha384", 96), ("sha512", 128)];

/// Why a string is not an image reference. Texts quoted in messages are bounded by
/// `MAX_REFERENCE`, so a hostile object cannot inflate an admission response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference contains whitespace or a control character")]
    Whitespace,
    #[error("image reference is {0} characters long: at most {MAX_REFERENCE} are allowed")]
    TooLong(usize),
    #[error("a 64-character hexadecimal string is an image id, not a reference")]
    ImageId,
    #[error("invalid registry {0:?}: expected host, IPv4 or [IPv6] address, optional :port")]
    InvalidRegistry(String),
    #[error("missing repository name")]
    MissingRepository,
    #[error("repository name {0:?} must be lower-case")]
    UppercaseRepository(String),
    #[error("empty repository path component: '/' must separate non-empty components")]
    EmptyPathComponent,
    #[error("invalid repository path component {0:?}: expected [a-z0-9] runs joined by . _ __ -")]
    InvalidPathComponent(String),
    #[error("repository name is {0} characters long: at most {MAX_NAME} are allowed")]
    NameTooLong(usize),
    #[error(
        "invalid tag {0:?}: expected up to {MAX_TAG} of [A-Za-z0-9_.-], not starting with . or -"
    )]
    InvalidTag(String),
    #[error("invalid digest: expected <algorithm>:<hex>, such as sha256:<64 hex digits>")]
    InvalidDigest,
    #[error("unsupported digest algorithm {0:?}: expected sha256, sha384 or sha512")]
    UnsupportedDigest(String),
    #[error("invalid {algorithm} digest: expected {length} lower-case hex digits")]
    DigestEncoding {
        algorithm: &'static str,
        length: usize,
    },
}

/// A reference split into borrowed pieces, already validated. The registry is `docker.io` or
/// the host as written (compare it ASCII-case-insensitively); `official` means `library/` was
/// added in front of `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts<'a> {
    name: &'a str,
    registry: &'a str,
    official: bool,
    path: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Where the pieces of a parsed reference are in its text (start and end offsets), so that a
/// parse can be kept without borrowing the text and given out again for an equal text
/// (`hygiene`'s memo). `registry` is `None` for the default registry, which is not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spans {
    name: (u16, u16),
    registry: Option<(u16, u16)>,
    official: bool,
    path: (u16, u16),
    tag: Option<(u16, u16)>,
    digest: Option<(u16, u16)>,
}

/// Where `piece` is inside `text`, if it is a slice of it.
pub fn span_in(text: &str, piece: &str) -> Option<(u16, u16)> {
    let start = (piece.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start.checked_add(piece.len())?;
    (end <= text.len()).then_some((u16::try_from(start).ok()?, u16::try_from(end).ok()?))
}

impl<'a> Parts<'a> {
    /// Validates and splits `input` without allocating.
    pub fn parse(input: &'a str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() > MAX_REFERENCE {
            return Err(ReferenceError::TooLong(input.len()));
        }
        // ASCII whitespace and controls are all at or below a space or DEL, so one cheap
        // pass finds any suspect byte; characters are decoded only for (always invalid)
        // non-ASCII input.
        if has_space_control_or_non_ascii(input.as_bytes()) {
            let blank = |c: char| c.is_whitespace() || c.is_control();
            if input
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                || (!input.is_ascii() && input.chars().any(blank))
            {
                return Err(ReferenceError::Whitespace);
            }
        }
        if input.len() == 64 && input.bytes().all(is_lower_hex) {
            return Err(ReferenceError::ImageId);
        }
        let (name_and_tag, digest) = match split_at_byte(input, b'@') {
            Some((rest, digest)) => (rest, Some(validate_digest(digest)?)),
            None => (input, None),
        };
        let (written_registry, remainder) = match split_at_byte(name_and_tag, b'/') {
            Some((first, rest))
                if first == "localhost"
                    || memchr::memchr2(b'.', b':', first.as_bytes()).is_some() =>
            {
                (Some(first), rest)
            }
            _ => (None, name_and_tag),
        };
        let (path, tag) = match split_at_byte(remainder, b':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (remainder, None),
        };
        let name = &name_and_tag[..name_and_tag.len() - tag.map_or(0, |t| t.len() + 1)];
        let registry = written_registry.map_or(DOCKER_HUB, canonical_registry);
        let official = registry.eq_ignore_ascii_case(DOCKER_HUB)
            && memchr::memchr(b'/', path.as_bytes()).is_none();
        let parts = Self {
            name,
            registry,
            official,
            path,
            tag,
            digest,
        };
        if parts.name_len() > MAX_NAME {
            return Err(ReferenceError::NameTooLong(parts.name_len()));
        }
        if let Some(r) = written_registry.filter(|r| !is_valid_registry(r)) {
            return Err(ReferenceError::InvalidRegistry(r.to_owned()));
        }
        validate_path(path)?;
        if let Some(t) = tag.filter(|t| !is_valid_tag(t)) {
            return Err(ReferenceError::InvalidTag(t.to_owned()));
        }
        Ok(parts)
    }

    /// Where the pieces are in `input`, the text this was parsed from (`None` for any other
    /// text).
    pub fn spans(&self, input: &str) -> Option<Spans> {
        let optional = |piece: Option<&str>| match piece {
            Some(piece) => span_in(input, piece).map(Some),
            None => Some(None),
        };
        Some(Spans {
            name: span_in(input, self.name)?,
            // Docker Hub is a constant, not a slice of the input.
            registry: span_in(input, self.registry),
            official: self.official,
            path: span_in(input, self.path)?,
            tag: optional(self.tag)?,
            digest: optional(self.digest)?,
        })
    }

    /// The parse of `input` whose pieces are at `spans` (`spans` of an equal text).
    pub fn from_spans(input: &'a str, spans: &Spans) -> Option<Self> {
        let piece = |(start, end): (u16, u16)| input.get(usize::from(start)..usize::from(end));
        let optional = |span: Option<(u16, u16)>| match span {
            Some(span) => piece(span).map(Some),
            None => Some(None),
        };
        Some(Self {
            name: piece(spans.name)?,
            registry: match spans.registry {
                Some(span) => piece(span)?,
                None => DOCKER_HUB,
            },
            official: spans.official,
            path: piece(spans.path)?,
            tag: optional(spans.tag)?,
            digest: optional(spans.digest)?,
        })
    }

    /// Length of the normalised `registry/path`.
    fn name_len(&self) -> usize {
        let prefix = if self.official {
            OFFICIAL_PREFIX.len()
        } else {
            0
        };
        self.registry.len() + 1 + prefix + self.path.len()
    }

    /// The explicit tag, else `latest` unless a digest pins the image.
    pub fn effective_tag(&self) -> Option<&'a str> {
        self.tag.or(self.digest.is_none().then_some(DEFAULT_TAG))
    }

    /// The normalised `registry/path`, borrowed when the input already spells it that way
    /// (the usual case for fully qualified images).
    pub fn repository_path(&self) -> Cow<'a, str> {
        let verbatim = !self.official
            && self.name.len() == self.registry.len() + 1 + self.path.len()
            // The path is lower-case (parsing checked it); a host may not be.
            && !self.registry.bytes().any(|b| b.is_ascii_uppercase());
        if verbatim {
            return Cow::Borrowed(self.name);
        }
        let mut out = String::with_capacity(self.name_len());
        self.push_repository_path(&mut out);
        Cow::Owned(out)
    }

    /// Same registry and repository path, whatever the spelling (`nginx` and
    /// `index.docker.io/library/nginx` are the same repository).
    pub fn same_repository(&self, other: &Parts<'_>) -> bool {
        let prefix = |p: &Parts<'_>| if p.official { OFFICIAL_PREFIX } else { "" };
        self.registry.eq_ignore_ascii_case(other.registry)
            && prefix(self)
                .bytes()
                .chain(self.path.bytes())
                .eq(prefix(other).bytes().chain(other.path.bytes()))
    }

    fn push_repository_path(&self, out: &mut String) {
        out.extend(self.registry.chars().map(|c| c.to_ascii_lowercase()));
        out.push('/');
        if self.official {
            out.push_str(OFFICIAL_PREFIX);
        }
        out.push_str(self.path);
    }

    /// The owned form: one allocation of exactly the normalised length.
    pub fn to_reference(self) -> ImageReference {
        let tag = self.effective_tag();
        let suffix = |s: Option<&str>| s.map_or(0, |s| s.len() + 1);
        let mut text = String::with_capacity(self.name_len() + suffix(tag) + suffix(self.digest));
        self.push_repository_path(&mut text);
        let registry_len = self.registry.len();
        let path_end = text.len();
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        let tag_end = text.len();
        if let Some(digest) = self.digest {
            text.push('@');
            text.push_str(digest);
        }
        ImageReference {
            text,
            registry_len,
            path_end,
            tag_end,
            explicit_tag: self.tag.is_some(),
            has_digest: self.digest.is_some(),
        }
    }
}

/// A parsed, normalised image reference. Equality is structural: `nginx` and `nginx:latest`
/// have the same `normalized()` text but differ in `tag()`; key caches by `normalized()`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageReference {
    text: String,
    registry_len: usize,
    path_end: usize,
    tag_end: usize,
    explicit_tag: bool,
    has_digest: bool,
}

impl ImageReference {
    /// Parses a reference as written in a pod spec.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        Parts::parse(input).map(Parts::to_reference)
    }

    /// The lower-cased registry host with its port (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.text[..self.registry_len]
    }

    /// The path inside the registry (`library/nginx`).
    pub fn repository(&self) -> &str {
        &self.text[self.registry_len + 1..self.path_end]
    }

    /// `registry/repository` (`docker.io/library/nginx`): what registry rules and scan results
    /// are keyed by.
    pub fn repository_path(&self) -> &str {
        &self.text[..self.path_end]
    }

    /// The tag as written; `None` when the reference has none (see `effective_tag`).
    pub fn tag(&self) -> Option<&str> {
        self.explicit_tag
            .then(|| &self.text[self.path_end + 1..self.tag_end])
    }

    /// The tag the runtime resolves: the written one, else `latest` when there is no digest.
    /// A digest-only reference has none: the digest alone decides the content.
    pub fn effective_tag(&self) -> Option<&str> {
        (self.tag_end > self.path_end).then(|| &self.text[self.path_end + 1..self.tag_end])
    }

    /// The digest (`sha256:<hex>`), already validated.
    pub fn digest(&self) -> Option<&str> {
        self.has_digest.then(|| &self.text[self.tag_end + 1..])
    }

    /// The full normalised reference: `docker.io/library/nginx:latest`, or with the digest kept
    /// (`docker.io/library/nginx@sha256:…`, `…:1.25@sha256:…`). Parsing it gives it back.
    pub fn normalized(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn is_lower_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    tag.len() <= MAX_TAG
        && tag.as_bytes().first().is_some_and(word)
        && tag.bytes().all(|b| word(&b) || b == b'.' || b == b'-')
}

/// An algorithm runtimes support, with exactly its number of lower-case hex digits.
fn validate_digest(digest: &str) -> Result<&str, ReferenceError> {
    let (algorithm, hex) = digest
        .split_once(':')
        .filter(|(a, h)| !a.is_empty() && !h.is_empty())
        .ok_or(ReferenceError::InvalidDigest)?;
    let (name, length) = DIGEST_ALGORITHMS
        .into_iter()
        .find(|(name, _)| *name == algorithm)
        .ok_or_else(|| ReferenceError::UnsupportedDigest(algorithm.to_owned()))?;
    if hex.len() == length && hex.bytes().all(is_lower_hex) {
        Ok(digest)
    } else {
        Err(ReferenceError::DigestEncoding {
            algorithm: name,
            length,
        })
    }
}

/// `host[:port]`: DNS-style components (letters, digits, inner dashes) or `[ipv6]`.
fn is_valid_registry(registry: &str) -> bool {
    let (host_ok, port) = if let Some(bracketed) = registry.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        let address_ok =
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (address_ok, port)
    } else {
        // One pass over `host[:port]`: every `.`-separated component of the host starts and
        // ends with a letter or digit and holds only those and `-`.
        #[derive(Clone, Copy, PartialEq)]
        enum At {
            Start,
            Alphanumeric,
            Dash,
        }
        let bytes = registry.as_bytes();
        let mut state = At::Start;
        let mut port = None;
        for (i, &b) in bytes.iter().enumerate() {
            state = match (state, b) {
                (_, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9') => At::Alphanumeric,
                (At::Alphanumeric | At::Dash, b'-') => At::Dash,
                (At::Alphanumeric, b'.') => At::Start,
                (At::Alphanumeric, b':') => {
                    port = Some(&registry[i + 1..]);
                    break;
                }
                _ => return false,
            };
        }
        (state == At::Alphanumeric, port)
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The repository path: not empty, lower-case (said first, whatever else is wrong), and then
/// the first empty or invalid component, in one pass. A component is `[a-z0-9]+` runs joined
/// by `.`, `_`, `__` or one or more `-`.
fn validate_path(path: &str) -> Result<(), ReferenceError> {
    #[derive(Clone, Copy, PartialEq)]
    enum At {
        /// A component's first byte is next.
        Start,
        Run,
        Dot,
        Underscore,
        Underscores,
        Dashes,
    }
    if path.is_empty() {
        return Err(ReferenceError::MissingRepository);
    }
    let mut state = At::Start;
    let mut component = 0;
    // The first bad component: where it starts, and whether it is empty.
    let mut bad = None;
    let mut uppercase = false;
    for (i, &b) in path.as_bytes().iter().enumerate() {
        state = match (state, b) {
            (_, b'a'..=b'z' | b'0'..=b'9') => At::Run,
            (At::Run, b'.') => At::Dot,
            (At::Run, b'_') => At::Underscore,
            (At::Underscore, b'_') => At::Underscores,
            (At::Run | At::Dashes, b'-') => At::Dashes,
            (_, b'/') => {
                if bad.is_none() && state != At::Run {
                    bad = Some((component, state == At::Start));
                }
                component = i + 1;
                At::Start
            }
            _ => {
                uppercase |= b.is_ascii_uppercase();
                bad = bad.or(Some((component, false)));
                state
            }
        };
    }
    if bad.is_none() && state != At::Run {
        bad = Some((component, state == At::Start));
    }
    if uppercase {
        return Err(ReferenceError::UppercaseRepository(path.to_owned()));
    }
    match bad {
        None => Ok(()),
        Some((_, true)) => Err(ReferenceError::EmptyPathComponent),
        Some((start, false)) => {
            let rest = &path.as_bytes()[start..];
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let text = String::from_utf8_lossy(&rest[..end]).into_owned();
            Err(ReferenceError::InvalidPathComponent(text))
        }
    }
}

/// `s` split around its first `byte` (ASCII), found a word at a time: `str::split_once`'s
/// char-pattern searcher and a byte loop both cost more than that on image references.
fn split_at_byte(s: &str, byte: u8) -> Option<(&str, &str)> {
    let at = memchr::memchr(byte, s.as_bytes())?;
    Some((&s[..at], &s[at + 1..]))
}

/// Whether any byte is at or below a space, DEL, or not ASCII; eight bytes at a time.
fn has_space_control_or_non_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        // A byte below 0x21 sets its high bit in `low`; a byte of 0x7f or more has or gets
        // it in `high`. Carries and borrows between bytes start only at such a byte, so they
        // never make the answer wrong.
        let low = word.wrapping_sub(ONES * 0x21) & !word;
        let high = word.wrapping_add(ONES) | word;
        if (low | high) & HIGH != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b <= b' ' || b >= 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The validators as first written (a split per component), kept as the reference the
    /// one-pass validators are compared with.
    mod oracle {
        use super::super::{ReferenceError, split_at_byte};

        pub fn is_valid_registry(registry: &str) -> bool {
            let (host, port) = match split_at_byte(registry, b':') {
                Some((host, port)) => (host, Some(port)),
                None => (registry, None),
            };
            let component = |b: &[u8]| {
                b.first().is_some_and(u8::is_ascii_alphanumeric)
                    && b.last().is_some_and(u8::is_ascii_alphanumeric)
                    && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            };
            host.as_bytes().split(|&b| b == b'.').all(component)
                && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        }

        fn is_path_component(component: &[u8]) -> bool {
            let mut rest = component;
            loop {
                let run = rest
                    .iter()
                    .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    .count();
                if run == 0 {
                    return false;
                }
                rest = &rest[run..];
                let separator = match rest {
                    [] => return true,
                    [b'_', b'_', ..] => 2,
                    [b'.' | b'_', ..] => 1,
                    [b'-', ..] => rest.iter().take_while(|&&b| b == b'-').count(),
                    _ => return false,
                };
                rest = &rest[separator..];
            }
        }

        pub fn validate_path(path: &str) -> Result<(), ReferenceError> {
            if path.is_empty() {
                return Err(ReferenceError::MissingRepository);
            }
            if path.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(ReferenceError::UppercaseRepository(path.to_owned()));
            }
            for component in path.as_bytes().split(|&b| b == b'/') {
                if component.is_empty() {
                    return Err(ReferenceError::EmptyPathComponent);
                }
                if !is_path_component(component) {
                    let text = String::from_utf8_lossy(component).into_owned();
                    return Err(ReferenceError::InvalidPathComponent(text));
                }
            }
            Ok(())
        }
    }

    /// Every string of up to five bytes over an alphabet of each kind of byte the grammar
    /// tells apart.
    fn short_strings(alphabet: &[u8]) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..5 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&b| format!("{s}{}", b as char)))
                .collect();
            all.extend(next.iter().cloned());
            last = next;
        }
        all
    }

    #[test]
    fn spans_give_the_same_parse_back_for_an_equal_text_only() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for image in [
            "nginx".to_owned(),
            "index.docker.io/nginx:1.25".to_owned(),
            "docker.io/library/nginx".to_owned(),
            format!("registry.example.com:5000/a/b:t@{digest}"),
            format!("app@{digest}"),
            "[::1]/x".to_owned(),
        ] {
            let parts = Parts::parse(&image).unwrap();
            let spans = parts.spans(&image).unwrap();
            // Another copy of the same text: the same parse, from the spans alone.
            let copy = image.clone();
            assert_eq!(Parts::from_spans(&copy, &spans), Some(parts), "{image}");
            assert_eq!(Parts::from_spans(&copy, &spans), Parts::parse(&copy).ok());
            // Spans are only taken against the text that was parsed.
            assert_eq!(parts.spans(&copy), None, "{image}");
        }
        // Spans past the end of a (wrongly) shorter text give nothing, not a panic.
        let long = "registry.example.com/shop/web:1.4.2";
        let spans = Parts::parse(long).unwrap().spans(long).unwrap();
        assert_eq!(Parts::from_spans("nginx", &spans), None);
    }

    #[test]
    fn the_word_scan_finds_every_suspect_byte_wherever_it_is() {
        let by_byte = |bytes: &[u8]| bytes.iter().any(|&b| b <= b' ' || b >= 0x7f);
        for length in [1, 7, 8, 9, 16, 17, 24] {
            for at in 0..length {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; length];
                    bytes[at] = b;
                    assert_eq!(
                        has_space_control_or_non_ascii(&bytes),
                        by_byte(&bytes),
                        "byte {b:#x} at {at} of {length}"
                    );
                }
            }
        }
        // Neighbours that a carry or borrow could reach.
        for pair in [
            [0x20, 0x21],
            [0x7e, 0x7f],
            [0xff, 0x00],
            [0x00, 0xff],
            [0x21, 0x7e],
        ] {
            let mut bytes = [b'a'; 16];
            bytes[7..9].copy_from_slice(&pair);
            assert_eq!(
                has_space_control_or_non_ascii(&bytes),
                by_byte(&bytes),
                "{pair:?}"
            );
        }
    }

    #[test]
    fn one_pass_validators_agree_with_the_split_validators() {
        for s in short_strings(b"a0A._-/$") {
            assert_eq!(validate_path(&s), oracle::validate_path(&s), "path {s:?}");
        }
        for s in short_strings(b"aZ9.-:_/") {
            assert_eq!(
                is_valid_registry(&s),
                oracle::is_valid_registry(&s),
                "registry {s:?}"
            );
        }
    }

    const HEX: &str = "4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";

    fn parse(s: &str) -> ImageReference {
        ImageReference::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    /// As written, then normalised (`@D` stands for `@sha256:<HEX>`). Mostly the examples of
    /// distribution/reference's own tests.
    #[rustfmt::skip]
    const VALID: &[(&str, &str)] = &[
        ("nginx", "docker.io/library/nginx:latest"),
        ("nginx:1.25", "docker.io/library/nginx:1.25"),
        ("user/app", "docker.io/user/app:latest"),
        ("library/ubuntu", "docker.io/library/ubuntu:latest"),
        ("docker.io/nginx", "docker.io/library/nginx:latest"),
        ("docker.io/docker/docker", "docker.io/docker/docker:latest"),
        ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
        ("INDEX.DOCKER.IO/user/app:v1", "docker.io/user/app:v1"),
        // Docker Hub's other names, and the default port, name the same registry.
        ("registry-1.docker.io/library/nginx", "docker.io/library/nginx:latest"),
        ("registry-1.docker.io/nginx:1", "docker.io/library/nginx:1"),
        ("Registry.Hub.Docker.com/user/app", "docker.io/user/app:latest"),
        ("docker.io:443/nginx", "docker.io/library/nginx:latest"),
        ("evil.example.com:443/x", "evil.example.com/x:latest"),
        ("EVIL.example.com:443/x:1", "evil.example.com/x:1"),
        ("[::1]:443/repo", "[::1]/repo:latest"),
        ("evil.example.com:4430/x", "evil.example.com:4430/x:latest"),
        ("evil.example.com:8443/x", "evil.example.com:8443/x:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app:1.0", "localhost:5000/app:1.0"),
        ("registry:5000/app", "registry:5000/app:latest"),
        ("Registry.Example.COM/team/app", "registry.example.com/team/app:latest"),
        ("test.com:5000/repo:tag", "test.com:5000/repo:tag"),
        // Without a slash there is no registry: the colon starts a tag.
        ("localhost:5000", "docker.io/library/localhost:5000"),
        ("test.com", "docker.io/library/test.com:latest"),
        ("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080"),
        ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080"),
        ("192.168.1.1:tag", "docker.io/library/192.168.1.1:tag"),
        ("192.168.1.1/repo", "192.168.1.1/repo:latest"),
        ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo:5050"),
        ("[2001:db8::1]/repo", "[2001:db8::1]/repo:latest"),
        ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo:tag"),
        ("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo:latest"),
        ("[::1]:5000/repo@D", "[::1]:5000/repo@D"),
        ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
        ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io/test.example.com/my-app:test.example.com"),
        ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com"),
        ("a/b__c/b_c/b.c/b---c/0", "docker.io/a/b__c/b_c/b.c/b---c/0:latest"),
        ("lowercase:Uppercase", "docker.io/library/lowercase:Uppercase"),
        ("a:_x.y-Z", "docker.io/library/a:_x.y-Z"),
        ("app@D", "docker.io/library/app@D"),
        ("nginx:1.25@D", "docker.io/library/nginx:1.25@D"),
    ];

    /// As written (`@D` as above), then a fragment of the error message.
    #[rustfmt::skip]
    const INVALID: &[(&str, &str)] = &[
        ("", "empty image reference"),
        (" nginx", "whitespace"),
        ("nginx ", "whitespace"),
        ("ngi nx", "whitespace"),
        ("nginx\n", "whitespace"),
        ("nginx\u{a0}", "whitespace"),
        (HEX, "image id"),
        ("Uppercase:tag", "\"Uppercase\" must be lower-case"),
        ("docker/Docker", "must be lower-case"),
        ("test:5000/Uppercase/lowercase:tag", "must be lower-case"),
        ("FOO/bar", "must be lower-case"),
        ("a/b___c", "invalid repository path component \"b___c\""),
        ("a/b..c", "path component"),
        ("a/.b", "path component"),
        ("a/b-", "path component"),
        ("a/b_.c", "path component"),
        ("-docker", "path component \"-docker\""),
        ("aa/asdf$$^/aa", "path component"),
        ("docker///docker", "empty repository path component"),
        ("registry.example.com/a/", "empty repository path component"),
        ("localhost/", "missing repository"),
        (":justtag", "missing repository"),
        ("@D", "missing repository"),
        ("-docker.io/docker/docker", "invalid registry \"-docker.io\""),
        ("my_reg.com/app", "invalid registry"),
        ("https://github.com/docker/docker", "invalid registry \"https:\""),
        ("example.com:abc/app", "invalid registry"),
        ("localhost:/app", "invalid registry"),
        ("host:1:2/app", "invalid registry"),
        ("a..b/c", "invalid registry"),
        ("nginx:1.0/foo", "invalid registry"),
        ("[fe80::1%eth0]:5000/repo", "invalid registry"),
        ("[]/repo", "path component \"[]\""),
        ("[::1]x/repo", "invalid registry"),
        ("[::1/repo", "invalid registry"),
        ("[]:1/repo", "invalid registry"),
        ("[2001:db8::1]", "path component \"[2001\""),
        ("a:", "invalid tag \"\""),
        ("a:.x", "invalid tag"),
        ("a:-x", "invalid tag"),
        ("a/b:x/y", "invalid tag \"x/y\""),
        ("a:x/y", "invalid registry \"a:x\""),
        ("a:b:c", "invalid tag"),
        ("app@sha256:abc", "invalid sha256 digest: expected 64 lower-case hex digits"),
        ("app@md5:abc", "unsupported digest algorithm \"md5\""),
        ("app@", "invalid digest"),
        ("app@sha256", "invalid digest"),
        ("app@:abc", "invalid digest"),
        ("a@b@D", "unsupported digest algorithm \"b@sha256\""),
    ];

    type Row = (
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    /// As written, then registry, repository, tag, effective tag (a digest is `@D` as above).
    #[rustfmt::skip]
    const PARTS: &[Row] = &[
        ("nginx", "docker.io", "library/nginx", None, Some("latest")),
        ("Localhost:5000/a/b:v1", "localhost:5000", "a/b", Some("v1"), Some("v1")),
        ("app@D", "docker.io", "library/app", None, None),
        ("app:1@D", "docker.io", "library/app", Some("1"), Some("1")),
    ];

    fn expand(s: &str) -> String {
        s.replace("@D", &format!("@sha256:{HEX}"))
    }

    fn err(s: &str) -> ReferenceError {
        ImageReference::parse(s).expect_err(s)
    }

    #[test]
    fn valid_references_normalise_idempotently() {
        for (input, expected) in VALID {
            let r = parse(&expand(input));
            assert_eq!(r.normalized(), expand(expected), "{input}");
            assert_eq!(
                parse(r.normalized()).normalized(),
                r.normalized(),
                "{input}"
            );
        }
    }

    #[test]
    fn invalid_references_name_the_problem() {
        for (input, fragment) in INVALID {
            let error = err(&expand(input));
            assert!(error.to_string().contains(fragment), "{input:?}: {error}");
        }
    }

    #[test]
    fn parts_and_the_tag_of_digest_only_references() {
        for &(input, registry, repository, tag, effective) in PARTS {
            let r = parse(&expand(input));
            assert_eq!(
                (r.registry(), r.repository(), r.tag()),
                (registry, repository, tag)
            );
            assert_eq!(r.effective_tag(), effective, "{input}");
            let digest = input.contains("@D").then(|| format!("sha256:{HEX}"));
            assert_eq!(r.digest(), digest.as_deref(), "{input}");
            assert_eq!(r.repository_path(), format!("{registry}/{repository}"));
            assert_eq!(r.to_string(), r.normalized());
            assert_eq!(expand(input).parse(), Ok(r));
        }
    }

    #[test]
    fn digests_are_checked_per_algorithm() {
        assert!(ImageReference::parse(&format!("x@sha384:{}", "a".repeat(96))).is_ok());
        assert!(ImageReference::parse(&format!("x@sha512:{}", "0".repeat(128))).is_ok());
        let encoding = |length| ReferenceError::DigestEncoding {
            algorithm: "sha256",
            length,
        };
        for hex in [HEX.to_uppercase(), format!("{HEX}0"), HEX[1..].to_owned()] {
            assert_eq!(err(&format!("x@sha256:{hex}")), encoding(64), "{hex}");
        }
        let short = err(&format!("x@sha512:{HEX}"));
        assert!(matches!(
            short,
            ReferenceError::DigestEncoding { length: 128, .. }
        ));
    }

    #[test]
    fn lengths_are_limited() {
        // The name limit counts the normalised name.
        let at_limit = format!("localhost/{}a", "a/".repeat(122));
        assert_eq!(parse(&at_limit).repository_path().len(), MAX_NAME);
        let over = format!("localhost/{}a", "a/".repeat(123));
        assert_eq!(err(&over), ReferenceError::NameTooLong(257));
        let hub = format!("{}a:tag", "a/".repeat(128));
        assert_eq!(err(&hub), ReferenceError::NameTooLong(267));
        assert!(ImageReference::parse(&format!("a:{}", "t".repeat(MAX_TAG))).is_ok());
        let long_tag = err(&format!("a:{}", "t".repeat(MAX_TAG + 1)));
        assert!(matches!(long_tag, ReferenceError::InvalidTag(_)));
        assert_eq!(err(&"a".repeat(2000)), ReferenceError::TooLong(2000));
    }

    #[test]
    fn parts_borrow_when_the_input_is_already_normalised() {
        let p = Parts::parse("registry.example.com/team/app:1").unwrap();
        let expected = "registry.example.com/team/app";
        assert!(matches!(p.repository_path(), Cow::Borrowed(s) if s == expected));
        for owned in [
            "nginx",
            "user/app",
            "index.docker.io/u/a",
            "Reg.example.com/a",
        ] {
            let p = Parts::parse(owned).unwrap();
            assert!(matches!(p.repository_path(), Cow::Owned(_)), "{owned}");
            assert_eq!(p.repository_path(), parse(owned).repository_path());
        }
    }

    #[test]
    fn same_repository_ignores_spelling() {
        let same = |a, b| {
            Parts::parse(a)
                .unwrap()
                .same_repository(&Parts::parse(b).unwrap())
        };
        assert!(same("nginx:1", "docker.io/library/nginx"));
        assert!(same("nginx", "INDEX.docker.io/library/nginx"));
        assert!(same("REG.io/a", "reg.io/a:2"));
        assert!(!same("nginx", "docker.io/nginx/nginx"));
        assert!(!same("reg.io/a", "reg.io/ab"));
        assert!(!same("reg.io/a", "other.io/a"));
    }
}
