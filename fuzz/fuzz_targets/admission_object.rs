//! Differential: an admitted object's JSON (seeded with the objects of AdmissionReviews
//! captured from kube-apiserver), as the engine reads it for every kind. The webhook's direct
//! reader must read what serde reads whenever it reads the object at all, and the decision of
//! `engine::evaluate` (the production path, with policies that read every part of a pod and
//! a Service) must equal the decision on serde's reading alone. A difference would be an
//! admission bypass on the hot path.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{Kind, Policy};
use portcullis_engine::{applicability::Target, self as engine, AdmissionInput, Object, Operation, Outcome, ScanIndex, k8s::direct_reader_agrees};

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
    let scans = ScanIndex::default();
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
        let production = engine::evaluate(&input, "fuzz", policies(), &scans);
        match Object::parse_with_serde(*kind, raw) {
            Ok(object) => {
                let target = Target {
                    cluster: "fuzz",
                    namespace: "default",
                    kind: *kind,
                    name: "fuzz",
                    labels: &object.metadata().labels,
                };
                let by_serde = engine::evaluate_object(&object, &target, policies(), &scans);
                assert_eq!(production, by_serde, "decisions differ on {kind:?} {raw}");
            }
            Err(error) => assert_eq!(
                production.outcome,
                Outcome::Invalid(error.to_string()),
                "{kind:?} {raw}"
            ),
        }
    }
});
