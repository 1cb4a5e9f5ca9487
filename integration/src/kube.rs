//! A real Kubernetes API server for tests: the kube-apiserver and etcd binaries named by
//! envtest's variables (`TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`; `.ci/run` sets them
//! with `../shared/k8s/apiserver assets DIR`), started on free loopback ports with fresh data,
//! and stopped when the value is dropped, also when a test fails. Without the variables the
//! tests that need it say how to enable them and pass without running.

use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::{Agent, ControlPlane, free_port, log_file};

pub struct ApiServer {
    dir: TempDir,
    etcd: Child,
    apiserver: Child,
    /// Kills both servers when this process ends, however it ends (a shared server is never
    /// dropped): it waits for the end of a pipe only this process holds.
    _reaper: Reaper,
    pub url: String,
    token: String,
}

struct Reaper(Option<Child>);

impl Reaper {
    fn watch(pids: [u32; 2], dir: &Path) -> Self {
        let child = Command::new("sh")
            .args([
                "-c",
                "read -r _; kill -9 \"$1\" \"$2\" 2>/dev/null; sleep 1; rm -rf \"$3\"",
                "portcullis-test-reaper",
                &pids[0].to_string(),
                &pids[1].to_string(),
            ])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the API server's reaper");
        Self(Some(child))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// The binaries, or `None` after telling how to set them.
fn assets() -> Option<(PathBuf, PathBuf)> {
    let apiserver = std::env::var_os("TEST_ASSET_KUBE_APISERVER");
    let etcd = std::env::var_os("TEST_ASSET_ETCD");
    match (apiserver, etcd) {
        (Some(apiserver), Some(etcd)) => Some((apiserver.into(), etcd.into())),
        _ => {
            eprintln!(
                "skipped: no Kubernetes API server. Set TEST_ASSET_KUBE_APISERVER and \
                 TEST_ASSET_ETCD (envtest's variables; `../shared/k8s/apiserver assets DIR` \
                 prints them) to run this test against a real one"
            );
            None
        }
    }
}

impl ApiServer {
    /// Starts etcd and the API server with `extra_args`, or `None` when the binaries are not
    /// configured. Panics (with the server's log) if it does not become ready in 60 s.
    pub fn start(extra_args: &[String]) -> Option<Self> {
        let (apiserver_bin, etcd_bin) = assets()?;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        // The service-account key pair the API server signs tokens with.
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path.join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(path.join("sa.pub"), key.public_key_pem()).unwrap();
        let token = crate::random_token();
        std::fs::write(
            path.join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )
        .unwrap();
        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let etcd = Command::new(etcd_bin)
            .args(["--name", "portcullis-test", "--data-dir"])
            .arg(path.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!(
                "--initial-cluster=portcullis-test=http://127.0.0.1:{peer}"
            ))
            .stdin(Stdio::null())
            .stdout(log_file(&path.join("etcd.log")))
            .stderr(log_file(&path.join("etcd.log")))
            .spawn()
            .expect("starting etcd");
        let apiserver = Command::new(apiserver_bin)
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={secure}"))
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--cert-dir={}", path.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                path.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                path.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path.join("sa.key").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            .arg("--disable-admission-plugins=ServiceAccount")
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log_file(&path.join("kube-apiserver.log")))
            .stderr(log_file(&path.join("kube-apiserver.log")))
            .spawn()
            .expect("starting kube-apiserver");
        let url = format!("https://127.0.0.1:{secure}");
        let reaper = Reaper::watch([etcd.id(), apiserver.id()], dir.path());
        let mut server = Self {
            dir,
            etcd,
            apiserver,
            _reaper: reaper,
            url,
            token,
        };
        server.write_kubeconfig(&server.kubeconfig(), &server.token.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = server.kubectl(&["get", "--raw", "/readyz"]);
            if ready.status.success() {
                return Some(server);
            }
            if let Ok(Some(status)) = server.apiserver.try_wait() {
                panic!("kube-apiserver exited ({status}): {}", server.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 60 s: {}",
                server.log_tail()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server of this test binary, started on first use and stopped when the process
    /// ends; `None` (after saying how to enable it) without the binaries. Tests that program
    /// cluster-wide objects (webhook configurations) take `serial()` first.
    pub fn shared() -> Option<&'static Self> {
        static SHARED: OnceLock<Option<ApiServer>> = OnceLock::new();
        SHARED.get_or_init(|| Self::start(&[])).as_ref()
    }

    /// The API server's CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("certs/apiserver.crt")
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// A kubeconfig at `path` that authenticates with `token`.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{}\", \
             certificate-authority: \"{}\"}}\nusers:\n- name: user\n  user: {{token: \"{token}\"}}\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: user, namespace: default}}\n\
             current-context: test\n",
            self.url,
            self.ca_file().display()
        );
        std::fs::write(path, text).unwrap();
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A directory for the test's files, removed with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl ARGS` as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None)
    }

    /// `kubectl ARGS` as the admin, with `input` on standard input.
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
        drop(stdin);
        child.wait_with_output().unwrap()
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- kube-apiserver log (tail) ---\n{}", self.log_tail());
        }
    }
}

