//! The admin server's shared routes: `/livez` (the process runs), `/readyz` (every named
//! readiness condition holds; the answer names those that do not), `/metrics` (Prometheus
//! text, `text/plain; version=0.0.4`, which Prometheus 3 scrapes without a fallback).

use std::sync::Arc;

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder, TextEncoder};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::Instrument;

type Check = Arc<dyn Fn() -> bool + Send + Sync>;

/// Named conditions that together make a binary ready.
#[derive(Clone, Default)]
pub struct Readiness {
    conditions: Vec<(&'static str, Check)>,
}

impl Readiness {
    /// Adds a condition; `name` is what `/readyz` reports while it does not hold.
    pub fn with(
        mut self,
        name: &'static str,
        check: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        self.conditions.push((name, Arc::new(check)));
        self
    }

    /// The conditions that do not hold now.
    pub fn unmet(&self) -> Vec<&'static str> {
        self.conditions
            .iter()
            .filter(|(_, check)| !check())
            .map(|(name, _)| *name)
            .collect()
    }

    pub fn ready(&self) -> bool {
        self.conditions.iter().all(|(_, check)| check())
    }

    /// `/readyz`: 200 `ready`, or 503 `not ready: <the conditions that do not hold>`.
    pub fn response(&self) -> Response {
        match self.unmet().as_slice() {
            [] => (StatusCode::OK, "ready\n").into_response(),
            unmet => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", unmet.join(", ")),
            )
                .into_response(),
        }
    }
}

/// `/metrics`: everything in `registry`, in the Prometheus text format.
pub fn metrics(registry: &prometheus::Registry) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `/livez`, `/readyz` and `/metrics`; a binary merges its own routes in.
pub fn routes(readiness: Readiness, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(move || async move { readiness.response() }))
        .route("/metrics", get(move || async move { metrics(&registry) }))
}

/// Serves `router` on `listener` until `shutdown` turns true.
pub fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await
        }
        .instrument(tracing::info_span!("admin")),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::{Body, to_bytes};
    use tower::ServiceExt;

    use super::*;

    async fn get(router: Router, path: &str) -> (StatusCode, Option<String>, String) {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn readiness_names_what_is_missing_and_metrics_say_their_format() {
        let (listening, loaded) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let readiness = Readiness::default()
            .with("listening", {
                let listening = listening.clone();
                move || listening.load(Ordering::Acquire)
            })
            .with("state loaded", {
                let loaded = loaded.clone();
                move || loaded.load(Ordering::Acquire)
            });
        let registry = prometheus::Registry::new();
        let counter = prometheus::IntCounter::new("probe_total", "a probe").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let router = routes(readiness, registry);
        assert_eq!(get(router.clone(), "/livez").await.0, StatusCode::OK);
        let (status, _, body) = get(router.clone(), "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: listening, state loaded\n"
            )
        );
        listening.store(true, Ordering::Release);
        let (_, _, body) = get(router.clone(), "/readyz").await;
        assert_eq!(body, "not ready: state loaded\n");
        loaded.store(true, Ordering::Release);
        let (status, _, body) = get(router.clone(), "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
        let (status, content_type, body) = get(router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
        assert!(body.contains("probe_total 1"), "{body}");
    }
}
