//! Webhook tests with AdmissionReview bodies exactly as kube-apiserver sent them (the captured
//! fixtures), in-process through the router and over real TLS.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{body::Body, http::Request};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::state::{AgentState, LoadedPolicy, handle};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn config() -> WebhookConfig {
    WebhookConfig {
        cluster: "c1".into(),
        exempt_namespaces: vec!["kube-system".into(), "portcullis-system".into()],
        exempt_users: vec!["system:serviceaccount:portcullis-system:portcullis-agent".into()],
        max_body_bytes: 4 * 1024 * 1024,
        max_in_flight: 16,
        evaluators: 2,
        max_queue_wait: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        decide_small_inline: true,
    }
}

fn webhook_with(policies_yaml: &str, config: WebhookConfig) -> Webhook {
    let mut policies = BTreeMap::new();
    for proto in portcullis_policy::parse_policy_documents(policies_yaml).unwrap() {
        let loaded = LoadedPolicy::load(proto).unwrap();
        policies.insert(loaded.proto.name.clone(), Arc::new(loaded));
    }
    let state = AgentState {
        epoch: "e".into(),
        revision: 1,
        policies,
        ..Default::default()
    };
    Webhook::new(config, handle(state)).unwrap()
}

const RESTRICTED: &str =
    "name: restricted\nrules: {resource: {podSecurity: {level: restricted}}}\n";
const NO_PRIVILEGED: &str = "name: no-privileged\nrules: {resource: {privileged: {}}}\n";

async fn post(webhook: &Webhook, body: Vec<u8>) -> (u16, Vec<u8>) {
    let request = Request::post("/validate")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = router(webhook.clone()).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

/// The `response` of an answered review.
async fn review_of(webhook: &Webhook, name: &str) -> Value {
    let body = fixture(name);
    let uid = serde_json::from_slice::<Value>(&body).unwrap()["request"]["uid"].clone();
    let (status, out) = post(webhook, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    let review: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["response"]["uid"], uid, "uid echoed");
    review["response"].clone()
}

#[tokio::test]
async fn privileged_pod_is_denied_with_a_readable_message() {
    let webhook = webhook_with(NO_PRIVILEGED, config());
    let response = review_of(&webhook, "pod-create-privileged.json").await;
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "[no-privileged] privileged at spec.containers[0].securityContext.privileged = true"
        ),
        "{message}"
    );
    assert_eq!(
        response["auditAnnotations"]["portcullis.io/blocked-by"],
        "no-privileged"
    );
    assert_eq!(
        review_of(&webhook, "pod-create-plain.json").await["allowed"],
        true
    );
}

#[tokio::test]
async fn workloads_updates_and_dry_runs_are_decided_like_the_api_server_sends_them() {
    let webhook = webhook_with(RESTRICTED, config());
    for blocked in [
        "deployment-create-basic.json",
        "statefulset-create-volumeclaimtemplate.json",
        "daemonset-create-basic.json",
        "job-create-basic.json",
        "cronjob-create-basic.json",
        "replicaset-create-basic.json",
        "pod-create-plain.json",
        "pod-create-dryrun-apply.json",
        "pod-create-dryrun-server-side-apply.json",
        "deployment-update-image.json",
        "pod-update-ephemeralcontainers-kubectl-debug.json",
    ] {
        let response = review_of(&webhook, blocked).await;
        assert_eq!(response["allowed"], false, "{blocked}: {response}");
        assert!(
            response["status"]["message"]
                .as_str()
                .unwrap()
                .contains("podSecurity/"),
            "{blocked}"
        );
    }
    let deployment = review_of(&webhook, "deployment-create-basic.json").await;
    assert!(
        deployment["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.template.spec.containers[0]")
    );
    let cronjob = review_of(&webhook, "cronjob-create-basic.json").await;
    assert!(
        cronjob["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.jobTemplate.spec.template.spec.")
    );
    for admitted in [
        "pod-create-restricted-compliant.json",
        "pod-update-label-only.json",
        "pod-delete-force-call1.json",
        "pod-delete-force-call2-deletiontimestamp.json",
        "deployment-delete-background.json",
        "podexecoptions-connect-pods-exec.json",
        "service-create-clusterip.json",
    ] {
        assert_eq!(
            review_of(&webhook, admitted).await["allowed"],
            true,
            "{admitted}"
        );
    }
}

