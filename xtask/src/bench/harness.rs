//! Processes and clients for the benchmarks: release binaries on loopback ports.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
pub use portcullis_integration::http_get;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn build_release() -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "build",
            "--release",
            "--locked",
            "--bins",
            "-p",
            "portcullis-control-plane",
            "-p",
            "portcullis-agent",
            "-p",
            "portcullis-cli",
            "-p",
            "xtask",
        ])
        .status()
        .context("cargo build --release")?;
    if !status.success() {
        bail!("release build failed");
    }
    Ok(())
}

pub fn release_bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A control plane process that is killed on drop.
pub struct ControlPlane {
    pub child: Child,
    /// Where the data dir lives: a temporary directory, or one the caller keeps.
    pub dir: Dir,
    pub port: u16,
}

pub enum Dir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Dir {
    pub fn path(&self) -> &Path {
        match self {
            Dir::Temp(dir) => dir.path(),
            Dir::Kept(path) => path,
        }
    }
}

impl ControlPlane {
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::start_in(Dir::Temp(tempfile::tempdir()?), extra)
    }

    /// Starts on `dir` (its `cp` subdirectory holds the data).
    pub fn start_in(dir: Dir, extra: &[&str]) -> Result<Self> {
        let (port, admin_port) = (free_port(), free_port());
        let child = Command::new(release_bin("portcullis-control-plane"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("cp"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(extra)
            .env("PORTCULLIS_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("starting the control plane")?;
        let cp = Self { child, dir, port };
        wait_http_ok(admin_port, "/readyz", Duration::from_secs(30))?;
        Ok(cp)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("cp/tls/ca.crt")
    }

    pub fn admin_token(&self) -> Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.path().join("cp/admin.token"))?
                .trim()
                .to_owned(),
        )
    }

    /// A TLS channel trusting the generated CA.
    pub async fn channel(&self) -> Result<Channel> {
        let ca = std::fs::read(self.ca_file())?;
        Ok(Endpoint::from_shared(self.url())?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
            .connect()
            .await?)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use portcullis_proto::auth::Bearer;

pub fn wait_http_ok(port: u16, path: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(http_get(port, path), Some((200, _))) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{path} on port {port} not OK within {limit:?}")
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A release `portcullis-agent run` for one cluster (standalone, or in Kubernetes mode),
/// killed on drop.
pub struct BenchAgent {
    pub child: Child,
    pub admin_port: u16,
    pub webhook_port: u16,
    /// When the process was started.
    pub started: Instant,
    /// Holds the token and the cache; removed on drop.
    _dir: tempfile::TempDir,
}

impl BenchAgent {
    /// Starts an agent for `cluster` (with its `token`) against `cp`, with `extra` flags.
    pub fn start(cp: &ControlPlane, cluster: &str, token: &str, extra: &[&str]) -> Result<Self> {
        Self::launch(cp, cluster, token, None, extra)
    }

    /// Starts an agent in Kubernetes mode against the API server of `kubeconfig`, programming
    /// its webhook by URL on its own loopback port.
    pub fn start_kube(
        cp: &ControlPlane,
        cluster: &str,
        token: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        Self::launch(cp, cluster, token, Some(kubeconfig), extra)
    }

    fn launch(
        cp: &ControlPlane,
        cluster: &str,
        token: &str,
        kubeconfig: Option<&Path>,
        extra: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token)?;
        let (admin_port, webhook_port) = (free_port(), free_port());
        let started = Instant::now();
        let mut command = Command::new(release_bin("portcullis-agent"));
        command.arg("run");
        match kubeconfig {
            None => {
                command.arg("--standalone");
            }
            Some(kubeconfig) => {
                command
                    .args([
                        "--webhook-url",
                        &format!("https://127.0.0.1:{webhook_port}/validate"),
                    ])
                    .env("KUBECONFIG", kubeconfig)
                    .env("PORTCULLIS_POD_NAME", "bench-agent");
            }
        }
        let child = command
            .args(["--cluster", cluster])
            .args(["--control-plane", &cp.url()])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--ca-file")
            .arg(cp.ca_file())
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
            .args(extra)
            .env("PORTCULLIS_LOG", "warn")
            .spawn()
            .context("starting the agent")?;
        let agent = Self {
            child,
            admin_port,
            webhook_port,
            started,
            _dir: dir,
        };
        wait_http_ok(admin_port, "/livez", Duration::from_secs(30))?;
        Ok(agent)
    }

    /// Polls `/state` until `done` holds, at most `limit`.
    pub fn wait_state(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some((200, body)) = http_get(self.admin_port, "/state")
                && done(&serde_json::from_str(&body)?)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not reach {what} within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident memory, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id()).unwrap_or(f64::NAN)
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS connector trusting only the certificates of `pem` (a CA bundle).
pub fn tls_connector(pem: &[u8]) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}
