//! The Kubernetes writes, against the fake API server: first install, drift repair,
//! certificate rotation (paused time), protection off and on, uninstall, a lost lease, API
//! errors retried, a tampered Secret, and the failure-policy safety.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use http::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;

use portcullis_proto::v1::ProtectionSettings;

use super::{fake::FakeApi, *};
use crate::state::{AgentState, LoadedPolicy, handle};

const NS: &str = "portcullis-system";
const SECRET: &str = "/api/v1/namespaces/portcullis-system/secrets/portcullis-agent-tls";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/portcullis-system/leases/portcullis-agent";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/portcullis-system/leases";
const CONFIG: &str =
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/portcullis-agent";
/// Whether a call is a forced server-side apply by the agent's field manager.
fn is_apply(call: &fake::Call) -> bool {
    let query = call.uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let params: Vec<&str> = query.split('&').collect();
    params.contains(&"fieldManager=portcullis-agent") && params.contains(&"force=true")
}

fn settings(pod: &str) -> KubeSettings {
    KubeSettings {
        namespace: NS.into(),
        pod_name: pod.into(),
        service_name: "portcullis-agent".into(),
        service_port: 443,
        webhook_config_name: "portcullis-agent".into(),
        cert_secret: "portcullis-agent-tls".into(),
        lease_name: "portcullis-agent".into(),
        webhook_url: None,
        exempt_namespaces: vec!["kube-system".into(), NS.into()],
        certs: CertPolicy::for_service("portcullis-agent", NS, None),
        fail_open_after: Duration::from_secs(60),
        reconcile_every: Duration::from_secs(10),
        lease_seconds: 15,
    }
}

fn mk_state(enabled: bool, failure_policy: &str, policies: usize) -> AgentState {
    let mut map = BTreeMap::new();
    for i in 0..policies {
        let proto = portcullis_policy::parse_policy_documents(&format!(
            "name: p{i}\nrules: {{resource: {{privileged: {{}}}}}}\n"
        ))
        .unwrap()
        .remove(0);
        let loaded = LoadedPolicy::load(proto).unwrap();
        map.insert(loaded.proto.name.clone(), Arc::new(loaded));
    }
    AgentState {
        epoch: "e".into(),
        revision: 1,
        protection: Some(ProtectionSettings {
            enabled,
            failure_policy: failure_policy.into(),
            timeout_seconds: 7,
        }),
        policies: map,
        ..Default::default()
    }
}

/// The wall clock follows tokio's (paused) clock from a fixed start.
fn tokio_clock() -> Clock {
    let start = tokio::time::Instant::now();
    let base = OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap();
    Arc::new(move || base + (tokio::time::Instant::now() - start))
}

struct Harness {
    fake: FakeApi,
    state: crate::state::StateHandle,
    stats: Arc<SyncStats>,
    check_passes: Arc<AtomicBool>,
}

impl Harness {
    fn new(state: AgentState) -> Self {
        Self {
            fake: FakeApi::default(),
            state: handle(state),
            stats: Arc::default(),
            check_passes: Arc::new(AtomicBool::new(true)),
        }
    }

    fn controller(&self, pod: &str, clock: Clock) -> Controller {
        let (key, _) = crate::webhook::tls::self_signed(&["localhost".to_owned()]).unwrap();
        let passes = self.check_passes.clone();
        let check: selfcheck::SelfCheck = Arc::new(move |_ca| {
            let ok = passes.load(Ordering::Relaxed);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("connection refused".to_owned())
                }
            })
        });
        Controller::new(
            self.fake.client(),
            settings(pod),
            self.state.clone(),
            self.stats.clone(),
            CertResolver::new(key),
            check,
            clock,
        )
    }
}

