//! `cargo xtask bench apiserver`: what the webhook adds to a Pod create on a real API server.
//!
//! The real kube-apiserver (envtest's `TEST_ASSET_KUBE_APISERVER` / `TEST_ASSET_ETCD`, as the
//! tests), the release control plane with the example policies, and the release agent in
//! Kubernetes mode programming its webhook by URL. A minimal allow-everything webhook (hyper +
//! rustls here, the same TLS and ALPN as the agent) covers a second namespace; a third is
//! covered by no webhook. Pod creates are interleaved across the three, sequentially and from
//! concurrent clients (each on its own keep-alive connection), and the percentiles compared:
//! Portcullis above the no-op webhook (what we add), the no-op above no webhook (the floor
//! every webhook pays on this server).

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use base64::{Engine, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use portcullis_testkit::kube::ApiServer;
use rustls::pki_types::{PrivateKeyDer, ServerName, pem::PemObject};
use serde_json::{Value, json};

use super::{
    harness::{Agent, ControlPlane, admin_cli, api_server, root, tls_connector},
    percentile,
};

#[derive(clap::Args)]
pub struct ApiServerArgs {
    /// Creates per namespace in each run.
    #[arg(long, default_value_t = 300)]
    creates: usize,
    /// Concurrent clients in the second run.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

const COVERED: &str = "bench-portcullis";
const NOOP: &str = "bench-noop";
const EXEMPT: &str = "bench-none";
const NAMESPACES: [&str; 3] = [COVERED, NOOP, EXEMPT];

pub async fn run(args: ApiServerArgs) -> Result<()> {
    let api = api_server().await?;
    for ns in ["portcullis-system", COVERED, NOOP, EXEMPT] {
        kubectl_ok(&api, &["create", "namespace", ns])?;
    }

    // The control plane with the example policies, and the agent programming its webhook.
    let cp = ControlPlane::start_bench(None, &[]);
    let cli = |args: &[&str]| admin_cli(&cp, args);
    let token = cp.register("bench");
    let examples = root().join("examples/policies.yaml");
    cli(&["policy", "apply", "-f", examples.to_str().unwrap()])?;
    let exempt = format!("kube-system,portcullis-system,{NOOP},{EXEMPT}");
    let agent = Agent::start_bench(
        &cp,
        "bench",
        &token,
        Some(&api.kubeconfig()),
        &[
            "--namespace",
            "portcullis-system",
            "--reconcile-interval",
            "1",
            "--exempt-namespaces",
            &exempt,
        ],
    );
    let webhook_port = agent.webhook_port;

    // The no-op webhook, for NOOP only.
    let noop = Noop::start().await?;
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "bench-noop"},
        "webhooks": [{"name": "noop.bench.portcullis.io", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 10,
            "clientConfig": {"url": format!("https://127.0.0.1:{}/validate", noop.port),
                "caBundle": STANDARD.encode(&noop.ca_pem)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NOOP}}}],
    });
    let out = api.kubectl_with_input(&["apply", "-f", "-"], Some(&config.to_string()));
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = Client::new(&api)?;
    // Both webhooks in place: a privileged pod denied by ours, the no-op called.
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let probe = format!("probe-{attempt}");
        let (status, body) = client
            .create(
                COVERED,
                &privileged_pod(&probe),
                &mut client.connect().await?,
            )
            .await?;
        let called = noop.calls.load(Ordering::Relaxed);
        let (noop_status, _) = client
            .create(NOOP, &pod(&probe), &mut client.connect().await?)
            .await?;
        if status == 403 && noop.calls.load(Ordering::Relaxed) > called && noop_status == 201 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the webhooks were not both in place within 60 s ({status}: {body})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Warm up each path, then measure.
    run_loop(&client, 1, 20, "warmup").await?;
    let sequential = run_loop(&client, 1, args.creates, "seq").await?;
    let concurrent = run_loop(&client, args.clients, args.creates, "conc").await?;

    println!(
        "\nPod creates on kube-apiserver v1.28.7 (release agent, example policies), \
         interleaved over three namespaces; ms"
    );
    for (label, samples) in [
        ("sequential".to_owned(), &sequential),
        (format!("{} clients", args.clients), &concurrent),
    ] {
        println!("\n{label}: {} creates per namespace", samples[0].len());
        println!("| namespace | p50 | p90 | p99 |");
        println!("|---|---|---|---|");
        let rows: Vec<[Duration; 3]> = samples
            .iter()
            .map(|s| {
                [
                    percentile(s, 50.0),
                    percentile(s, 90.0),
                    percentile(s, 99.0),
                ]
            })
            .collect();
        for (name, row) in ["Portcullis", "no-op webhook", "no webhook"]
            .iter()
            .zip(&rows)
        {
            println!(
                "| {name} | {} | {} | {} |",
                ms(row[0]),
                ms(row[1]),
                ms(row[2])
            );
        }
        let diff = |a: &[Duration; 3], b: &[Duration; 3]| {
            (0..3)
                .map(|i| format!("{:+.2}", secs(a[i]) * 1e3 - secs(b[i]) * 1e3))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        println!("| Portcullis − no-op | {} |", diff(&rows[0], &rows[1]));
        println!("| no-op − none | {} |", diff(&rows[1], &rows[2]));
    }
    let calls = noop.calls.load(Ordering::Relaxed);
    let connections = noop.connections.load(Ordering::Relaxed);
    println!(
        "\nno-op webhook: {calls} reviews over {connections} TLS connections ({}), \
         request bodies {} bytes on average, response {} bytes",
        noop.protocols(),
        noop.request_bytes.load(Ordering::Relaxed) / calls.max(1),
        noop.response_bytes.load(Ordering::Relaxed) / calls.max(1),
    );

    // Where the floor goes: the API server's own CPU profile while it creates pods in one
    // namespace, for each of the three.
    println!(
        "\nThe API server's CPU while creating pods for {PROFILE_SECONDS} s in one namespace \
         (its /debug/pprof/profile), per create; µs"
    );
    println!(
        "| namespace | creates | all CPU | under the webhook dispatcher | of which, by innermost known frame |"
    );
    println!("|---|---|---|---|---|");
    for (label, ns) in [
        ("Portcullis", COVERED),
        ("no-op webhook", NOOP),
        ("no webhook", EXEMPT),
    ] {
        let (creates, profile) = profile_loop(&client, ns).await?;
        let per = |ns: i64| ns as f64 / 1e3 / creates.max(1) as f64;
        let parts: Vec<String> = profile
            .webhook
            .iter()
            .map(|(what, ns)| format!("{what} {:.0}", per(*ns)))
            .collect();
        println!(
            "| {label} | {creates} | {:.0} | {:.0} | {} |",
            per(profile.total_ns),
            per(profile.webhook_ns),
            parts.join(", ")
        );
    }

    // Our side alone: the AdmissionReview the API server last sent, replayed to each webhook
    // directly (one keep-alive HTTP/1.1 connection, as the API server holds), sequentially.
    let review = noop.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let ours = api
        .get("validatingwebhookconfiguration", None, "portcullis-agent")
        .context("the agent's webhook configuration")?;
    let ours_ca = String::from_utf8(
        STANDARD.decode(
            ours["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .context("caBundle")?,
        )?,
    )?;
    println!(
        "\nThe same review ({} bytes) sent directly, {} times each, sequentially; µs",
        review.len(),
        args.creates * 10
    );
    println!("| webhook | p50 | p90 | p99 | response bytes |");
    println!("|---|---|---|---|---|");
    for (name, port, ca) in [
        ("Portcullis", webhook_port, ours_ca.as_str()),
        ("no-op", noop.port, noop.ca_pem.as_str()),
    ] {
        let (samples, size) = replay(port, ca, &review, args.creates * 10).await?;
        let us = |p| format!("{:.0}", percentile(&samples, p).as_secs_f64() * 1e6);
        println!(
            "| {name} | {} | {} | {} | {size} |",
            us(50.0),
            us(90.0),
            us(99.0)
        );
    }
    Ok(())
}

/// Sends `body` to the webhook on `port` `times` times over one connection: the sorted
/// latencies and the response's size.
async fn replay(
    port: u16,
    ca_pem: &str,
    body: &Bytes,
    times: usize,
) -> Result<(Vec<Duration>, usize)> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let tls = tls_connector(ca_pem.as_bytes())?
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    let mut samples = Vec::with_capacity(times);
    let mut size = 0;
    for _ in 0..times {
        sender.ready().await?;
        let request = hyper::Request::post("/validate?timeout=10s")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        let start = Instant::now();
        let response = sender.send_request(request).await?;
        ensure!(
            response.status() == 200,
            "webhook on {port}: {}",
            response.status()
        );
        size = response.into_body().collect().await?.to_bytes().len();
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    Ok((samples, size))
}

/// How long the API server is profiled for each namespace.
const PROFILE_SECONDS: u64 = 10;

/// Creates pods in `ns` (one client, sequentially) while the API server profiles itself:
/// the number of creates and the profile's breakdown.
async fn profile_loop(
    client: &Client,
    ns: &'static str,
) -> Result<(usize, super::pprof::Breakdown)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creating = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut connection = client.connect().await?;
            let mut creates = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = client
                    .create(ns, &pod(&format!("profiled-{creates}")), &mut connection)
                    .await?;
                ensure!(status == 201, "create in {ns}: {status} {body}");
                creates += 1;
            }
            anyhow::Ok(creates)
        })
    };
    let profile = client
        .get(&format!("/debug/pprof/profile?seconds={PROFILE_SECONDS}"))
        .await;
    stop.store(true, Ordering::Relaxed);
    let creates = creating.await??;
    let profile = super::pprof::breakdown(&profile?)?;
    Ok((creates, profile))
}

