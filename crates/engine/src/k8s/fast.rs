//! A direct reader of an admitted object's JSON into the model, for the webhook's hot path.
//! Serde's derived readers spend most of an admission's parsing time in generic machinery
//! (each key decoded, matched and wrapped in several layers of results); this reads the
//! same fields in one pass over the bytes.
//!
//! Which fields a type has is declared once (`k8s_type!`, in `declare.rs`), and both this
//! reader and serde's come from that declaration; how a field is read follows from its type
//! (`Read`, below). This reader is only a shortcut: it answers `None` for anything it does not
//! read exactly as the serde model does (escaped keys, numbers that are not plain integers, a
//! value of an unexpected type, a repeated field, invalid JSON, ...), and the caller then reads
//! the object with serde, which gives the same model or the error naming the field. So an
//! object reads the same either way; tests compare both readers on every fixture and on
//! damaged copies, and the `admission_object` fuzz target compares them and the decisions.

use serde::de::DeserializeOwned;
use smallvec::SmallVec;

use super::container::Quantity;
use super::service::Service;
use super::volume::{Members, Volume};
use super::workload::{ShapeReader, Workload, read_workload};
use super::{Map, Text};
use crate::Kind;

/// For fuzzing and tests: whether the direct reader, when it reads `raw` at all, reads what
/// serde reads (`Err` with both readings when not). A silent difference would be an
/// admission bypass on the hot path.
#[doc(hidden)]
pub fn direct_reader_agrees(kind: Kind, raw: &str) -> Result<bool, String> {
    fn compare<T: PartialEq + std::fmt::Debug>(
        kind: Kind,
        raw: &str,
        fast: Option<T>,
        serde: impl FnOnce() -> Result<T, super::K8sError>,
    ) -> Result<bool, String> {
        let Some(fast) = fast else {
            return Ok(false);
        };
        match serde() {
            Ok(serde) if serde == fast => Ok(true),
            other => Err(format!(
                "{kind:?} {raw}\n direct: {fast:?}\n serde: {other:?}"
            )),
        }
    }
    if kind == Kind::Service {
        return compare(kind, raw, service(raw), || super::Source::parse(raw));
    }
    compare(kind, raw, workload(kind, raw).map(|w| *w), || {
        super::workload::pod_template(kind, raw)?.ok_or_else(|| super::K8sError::InvalidField {
            path: "object".into(),
            reason: "no pod".into(),
        })
    })
}

/// The workload of `kind` in `raw`, when this reader can read it (see the module).
pub(crate) fn workload(kind: Kind, raw: &str) -> Option<Box<Workload>> {
    read_workload(kind, Reader::new(raw)).ok()?.map(Box::new)
}

/// The Service in `raw`, when this reader can read it (see the module).
pub(crate) fn service(raw: &str) -> Option<Service> {
    Reader::new(raw).read().ok()
}

/// This reader left the object to serde.
pub(super) struct Declined;

impl ShapeReader for Reader<'_> {
    type Error = Declined;
    fn read<T: Read + DeserializeOwned>(mut self) -> Result<T, Declined> {
        let mut value = T::default();
        T::read(&mut self, &mut value).ok_or(Declined)?;
        self.end().ok_or(Declined)?;
        Ok(value)
    }
}

/// A type the direct reader reads. The model's structs get it from their declaration
/// (`k8s_type!`); the rest is here.
pub(super) trait Read: Default {
    /// Reads a value that is not `null` into `out`, which is at its default.
    fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()>;
}

/// Scalars, each read by one reading of the cursor.
macro_rules! read_scalars {
    ($($ty:ty => $read:expr),* $(,)?) => {$(
        impl Read for $ty {
            fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()> {
                *out = ($read)(r)?;
                Some(())
            }
        }
    )*};
}

read_scalars! {
    Text => Reader::string,
    bool => Reader::bool,
    i32 => |r: &mut Reader<'_>| r.integer_text()?.parse().ok(),
    i64 => |r: &mut Reader<'_>| r.integer_text()?.parse().ok(),
}

