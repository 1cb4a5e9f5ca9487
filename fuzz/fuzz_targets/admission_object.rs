//! An admitted object's JSON, as the engine reads it for every workload kind: the direct
//! reader must agree with serde whenever it reads the object, and deciding it (with policies
//! that read every part of a pod) must neither panic nor misbehave.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{
    Kind, Policy,
    engine::{self, AdmissionInput, Operation, ScanIndex},
    k8s::direct_reader_agrees,
};

const POLICIES: &str = include_str!("../policies.yaml");

fn policies() -> &'static [Policy] {
    static POLICIES_PARSED: OnceLock<Vec<Policy>> = OnceLock::new();
    POLICIES_PARSED.get_or_init(|| {
        portcullis_policy::parse_policy_documents(POLICIES)
            .unwrap()
            .iter()
            .map(|p| Policy::try_from(p).unwrap())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    for kind in Kind::ALL {
        if let Err(difference) = direct_reader_agrees(*kind, raw) {
            panic!("the direct reader and serde disagree: {difference}");
        }
        let input = AdmissionInput {
            operation: Operation::Create,
            kind: kind.as_str(),
            sub_resource: "",
            namespace: "default",
            name: "fuzz",
            object: Some(raw),
            old_object: None,
        };
        let _ = engine::evaluate(&input, "fuzz", policies(), &ScanIndex::default());
    }
});
