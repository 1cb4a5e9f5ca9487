//! HTTPS serving for the webhook port: a TLS accept loop feeding an axum router over HTTP/1.1
//! or HTTP/2 (keep-alive), with graceful shutdown that lets in-flight requests finish. Every
//! stage a client controls is bounded: connections open at once (past the limit new ones wait
//! in the kernel's backlog), the TLS handshake, the request head (also the wait for the next
//! request on a kept-alive connection) and, in the handler, the body.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::ServerConfig;
use tokio::{net::TcpListener, sync::Semaphore, sync::watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// The bounds of the webhook's connections.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Connections served at once.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// Longest wait for a request's head, the first one or the next on a kept connection.
    pub header_timeout: Duration,
    /// Longest wait for open connections to finish when shutting down.
    pub drain: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(10),
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` turns true, then waits (up to
/// `limits.drain`) for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    limits: ServeLimits,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    // The protocol is the one TLS negotiated (ALPN): sniffing it from the first bytes would
    // wait on a silent client with no deadline.
    let http1 = builder.clone().http1_only();
    let http2 = builder.http2_only();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut stopped => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(%error, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let (http1, http2) = (http1.clone(), http2.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let handshake = acceptor.accept(tcp);
            let tls = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let builder = if h2 { &http2 } else { &http1 };
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                debug!(%peer, %error, "Connection ended with an error");
            }
        });
    }
    info!("Webhook listener closed; draining connections");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain) => warn!("Webhook drain timed out"),
    }
}