#[tokio::test]
async fn services_host_settings_and_images() {
    let policies = "name: svc\nrules: {resource: {service: {disallowTypes: [NodePort], forbidExternalIPs: true}}}\n---\n\
                    name: host\nrules: {resource: {hostNamespaces: {}, hostPath: {}}}\n---\n\
                    name: pinned\nrules: {image: {requireDigest: true}}\n";
    let webhook = webhook_with(policies, config());
    let svc = review_of(&webhook, "service-create-nodeport-externalips.json").await;
    let message = svc["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.type") && message.contains("spec.externalIPs"),
        "{message}"
    );
    let host = review_of(&webhook, "pod-create-hostnetwork-hostpid-hostpath.json").await;
    let message = host["status"]["message"].as_str().unwrap();
    for path in [
        "spec.hostNetwork",
        "spec.hostPID",
        "spec.volumes[0].hostPath",
    ] {
        assert!(message.contains(path), "{path} missing: {message}");
    }
    let multi = review_of(
        &webhook,
        "pod-create-init-multicontainer-tag-and-digest.json",
    )
    .await;
    let message = multi["status"]["message"].as_str().unwrap();
    assert!(message.contains("requireDigest"), "{message}");
    assert!(
        !message.contains("nginx@sha256"),
        "the digest image passes: {message}"
    );
}

#[tokio::test]
async fn alerts_admit_with_warnings() {
    let webhook = webhook_with(
        "name: watch\naction: alert\nrules: {resource: {privileged: {}}}\n",
        config(),
    );
    let response = review_of(&webhook, "pod-create-privileged.json").await;
    assert_eq!(response["allowed"], true);
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("portcullis [watch] privileged at spec.containers[0]"),
        "{warning}"
    );
    assert_eq!(
        response["auditAnnotations"]["portcullis.io/alerted-by"],
        "watch"
    );
}

#[tokio::test]
async fn exempt_namespaces_and_the_agents_own_service_account() {
    let mut exempt = config();
    exempt.exempt_namespaces.push("demo".into());
    let webhook = webhook_with(NO_PRIVILEGED, exempt);
    assert_eq!(
        review_of(&webhook, "pod-create-privileged.json").await["allowed"],
        true
    );

    let mut own = config();
    own.exempt_users = vec!["admin".into()];
    let webhook = webhook_with(NO_PRIVILEGED, own);
    assert_eq!(
        review_of(&webhook, "pod-create-privileged.json").await["allowed"],
        true
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let webhook = webhook_with(NO_PRIVILEGED, config());
    let cases: [(&[u8], u16, &str); 5] = [
        (b"{not json", 400, "not JSON"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#, 400, "apiVersion"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#, 400, "kind"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, 400, "request: required"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"}}}"#, 400, "request.uid"),
    ];
    for (body, status, text) in cases {
        let (got, out) = post(&webhook, body.to_vec()).await;
        let out = String::from_utf8_lossy(&out);
        assert_eq!(got, status, "{out}");
        assert!(out.contains(text), "{text} missing from {out}");
    }
    // A 10 MB body is refused before it is read whole.
    let (status, _) = post(&webhook, vec![b' '; 10 * 1024 * 1024]).await;
    assert_eq!(status, 413);
    // An object that does not fit its kind: a clear denial.
    let mut review: Value = serde_json::from_slice(&fixture("pod-create-plain.json")).unwrap();
    review["request"]["object"]["spec"]["containers"] = Value::String("nope".into());
    let (status, out) = post(&webhook, serde_json::to_vec(&review).unwrap()).await;
    let response: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        (status, response["response"]["status"]["code"].as_u64()),
        (200, Some(400))
    );
    assert!(
        response["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.containers")
    );
    // Unknown kinds are admitted.
    let mut review: Value = serde_json::from_slice(&fixture("pod-create-plain.json")).unwrap();
    review["request"]["kind"]["kind"] = Value::String("ConfigMap".into());
    let (_, out) = post(&webhook, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&out).unwrap()["response"]["allowed"],
        true
    );
}

