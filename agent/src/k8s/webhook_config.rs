//! The `ValidatingWebhookConfiguration` the agent keeps in place: one webhook for the kinds
//! Portcullis protects, CREATE and UPDATE, pointing at the agent's Service (or a URL), with the
//! CA bundle, the cluster's timeout and failure policy, and a namespace selector that leaves
//! out the exempt namespaces. Built as JSON for server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        RuleWithOperations, ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};
use portcullis_proto::words::FailurePolicy;

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
    pub fn object(&self) -> ValidatingWebhookConfiguration {
        let ca_bundle = Some(ByteString(self.ca_bundle_pem.as_bytes().to_vec()));
        let client_config = match &self.endpoint {
            Endpoint::Service {
                name,
                namespace,
                port,
            } => WebhookClientConfig {
                ca_bundle,
                service: Some(ServiceReference {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    path: Some("/validate".into()),
                    port: Some(*port),
                }),
                url: None,
            },
            Endpoint::Url(url) => WebhookClientConfig {
                ca_bundle,
                service: None,
                url: Some(url.clone()),
            },
        };
        let words = |words: &[&str]| Some(words.iter().map(|w| w.to_string()).collect());
        let rules = RULES
            .iter()
            .map(|(group, resources)| RuleWithOperations {
                api_groups: words(&[group]),
                api_versions: words(&["v1"]),
                operations: words(&["CREATE", "UPDATE"]),
                resources: words(resources),
                scope: Some("Namespaced".into()),
            })
            .collect();
        ValidatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "portcullis-agent".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![ValidatingWebhook {
                name: WEBHOOK_NAME.into(),
                client_config,
                rules: Some(rules),
                side_effects: "None".into(),
                admission_review_versions: vec!["v1".into()],
                timeout_seconds: Some(self.timeout_seconds as i32),
                failure_policy: Some(self.failure_policy.kubernetes().into()),
                match_policy: Some("Equivalent".into()),
                namespace_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "kubernetes.io/metadata.name".into(),
                        operator: "NotIn".into(),
                        values: Some(self.exempt_namespaces.clone()),
                    }]),
                    match_labels: None,
                }),
                ..ValidatingWebhook::default()
            }]),
        }
    }

    /// Whether `actual` (as read from the API server) already says what this would apply:
    /// the fields the agent owns, compared after the server's defaulting. Fields the server
    /// defaults (`matchPolicy`, `objectSelector`) are not ours to compare.
    pub fn matches(&self, actual: &ValidatingWebhookConfiguration) -> bool {
        let desired = self.object();
        let (Some(want), Some(have)) = (&desired.webhooks, &actual.webhooks) else {
            return false;
        };
        want.len() == have.len()
            && want.iter().zip(have).all(|(want, have)| {
                want.name == have.name
                    && want.client_config == have.client_config
                    && want.rules == have.rules
                    && want.side_effects == have.side_effects
                    && want.admission_review_versions == have.admission_review_versions
                    && want.timeout_seconds == have.timeout_seconds
                    && want.failure_policy == have.failure_policy
                    && want.namespace_selector == have.namespace_selector
            })
    }
}

/// The failure policy an existing configuration has, if it is ours and one we know.
pub fn failure_policy_of(actual: &ValidatingWebhookConfiguration) -> Option<FailurePolicy> {
    let programmed = actual
        .webhooks
        .as_ref()?
        .iter()
        .find(|w| w.name == WEBHOOK_NAME)?
        .failure_policy
        .as_deref()?;
    [FailurePolicy::Ignore, FailurePolicy::Fail]
        .into_iter()
        .find(|p| p.kubernetes() == programmed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

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
        let typed = desired().object();
        let object = serde_json::to_value(&typed).unwrap();
        assert_eq!(object["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(object["kind"], "ValidatingWebhookConfiguration");
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
        assert!(desired().matches(&typed));
        assert_eq!(failure_policy_of(&typed), Some(FailurePolicy::Ignore));
    }

    #[test]
    fn a_url_replaces_the_service_and_drift_is_seen() {
        let mut with_url = desired();
        with_url.endpoint = Endpoint::Url("https://hooks.example.com:8443/validate".into());
        let object = serde_json::to_value(with_url.object()).unwrap();
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
        edited.webhooks.as_mut().unwrap()[0].failure_policy = Some("Fail".into());
        assert!(!desired().matches(&edited));
        assert_eq!(failure_policy_of(&edited), Some(FailurePolicy::Fail));
        assert!(!desired().matches(&ValidatingWebhookConfiguration::default()));
    }
}
