//! Admin HTTP: `/livez` (the process runs), `/readyz` (the store is open and answers, and the
//! gRPC listener is up; false while draining), `/metrics` (Prometheus text from the OpenTelemetry meters);
//! the routes are `portcullis_runtime`'s, shared with the agent.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use axum::Router;
use portcullis_runtime::admin::{Readiness, routes};
use tokio::net::TcpListener;

/// Shared by the admin server and the wiring that flips readiness.
#[derive(Clone)]
pub struct AdminState {
    pub ready: Arc<AtomicBool>,
    pub registry: prometheus::Registry,
    /// Whether the store can serve (PostgreSQL: the database answers; sled: always).
    pub store: Arc<dyn Fn() -> bool + Send + Sync>,
}

pub fn router(state: AdminState) -> Router {
    let serving = state.ready.clone();
    let readiness = Readiness::default()
        .with("serving", move || serving.load(Ordering::Acquire))
        .with("store", move || (state.store)());
    routes(readiness, state.registry)
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding admin listener {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http::StatusCode};
    use tower::ServiceExt;

    async fn get_status(router: Router, path: &str) -> StatusCode {
        let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
        router.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn readiness_follows_the_flag() {
        let state = AdminState {
            ready: Arc::default(),
            registry: prometheus::Registry::new(),
            store: Arc::new(|| true),
        };
        assert_eq!(
            get_status(router(state.clone()), "/livez").await,
            StatusCode::OK
        );
        assert_eq!(
            get_status(router(state.clone()), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ready.store(true, Ordering::Release);
        assert_eq!(
            get_status(router(state.clone()), "/readyz").await,
            StatusCode::OK
        );
        assert_eq!(get_status(router(state), "/metrics").await, StatusCode::OK);
    }
}
