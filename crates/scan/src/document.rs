//! Reading a report before its tool-specific shape: text encoding, JSON syntax errors with
//! their position, and recognising which tool wrote a document, so that a Grype report given
//! as Trivy is called that instead of "missing field". The typed parse runs once; the
//! document is probed again only to explain a failure.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::quoted;
use super::{ReportFormat, ScanError};

/// Trivy's only supported `SchemaVersion`.
pub(crate) const TRIVY_SCHEMA: u64 = 2;
/// The `format` of native reports this version reads.
pub(crate) const NATIVE_FORMAT: &str = "portcullis-scan/v1";
const NATIVE_PREFIX: &str = "portcullis-scan/";

/// Findings one report may list in all (vulnerabilities, misconfigurations, secrets, matches,
/// malicious files, baseline failures). Real images have at most a few thousand; each finding
/// costs memory at import and, through its id, in every agent's snapshot, so a hostile report
/// of a million is refused while it is read, not after.
pub const MAX_FINDINGS: usize = 100_000;

thread_local! {
    /// Findings the report being read may still list (see `Capped`).
    static FINDINGS_LEFT: Cell<usize> = const { Cell::new(MAX_FINDINGS) };
}

/// A list of findings that counts against `MAX_FINDINGS` as it is read.
pub(crate) struct Capped<T>(pub Vec<T>);

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Capped<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CappedVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for CappedVisitor<T> {
            type Value = Capped<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Capped<T>, A::Error> {
                let mut items = Vec::new();
                loop {
                    let left = FINDINGS_LEFT.get();
                    if left == 0 {
                        // Refused only if there is one more.
                        if seq.next_element::<IgnoredAny>()?.is_some() {
                            return Err(serde::de::Error::custom(format!(
                                "the report lists more than {MAX_FINDINGS} findings; at most \
                                 {MAX_FINDINGS} are read from one report"
                            )));
                        }
                        return Ok(Capped(items));
                    }
                    match seq.next_element()? {
                        Some(item) => {
                            FINDINGS_LEFT.set(left - 1);
                            items.push(item);
                        }
                        None => return Ok(Capped(items)),
                    }
                }
            }
        }

        deserializer.deserialize_seq(CappedVisitor(PhantomData))
    }
}

/// `serde_json::from_slice` with the whole findings budget.
fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> serde_json::Result<T> {
    FINDINGS_LEFT.set(MAX_FINDINGS);
    serde_json::from_slice(bytes)
}

/// Deserialises a report of format `expected`, turning every failure into the error that
/// names the real problem (not JSON, another tool, another schema version, a bad field).
pub(crate) fn parse<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    expected: ReportFormat,
) -> Result<T, ScanError> {
    let bytes = utf8_text(bytes)?;
    if first_byte(bytes) != Some(b'{') {
        return Err(not_an_object(bytes, expected));
    }
    match from_slice::<T>(bytes) {
        Ok(report) => Ok(report),
        Err(error) if error.is_syntax() || error.is_eof() => Err(not_json(&error)),
        Err(_) => Err(mismatch(bytes, expected).unwrap_or_else(|| field_error::<T>(bytes))),
    }
}

/// Explains why a document that parsed (or half parsed) is not a report of `expected`:
/// malformed JSON, another tool, or another schema version. `None` when it has the right
/// shape and version, so the field-level error stands.
pub(crate) fn mismatch(bytes: &[u8], expected: ReportFormat) -> Option<ScanError> {
    let bytes = match utf8_text(bytes) {
        Ok(bytes) => bytes,
        Err(error) => return Some(error),
    };
    let probe = match serde_json::from_slice::<Probe>(bytes) {
        Ok(probe) => probe,
        Err(error) if error.is_syntax() || error.is_eof() => return Some(not_json(&error)),
        // Duplicate or odd top-level keys: no tool we know writes those.
        Err(_) => Probe::default(),
    };
    match probe.format() {
        Some(found) if found == expected => probe.version_error(expected),
        found => Some(ScanError::WrongTool { expected, found }),
    }
}

/// Recognises the tool that wrote a report from its top-level keys.
pub(crate) fn detect(bytes: &[u8]) -> Option<ReportFormat> {
    let bytes = utf8_text(bytes).ok()?;
    if first_byte(bytes) != Some(b'{') {
        return None;
    }
    serde_json::from_slice::<Probe>(bytes).ok()?.format()
}

/// The top-level keys that tell tools apart; every value but two small ones is skipped.
#[derive(Debug, Default, Deserialize)]
struct Probe {
    #[serde(rename = "SchemaVersion")]
    schema_version: Option<serde_json::Value>,
    #[serde(rename = "ArtifactName")]
    artifact_name: Option<IgnoredAny>,
    #[serde(rename = "Results")]
    results: Option<IgnoredAny>,
    matches: Option<IgnoredAny>,
    descriptor: Option<IgnoredAny>,
    source: Option<IgnoredAny>,
    format: Option<serde_json::Value>,
}

impl Probe {
    fn format(&self) -> Option<ReportFormat> {
        let native = self
            .format
            .as_ref()
            .and_then(|f| f.as_str())
            .is_some_and(|f| f.starts_with(NATIVE_PREFIX));
        if native {
            Some(ReportFormat::Native)
        } else if self.schema_version.is_some()
            || (self.artifact_name.is_some() && self.results.is_some())
        {
            Some(ReportFormat::Trivy)
        } else if self.matches.is_some() && (self.descriptor.is_some() || self.source.is_some()) {
            Some(ReportFormat::Grype)
        } else {
            None
        }
    }

