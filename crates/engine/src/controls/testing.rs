//! Builders for the controls' unit tests.

use serde_json::{Value, json};

use crate::Kind;
use crate::k8s::{PodFinding, PodTemplate, test_pod};

/// A Pod with this spec.
pub(super) fn mk_pod(spec: Value) -> PodTemplate {
    mk_annotated(spec, json!({}))
}

/// A Pod with this spec and these annotations, read as the webhook reads it.
pub(super) fn mk_annotated(spec: Value, annotations: Value) -> PodTemplate {
    let object = json!({"metadata": {"name": "p", "annotations": annotations}, "spec": spec});
    test_pod(Kind::Pod, &object)
}

/// A pod with one container `app` whose security context is this.
pub(super) fn with_context(security_context: Value) -> PodTemplate {
    mk_pod(json!({"containers": [{"name": "app", "securityContext": security_context}]}))
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
