//! A real Kubernetes API server for tests: the kube-apiserver and etcd binaries named by
//! envtest's variables (`TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`; `.ci/run` sets them
//! with `../shared/k8s/apiserver assets DIR`), started on free loopback ports with fresh data,
//! and stopped when the value is dropped, also when a test fails. Without the variables the
//! tests that need it say how to enable them and pass without running.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::{free_port, log_file};

pub struct ApiServer {
    dir: TempDir,
    etcd: Child,
    apiserver: Child,
    pub url: String,
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
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"{url}\", \
             certificate-authority: \"{}\"}}\nusers:\n- name: admin\n  user: {{token: \"{token}\"}}\n\
             contexts:\n- name: test\n  context: {{cluster: test, user: admin, namespace: default}}\n\
             current-context: test\n",
            path.join("certs/apiserver.crt").display()
        );
        std::fs::write(path.join("kubeconfig"), kubeconfig).unwrap();
        let mut server = Self {
            dir,
            etcd,
            apiserver,
            url,
        };
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
