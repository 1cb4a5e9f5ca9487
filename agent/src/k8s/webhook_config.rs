//! The `ValidatingWebhookConfiguration` the agent keeps in place: one webhook for the kinds
//! Portcullis protects, CREATE and UPDATE, pointing at the agent's Service (or a URL), with the
//! CA bundle, the cluster's timeout and failure policy, and a namespace selector that leaves
//! out the exempt namespaces. Built as JSON for server-side apply.

use portcullis_proto::words::FailurePolicy;
use serde_json::{Value, json};

/// The webhook's name inside the configuration.
pub const WEBHOOK_NAME: &str = "validate.portcullis.io";

/// Where the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The agent's Service (port 443, path /validate).
    Service {
        name: String,
        namespace: String,
        port: i32,
    },
    /// A URL (for API servers that cannot reach cluster Services).
    Url(String),
}

/// Everything the configuration is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub name: String,
    pub endpoint: Endpoint,
    pub ca_bundle_pem: String,
    pub exempt_namespaces: Vec<String>,
    pub failure_policy: FailurePolicy,
    pub timeout_seconds: u32,
}

/// The resources of one API group the webhook covers.
pub const RULES: [(&str, &[&str]); 3] = [
    // An ephemeral container (`kubectl debug`) is added through the pod's subresource: an
    // UPDATE of `pods/ephemeralcontainers`, which a rule for `pods` alone does not match.
    ("", &["pods", "pods/ephemeralcontainers", "services"]),
    (
        "apps",
        &["deployments", "replicasets", "statefulsets", "daemonsets"],
    ),
    ("batch", &["jobs", "cronjobs"]),
];

impl Desired {
    /// The object to apply.
    pub fn object(&self) -> Value {
        use base64::Engine;
        let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&self.ca_bundle_pem);
        let client_config = match &self.endpoint {
            Endpoint::Service {
                name,
                namespace,
                port,
            } => json!({
                "service": {"name": name, "namespace": namespace, "path": "/validate", "port": port},
                "caBundle": ca_bundle,
            }),
            Endpoint::Url(url) => json!({"url": url, "caBundle": ca_bundle}),
        };
        let rules: Vec<Value> = RULES
            .iter()
            .map(|(group, resources)| {
                json!({
                    "apiGroups": [group],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": resources,
                    "scope": "Namespaced",
                })
            })
            .collect();
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {
                "name": self.name,
                "labels": {"app.kubernetes.io/managed-by": "portcullis-agent"},
            },
            "webhooks": [{
                "name": WEBHOOK_NAME,
                "clientConfig": client_config,
                "rules": rules,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": self.timeout_seconds,
                "failurePolicy": self.failure_policy.kubernetes(),
                "matchPolicy": "Equivalent",
                "namespaceSelector": {"matchExpressions": [{
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": self.exempt_namespaces,
                }]},
            }],
        })
    }

    /// Whether `actual` (as read from the API server) already says what this would apply:
    /// the fields the agent owns, compared after the server's defaulting.
    pub fn matches(&self, actual: &Value) -> bool {
        let desired = self.object();
        let (Some(want), Some(have)) = (
            desired["webhooks"].as_array(),
            actual["webhooks"].as_array(),
        ) else {
            return false;
        };
        if want.len() != have.len() {
            return false;
        }
        want.iter().zip(have).all(|(want, have)| {
            let owned = [
                "name",
                "clientConfig",
                "rules",
                "sideEffects",
                "admissionReviewVersions",
                "timeoutSeconds",
                "failurePolicy",
                "namespaceSelector",
            ];
            // Fields the server defaults (matchPolicy, objectSelector) are not ours to compare.
            owned.iter().all(|field| want[field] == have[field])
        })
    }
}

/// The failure policy an existing configuration has, if it is ours and one we know.
pub fn failure_policy_of(actual: &Value) -> Option<FailurePolicy> {
    let programmed = actual["webhooks"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == WEBHOOK_NAME)?["failurePolicy"]
        .as_str()?;
    [FailurePolicy::Ignore, FailurePolicy::Fail]
        .into_iter()
        .find(|p| p.kubernetes() == programmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> Desired {
        Desired {
            name: "portcullis-agent".into(),
            endpoint: Endpoint::Service {
                name: "portcullis-agent".into(),
                namespace: "portcullis-system".into(),
                port: 443,
            },
            ca_bundle_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            exempt_namespaces: vec!["kube-system".into(), "portcullis-system".into()],
            failure_policy: FailurePolicy::Ignore,
            timeout_seconds: 10,
        }
    }

    #[test]
    fn the_configuration_covers_the_protected_kinds_and_exempts_by_name() {
        let object = desired().object();
        let webhook = &object["webhooks"][0];
        assert_eq!(webhook["sideEffects"], "None");
        assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(webhook["failurePolicy"], "Ignore");
        assert_eq!(webhook["timeoutSeconds"], 10);
        assert_eq!(
            webhook["clientConfig"]["service"],
            json!({"name": "portcullis-agent", "namespace": "portcullis-system", "path": "/validate", "port": 443})
        );
        let mut resources: Vec<&str> = webhook["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().unwrap().iter())
            .map(|r| r.as_str().unwrap())
            .collect();
        resources.sort_unstable();
        assert_eq!(
            resources,
            [
                "cronjobs",
                "daemonsets",
                "deployments",
                "jobs",
                "pods",
                "pods/ephemeralcontainers",
                "replicasets",
                "services",
                "statefulsets"
            ]
        );
        assert!(
            webhook["rules"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["operations"] == json!(["CREATE", "UPDATE"]))
        );
        assert_eq!(
            webhook["namespaceSelector"]["matchExpressions"][0],
            json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "portcullis-system"]})
        );
        assert!(desired().matches(&object));
        assert_eq!(failure_policy_of(&object), Some(FailurePolicy::Ignore));
    }

    #[test]
    fn a_url_replaces_the_service_and_drift_is_seen() {
        let mut with_url = desired();
        with_url.endpoint = Endpoint::Url("https://hooks.example.com:8443/validate".into());
        let object = with_url.object();
        assert_eq!(
            object["webhooks"][0]["clientConfig"]["url"],
            "https://hooks.example.com:8443/validate"
        );
        assert!(
            object["webhooks"][0]["clientConfig"]
                .get("service")
                .is_none()
        );
        let mut edited = desired().object();
        edited["webhooks"][0]["failurePolicy"] = "Fail".into();
        assert!(!desired().matches(&edited));
        assert!(!desired().matches(&json!({})));
    }
}