/// A client CA and a client certificate it signed, as PEM: (CA, certificate, key).
pub fn client_pki(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Serializes the tests of one binary that share the API server: a webhook configuration is
/// cluster-wide, so one test's webhook would judge another's pods.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A TCP forwarder on a loopback port, standing in for the agents' Service: each connection
/// goes to the first backend that accepts it. With no backend (or none up) a connection is
/// closed at once, as a Service without ready endpoints does.
pub struct Forwarder {
    pub port: u16,
    backends: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let backends: Arc<Mutex<Vec<u16>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (list, stopped) = (backends.clone(), stop.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                let ports = list.lock().unwrap().clone();
                let upstream = ports.iter().find_map(|port| {
                    TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], *port)),
                        Duration::from_secs(1),
                    )
                    .ok()
                });
                if let Some(upstream) = upstream {
                    pipe(client, upstream);
                }
            }
        });
        Self {
            port,
            backends,
            stop,
        }
    }

    /// The backends, tried in this order.
    pub fn set_backends(&self, ports: &[u16]) {
        *self.backends.lock().unwrap() = ports.to_vec();
    }

    pub fn add_backend(&self, port: u16) {
        self.backends.lock().unwrap().push(port);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    copy(a, b2);
    copy(b, a2);
}

/// One Kubernetes test's world on the shared API server: a namespace and a release of the
/// agent chart (both named `name`), the chart's ServiceAccount with exactly the chart's RBAC
/// and a token minted for it, a control plane with the cluster `name` registered, and a
/// forwarder in front of the agents (the webhook URL the chart is given). Holds `serial()`;
/// on drop the release's webhook configuration is deleted, so the next test starts clean.
pub struct KubeEnv {
    pub api: &'static ApiServer,
    pub name: String,
    pub cp: ControlPlane,
    pub cluster_token: String,
    /// The rendered agent chart.
    pub chart: Vec<Value>,
    /// The chart ServiceAccount's kubeconfig.
    pub kubeconfig: PathBuf,
    pub forwarder: Forwarder,
    dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

/// The agent chart rendered by the Helm library (`helm/render.py`).
pub fn render_chart(
    chart: &str,
    release: &str,
    namespace: &str,
    values_file: Option<&Path>,
    values: &Value,
) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new("python3");
    command
        .arg(root.join("helm/render.py"))
        .arg(chart)
        .args(["--release", release, "--namespace", namespace])
        .args(["--set-json", &values.to_string()]);
    if let Some(file) = values_file {
        command.arg("--values-file").arg(file);
    }
    let out = command.output().expect("running python3 helm/render.py");
    assert!(
        out.status.success(),
        "helm/render.py failed (run through `cargo xtask test`, which installs \
         helm-python-sdk): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("render.py prints JSON");
    list["items"].as_array().expect("a List").clone()
}

/// `b` merged over `a` (objects recursively; anything else replaced).
fn merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in b {
                merge(a.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// The chart's RBAC: what the agent's identity is made of.
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// Flags the harness sets itself (addresses, files), left out of the chart's.
const HARNESS_FLAGS: [&str; 8] = [
    "--log-format=",
    "--cluster=",
    "--control-plane=",
    "--token-file=",
    "--ca-file=",
    "--data-dir=",
    "--admin-listen=",
    "--webhook-listen=",
];

impl KubeEnv {
    /// Sets up `name` (a DNS label) with the chart's values `values` merged over the
    /// harness's (cluster name, control plane address, the forwarder's URL, a reconcile every
    /// second); `{port}` in `webhook.url` is the forwarder's port. `None` when no API server
    /// is configured.
    pub fn new(name: &str, values: Value) -> Option<Self> {
        let serial = serial();
        let api = ApiServer::shared()?;
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start();
        let cluster_token = cp.register(name);
        let forwarder = Forwarder::start();
        let mut all = serde_json::json!({
            "clusterName": name,
            "controlPlane": {"address": cp.url()},
            "webhook": {"url": format!("https://127.0.0.1:{}/validate", forwarder.port)},
            "extraArgs": ["--reconcile-interval=1"],
        });
        merge(&mut all, &values);
        if let Some(url) = all["webhook"]["url"].as_str() {
            let url = url.replace("{port}", &forwarder.port.to_string());
            all["webhook"]["url"] = url.into();
        }
        let chart = render_chart("portcullis-agent", name, name, None, &all);
        let created = api.kubectl(&["create", "namespace", name]);
        assert!(created.status.success(), "{}", text(&created.stderr));
        // The agent's identity (not the `helm test` Pod's, which has its own).
        let rbac: Vec<Value> = chart
            .iter()
            .filter(|o| RBAC_KINDS.contains(&o["kind"].as_str().unwrap_or("")))
            .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] != "verify")
            .cloned()
            .collect();
        assert_eq!(rbac.len(), RBAC_KINDS.len(), "the chart's RBAC objects");
        api.apply(&rbac);
        let sa = rbac[0]["metadata"]["name"].as_str().unwrap().to_owned();
        let kubeconfig = dir.path().join("agent-kubeconfig");
        api.write_kubeconfig(&kubeconfig, &api.mint_token(name, &sa));
        Some(Self {
            api,
            name: name.to_owned(),
            cp,
            cluster_token,
            chart,
            kubeconfig,
            forwarder,
            dir,
            _serial: serial,
        })
    }

    /// The rendered object of `kind` (the first).
    pub fn object(&self, kind: &str) -> &Value {
        self.chart
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("the chart renders no {kind}"))
    }

