//! Image scan reports (Trivy, Grype, and our native format for malware and other scanners)
//! read into the normalised model of `portcullis_policy::scan` (`ImageScan`). Pure: parsers
//! take the report's bytes; reading files and talking to registries belong to the callers.
//! Every rejection names its reason (`ScanError`).

mod document;
pub use document::MAX_FINDINGS;
mod error;
pub mod grype;
mod identity;
pub mod native;
mod severity;
mod timestamp;
pub mod trivy;

use std::fmt;

pub use error::ScanError;
// The scan model and what the parsers use of the policy model, named at the crate root as
// the parsers were written (`super::ImageScan`, `crate::Severity`).
#[allow(unused_imports)]
use portcullis_policy::{Severity, reference, scan::*};

/// A default for `--max-report-bytes`: Trivy reports of large images with every package
/// listed stay well below it.
pub const DEFAULT_MAX_REPORT_BYTES: usize = 128 * 1024 * 1024;

/// Limits above this are lowered to it: summaries address ids with 32-bit offsets.
pub const MAX_REPORT_BYTES_CEILING: usize = u32::MAX as usize;

/// The report formats we read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportFormat {
    /// `trivy image --format json`, SchemaVersion 2.
    Trivy,
    /// `grype <image> -o json`.
    Grype,
    /// `portcullis-scan/v1`, documented in `native` and `docs/native-scan-format.md`.
    Native,
}

impl ReportFormat {
    /// Every format, in the order `NAMES` lists them.
    pub const ALL: [Self; 3] = [Self::Trivy, Self::Grype, Self::Native];

    /// The names `from_name` accepts, for "expected one of ..." messages.
    pub const NAMES: [&'static str; 3] = ["trivy", "grype", "native"];

    /// The name used on command lines and in APIs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Trivy => "trivy",
            Self::Grype => "grype",
            Self::Native => "native",
        }
    }

    /// Looks up a name from a command line or API field, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// What a report of this format must hold at its top level, for error messages.
    pub(crate) const fn markers(self) -> &'static str {
        match self {
            Self::Trivy => {
                "a JSON object with \"SchemaVersion\": 2, \"ArtifactName\" and \"Results\""
            }
            Self::Grype => "a JSON object with \"matches\", \"source\" and \"descriptor\"",
            Self::Native => "a JSON object with \"format\": \"portcullis-scan/v1\"",
        }
    }
}

/// The tool's name as operators know it, for messages.
impl fmt::Display for ReportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trivy => "Trivy",
            Self::Grype => "Grype",
            Self::Native => "Portcullis native",
        })
    }
}

/// Reads a report of `format`. The size limit is checked before anything else, so an
/// oversized upload is refused at the cost of its length alone. `image_override` (any image
/// reference) names the image instead of the report, and is required when the report names
/// none (a Dockerfile, repository or archive scan).
pub fn parse_report(
    format: ReportFormat,
    bytes: &[u8],
    image_override: Option<&str>,
    max_bytes: usize,
) -> Result<ImageScan, ScanError> {
    let limit = max_bytes.min(MAX_REPORT_BYTES_CEILING);
    if bytes.len() > limit {
        return Err(ScanError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    match format {
        ReportFormat::Trivy => trivy::parse(bytes, image_override),
        ReportFormat::Grype => grype::parse(bytes, image_override),
        ReportFormat::Native => native::parse(bytes, image_override),
    }
}

/// Guesses the format from the report's top-level keys, for a CLI that was not told; `None`
/// when the bytes are no JSON object of a tool we know.
pub fn detect_format(bytes: &[u8]) -> Option<ReportFormat> {
    document::detect(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for format in ReportFormat::ALL {
            assert_eq!(ReportFormat::from_name(format.name()), Some(format));
        }
        assert_eq!(ReportFormat::from_name("Trivy"), Some(ReportFormat::Trivy));
        assert_eq!(ReportFormat::from_name("sarif"), None);
        assert_eq!(
            ReportFormat::NAMES,
            ReportFormat::ALL.map(ReportFormat::name)
        );
    }

    #[test]
    fn the_size_limit_is_checked_first() {
        let error = parse_report(ReportFormat::Trivy, b"not even json", None, 4).unwrap_err();
        assert_eq!(
            error.to_string(),
            "report is 13 bytes; the limit is 4 bytes (--max-report-bytes)"
        );
        assert_eq!(error, ScanError::TooLarge { size: 13, limit: 4 });
        let at_limit = parse_report(ReportFormat::Trivy, b"{}", None, 2).unwrap_err();
        assert!(
            !matches!(at_limit, ScanError::TooLarge { .. }),
            "{at_limit:?}"
        );
    }
}
