//! The TLS port: accepts TCP connections and completes their handshakes concurrently (one
//! slow or silent client delays nobody), offering HTTP/2 and HTTP/1.1 by ALPN: gRPC clients
//! and browsers take h2, an HTTP/1.1-only client (a proxy, `curl --http1.1`) still reaches the
//! console. tonic serves the finished streams.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::tls::Identity;

/// A client has this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; beyond it, new connections are closed at once.
const MAX_HANDSHAKES: usize = 1024;

pub type Incoming = ReceiverStream<Result<TlsStream<tokio::net::TcpStream>, std::io::Error>>;

/// The rustls configuration of the port.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the TLS certificate chain")?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .context("reading the TLS private key")?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts on `listener` until the stream is dropped (tonic drops it when it drains; the
/// listener closes then, so new clients are refused rather than accepted and dropped) or the
/// returned task is aborted; finished TLS streams come out of the stream.
pub fn incoming(listener: TcpListener, config: Arc<ServerConfig>) -> (Incoming, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) if out_of_resources(&error) => {
                        // Out of file descriptors or memory: wait rather than spin.
                        warn!(%error, "Accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    // One connection's trouble (reset before it was accepted, …).
                    Err(error) => {
                        debug!(%error, "Accepting a connection failed");
                        continue;
                    }
                },
            };
            // Too many handshakes under way (a flood of silent clients): this one is closed at
            // once, and accepting goes on.
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                debug!(%peer, "Too many TLS handshakes in progress: connection closed");
                continue;
            };
            // No Nagle: a response larger than one segment otherwise waits out the client's
            // delayed ACK (40 ms on Linux).
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (ReceiverStream::new(rx), task)
}

/// Whether an accept error is the process running out of something (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM on Linux), rather than one connection's.
fn out_of_resources(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(12 | 23 | 24 | 105))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn identity() -> Identity {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    async fn handshake(port: u16, cert_pem: &str, alpn: &[&[u8]]) -> Option<Vec<u8>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .ok()?;
        Some(
            stream
                .get_ref()
                .1
                .alpn_protocol()
                .unwrap_or_default()
                .to_vec(),
        )
    }

    #[tokio::test]
    async fn h2_and_http1_are_offered_and_a_silent_client_blocks_nobody() {
        let identity = identity();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut incoming, task) = incoming(listener, server_config(&identity).unwrap());
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(Ok(mut stream)) = incoming.next().await {
                let _ = stream.write_all(b"ok").await;
                let _ = stream.shutdown().await;
            }
        });
        // A client that connects and says nothing, holding its handshake open: the others
        // complete their handshakes meanwhile.
        let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        for (offered, chosen) in [
            (vec![&b"h2"[..], b"http/1.1"], &b"h2"[..]),
            (vec![&b"http/1.1"[..]], &b"http/1.1"[..]),
            (vec![], &b""[..]),
        ] {
            let negotiated = handshake(port, &identity.cert_pem, &offered).await;
            assert_eq!(negotiated.as_deref(), Some(chosen), "{offered:?}");
        }
        assert!(
            handshake(port, &identity.cert_pem, &[b"spdy/3"])
                .await
                .is_none()
        );
        task.abort();
    }

    #[tokio::test]
    async fn the_listener_closes_when_the_server_stops_taking_connections() {
        let identity = identity();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (incoming, task) = incoming(listener, server_config(&identity).unwrap());
        drop(incoming);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the accept loop ends")
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "refused, not accepted and dropped"
        );
    }
}