    fn version_error(&self, format: ReportFormat) -> Option<ScanError> {
        let unsupported = |field, version: Option<&serde_json::Value>, supported| {
            Some(ScanError::UnsupportedSchema {
                format,
                field,
                version: version.map_or_else(|| "missing".to_owned(), json_text),
                supported,
            })
        };
        match format {
            ReportFormat::Trivy => {
                let version = self.schema_version.as_ref();
                if version.and_then(serde_json::Value::as_u64) == Some(TRIVY_SCHEMA) {
                    return None;
                }
                unsupported("SchemaVersion", version, "2")
            }
            ReportFormat::Native => {
                let version = self.format.as_ref();
                if version.and_then(serde_json::Value::as_str) == Some(NATIVE_FORMAT) {
                    return None;
                }
                unsupported("format", version, "\"portcullis-scan/v1\"")
            }
            ReportFormat::Grype => None,
        }
    }
}

/// A value as JSON text, bounded.
fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => quoted(s),
        other => {
            let text = other.to_string();
            match text.char_indices().nth(40) {
                Some((end, _)) => format!("{}...", &text[..end]),
                None => text,
            }
        }
    }
}

/// The document without a UTF-8 byte order mark; UTF-16 (what PowerShell's `>` writes) is
/// named as such rather than reported as a syntax error at column 1.
fn utf8_text(bytes: &[u8]) -> Result<&[u8], ScanError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(ScanError::NotJson {
            line: 1,
            column: 1,
            reason: "the report is UTF-16 text; convert it to UTF-8".to_owned(),
        });
    }
    Ok(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
}

fn first_byte(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Why a document that does not start with `{` is no report: bad JSON, or the wrong value.
fn not_an_object(bytes: &[u8], expected: ReportFormat) -> ScanError {
    if let Err(error) = serde_json::from_slice::<IgnoredAny>(bytes) {
        return not_json(&error);
    }
    if expected == ReportFormat::Trivy && first_byte(bytes) == Some(b'[') {
        return ScanError::UnsupportedSchema {
            format: expected,
            field: "SchemaVersion",
            version: "missing (a top-level array, as Trivy wrote before 0.20)".to_owned(),
            supported: "2",
        };
    }
    ScanError::WrongTool {
        expected,
        found: None,
    }
}

fn not_json(error: &serde_json::Error) -> ScanError {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let reason = text.strip_suffix(&position).unwrap_or(&text).to_owned();
    ScanError::NotJson {
        line: error.line(),
        column: error.column(),
        reason,
    }
}

/// Parses again, tracking the path, to name the field that does not fit.
fn field_error<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> ScanError {
    FINDINGS_LEFT.set(MAX_FINDINGS);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(_) => ScanError::invalid(".", "the report does not fit its format"),
        Err(error) => ScanError::invalid(error.path().to_string(), error.inner().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect_str(text: &str) -> Option<ReportFormat> {
        detect(text.as_bytes())
    }

    #[test]
    fn tools_are_recognised_by_their_top_level_keys() {
        assert_eq!(
            detect_str(r#"{"SchemaVersion": 2}"#),
            Some(ReportFormat::Trivy)
        );
        assert_eq!(
            detect_str(r#"{"ArtifactName": "x", "Results": []}"#),
            Some(ReportFormat::Trivy)
        );
        assert_eq!(
            detect_str(r#"{"matches": [], "descriptor": {"name": "grype"}}"#),
            Some(ReportFormat::Grype)
        );
        assert_eq!(
            detect_str(r#"{"format": "portcullis-scan/v9"}"#),
            Some(ReportFormat::Native)
        );
        assert_eq!(detect_str(r#"{"matches": []}"#), None);
        assert_eq!(detect_str(r#"{"format": "cyclonedx"}"#), None);
        assert_eq!(detect_str("[]"), None);
        assert_eq!(detect_str("{"), None);
        assert_eq!(
            detect_str("\u{feff}{\"SchemaVersion\": 2}"),
            Some(ReportFormat::Trivy)
        );
    }

    #[test]
    fn syntax_errors_carry_their_position_once() {
        let error = mismatch(b"{\n  \"a\": 1 2\n}", ReportFormat::Trivy).unwrap();
        let ScanError::NotJson {
            line,
            column,
            reason,
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!((*line, *column), (2, 10));
        assert_eq!(reason, "expected `,` or `}`");
        assert_eq!(
            error.to_string(),
            "report is not JSON: line 2, column 10: expected `,` or `}`"
        );
    }

    #[test]
    fn utf16_reports_are_named() {
        let error = parse::<IgnoredAny>(b"\xFF\xFE{\0}\0", ReportFormat::Grype).unwrap_err();
        assert!(error.to_string().contains("UTF-16"), "{error}");
    }

    #[test]
    fn non_objects_are_not_reports() {
        let error = parse::<IgnoredAny>(b"42", ReportFormat::Native).unwrap_err();
        assert!(
            matches!(error, ScanError::WrongTool { found: None, .. }),
            "{error:?}"
        );
        let legacy = parse::<IgnoredAny>(b"[{\"Target\": \"x\"}]", ReportFormat::Trivy);
        assert!(
            matches!(legacy, Err(ScanError::UnsupportedSchema { .. })),
            "{legacy:?}"
        );
        let error = parse::<IgnoredAny>(b"", ReportFormat::Trivy).unwrap_err();
        assert!(matches!(error, ScanError::NotJson { .. }), "{error:?}");
    }

    #[test]
    fn long_versions_are_bounded() {
        let text = format!(r#"{{"SchemaVersion": [{}]}}"#, "1,".repeat(1000) + "1");
        let error = mismatch(text.as_bytes(), ReportFormat::Trivy).unwrap();
        assert!(error.to_string().len() < 200, "{error}");
    }
}