/// `clients` tasks, each creating `creates` pods per namespace in turn over its own
/// connection; the latencies per namespace.
async fn run_loop(
    client: &Client,
    clients: usize,
    creates: usize,
    tag: &str,
) -> Result<Vec<Vec<Duration>>> {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let tag = format!("{tag}-{c}");
        tasks.push(tokio::spawn(async move {
            let mut connection = client.connect().await?;
            let mut samples = vec![Vec::with_capacity(creates); NAMESPACES.len()];
            for i in 0..creates {
                for (slot, ns) in NAMESPACES.iter().enumerate() {
                    let start = Instant::now();
                    let (status, body) = client
                        .create(ns, &pod(&format!("{tag}-{i}")), &mut connection)
                        .await?;
                    samples[slot].push(start.elapsed());
                    ensure!(status == 201, "create in {ns}: {status} {body}");
                }
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = vec![Vec::new(); NAMESPACES.len()];
    for task in tasks {
        for (slot, samples) in task.await??.into_iter().enumerate() {
            all[slot].extend(samples);
        }
    }
    for samples in &mut all {
        samples.sort_unstable();
    }
    Ok(all)
}

/// A pod every example policy admits without a finding (restricted, no privileges).
fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "registry.example.com/app:1.0",
                "securityContext": {"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}}}]}})
}

fn privileged_pod(name: &str) -> Value {
    let mut pod = pod(name);
    // (privileged with allowPrivilegeEscalation false is invalid)
    pod["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    pod
}

fn ms(d: Duration) -> String {
    format!("{:.2}", secs(d) * 1e3)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn kubectl_ok(api: &ApiServer, args: &[&str]) -> Result<()> {
    let out = api.kubectl(args);
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An HTTPS client for the API server as the admin: one keep-alive HTTP/1.1 connection per
/// caller.
#[derive(Clone)]
struct Client {
    port: u16,
    tls: tokio_rustls::TlsConnector,
    authorization: String,
}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    fn new(api: &ApiServer) -> Result<Self> {
        let port = api
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("the API server's port")?;
        Ok(Self {
            port,
            tls: tls_connector(&std::fs::read(api.ca_file())?)?,
            authorization: format!("Bearer {}", api.admin_token()),
        })
    }

    async fn connect(&self) -> Result<Connection> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// `GET path` on a connection of its own: the body of a 200.
    async fn get(&self, path: &str) -> Result<Bytes> {
        let mut connection = self.connect().await?;
        connection.ready().await?;
        let request = hyper::Request::get(path)
            .header("host", "127.0.0.1")
            .header("authorization", &self.authorization)
            .body(Full::new(Bytes::new()))?;
        let response = connection.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        ensure!(status == 200, "GET {path}: {status}");
        Ok(body)
    }

    /// Creates `pod` in `namespace`: the status code and the body.
    async fn create(
        &self,
        namespace: &str,
        pod: &Value,
        connection: &mut Connection,
    ) -> Result<(u16, String)> {
        connection.ready().await?;
        let request = hyper::Request::post(format!("/api/v1/namespaces/{namespace}/pods"))
            .header("host", "127.0.0.1")
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(pod.to_string())))?;
        let response = connection.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The floor: an AdmissionReview server that allows everything, with rustls and ALPN as the
/// agent's (h2 and http/1.1), counting what it is sent.
struct Noop {
    port: u16,
    ca_pem: String,
    calls: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    h2: Arc<AtomicU64>,
    request_bytes: Arc<AtomicU64>,
    response_bytes: Arc<AtomicU64>,
    /// The last AdmissionReview the API server sent (to replay directly).
    last: Arc<std::sync::Mutex<Bytes>>,
}

impl Noop {
    async fn start() -> Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.clone().self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let leaf =
            CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
        )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let noop = Self {
            port,
            ca_pem: ca.pem(),
            calls: Arc::default(),
            connections: Arc::default(),
            h2: Arc::default(),
            request_bytes: Arc::default(),
            response_bytes: Arc::default(),
            last: Arc::default(),
        };
        let (calls, connections, h2) = (
            noop.calls.clone(),
            noop.connections.clone(),
            noop.h2.clone(),
        );
        let (request_bytes, response_bytes) =
            (noop.request_bytes.clone(), noop.response_bytes.clone());
        let last = noop.last.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (calls, request_bytes, response_bytes) =
                    (calls.clone(), request_bytes.clone(), response_bytes.clone());
                let last = last.clone();
                connections.fetch_add(1, Ordering::Relaxed);
                let h2 = h2.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        h2.fetch_add(1, Ordering::Relaxed);
                    }
                    let service = hyper::service::service_fn(move |request| {
                        let counters = Counters {
                            calls: calls.clone(),
                            request_bytes: request_bytes.clone(),
                            response_bytes: response_bytes.clone(),
                            last: last.clone(),
                        };
                        async move { Ok::<_, Infallible>(allow(request, counters).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Ok(noop)
    }

    fn protocols(&self) -> String {
        let connections = self.connections.load(Ordering::Relaxed);
        let h2 = self.h2.load(Ordering::Relaxed);
        format!("{h2} HTTP/2, {} HTTP/1.1", connections.saturating_sub(h2))
    }
}

struct Counters {
    calls: Arc<AtomicU64>,
    request_bytes: Arc<AtomicU64>,
    response_bytes: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<Bytes>>,
}

async fn allow(
    request: hyper::Request<hyper::body::Incoming>,
    counters: Counters,
) -> hyper::Response<Full<Bytes>> {
    let Counters {
        calls,
        request_bytes,
        response_bytes,
        last,
    } = counters;
    calls.fetch_add(1, Ordering::Relaxed);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    *last.lock().unwrap_or_else(|e| e.into_inner()) = body.clone();
    request_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let uid = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["request"]["uid"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let answer = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}})
    .to_string();
    response_bytes.fetch_add(answer.len() as u64, Ordering::Relaxed);
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer)))
        .unwrap_or_default()
}
