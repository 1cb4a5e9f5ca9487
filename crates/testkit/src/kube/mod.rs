//! A real Kubernetes API server for tests: the kube-apiserver and etcd binaries named by
//! envtest's variables (`TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`; `.ci/run` sets them
//! with `../shared/k8s/apiserver assets DIR`), started on free loopback ports with fresh data,
//! and stopped when the value is dropped, also when a test fails. Without the variables the
//! tests that need it say how to enable them and pass without running. `env` builds one
//! test's world on it (the agent chart's identity, a control plane, a forwarder).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{Mutex, MutexGuard, OnceLock},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::{free_port, log_file};

mod env;
mod forwarder;
pub mod objects;

pub use env::{KubeEnv, render_chart};
pub use forwarder::Forwarder;

pub struct ApiServer {
    dir: TempDir,
    etcd: Child,
    apiserver: Child,
    /// Kills both servers when this process ends, however it ends (a shared server is never
    /// dropped): it waits for the end of a pipe only this process holds.
    _reaper: Reaper,
    pub url: String,
    /// etcd's client URL (its JSON gateway serves `/v3/kv/...`).
    pub etcd_url: String,
    token: String,
}

/// Extra arguments of the shared server of this test binary (`configure_shared`).
static SHARED_ARGS: OnceLock<Vec<String>> = OnceLock::new();

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
            etcd_url: format!("http://127.0.0.1:{client}"),
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
        SHARED
            .get_or_init(|| Self::start(SHARED_ARGS.get().map_or(&[], Vec::as_slice)))
            .as_ref()
    }

    /// Extra arguments for this binary's shared server; call before its first use (later
    /// calls change nothing).
    pub fn configure_shared(args: &[&str]) {
        let _ = SHARED_ARGS.set(args.iter().map(|a| (*a).to_owned()).collect());
    }

    /// Compacts etcd's history up to its current revision, through its JSON gateway: a watch
    /// resuming from an older resource version then gets 410 Gone (with `--watch-cache=false`;
    /// the watch cache would answer from its own window).
    pub fn compact_etcd(&self) {
        let range = etcd_post(&self.etcd_url, "/v3/kv/range", r#"{"key":"AA=="}"#);
        let revision = range["header"]["revision"]
            .as_str()
            .unwrap_or_else(|| panic!("etcd's revision in {range}"))
            .to_owned();
        let body = format!(r#"{{"revision":"{revision}","physical":true}}"#);
        etcd_post(&self.etcd_url, "/v3/kv/compaction", &body);
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
        self.write_kubeconfig_via(path, token, &self.url);
    }

    /// A kubeconfig at `path` that reaches the server at `url` (a forwarder in front of it).
    pub fn write_kubeconfig_via(&self, path: &Path, token: &str, url: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{}\", \
             certificate-authority: \"{}\"}}\nusers:\n- name: user\n  user: {{token: \"{token}\"}}\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: user, namespace: default}}\n\
             current-context: test\n",
            url,
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

/// POSTs JSON to etcd's gateway over plain HTTP/1.1; the JSON answer.
fn etcd_post(base: &str, path: &str, body: &str) -> Value {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connecting to etcd");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, rest) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "etcd {path}: {response}");
    // A chunked body: the JSON object is between the first '{' and the last '}'.
    let json = rest
        .find('{')
        .zip(rest.rfind('}'))
        .map_or("null", |(a, b)| &rest[a..=b]);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("etcd {path}: {e}: {rest}"))
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
