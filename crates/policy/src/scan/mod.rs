//! The image scan model: one normalised `ImageScan` per report (Trivy, Grype and our native
//! format, read by `portcullis-scan`), and the compact per-image `ScanSummary` the agents
//! evaluate.

#[cfg(feature = "proto")]
mod dictionary;
mod model;
mod summary;
#[cfg(feature = "proto")]
mod summary_proto;

#[cfg(feature = "proto")]
pub use dictionary::VulnerabilityDictionary;
pub use model::{
    BaselineFailure, BaselineKind, ImageIdentity, ImageScan, MAX_ID_LEN, MaliciousFile, Os,
    Scanner, SeverityCounts, TextTooLong, Vulnerability, VulnerabilityText,
};
pub use summary::{ScanSummary, SummaryVulnerability, interner};
#[cfg(feature = "proto")]
pub use summary_proto::{
    counts_to_proto, identity_from_proto, identity_to_proto, summary_of_stored,
};