impl<T: Read> Read for Option<T> {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()> {
        T::read(r, out.insert(T::default()))
    }
}

impl<T: Read> Read for Vec<T> {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()> {
        r.list(out)
    }
}

impl<T: Read, const N: usize> Read for SmallVec<[T; N]> {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()> {
        r.list(out)
    }
}

/// A map of string keys: a repeated key keeps the last value, as serde's map does.
impl<T: Read> Read for Map<T> {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()> {
        let mut entries = SmallVec::new();
        r.members(|r, key| {
            let mut value = T::default();
            T::read(r, &mut value)?;
            entries.push((Text::from(key), value));
            Some(())
        })?;
        *out = Map::from_entries(entries);
        Some(())
    }
}

/// A quantity as a string, or a plain integer kept as its text (as serde reads it: an integer
/// past 64 bits is a float to serde, left to it).
impl Read for Quantity {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()> {
        *out = match r.peek()? {
            b'"' => Quantity(r.string()?),
            _ => {
                let text = r.integer_text()?;
                let fits = text.parse::<u64>().is_ok() || text.parse::<i64>().is_ok();
                fits.then(|| Quantity(Text::from(text)))?
            }
        };
        Some(())
    }
}

/// A volume, member by member as `Volume::member` describes it.
impl Read for Volume {
    fn read(r: &mut Reader<'_>, out: &mut Self) -> Option<()> {
        r.members(|r, key| out.member(key, &mut DirectMembers(r)).ok())?;
        out.finish();
        Some(())
    }
}

struct DirectMembers<'r, 'a>(&'r mut Reader<'a>);

impl Members for DirectMembers<'_, '_> {
    type Error = Declined;
    fn value<T: Read + DeserializeOwned>(&mut self) -> Result<Option<T>, Declined> {
        if self.0.null() {
            return Ok(None);
        }
        let mut value = T::default();
        T::read(self.0, &mut value).ok_or(Declined)?;
        Ok(Some(value))
    }
    fn skip(&mut self) -> Result<(), Declined> {
        self.0.skip_value().ok_or(Declined)
    }
}

/// A cursor over the JSON text. Every method answers `None` for what it does not read.
/// Strings are cut at their (ASCII) quotes, so every slice of `text` is on a char boundary.
pub(super) struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    /// Arrays and objects `skip_value` is inside.
    depth: u32,
}

