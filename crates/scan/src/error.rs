//! Why a scan report cannot be imported. Each variant names the problem in words an operator
//! can act on; text quoted from a report is bounded, so a hostile report cannot inflate a
//! message.

use super::{MAX_ID_LEN, ReportFormat, TextTooLong};
use crate::reference::ReferenceError;

/// Longest piece of report text quoted in a message.
const MAX_QUOTED: usize = 120;

/// Why a report was rejected. Nothing of a rejected report is imported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// Checked before any parsing, so an oversized upload costs no more than its bytes.
    #[error("report is {size} bytes; the limit is {limit} bytes (--max-report-bytes)")]
    TooLarge { size: usize, limit: usize },
    /// Not well-formed JSON (or not UTF-8); `line` and `column` are 1-based.
    #[error("report is not JSON: line {line}, column {column}: {reason}")]
    NotJson {
        line: usize,
        column: usize,
        reason: String,
    },
    /// Well-formed JSON of another tool (`found`), or of no tool we know (`None`).
    #[error("{}", wrong_tool(*expected, *found))]
    WrongTool {
        expected: ReportFormat,
        found: Option<ReportFormat>,
    },
    /// The right tool, a schema version we do not read (`version` as written, in JSON).
    #[error("unsupported {format} report: {field} is {version}; only {supported} is supported")]
    UnsupportedSchema {
        format: ReportFormat,
        field: &'static str,
        version: String,
        supported: &'static str,
    },
    /// The report does not say which image it describes (a Dockerfile or repository scan, a
    /// local archive): the caller must name it.
    #[error("no image identity: the report is for {artifact}; name the image it describes")]
    NoImageIdentity { artifact: String },
    /// An image reference in the report (or the override) is not one a runtime would accept.
    #[error("{field}: invalid image reference: {source}")]
    InvalidImage {
        field: String,
        source: ReferenceError,
    },
    /// The report has the tool's shape but a field is wrong; `path` is the JSON path.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl ScanError {
    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

fn wrong_tool(expected: ReportFormat, found: Option<ReportFormat>) -> String {
    match found {
        Some(found) => format!("this looks like a {found} report, not a {expected} report"),
        None => format!(
            "this does not look like a {expected} report: expected {}",
            expected.markers()
        ),
    }
}

/// `text` in quotes, cut to `MAX_QUOTED` characters.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// A scanner's keyword (`repository`, `directory`) as is, anything else quoted and bounded.
pub(crate) fn keyword(text: &str) -> String {
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if !text.is_empty() && text.len() <= 32 && text.bytes().all(plain) {
        text.to_owned()
    } else {
        quoted(text)
    }
}

/// Rejects an empty or oversized id; `path` names the field in the report.
pub(crate) fn check_id(path: impl FnOnce() -> String, id: &str) -> Result<(), ScanError> {
    if id.is_empty() {
        return Err(ScanError::invalid(path(), "empty id"));
    }
    if id.len() > MAX_ID_LEN {
        let reason = format!("id is {} bytes; at most {MAX_ID_LEN} are allowed", id.len());
        return Err(ScanError::invalid(path(), reason));
    }
    Ok(())
}

/// The error of a report entry at `path` whose texts are too long to hold.
pub(crate) fn too_long(_: TextTooLong, path: String) -> ScanError {
    ScanError::invalid(path, "its texts add up to more than 4 GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_bounded() {
        assert_eq!(quoted("a\"b"), r#""a\"b""#);
        let long = quoted(&"é".repeat(1000));
        assert_eq!(long.chars().count(), MAX_QUOTED + 5);
        assert_eq!(keyword("container_image"), "container_image");
        assert_eq!(keyword("Dir ectory"), r#""Dir ectory""#);
        assert_eq!(keyword(""), r#""""#);
    }

    #[test]
    fn wrong_tool_names_both_tools() {
        let error = ScanError::WrongTool {
            expected: ReportFormat::Trivy,
            found: Some(ReportFormat::Grype),
        };
        assert_eq!(
            error.to_string(),
            "this looks like a Grype report, not a Trivy report"
        );
    }

    #[test]
    fn ids_must_be_short_and_non_empty() {
        let path = || "vulnerabilities[0].id".to_owned();
        assert!(check_id(path, "CVE-2024-1").is_ok());
        let empty = check_id(path, "").unwrap_err();
        assert_eq!(empty.to_string(), "vulnerabilities[0].id: empty id");
        let long = check_id(path, &"x".repeat(MAX_ID_LEN + 1)).unwrap_err();
        assert!(long.to_string().contains("at most 256"), "{long}");
    }
}
