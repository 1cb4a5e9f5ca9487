//! The webhook's self-check: an AdmissionReview posted through the Service (or the
//! `--webhook-url`), as the API server would, trusting the CA of the Secret. `failurePolicy:
//! Fail` is only programmed once this passes. When the webhook requires client certificates
//! (`--webhook-client-ca`), the agent holds none the webhook accepts: a webhook that presents
//! the Secret's certificate and then asks for a client certificate counts as answering.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// Runs the check with the CA bundle (PEM) the webhook's certificate chains to.
pub type SelfCheck =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A review the engine skips at once (a DELETE), so the check costs nothing.
const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"portcullis-self-check","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"name":"self-check","namespace":"default","operation":"DELETE","userInfo":{"username":"portcullis-self-check"}}}"#;

/// The check against `url` (`https://<service>.<namespace>.svc:443/validate`); with
/// `mutual_tls`, a request for a client certificate after a valid server certificate passes.
pub fn through(url: String, mutual_tls: bool) -> SelfCheck {
    Arc::new(move |ca_pem: String| {
        let url = url.clone();
        Box::pin(async move {
            let checked = tokio::time::timeout(Duration::from_secs(5), post(&url, &ca_pem))
                .await
                .map_err(|_| format!("{url}: no answer within 5 s"))?;
            match checked {
                Err(Failure::ClientCertificateRequired(_)) if mutual_tls => Ok(()),
                Err(failure) => Err(failure.to_string()),
                Ok(()) => Ok(()),
            }
        })
    })
}

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The server's certificate was valid, then it asked for a client certificate.
    #[error("{0}: the webhook requires a client certificate")]
    ClientCertificateRequired(String),
    #[error("{0}")]
    Other(String),
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Failure::Other(text)
    }
}

/// Whether `error` (or a cause) is the server's alert asking for a client certificate.
fn asks_for_a_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)) =
            error.downcast_ref::<rustls::Error>()
        {
            return true;
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && asks_for_a_certificate(inner)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

async fn post(url: &str, ca_pem: &str) -> Result<(), Failure> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA bundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("CA bundle: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{url}: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{url}: TLS: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(uri.path())
        .header("host", host)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            REVIEW.as_bytes(),
        )))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| {
        if asks_for_a_certificate(&e) {
            Failure::ClientCertificateRequired(url.to_owned())
        } else {
            Failure::Other(format!("{url}: {e}"))
        }
    })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    let review: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| format!("{url}: HTTP {status}, not a review"))?;
    if status.is_success() && review["response"]["allowed"] == true {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {status}: {review}").into())
    }
}
