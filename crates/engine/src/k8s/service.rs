//! Services, reduced to the fields service rules read.

use super::Text;
use super::meta::ObjectMeta;

k8s_type! {
    /// A `v1/Service` object; parse it with `k8s::parse`.
    pub struct Service {
        "metadata" => pub metadata: ObjectMeta,
        "spec" => pub spec: ServiceSpec,
    }
}

k8s_type! {
    /// `corev1.ServiceSpec`.
    pub struct ServiceSpec {
        /// As written; empty means `ClusterIP` (see `effective_type`).
        "type" => pub type_: Text,
        "externalIPs" => pub external_ips: Vec<Text>,
    }
}

impl ServiceSpec {
    /// The type the API server applies: `ClusterIP` when none is written.
    pub fn effective_type(&self) -> &str {
        if self.type_.is_empty() {
            "ClusterIP"
        } else {
            &self.type_
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::parse;

    #[test]
    fn parses_type_and_external_ips() {
        let s: Service = parse(&json!({
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "externalIPs": ["1.2.3.4"], "ports": [{"port": 80}]},
        }))
        .unwrap();
        assert_eq!(s.metadata.name, "web");
        assert_eq!(s.spec.effective_type(), "NodePort");
        assert_eq!(s.spec.external_ips, vec!["1.2.3.4"]);
        assert_eq!(ServiceSpec::default().effective_type(), "ClusterIP");
        assert!(parse::<Service>(&json!({"spec": {"externalIPs": "1.2.3.4"}})).is_err());
    }
}
