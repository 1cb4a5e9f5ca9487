//! The webhook's serving certificate: read from PEM files and reloaded when they change (new
//! handshakes get the new certificate; open connections are not dropped), or generated
//! self-signed for standalone runs. The certificate is swapped atomically behind a resolver.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{error, info};

/// Resolves every handshake to the current certificate.
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertResolver")
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

/// A rustls server configuration (HTTP/2 and HTTP/1.1) around `resolver`, open to any client.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The same, but a client must present a certificate that a CA of `client_cas` signed (the
/// API server sends one when its AdmissionConfiguration gives it a kubeconfig for webhooks):
/// mutual TLS, so only the API server can ask for decisions.
pub fn server_config_mtls(
    resolver: Arc<CertResolver>,
    client_cas: rustls::RootCertStore,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(client_cas), provider)
            .build()
            .context("building the client certificate verifier")?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates (PEM) that sign the clients the webhook accepts.
pub fn load_client_cas(path: &Path) -> Result<rustls::RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{}: no CA certificate in the file",
        path.display()
    );
    Ok(roots)
}

/// Builds a certified key from PEM text.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the certificate PEM")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("parsing the private key PEM")?;
    let signing = any_supported_type(&key).context("unsupported private key")?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Reads a certified key from files.
pub fn load_files(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let (cert_pem, key_pem) = portcullis_runtime::tls::read_pem_pair(cert, key)?;
    certified_key(cert_pem.as_bytes(), key_pem.as_bytes())
        .with_context(|| format!("{} / {}", cert.display(), key.display()))
}

/// A self-signed certificate for `names` (standalone runs and tests). Returns the key and the
/// certificate PEM (what a client must trust).
pub fn self_signed(names: &[String]) -> Result<(CertifiedKey, String)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).context("certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis-agent webhook");
    let cert = params.self_signed(&key).context("signing")?;
    let cert_pem = cert.pem();
    Ok((
        certified_key(cert_pem.as_bytes(), key.serialize_pem().as_bytes())?,
        cert_pem,
    ))
}

/// Reloads `cert`/`key` into `resolver` whenever either file's modification time changes.
/// A pair that does not parse is logged and the old certificate kept.
pub async fn watch_files(
    resolver: Arc<CertResolver>,
    cert: PathBuf,
    key: PathBuf,
    every: Duration,
) {
    let stamp = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut seen: (Option<SystemTime>, Option<SystemTime>) = (stamp(&cert), stamp(&key));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        seen = now;
        match load_files(&cert, &key) {
            Ok(loaded) => {
                resolver.replace(loaded);
                info!(cert = %cert.display(), "Serving certificate reloaded");
            }
            Err(error) => {
                error!(error = %format!("{error:#}"), "Serving certificate not reloaded; keeping the old one")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_and_garbage() {
        let (key, pem) = self_signed(&["localhost".into()]).unwrap();
        assert_eq!(key.cert.len(), 1);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(certified_key(b"nope", b"nope").is_err());
    }

    #[tokio::test]
    async fn changed_files_are_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let write = |name: &str| {
            let k = rcgen::KeyPair::generate().unwrap();
            let c = rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .self_signed(&k)
                .unwrap();
            std::fs::write(&cert, c.pem()).unwrap();
            std::fs::write(&key, k.serialize_pem()).unwrap();
            c.der().to_vec()
        };
        let first = write("one.test");
        let resolver = CertResolver::new(load_files(&cert, &key).unwrap());
        tokio::spawn(watch_files(
            resolver.clone(),
            cert.clone(),
            key.clone(),
            Duration::from_millis(20),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Make sure the modification time moves even on coarse clocks.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let second = write("two.test");
        assert_ne!(first, second);
        for _ in 0..100 {
            if resolver.current.load().cert[0].as_ref() == second.as_slice() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("certificate not reloaded");
    }
}
