//! Admin HTTP: `/livez`, `/readyz` (there is state to enforce — from the cache or a sync — and
//! the listeners are up; false while draining), `/metrics` (Prometheus), and `/state` (what the
//! agent enforces and how its sync stands, as JSON, for operators and tests).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{Encoder, TextEncoder};
use serde_json::{Value, json};

use crate::{state::StateHandle, stats::SyncStats};

#[derive(Clone)]
pub struct AdminState {
    pub cluster: String,
    pub listening: Arc<AtomicBool>,
    /// The webhook serves its real certificate (Kubernetes mode: the Secret's).
    pub tls_ready: Arc<AtomicBool>,
    pub state: StateHandle,
    pub stats: Arc<SyncStats>,
    pub registry: prometheus::Registry,
    /// The event outbox, when events are recorded.
    pub outbox: Option<Arc<crate::events::Outbox>>,
    /// What the webhook's evaluation pool refused.
    pub webhook: Arc<crate::webhook::pool::PoolStats>,
}

impl AdminState {
    fn ready(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && self.tls_ready.load(Ordering::Acquire)
            && self.state.load().is_loaded()
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/state", get(agent_state))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string().into_bytes(),
        ),
    }
}

async fn agent_state(State(admin): State<AdminState>) -> Json<Value> {
    let state = admin.state.load();
    let stats = &admin.stats;
    Json(json!({
        "cluster": admin.cluster,
        "ready": admin.ready(),
        "listening": admin.listening.load(Ordering::Acquire),
        "epoch": state.epoch,
        "revision": state.revision,
        "policies": state.policies.keys().collect::<Vec<_>>(),
        "scans": state.scans.len(),
        "protection": state.protection.as_ref().map(|p| json!({
            "enabled": p.enabled,
            "failurePolicy": p.failure_policy,
            "timeoutSeconds": p.timeout_seconds,
        })),
        "connected": stats.connected(),
        "lastSyncMode": stats.mode(),
        "snapshots": stats.snapshots.load(Ordering::Relaxed),
        "deltas": stats.deltas.load(Ordering::Relaxed),
        "nacks": stats.nacks.load(Ordering::Relaxed),
        "reconnects": stats.reconnects.load(Ordering::Relaxed),
        "cacheAgeSeconds": stats.cache_age_seconds(state.applied_at_ms),
        "lastError": stats.error(),
        "cacheRecovery": stats.error_for_report(),
        "protectionState": stats.protection().0,
        "deployError": stats.protection().1,
        "webhook": json!({
            "refused": admin.webhook.full.load(Ordering::Relaxed),
            "shed": admin.webhook.shed.load(Ordering::Relaxed),
        }),
        "events": admin.outbox.as_ref().map(|o| json!({
            "pending": o.len(),
            "dropped": o.dropped(),
            "refused": o.refused(),
            "delivered": o.delivered(),
        })),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn ready_only_with_state_and_listeners() {
        let admin = AdminState {
            cluster: "c1".into(),
            listening: Arc::default(),
            tls_ready: Arc::new(AtomicBool::new(true)),
            state: crate::state::handle(Default::default()),
            stats: Arc::default(),
            registry: prometheus::Registry::new(),
            outbox: None,
            webhook: Arc::default(),
        };
        let status = |admin: AdminState, path: &'static str| async move {
            let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
            router(admin).oneshot(request).await.unwrap().status()
        };
        admin.listening.store(true, Ordering::Release);
        assert_eq!(
            status(admin.clone(), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        admin.state.store(Arc::new(crate::state::AgentState {
            epoch: "e".into(),
            ..Default::default()
        }));
        assert_eq!(status(admin.clone(), "/readyz").await, StatusCode::OK);
        assert_eq!(status(admin.clone(), "/state").await, StatusCode::OK);
        assert_eq!(status(admin, "/metrics").await, StatusCode::OK);
    }
}