    /// The agent container's arguments from the chart's StatefulSet, without `run` and the
    /// flags the harness sets.
    pub fn agent_args(&self) -> Vec<String> {
        self.object("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .map(|a| a.as_str().unwrap().to_owned())
            .filter(|a| !HARNESS_FLAGS.iter().any(|f| a.starts_with(f)))
            .collect()
    }

    /// The value of the chart's `--NAME=` argument.
    pub fn flag(&self, name: &str) -> String {
        let prefix = format!("--{name}=");
        self.agent_args()
            .iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("the chart passes no --{name}"))
    }

    /// The webhook configuration's name.
    pub fn config_name(&self) -> String {
        self.flag("webhook-config-name")
    }

    /// Starts replica `pod` of the agent, as the chart's ServiceAccount with the chart's
    /// arguments (and `extra`), behind the forwarder.
    pub fn start_agent(&self, pod: &str, extra: &[&str]) -> Agent {
        let mut args = self.agent_args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = Agent::start_kube(
            &self.cp,
            &self.name,
            &self.cluster_token,
            &self.kubeconfig,
            pod,
            &args,
        );
        self.forwarder.add_backend(agent.webhook_port);
        agent
    }

    /// Applies policy documents (YAML) on the control plane.
    pub fn apply_policy(&self, yaml: &str) {
        let path = self.dir.path().join("policy.yaml");
        std::fs::write(&path, yaml).unwrap();
        crate::success(
            &self
                .cp
                .admin_cli(&["policy", "apply", "-f", path.to_str().unwrap()]),
        );
    }

    /// The webhook configuration as the API server has it.
    pub fn config(&self) -> Option<Value> {
        self.api
            .get("validatingwebhookconfiguration", None, &self.config_name())
    }

    /// Polls the configuration until `pred` holds (60 s at most).
    pub fn wait_config(&self, what: &str, pred: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let config = self.config();
            if pred(config.as_ref()) {
                return config;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the webhook configuration: {what}; it is {config:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// A directory for the test's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        let _ = self.api.kubectl(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.config_name(),
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl ApiServer {
    /// Server-side apply of `objects` as the admin, with strict field validation; panics
    /// with the server's reason if any is refused.
    pub fn apply(&self, objects: &[Value]) {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let out = self.kubectl_with_input(
            &[
                "apply",
                "--server-side",
                "--field-manager=portcullis-tests",
                "--validate=strict",
                "-f",
                "-",
            ],
            Some(&list.to_string()),
        );
        assert!(
            out.status.success(),
            "server-side apply refused: {}",
            text(&out.stderr)
        );
    }

    /// A token for ServiceAccount `name` in `namespace` (TokenRequest, 10 hours).
    pub fn mint_token(&self, namespace: &str, name: &str) -> String {
        let out = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=10h"]);
        assert!(
            out.status.success(),
            "kubectl create token: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    }

    /// `kubectl get KIND [-n NS] NAME -o json`, or `None` when it does not exist.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json", "--ignore-not-found"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        let out = self.kubectl(&args);
        assert!(
            out.status.success(),
            "kubectl get {kind} {name}: {}",
            text(&out.stderr)
        );
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// POSTs `object` to `path` (as the admin, with curl) and returns the status code, the
    /// `Warning` headers and the body: what kubectl shows, but unprocessed.
    pub fn post(&self, path: &str, object: &Value) -> (u16, Vec<String>, String) {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "-", "-X", "POST"])
            .arg("--cacert")
            .arg(self.ca_file())
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-H", "Content-Type: application/json", "-H", "Expect:"])
            .args(["--data-binary", &object.to_string()])
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("running curl");
        assert!(out.status.success(), "curl: {}", text(&out.stderr));
        let response = text(&out.stdout);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let warnings = lines
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("warning")
                    .then(|| value.trim().to_owned())
            })
            .collect();
        (status, warnings, body.to_owned())
    }
}
