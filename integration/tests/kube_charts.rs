//! Both Helm charts, rendered by the Helm library with default and non-default values, applied
//! to the real kube-apiserver v1.28.7 by server-side apply with strict field validation
//! (issue #17). Needs
//! envtest's `TEST_ASSET_*` variables (see `crates/testkit/src/kube/mod.rs`; `.ci/run` sets
//! them). One API server per test binary; the tests take turns, since a webhook configuration
//! is cluster-wide.

use portcullis_testkit::kube::objects::{namespace, stderr};
use portcullis_testkit::kube::{ApiServer, render_chart, serial};
use serde_json::json;

#[test]
fn both_charts_are_accepted_by_server_side_apply_with_strict_validation() {
    let _serial = serial();
    let Some(api) = ApiServer::shared() else {
        return;
    };
    let helm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/ci");
    let required = json!({
        "clusterName": "prod-eu-1",
        "controlPlane": {"address": "https://portcullis-control-plane.portcullis-system.svc:8443"},
    });
    let cases = [
        (
            "portcullis-agent",
            "portcullis-agent",
            None,
            required.clone(),
        ),
        (
            "portcullis-agent",
            "edge",
            Some(helm.join("agent-nondefault.yaml")),
            json!({}),
        ),
        (
            "portcullis-agent",
            "on-the-node",
            None,
            json!({"clusterName": "node", "controlPlane": {"address": "https://cp:8443"},
                "hostNetwork": true, "webhook": {"port": 10443}, "adminPort": 10444}),
        ),
        (
            "portcullis-control-plane",
            "portcullis-control-plane",
            None,
            json!({}),
        ),
        (
            "portcullis-control-plane",
            "fleet",
            Some(helm.join("control-plane-nondefault.yaml")),
            json!({}),
        ),
        // PostgreSQL: a Deployment of replicas and its PodDisruptionBudget.
        (
            "portcullis-control-plane",
            "replicated",
            Some(helm.join("control-plane-postgres.yaml")),
            json!({}),
        ),
    ];
    let ns = "portcullis-system";
    if api.get("namespace", None, ns).is_none() {
        namespace(api, ns);
    }
    // The non-default values ask for a ServiceMonitor: the Prometheus Operator's CRD, in
    // brief (its schema left open), as a cluster running the operator has it.
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                "plural": "servicemonitors", "singular": "servicemonitor"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]},
    });
    api.apply(&[crd]);
    let established = api.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=60s",
    ]);
    assert!(established.status.success(), "{}", stderr(&established));
    for (chart, release, values_file, values) in cases {
        let objects = render_chart(chart, release, ns, values_file.as_deref(), &values);
        assert!(!objects.is_empty(), "{chart} {release}: no objects");
        api.apply(&objects);
        for object in &objects {
            let kind = object["kind"].as_str().unwrap();
            let name = object["metadata"]["name"].as_str().unwrap();
            let namespace = object["metadata"]["namespace"].as_str();
            assert!(
                api.get(kind, namespace, name).is_some(),
                "{chart} {release}: {kind}/{name} not stored"
            );
        }
    }
}
