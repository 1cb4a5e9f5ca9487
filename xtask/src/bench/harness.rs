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