/// One evaluator held by a slow request: a small review is still decided on its connection's
/// thread while no other is; with that taken too and the queue full a request is refused at
/// once, and one that waited past its budget is shed; both with 503 and `Retry-After`.
#[tokio::test]
async fn a_flood_is_refused_with_503() {
    let mut small = config();
    small.max_in_flight = 1;
    small.evaluators = 1;
    small.max_queue_wait = Duration::from_millis(50);
    let webhook = webhook_with(NO_PRIVILEGED, small);
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let busy = {
        let pool = webhook.pool.clone();
        tokio::spawn(async move {
            pool.run(move || {
                let _ = hold.recv();
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, _) = post(&webhook, fixture("pod-create-plain.json")).await;
    assert_eq!(status, 200, "decided in place");
    // Another thread holds the in-place slot from here on.
    let (release_inline, hold_inline) = std::sync::mpsc::channel::<()>();
    let inline = {
        let (pool, runtime) = (webhook.pool.clone(), tokio::runtime::Handle::current());
        std::thread::spawn(move || {
            runtime.block_on(pool.run_small(0, move || {
                let _ = hold_inline.recv();
            }))
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiting = {
        let webhook = webhook.clone();
        tokio::spawn(async move { post(&webhook, fixture("pod-create-plain.json")).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, out) = post(&webhook, fixture("pod-create-plain.json")).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 503, "{out}");
    assert!(out.contains("queue is full"), "{out}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    release.send(()).unwrap();
    busy.await.unwrap().unwrap();
    let (status, out) = waiting.await.unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status, 503, "{out}");
    assert!(out.contains("waited longer"), "{out}");
    assert_eq!(webhook.refused(), (1, 1));
    release_inline.send(()).unwrap();
    inline.join().unwrap().unwrap();
    // Free again: answered.
    let (status, _) = post(&webhook, fixture("pod-create-plain.json")).await;
    assert_eq!(status, 200);
}

/// A client that sends its head and then trickles (or withholds) the body gets 408 when the
/// body deadline passes, instead of holding the connection and its memory.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused() {
    let mut quick = config();
    quick.body_timeout = Duration::from_millis(100);
    let webhook = webhook_with(NO_PRIVILEGED, quick);
    use tokio_stream::StreamExt;
    let first = tokio_stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from("{"))]);
    let body = Body::from_stream(first.chain(tokio_stream::pending()));
    let request = Request::post("/validate")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let response = router(webhook).oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 408);
}

#[tokio::test]
async fn over_real_tls() {
    use hyper_util::rt::TokioIo;

    let (addr, connector, stop_tx, server) = tls_server(server::ServeLimits::default()).await;
    let tls = handshake(addr, &connector).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    // Keep-alive: two reviews on one connection, as the API server does.
    for (name, allowed) in [
        ("pod-create-privileged.json", false),
        ("pod-create-plain.json", true),
    ] {
        let request = Request::post("/validate?timeout=5s")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(fixture(name))))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let review: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review["response"]["allowed"], allowed, "{name}");
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
}

/// A state with `policies_yaml` and one scan: `nginx:1.25` with a fixable high CVE.
fn state_with_scan(policies_yaml: &str) -> AgentState {
    use portcullis_policy::{
        Severity,
        scan::{ImageIdentity, ScanSummary, SeverityCounts},
    };
    let mut policies = BTreeMap::new();
    for proto in portcullis_policy::parse_policy_documents(policies_yaml).unwrap() {
        let loaded = LoadedPolicy::load(proto).unwrap();
        policies.insert(loaded.proto.name.clone(), Arc::new(loaded));
    }
    let mut scans = portcullis_engine::ScanIndex::default();
    let image = ImageIdentity {
        repository: "docker.io/library/nginx".into(),
        tags: vec!["1.25".into()],
        ..Default::default()
    };
    let summary = ScanSummary::new(
        SeverityCounts([0, 0, 0, 1, 0]),
        [("CVE-2024-0001", Severity::High, true)],
        ["Eicar-Test-Signature"],
        [],
    );
    scans.put("docker.io/library/nginx:1.25", image, summary, 4);
    AgentState {
        epoch: "e".into(),
        revision: 4,
        policies,
        scans,
        ..Default::default()
    }
}

const HIGH: &str = "name: no-high\nrules: {image: {vulnerabilities: {severity: high}}}\n";

#[tokio::test]
async fn synced_scans_block_images_at_admission() {
    let webhook = Webhook::new(config(), handle(state_with_scan(HIGH))).unwrap();
    let response = review_of(&webhook, "deployment-create-basic.json").await;
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("[no-high] vulnerabilities at spec.template.spec.containers[0].image")
            && message.contains("CVE-2024-0001"),
        "{message}"
    );
}