fn secret_data(fake: &FakeApi, key: &str) -> String {
    let object = fake.object(SECRET).expect("secret");
    let b64 = object["data"][key].as_str().unwrap().to_owned();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn first_install_writes_lease_secret_and_configuration() {
    let h = Harness::new(mk_state(true, "ignore", 2));
    let mut controller = h.controller("agent-0", tokio_clock());
    let round = controller.reconcile().await.unwrap();
    assert_eq!(
        round,
        Round {
            leader: true,
            protection: ProtectionState::Protected,
            note: String::new()
        }
    );
    assert_eq!(
        h.fake.writes(),
        [
            format!("POST {LEASES}"),
            format!("PATCH {SECRET}"),
            format!("PATCH {CONFIG}"),
        ]
    );
    let calls = h.fake.calls();
    let lease = calls.iter().find(|c| c.method == Method::POST).unwrap();
    assert_eq!(lease.body["spec"]["holderIdentity"], "agent-0");
    assert_eq!(lease.body["spec"]["leaseDurationSeconds"], 15);
    let secret = calls
        .iter()
        .find(|c| c.method == Method::PATCH && c.path() == SECRET)
        .unwrap();
    assert!(is_apply(secret), "{}", secret.uri);
    assert_eq!(secret.body["type"], "kubernetes.io/tls");
    let mut keys: Vec<&String> = secret.body["data"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);
    let config = calls
        .iter()
        .find(|c| c.method == Method::PATCH && c.path() == CONFIG)
        .unwrap();
    assert!(is_apply(config), "{}", config.uri);
    let webhook = &config.body["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["timeoutSeconds"], 7);
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(
        webhook["clientConfig"]["service"],
        json!({"name": "portcullis-agent", "namespace": NS, "path": "/validate", "port": 443})
    );
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(webhook["clientConfig"]["caBundle"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(bundle).unwrap(),
        secret_data(&h.fake, "ca.crt")
    );
    assert!(controller.tls_ready.load(Ordering::Acquire));

    // A second round renews the lease and writes nothing else.
    h.fake.clear_calls();
    controller.reconcile().await.unwrap();
    assert_eq!(h.fake.writes(), [format!("PUT {LEASE}")]);
}

#[tokio::test(start_paused = true)]
async fn drift_is_repaired() {
    let h = Harness::new(mk_state(true, "ignore", 1));
    let mut controller = h.controller("agent-0", tokio_clock());
    controller.reconcile().await.unwrap();
    // Someone edits the configuration, then deletes it.
    let mut edited = h.fake.object(CONFIG).unwrap();
    edited["webhooks"][0]["namespaceSelector"] = json!({});
    h.fake.put_object(CONFIG, edited);
    h.fake.clear_calls();
    controller.reconcile().await.unwrap();
    assert_eq!(
        h.fake.writes(),
        [format!("PUT {LEASE}"), format!("PATCH {CONFIG}")]
    );
    assert_eq!(
        h.fake.object(CONFIG).unwrap()["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["operator"],
        "NotIn"
    );
    h.fake.remove_object(CONFIG);
    h.fake.clear_calls();
    controller.reconcile().await.unwrap();
    assert!(h.fake.writes().contains(&format!("PATCH {CONFIG}")));
    assert!(h.fake.object(CONFIG).is_some());
}

#[tokio::test(start_paused = true)]
async fn certificates_rotate_before_expiry_keeping_the_ca() {
    let h = Harness::new(mk_state(true, "ignore", 1));
    let mut controller = h.controller("agent-0", tokio_clock());
    controller.reconcile().await.unwrap();
    let (ca, leaf) = (
        secret_data(&h.fake, "ca.crt"),
        secret_data(&h.fake, "tls.crt"),
    );
    // 300 days on: nothing to do.
    tokio::time::advance(Duration::from_secs(300 * 86_400)).await;
    h.fake.clear_calls();
    controller.reconcile().await.unwrap();
    assert!(!h.fake.writes().contains(&format!("PATCH {SECRET}")));
    // 336 days on: within 30 days of expiry, a new leaf from the same CA.
    tokio::time::advance(Duration::from_secs(36 * 86_400)).await;
    h.fake.clear_calls();
    controller.reconcile().await.unwrap();
    assert!(h.fake.writes().contains(&format!("PATCH {SECRET}")));
    assert_eq!(secret_data(&h.fake, "ca.crt"), ca);
    assert_ne!(secret_data(&h.fake, "tls.crt"), leaf);
    // The CA bundle did not change, so the configuration was not rewritten.
    assert!(!h.fake.writes().contains(&format!("PATCH {CONFIG}")));
}

#[tokio::test(start_paused = true)]
async fn protection_off_deletes_the_configuration_and_on_restores_it() {
    let h = Harness::new(mk_state(true, "ignore", 0));
    let mut controller = h.controller("agent-0", tokio_clock());
    assert_eq!(
        controller.reconcile().await.unwrap().protection,
        ProtectionState::ProtectedWithoutPolicy
    );
    h.state.store(Arc::new(mk_state(false, "ignore", 0)));
    h.fake.clear_calls();
    assert_eq!(
        controller.reconcile().await.unwrap().protection,
        ProtectionState::Unprotected
    );
    assert_eq!(
        h.fake.writes(),
        [format!("PUT {LEASE}"), format!("DELETE {CONFIG}")]
    );
    assert!(h.fake.object(CONFIG).is_none());
    h.state.store(Arc::new(mk_state(true, "ignore", 3)));
    assert_eq!(
        controller.reconcile().await.unwrap().protection,
        ProtectionState::Protected
    );
    assert!(h.fake.object(CONFIG).is_some());
}

#[tokio::test(start_paused = true)]
async fn uninstall_removes_the_configuration_and_the_leader_stays_away() {
    let h = Harness::new(mk_state(true, "ignore", 1));
    let mut controller = h.controller("agent-0", tokio_clock());
    controller.reconcile().await.unwrap();
    h.fake.clear_calls();
    uninstall(h.fake.client(), NS, "portcullis-agent", "portcullis-agent")
        .await
        .unwrap();
    assert_eq!(
        h.fake.writes(),
        [format!("PATCH {LEASE}"), format!("DELETE {CONFIG}")]
    );
    assert_eq!(
        h.fake.object(LEASE).unwrap()["metadata"]["annotations"]["portcullis.io/uninstalling"],
        "true"
    );
    assert_eq!(
        controller.reconcile().await.unwrap().protection,
        ProtectionState::Unprotected
    );
    assert!(h.fake.object(CONFIG).is_none(), "not recreated");
    // Uninstalling twice is fine.
    uninstall(h.fake.client(), NS, "portcullis-agent", "portcullis-agent")
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_replica_without_the_lease_writes_nothing() {
    let h = Harness::new(mk_state(true, "ignore", 1));
    let clock = tokio_clock();
    let mut leader = h.controller("agent-0", clock.clone());
    leader.reconcile().await.unwrap();
    let mut follower = h.controller("agent-1", clock.clone());
    h.fake.remove_object(CONFIG);
    h.fake.clear_calls();
    let round = follower.reconcile().await.unwrap();
    assert!(!round.leader);
    assert!(h.fake.writes().is_empty(), "{:?}", h.fake.writes());
    assert!(
        follower.tls_ready.load(Ordering::Acquire),
        "followers serve the Secret's certificate"
    );
    // The leader stops renewing: after the lease expires the follower takes over and repairs.
    tokio::time::advance(Duration::from_secs(16)).await;
    let round = follower.reconcile().await.unwrap();
    assert!(round.leader);
    assert_eq!(
        h.fake.object(LEASE).unwrap()["spec"]["holderIdentity"],
        "agent-1"
    );
    assert!(h.fake.object(CONFIG).is_some());
    // The old leader lost it: a conflict on renewal, or a live holder, means no writes.
    h.fake.clear_calls();
    let round = leader.reconcile().await.unwrap();
    assert!(!round.leader);
    assert!(h.fake.writes().is_empty(), "{:?}", h.fake.writes());
    h.fake.fail_next(Method::PUT, LEASE, 409);
    assert!(
        !follower.reconcile().await.unwrap().leader,
        "a 409 on renewal loses the lease"
    );
}

#[tokio::test(start_paused = true)]
async fn api_errors_are_reported_and_retried_with_backoff() {
    let h = Harness::new(mk_state(true, "ignore", 1));
    for (method, path, code) in [
        (Method::PATCH, SECRET, 409),
        (Method::PATCH, CONFIG, 403),
        (Method::PATCH, CONFIG, 500),
        (Method::GET, CONFIG, 500),
    ] {
        h.fake.fail_next(method, path, code);
    }
    let mut controller = h.controller("agent-0", tokio_clock());
    let error = controller.reconcile().await.unwrap_err();
    assert!(error.to_string().contains("writing Secret"), "{error}");
    // The run loop reports and retries until everything is through.
    let stats = h.stats.clone();
    let task = tokio::spawn(controller.run());
    let mut states = Vec::new();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (state, error) = stats.protection();
        if states.last() != Some(&(state.clone(), error.clone())) {
            states.push((state.clone(), error));
        }
        if state == "protected" {
            break;
        }
    }
    task.abort();
    assert_eq!(
        states.last().map(|s| s.0.as_str()),
        Some("protected"),
        "{states:?}"
    );
    assert!(
        states
            .iter()
            .any(|(s, e)| s == "deploy-failed" && (e.contains("403") || e.contains("500"))),
        "{states:?}"
    );
    assert!(h.fake.object(CONFIG).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_tampered_secret_is_regenerated() {
    let h = Harness::new(mk_state(true, "ignore", 1));
    let mut controller = h.controller("agent-0", tokio_clock());
    controller.reconcile().await.unwrap();
    let mut secret = h.fake.object(SECRET).unwrap();
    secret["data"]["tls.crt"] = base64::engine::general_purpose::STANDARD
        .encode("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
        .into();
    h.fake.put_object(SECRET, secret);
    h.fake.clear_calls();
    controller.reconcile().await.unwrap();
    assert!(h.fake.writes().contains(&format!("PATCH {SECRET}")));
    assert!(secret_data(&h.fake, "tls.crt").contains("BEGIN CERTIFICATE"));
    assert_eq!(
        certs::check(
            super::material_of(&serde_json::from_value(h.fake.object(SECRET).unwrap()).unwrap())
                .as_ref(),
            &controller.settings.certs,
            OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap()
        ),
        certs::Verdict::Good
    );
}

#[tokio::test(start_paused = true)]
async fn fail_is_programmed_only_after_the_self_check_and_falls_back_to_ignore() {
    let h = Harness::new(mk_state(true, "fail", 1));
    h.check_passes.store(false, Ordering::Relaxed);
    let mut controller = h.controller("agent-0", tokio_clock());
    let policy = |fake: &FakeApi| -> Value {
        fake.object(CONFIG).unwrap()["webhooks"][0]["failurePolicy"].clone()
    };
    let round = controller.reconcile().await.unwrap();
    assert_eq!(policy(&h.fake), "Ignore");
    assert!(round.note.contains("held back"), "{}", round.note);
    h.check_passes.store(true, Ordering::Relaxed);
    controller.reconcile().await.unwrap();
    assert_eq!(policy(&h.fake), "Fail");
    // Every replica unready: the self-check fails; Fail stays for the grace period, then
    // the leader fails open and says so.
    h.check_passes.store(false, Ordering::Relaxed);
    controller.reconcile().await.unwrap();
    assert_eq!(policy(&h.fake), "Fail");
    tokio::time::advance(Duration::from_secs(61)).await;
    let round = controller.reconcile().await.unwrap();
    assert_eq!(policy(&h.fake), "Ignore");
    assert!(
        round.note.contains("downgraded to Ignore"),
        "{}",
        round.note
    );
}

#[tokio::test(start_paused = true)]
async fn leadership_follows_the_election_and_ends_when_the_lease_is_not_renewed() {
    let h = Harness::new(mk_state(true, "ignore", 1));
    let mut controller = h.controller("agent-0", tokio_clock());
    let leading = controller.leadership();
    assert!(!*leading.borrow());
    // Elected, though the round fails later (the Secret): it leads.
    h.fake.fail_next(Method::PATCH, SECRET, 409);
    assert!(controller.reconcile().await.is_err());
    assert!(*leading.borrow());
    // Renewals fail from now on: still the holder within the Lease's 15 s, not after (less a
    // margin), since another replica may then take it.
    tokio::time::advance(Duration::from_secs(5)).await;
    controller.expire_leadership();
    assert!(*leading.borrow());
    tokio::time::advance(Duration::from_secs(9)).await;
    controller.expire_leadership();
    assert!(!*leading.borrow());
    // A follower's election says so, even when its round fails (no certificate yet).
    let mut follower = h.controller("agent-1", tokio_clock());
    let following = follower.leadership();
    follower.set_leader(true);
    let _ = follower.reconcile().await;
    assert!(!*following.borrow());
}
