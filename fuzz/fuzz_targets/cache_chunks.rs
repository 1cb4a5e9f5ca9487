//! The agent's scan chunk file as read back from disk: damaged bytes are refused, never
//! served as scans and never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_engine::ScanIndex;

fuzz_target!(|data: &[u8]| {
    let mut scans = ScanIndex::default();
    let _ = portcullis_agent::cache::read_scan_chunks(data, &mut scans);
});
