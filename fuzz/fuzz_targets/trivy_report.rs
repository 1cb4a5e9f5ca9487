//! A Trivy report, read as every report is (`portcullis_fuzz::scan_report`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_scan::ReportFormat;

fuzz_target!(|data: &[u8]| portcullis_fuzz::scan_report(ReportFormat::Trivy, data));