/// How deep `skip_value` goes before leaving the object to serde.
const MAX_SKIPPED_DEPTH: u32 = 64;

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            text,
            bytes: text.as_bytes(),
            at: 0,
            depth: 0,
        }
    }

    fn skip_whitespace(&mut self) {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        self.at += rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
            .unwrap_or(rest.len());
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        // Compact JSON (what the API server sends) has no whitespace to skip.
        let next = *self.bytes.get(self.at)?;
        if next > b' ' {
            return Some(next);
        }
        self.skip_whitespace();
        self.bytes.get(self.at).copied()
    }

    /// After an opening quote: the length of the string's text up to the first byte that is
    /// a quote, a backslash or a control character, and that byte (eight bytes at a time, as
    /// most strings have none of them for a while).
    fn scan_string(&self) -> Option<(usize, u8)> {
        const ONES: u64 = u64::MAX / 255;
        const HIGH: u64 = ONES << 7;
        let rest = self.bytes.get(self.at..)?;
        let mut chunks = rest.chunks_exact(8);
        let mut offset = 0;
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().ok()?);
            // A byte below 0x20, or equal to `"` or `\`, sets its high bit in `found`.
            let control = word.wrapping_sub(ONES * 0x20) & !word;
            let quote = (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES)
                & !(word ^ (ONES * u64::from(b'"')));
            let backslash = (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES)
                & !(word ^ (ONES * u64::from(b'\\')));
            let found = (control | quote | backslash) & HIGH;
            if found != 0 {
                let at = offset + found.trailing_zeros() as usize / 8;
                return Some((at, rest[at]));
            }
            offset += 8;
        }
        let tail = chunks.remainder();
        let at = tail
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        Some((offset + at, tail[at]))
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Only whitespace after the value.
    fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// Consumes a `null` if one is next.
    fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal(b"null")
    }

    fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' if self.literal(b"true") => Some(true),
            b'f' if self.literal(b"false") => Some(false),
            _ => None,
        }
    }

    /// A string without escapes (keys), the quotes consumed.
    fn plain_string(&mut self) -> Option<&'a str> {
        let text = self.plain_span()?;
        self.text.get(text)
    }

    /// Where the text of a string without escapes is; the quotes consumed. Always inlined:
    /// as a call, handing the range back costs ~1,000 instructions per Deployment.
    #[inline(always)]
    fn plain_span(&mut self) -> Option<std::ops::Range<usize>> {
        self.eat(b'"')?;
        let start = self.at;
        // Escapes and raw control characters: serde decides.
        let (length, b'"') = self.scan_string()? else {
            return None;
        };
        self.at += length + 1;
        Some(start..start + length)
    }

    fn string(&mut self) -> Option<Text> {
        self.eat(b'"')?;
        let start = self.at;
        match self.scan_string()? {
            (length, b'"') => {
                self.at += length + 1;
                return self.text.get(start..start + length).map(Text::from);
            }
            (_, b'\\') => {}
            _ => return None,
        }
        // Escapes, rare outside annotations: found and checked as when skipping, decoded by
        // serde_json.
        self.at = start - 1;
        self.skip_string()?;
        serde_json::from_str(self.text.get(start - 1..self.at)?).ok()
    }

    /// A string, checked and not kept. Escapes are checked as serde checks them; a `\\u`
    /// escape of a surrogate is left to serde.
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let (length, stop) = self.scan_string()?;
            self.at += length;
            match stop {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => match *self.bytes.get(self.at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
                    b'u' => {
                        let hex = self.text.get(self.at + 2..self.at + 6)?;
                        let unit = u16::from_str_radix(hex, 16).ok()?;
                        if !hex.bytes().all(|b| b.is_ascii_hexdigit())
                            || (0xd800..=0xdfff).contains(&unit)
                        {
                            return None;
                        }
                        self.at += 6;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// A JSON integer as written (`-?(0|[1-9][0-9]*)`), not followed by a fraction or an
    /// exponent; `-0` is left to serde.
    fn integer_text(&mut self) -> Option<&'a str> {
        self.skip_whitespace();
        let start = self.at;
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let count = self.at - digits;
        let leading_zero = count > 1 && self.bytes[digits] == b'0';
        let negative_zero = digits > start && count == 1 && self.bytes[digits] == b'0';
        if count == 0
            || leading_zero
            || negative_zero
            || matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        self.text.get(start..self.at)
    }

    /// A field's value: `null` leaves it at its default. Only for a field still at its
    /// default: the struct it belongs to was just made, and `once` lets each field be read
    /// one time.
    pub(super) fn field<T: Read>(&mut self, out: &mut T) -> Option<()> {
        if self.null() {
            return Some(());
        }
        T::read(self, out)
    }

    /// A list (a `Vec`, or a `SmallVec` for lists that usually hold an item or two), each
    /// item read in place at its end; `out` is empty.
    fn list<T: Read, L: Extend<T> + AsMut<[T]>>(&mut self, out: &mut L) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            out.extend(std::iter::once(T::default()));
            T::read(self, out.as_mut().last_mut()?)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A key as bytes (struct fields are matched on bytes, so no `str` boundaries are
    /// checked): a string without escapes, the quotes consumed.
    fn key_bytes(&mut self) -> Option<&'a [u8]> {
        let text = self.plain_span()?;
        self.bytes.get(text)
    }

    /// The `:` after a key: in compact JSON the very next byte.
    fn colon(&mut self) -> Option<()> {
        if self.bytes.get(self.at) == Some(&b':') {
            self.at += 1;
            return Some(());
        }
        self.eat(b':')
    }

    /// An object's members, each handed to `member` with its key (which reads the value).
    fn members(&mut self, member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.object(Self::plain_string, member)
    }

    /// An object's members with keys read by `key`.
    fn object<K>(
        &mut self,
        key: impl Fn(&mut Self) -> Option<K>,
        mut member: impl FnMut(&mut Self, K) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = key(self)?;
            self.colon()?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A struct's fields: like `members`, with a set of the fields seen so far (serde's
    /// derived readers refuse a repeated field).
    pub(super) fn fields(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a [u8], &mut u32) -> Option<()>,
    ) -> Option<()> {
        let mut seen = 0u32;
        self.object(Self::key_bytes, |r, key| field(r, key, &mut seen))
    }

    /// Reads field number `bit` with `read`, unless it was seen before.
    pub(super) fn once(
        &mut self,
        seen: &mut u32,
        bit: u32,
        read: impl FnOnce(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if *seen & (1 << bit) != 0 {
            return None;
        }
        *seen |= 1 << bit;
        read(self)
    }

    /// Any JSON value, checked as strictly as serde checks a value it ignores.
    pub(super) fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            open @ (b'{' | b'[') => {
                // Nesting deeper than this is left to serde (which skips unknown values
                // without recursing), so a hostile object cannot exhaust the stack here.
                if self.depth == MAX_SKIPPED_DEPTH {
                    return None;
                }
                self.depth += 1;
                let skipped = self.skip_nested(open);
                self.depth -= 1;
                skipped
            }
            b'"' => self.skip_string(),
            b't' => self.literal(b"true").then_some(()),
            b'f' => self.literal(b"false").then_some(()),
            b'n' => self.literal(b"null").then_some(()),
            _ => self.number(),
        }
    }

    /// An object or array (`open` is next).
    fn skip_nested(&mut self, open: u8) -> Option<()> {
        match open {
            b'{' => {
                // Keys may have escapes here (`managedFields` has keys like `k:{\"name\":…}`).
                self.at += 1;
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_whitespace();
                    self.skip_string()?;
                    self.eat(b':')?;
                    self.skip_value()?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b'}' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => {
                self.at += 1;
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip_value()?;
                    match self.peek()? {
                        b',' => self.at += 1,
                        b']' => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
        }
    }

    /// Any JSON number (`-?int frac? exp?`).
    fn number(&mut self) -> Option<()> {
        let digits = |r: &mut Self| {
            let start = r.at;
            while r.bytes.get(r.at).is_some_and(u8::is_ascii_digit) {
                r.at += 1;
            }
            (r.at > start).then_some(start)
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let start = digits(self)?;
        if self.at - start > 1 && self.bytes[start] == b'0' {
            return None;
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            digits(self)?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            digits(self)?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::Object;
    use crate::k8s::TemplatePaths;

    /// Every workload the tests have: the upstream Pod Security fixtures (YAML, read as JSON)
    /// and the objects of the AdmissionReviews captured from kube-apiserver.
    fn fixtures() -> Vec<(Kind, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let mut stack = vec![root.join("tests/psa/testdata")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut objects = Vec::new();
        for file in &files {
            let value: serde_json::Value =
                serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            objects.push(value);
        }
        let reviews: PathBuf = root.join("../../agent/tests/fixtures/admission");
        let mut reviews: Vec<PathBuf> = std::fs::read_dir(reviews)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        reviews.sort();
        assert!(reviews.len() >= 20, "the captured reviews");
        for file in reviews {
            let review: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            for key in ["object", "oldObject"] {
                let object = &review["request"][key];
                if object.is_object() {
                    objects.push(object.clone());
                }
            }
        }
        objects
            .into_iter()
            .filter_map(|object| {
                let kind = Kind::from_name(object["kind"].as_str()?)?;
                TemplatePaths::of(kind)?;
                Some((kind, serde_json::to_string(&object).unwrap()))
            })
            .collect()
    }

    /// The serde reading of `raw`, which the direct reader must equal whenever it answers.
    fn agrees(kind: Kind, raw: &str) -> Result<bool, String> {
        direct_reader_agrees(kind, raw)
    }

    #[test]
    fn every_fixture_reads_directly_and_as_serde_reads_it() {
        let fixtures = fixtures();
        assert!(fixtures.len() > 4000, "{}", fixtures.len());
        for (kind, raw) in &fixtures {
            assert_eq!(agrees(*kind, raw), Ok(true), "{raw}");
            // Pretty-printed (whitespace everywhere) reads the same.
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            let pretty = serde_json::to_string_pretty(&value).unwrap();
            assert_eq!(agrees(*kind, &pretty), Ok(true), "{pretty}");
        }
    }

    #[test]
    fn damaged_objects_read_as_serde_reads_them_or_are_left_to_it() {
        // Every fixture of distinct text, damaged in many ways: the direct reader either
        // gives serde's result or leaves the object to serde (whose error names the field).
        let mut fixtures = fixtures();
        fixtures.sort_by(|a, b| a.1.cmp(&b.1));
        fixtures.dedup_by(|a, b| a.1 == b.1);
        let replacements: [&str; 24] = [
            "\"",
            "\\",
            "1",
            "-",
            ".",
            "e",
            "n",
            "{",
            "[",
            "]",
            "}",
            ",",
            ":",
            " ",
            "\u{1}",
            "null",
            "true",
            "\"x\"",
            "1.0",
            "-0",
            "1e2",
            "99999999999999999999",
            "[]",
            "{}",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let (mut direct, mut left) = (0, 0);
        let mut failures = Vec::new();
        for (kind, raw) in &fixtures {
            for _ in 0..12 {
                let at = next(raw.len());
                let at = (0..=at)
                    .rev()
                    .find(|&i| raw.is_char_boundary(i))
                    .unwrap_or(0);
                let damaged = match next(4) {
                    0 => raw[..at].to_owned(),
                    1 => {
                        let end = (at + 1..=raw.len())
                            .find(|&i| raw.is_char_boundary(i))
                            .unwrap_or(raw.len());
                        let with = replacements[next(replacements.len())];
                        format!("{}{with}{}", &raw[..at], &raw[end..])
                    }
                    2 => {
                        // A value replaced: after a colon, up to the next comma or brace.
                        let Some(colon) = raw[at..].find(':').map(|i| at + i + 1) else {
                            continue;
                        };
                        let end = raw[colon..]
                            .find([',', '}'])
                            .map_or(raw.len(), |i| colon + i);
                        let with = replacements[next(replacements.len())];
                        format!("{}{with}{}", &raw[..colon], &raw[end..])
                    }
                    _ => {
                        // A key repeated: the member after an opening brace, again.
                        let Some(open) = raw[at..].find("{\"").map(|i| at + i + 1) else {
                            continue;
                        };
                        let end = raw[open..].find([',', '}']).map_or(raw.len(), |i| open + i);
                        let member = &raw[open..end];
                        format!("{}{member},{}", &raw[..open], &raw[open..])
                    }
                };
                match agrees(*kind, &damaged) {
                    Ok(true) => direct += 1,
                    Ok(false) => left += 1,
                    Err(problem) => failures.push(problem),
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        // Both outcomes happen, so the test checks something either way.
        assert!(
            direct > 100 && left > 100,
            "{direct} read directly, {left} left"
        );
    }

    #[test]
    fn deep_nesting_is_left_to_serde() {
        // Far deeper than a stack could recurse: left to serde, which skips an unknown value
        // without recursing, and reads the object.
        let deep = format!(
            r#"{{"spec":{{"x":{}1{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(workload(Kind::Pod, &deep), None);
        assert!(Object::parse(Kind::Pod, &deep).is_ok());
        // Within the limit, read directly.
        let nested = format!(
            r#"{{"spec":{{"x":{}1{}}}}}"#,
            "[".repeat(60),
            "]".repeat(60)
        );
        assert_eq!(agrees(Kind::Pod, &nested), Ok(true));
    }

    #[test]
    fn escapes_numbers_and_nulls_read_as_serde_reads_them() {
        for raw in [
            r#"{"metadata":{"name":"a\"b","labels":{"k":"\u00e9\n"}},"spec":{"containers":[{"name":"x","image":"i"}]}}"#,
            r#"{"spec":{"hostNetwork":null,"securityContext":null,"containers":null,"volumes":[{"name":"v","hostPath":null}]}}"#,
            r#"{"spec":{"containers":[{"resources":{"limits":{"cpu":1,"memory":"1Gi","x":-2}},"ports":[{"hostPort":80,"containerPort":null}]}]}}"#,
            r#"{"spec":{"volumes":[{"name":"a","name":"b","hostPath":{"path":"/x"},"configMap":{"name":"c"}}]}}"#,
            r#"{"spec":{"volumes":[{"name":"a","image":{"reference":"evil.example.com/x:1","pullPolicy":"Always"}},{"name":"b","image":null},{"name":"c","image":{}}]}}"#,
            r#"{"spec":{"unknown":[1,-2.5e3,true,false,null,{"a":"\ud83d\ude00"}],"os":{"name":"windows"}}}"#,
        ] {
            assert!(agrees(Kind::Pod, raw).is_ok(), "{raw}");
        }
        // A workload's levels above the pod may be null or missing: an empty pod, still at
        // the workload's own field paths.
        for (kind, raw) in [
            (Kind::CronJob, r#"{"spec":null}"#),
            (Kind::CronJob, r#"{"spec":{"jobTemplate":null}}"#),
            (
                Kind::CronJob,
                r#"{"spec":{"jobTemplate":{"spec":{"template":null}}}}"#,
            ),
            (
                Kind::CronJob,
                r#"{"metadata":null,"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"i"}]}}}}}}"#,
            ),
            (Kind::Deployment, r#"{"spec":{"template":null}}"#),
            (Kind::Job, r#"{"metadata":{"name":"j"},"spec":null}"#),
        ] {
            assert_eq!(agrees(kind, raw), Ok(true), "{raw}");
        }
        // An image volume's reference is read by both readers (a reader that skipped it would
        // let the image past every image rule).
        let raw =
            r#"{"spec":{"volumes":[{"name":"a","image":{"reference":"evil.example.com/x:1"}}]}}"#;
        assert_eq!(agrees(Kind::Pod, raw), Ok(true));
        let direct = workload(Kind::Pod, raw).unwrap();
        assert_eq!(
            direct.pod.spec.volumes[0].image.as_deref(),
            Some("evil.example.com/x:1")
        );
        // Read directly where nothing is unusual.
        assert_eq!(
            agrees(
                Kind::Pod,
                r#"{"spec":{"volumes":[{"name":"a","name":"b"}]}}"#
            ),
            Ok(true)
        );
        // Left to serde: a float where an integer goes, a repeated field, an escaped key.
        for raw in [
            r#"{"spec":{"containers":[{"ports":[{"hostPort":80.0}]}]}}"#,
            r#"{"spec":{"hostPID":true,"hostPID":false}}"#,
            r#"{"spec":{"host\u0050ID":true}}"#,
            r#"{"spec":{"containers":[{"resources":{"limits":{"cpu":1.5}}}]}}"#,
        ] {
            assert_eq!(agrees(Kind::Pod, raw), Ok(false), "{raw}");
        }
    }
}
