//! What the benchmarks add to `portcullis-testkit` (which starts the processes): the release
//! build they measure, and clients of their own.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
pub use portcullis_proto::auth::Bearer;
pub use portcullis_testkit::{Agent, ControlPlane, http_get, workspace_root as root};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Builds the release binaries, and has the testkit run them.
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
    portcullis_testkit::use_binaries_in(root().join("target/release"));
    Ok(())
}

/// Runs the CLI against `cp` as its bootstrap admin (`ControlPlane::admin_cli`, the release
/// binary here); its standard output, or an error with its standard error.
pub fn admin_cli(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = cp.admin_cli(args);
    if !out.status.success() {
        bail!(
            "portcullis {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A real kube-apiserver + etcd (envtest's variables), or an error saying how to get one.
pub async fn api_server() -> Result<portcullis_testkit::kube::ApiServer> {
    // The testkit panics with the server's log when it cannot start; None means unset.
    tokio::task::spawn_blocking(|| portcullis_testkit::kube::ApiServer::start(&[]))
        .await?
        .context(
            "no Kubernetes API server: set TEST_ASSET_KUBE_APISERVER and TEST_ASSET_ETCD \
             (`eval \"$(../shared/k8s/apiserver assets DIR)\"`)",
        )
}

/// The store a benchmark's control planes run on: sled in their data dir, or a PostgreSQL
/// server of the benchmark's own (Debian's binaries, durable settings: fsync on, unlike the
/// tests' servers), in a temporary dir, stopped at the end.
pub struct Database {
    server: Option<(portcullis_testkit::Postgres, tempfile::TempDir)>,
    /// Databases created so far (each control plane started gets a new one).
    created: std::cell::Cell<u32>,
}

impl Database {
    pub fn start(postgres: bool) -> Result<Self> {
        if !postgres {
            return Ok(Self {
                server: None,
                created: Default::default(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("portcullis-bench-pg")
            .tempdir()?;
        let server = portcullis_testkit::Postgres::start_in(
            dir.path().join("pg"),
            portcullis_testkit::free_port(),
        )?;
        println!("PostgreSQL on 127.0.0.1:{} (fsync on)", server.port());
        Ok(Self {
            server: Some((server, dir)),
            created: Default::default(),
        })
    }

    /// `serve` arguments that put a control plane on this store: a new database each time.
    fn args(&self) -> Vec<String> {
        match &self.server {
            Some((server, _)) => {
                let n = self.created.get() + 1;
                self.created.set(n);
                let url = server.create_database(&format!("bench{n}"));
                vec!["--database-url".into(), url]
            }
            None => Vec::new(),
        }
    }

    /// "sled" or "PostgreSQL", for the report.
    pub fn name(&self) -> &'static str {
        if self.server.is_some() {
            "PostgreSQL"
        } else {
            "sled"
        }
    }

    /// Starts a control plane on this store with `extra` arguments.
    pub fn control_plane(&self, extra: &[&str]) -> ControlPlane {
        let args = self.args();
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        ControlPlane::start_bench(None, &all)
    }
}

pub fn release_bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

/// A TLS channel to `cp`, trusting its generated CA.
pub async fn channel(cp: &ControlPlane) -> Result<Channel> {
    let ca = std::fs::read(cp.ca_file())?;
    Ok(Endpoint::from_shared(cp.url())?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
        .connect()
        .await?)
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