async fn ask_gatekeeper(webhook: &Webhook, body: Value) -> (u16, Value) {
    let request = Request::post(GATEKEEPER_PATH)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router(webhook.clone()).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn provider_request(keys: &[&str]) -> Value {
    serde_json::json!({
        "apiVersion": "externaldata.gatekeeper.sh/v1beta1",
        "kind": "ProviderRequest",
        "request": {"keys": keys},
    })
}

#[tokio::test]
async fn gatekeeper_external_data_gets_a_verdict_per_image() {
    let policies = format!(
        "{HIGH}---\nname: malware\nrules: {{image: {{maliciousFiles: true, unscanned: alert}}}}\n"
    );
    let webhook = Webhook::new(config(), handle(state_with_scan(&policies))).unwrap();
    let (status, body) = ask_gatekeeper(
        &webhook,
        provider_request(&["nginx:1.25", "redis:7", "Not An Image"]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apiVersion"], "externaldata.gatekeeper.sh/v1beta1");
    assert_eq!(body["kind"], "ProviderResponse");
    let response = &body["response"];
    assert_eq!(response["idempotent"], true);
    assert!(response.get("systemError").is_none(), "{response}");
    let items = response["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);

    let nginx = &items[0];
    assert_eq!(nginx["key"], "nginx:1.25");
    assert!(nginx.get("error").is_none());
    let value = &nginx["value"];
    assert_eq!(value["verdict"], "block");
    assert_eq!(value["scanned"], true);
    assert_eq!(value["scanId"], "docker.io/library/nginx:1.25");
    assert_eq!(value["counts"]["high"], 1);
    assert_eq!(value["fixable"], 1);
    assert_eq!(value["malware"][0], "Eicar-Test-Signature");
    let rules: Vec<&str> = value["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["maliciousFiles", "vulnerabilities"]);

    let redis = &items[1]["value"];
    assert_eq!(
        (redis["verdict"].as_str(), redis["scanned"].as_bool()),
        (Some("alert"), Some(false))
    );

    let bad = &items[2];
    assert!(bad.get("value").is_none());
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid image reference"),
        "{bad}"
    );
}

#[tokio::test]
async fn gatekeeper_requests_that_cannot_be_answered() {
    // No state yet: a system error, no items.
    let empty = Webhook::new(config(), handle(AgentState::default())).unwrap();
    let (status, body) = ask_gatekeeper(&empty, provider_request(&["nginx"])).await;
    assert_eq!(status, 200);
    assert!(
        body["response"]["systemError"]
            .as_str()
            .unwrap()
            .contains("not synced"),
        "{body}"
    );
    assert_eq!(body["response"]["items"], serde_json::json!([]));

    // Too many keys: a system error naming the limit.
    let webhook = Webhook::new(config(), handle(state_with_scan(HIGH))).unwrap();
    let keys: Vec<String> = (0..=gatekeeper::MAX_KEYS)
        .map(|i| format!("img{i}"))
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (_, body) = ask_gatekeeper(&webhook, provider_request(&keys)).await;
    assert!(
        body["response"]["systemError"]
            .as_str()
            .unwrap()
            .contains("at most 10000"),
        "{body}"
    );

    // Not a ProviderRequest: 400 with the reason.
    let mut wrong_version = provider_request(&["nginx"]);
    wrong_version["apiVersion"] = "externaldata.gatekeeper.sh/v1alpha1".into();
    let mut wrong_kind = provider_request(&["nginx"]);
    wrong_kind["kind"] = "ProviderResponse".into();
    for (body, expected) in [
        (Value::String("{not json".into()), "not a ProviderRequest"),
        (wrong_version, "is not externaldata.gatekeeper.sh/v1beta1"),
        (wrong_kind, "is not ProviderRequest"),
        (
            serde_json::json!({"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest"}),
            "request is missing",
        ),
    ] {
        let request = Request::post(GATEKEEPER_PATH)
            .body(Body::from(match &body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }))
            .unwrap();
        let response = router(webhook.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains(expected), "{text}");
    }
}

/// A TLS server of `limits` on a free port, and a connector that trusts it.
async fn tls_server(
    limits: server::ServeLimits,
) -> (
    std::net::SocketAddr,
    tokio_rustls::TlsConnector,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    use rustls::pki_types::pem::PemObject;
    let (key, cert_pem) = tls::self_signed(&["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server::serve(
        listener,
        tls::server_config(tls::CertResolver::new(key)),
        router(webhook_with(NO_PRIVILEGED, config())),
        stop_rx,
        limits,
    ));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    (addr, connector, stop_tx, server)
}

async fn handshake(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// A client that connects and then sends nothing, or only part of a request head, is cut off
/// when the head deadline passes; connections past the limit wait until one is freed.
#[tokio::test]
async fn slow_and_surplus_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = server::ServeLimits {
        max_connections: 2,
        header_timeout: Duration::from_millis(300),
        ..server::ServeLimits::default()
    };
    let (addr, connector, _stop, _server) = tls_server(limits).await;
    let mut silent = handshake(addr, &connector).await.unwrap();
    let mut partial = handshake(addr, &connector).await.unwrap();
    partial
        .write_all(b"POST /validate HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Both slots are taken: a third connection's handshake waits.
    let third = tokio::time::timeout(Duration::from_millis(150), handshake(addr, &connector)).await;
    assert!(
        third.is_err(),
        "a third connection was served past the limit"
    );
    // The head deadline ends both held connections (read: EOF or an error, never a hang).
    for stream in [&mut silent, &mut partial] {
        let mut buffer = [0; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(_) | Err(_))),
            "the connection was not closed"
        );
    }
    // Slots free again: a new connection is served.
    let served = tokio::time::timeout(Duration::from_secs(5), handshake(addr, &connector)).await;
    assert!(matches!(served, Ok(Ok(_))));
}

/// With a client CA, only clients with a certificate it signed get an answer.
#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

    let (key, cert_pem) = tls::self_signed(&["localhost".into()]).unwrap();
    let (ca_pem, client_pem, client_key) = portcullis_testkit::kube::client_pki("kube-apiserver");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    let cas = tls::load_client_cas(&dir.path().join("ca.pem")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(server::serve(
        listener,
        tls::server_config_mtls(tls::CertResolver::new(key), cas).unwrap(),
        router(webhook_with(NO_PRIVILEGED, config())),
        stop_rx,
        server::ServeLimits::default(),
    ));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let post = |config: rustls::ClientConfig| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = hyper::Request::post("/validate")
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::from(fixture(
                "pod-create-plain.json",
            ))))
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<u16, String>(response.status().as_u16())
    };
    let anonymous = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    assert!(
        post(anonymous).await.is_err(),
        "a client without a certificate was served"
    );
    let chain = CertificateDer::pem_slice_iter(client_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap();
    let authenticated = rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .unwrap();
    assert_eq!(post(authenticated).await, Ok(200));
    // A certificate another CA signed is refused too.
    let (_, other_pem, other_key) = portcullis_testkit::kube::client_pki("kube-apiserver");
    let chain = CertificateDer::pem_slice_iter(other_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(other_key.as_bytes()).unwrap();
    let stranger = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    assert!(post(stranger).await.is_err());
    // The agent's self-check holds no client certificate: against a webhook that asks for
    // one after presenting the right server certificate, it passes only in mutual-TLS mode.
    let url = format!("https://localhost:{}/validate", addr.port());
    let with_mtls = crate::k8s::selfcheck::through(url.clone(), true);
    assert_eq!(with_mtls(cert_pem.clone()).await, Ok(()));
    let without = crate::k8s::selfcheck::through(url, false);
    let error = without(cert_pem.clone()).await.unwrap_err();
    assert!(error.contains("requires a client certificate"), "{error}");
    // A server certificate the CA bundle does not trust still fails.
    let (_, other_cert) = tls::self_signed(&["localhost".into()]).unwrap();
    assert!(with_mtls(other_cert).await.is_err());
    assert!(tls::load_client_cas(&dir.path().join("missing.pem")).is_err());
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    assert!(tls::load_client_cas(&dir.path().join("empty.pem")).is_err());
}

/// An agent that never received its policies admits (it has nothing to enforce) but says so
/// in every answer: unchecked must never look like a clean verdict.
#[tokio::test]
async fn an_agent_that_never_synced_warns_in_every_answer() {
    let empty = Webhook::new(config(), handle(AgentState::default())).unwrap();
    let (status, out) = post(&empty, fixture("pod-create-privileged.json")).await;
    let review: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(status, 200);
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["warnings"][0], handler::NOT_SYNCED);
    // A synced agent with nothing to say adds no warning.
    let synced = webhook_with(NO_PRIVILEGED, config());
    let (_, out) = post(&synced, fixture("pod-create-plain.json")).await;
    let review: Value = serde_json::from_slice(&out).unwrap();
    assert!(review["response"].get("warnings").is_none(), "{review}");
}
