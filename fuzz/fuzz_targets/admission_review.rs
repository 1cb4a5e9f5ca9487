//! The webhook's whole decision on an AdmissionReview body, as the API server (or anything
//! that reaches the port) sends it: a clear error or an answer, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_agent::{
    state::{AgentState, LoadedPolicy, handle},
    webhook::{Webhook, WebhookConfig},
};

fn webhook() -> &'static Webhook {
    static WEBHOOK: OnceLock<Webhook> = OnceLock::new();
    WEBHOOK.get_or_init(|| {
        let mut policies = std::collections::BTreeMap::new();
        for proto in
            portcullis_policy::parse_policy_documents(include_str!("../policies.yaml")).unwrap()
        {
            let loaded = LoadedPolicy::load(proto).unwrap();
            policies.insert(loaded.proto.name.clone(), std::sync::Arc::new(loaded));
        }
        let state = AgentState {
            epoch: "fuzz".into(),
            revision: 1,
            policies,
            ..Default::default()
        };
        let config = WebhookConfig {
            cluster: "fuzz".into(),
            exempt_namespaces: vec!["kube-system".into()],
            exempt_users: Vec::new(),
            max_body_bytes: 4 << 20,
            max_in_flight: 1,
            evaluators: 1,
            max_queue_wait: std::time::Duration::from_secs(1),
            body_timeout: std::time::Duration::from_secs(1),
            // The target calls `review` itself; the pool is not exercised.
            decide_small_inline: false,
        };
        Webhook::new(config, handle(state)).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = webhook().review(data) {
        let _ = portcullis_agent::webhook::review::to_body(response);
    }
});
