//! Builders for the controls' unit tests.

use serde_json::{Value, json};

use crate::Kind;
use crate::k8s::{PodFinding, PodTemplate, pod_template};

/// A Pod with this spec.
pub(super) fn mk_pod(spec: Value) -> PodTemplate {
    mk_annotated(spec, json!({}))
}

/// A Pod with this spec and these annotations.
pub(super) fn mk_annotated(spec: Value, annotations: Value) -> PodTemplate {
    let object = json!({"metadata": {"name": "p", "annotations": annotations}, "spec": spec});
    pod_template(Kind::Pod, &object).unwrap().unwrap().pod
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
