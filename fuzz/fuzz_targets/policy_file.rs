//! A policy file as operators write it (YAML or JSON): read and validated, it must be refused
//! with a located error or accepted, never panic, and what is accepted must survive the trip
//! through its normalised proto unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{Policy, parse_policy_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(documents) = parse_policy_documents(text) else {
        return;
    };
    for document in &documents {
        if let Ok(policy) = Policy::try_from(document) {
            let normalised = portcullis_proto::v1::Policy::from(&policy);
            let again = Policy::try_from(&normalised).expect("a normalised policy is valid");
            assert_eq!(policy, again, "normalising changed the policy");
        }
    }
});
