//! What the fuzz targets share.

use portcullis_engine::ScanIndex;
use portcullis_scan::{ReportFormat, parse_report};

/// A scan report of `format` as the control plane imports it (and `portcullis test --scan`
/// reads it): refused with a reason or accepted, never a panic; an accepted report indexes,
/// and every digest it names finds it.
pub fn scan_report(format: ReportFormat, data: &[u8]) {
    let Ok(scan) = parse_report(format, data, None, 1 << 20) else {
        return;
    };
    let mut index = ScanIndex::default();
    index.insert(&scan);
    for digest in &scan.image.digests {
        assert!(
            index
                .lookup(&format!("registry.example.com/x@{digest}"))
                .is_some()
        );
    }
}
