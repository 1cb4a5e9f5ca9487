//! A Grype report as the control plane imports it (and `portcullis test --scan` reads it):
//! refused with a reason or accepted, never a panic; an accepted report indexes and looks up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{
    engine::ScanIndex,
    scan::{ReportFormat, parse_report},
};

fuzz_target!(|data: &[u8]| {
    let Ok(scan) = parse_report(ReportFormat::Grype, data, None, 1 << 20) else {
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
});
