//! Builders for the controls' unit tests. Every check in them runs twice: as
//! `controls::check` (whose findings say which container they concern) and through
//! `engine::evaluate`, the webhook's path, on the pod's JSON under one block policy of the same
//! rules; the two must give the same findings in the same order.

use std::{ops::Deref, sync::Arc};

use serde_json::{Value, json};

use crate::k8s::{PodFinding, PodTemplate, test_pod};
use crate::{
    Action, AdmissionInput, Finding, Kind, Operation, Policy, ResourceRules, RuleFingerprints,
    Rules, ScanIndex,
};

/// A test Pod: its JSON as the API server sends it, and its pod as the webhook reads it.
pub(super) struct TestPod {
    raw: String,
    pod: PodTemplate,
}

impl Deref for TestPod {
    type Target = PodTemplate;
    fn deref(&self) -> &PodTemplate {
        &self.pod
    }
}

/// A Pod with this spec.
pub(super) fn mk_pod(spec: Value) -> TestPod {
    mk_annotated(spec, json!({}))
}

/// A Pod with this spec and these annotations.
pub(super) fn mk_annotated(spec: Value, annotations: Value) -> TestPod {
    let object = json!({"metadata": {"name": "p", "annotations": annotations}, "spec": spec});
    TestPod {
        raw: object.to_string(),
        pod: test_pod(Kind::Pod, &object),
    }
}

/// A pod with one container `app` whose security context is this.
pub(super) fn with_context(security_context: Value) -> TestPod {
    mk_pod(json!({"containers": [{"name": "app", "securityContext": security_context}]}))
}

/// The findings of `rules` on `pod`, after checking that `engine::evaluate` finds the same.
pub(super) fn check(rules: &ResourceRules, pod: &TestPod) -> Vec<PodFinding> {
    let direct = super::check(rules, pod);
    let policy = Policy {
        name: "controls".into(),
        description: String::new(),
        enabled: true,
        action: Action::Block,
        scope: Default::default(),
        whitelist: Default::default(),
        rules: Rules {
            image: None,
            resource: Some(Arc::new(rules.clone())),
        },
        revision: 1,
        fingerprints: RuleFingerprints::default(),
    };
    let input = AdmissionInput {
        operation: Operation::Create,
        kind: Kind::Pod.as_str(),
        sub_resource: "",
        namespace: "default",
        name: "p",
        object: Some(&pod.raw),
        old_object: None,
    };
    let decision = crate::evaluate(&input, "c", [&policy], &ScanIndex::default());
    let evaluated: Vec<&Finding> = decision.findings.iter().map(|f| &f.finding).collect();
    let checked: Vec<&Finding> = direct.iter().map(|f| &f.finding).collect();
    assert_eq!(
        evaluated, checked,
        "engine::evaluate and controls::check differ"
    );
    direct
}

/// `rule path` of each finding, for compact assertions.
pub(super) fn paths(findings: &[PodFinding]) -> Vec<String> {
    findings
        .iter()
        .map(|f| format!("{} {}", f.finding.rule, f.finding.path))
        .collect()
}

/// The values of the findings.
pub(super) fn values(findings: &[PodFinding]) -> Vec<&str> {
    findings.iter().map(|f| f.finding.value.as_str()).collect()
}
