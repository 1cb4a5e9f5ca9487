//! Admin HTTP: `/livez`, `/readyz` (there is state to enforce — from the cache or a sync —, the
//! webhook serves its certificate, and the listeners are up; false while draining; the answer
//! names what is missing), `/metrics` (Prometheus; these three from `portcullis_runtime`), and
//! `/state` (what the agent enforces and how its sync stands, as JSON, for operators and tests).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{Json, Router, extract::State, routing::get};
use portcullis_runtime::admin::{Readiness, routes};
use serde_json::{Value, json};

use crate::{state::StateHandle, stats::SyncStats};

#[derive(Clone)]
pub struct AdminState {
    pub cluster: String,
    /// The control plane URLs the agent was given.
    pub control_planes: Vec<String>,
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
    /// The continuous audit, when it is on (Kubernetes mode).
    pub audit: Option<Arc<crate::audit::AuditStats>>,
}

impl AdminState {
    fn readiness(&self) -> Readiness {
        let (listening, tls_ready, state) = (
            self.listening.clone(),
            self.tls_ready.clone(),
            self.state.clone(),
        );
        Readiness::default()
            .with("listening", move || listening.load(Ordering::Acquire))
            .with("webhook certificate", move || {
                tls_ready.load(Ordering::Acquire)
            })
            .with("policy state", move || state.load().is_loaded())
    }

    fn ready(&self) -> bool {
        self.readiness().ready()
    }
}

pub fn router(state: AdminState) -> Router {
    let shared = routes(state.readiness(), state.registry.clone());
    Router::new()
        .route("/state", get(agent_state))
        .with_state(state)
        .merge(shared)
}

async fn agent_state(State(admin): State<AdminState>) -> Json<Value> {
    let state = admin.state.load();
    let stats = &admin.stats;
    let in_use = stats.control_plane();
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
        // The URL of the stream in use and the address it connected to (null: no stream).
        "controlPlane": json!({
            "address": in_use.as_ref().map(|(url, _)| url),
            "resolved": in_use.as_ref().map(|(_, address)| address),
            "addresses": admin.control_planes,
        }),
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
        "audit": admin.audit.as_ref().map(|a| a.to_json()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http::StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn ready_only_with_state_and_listeners() {
        let admin = AdminState {
            cluster: "c1".into(),
            control_planes: vec!["https://a:8443".into(), "https://b:8443".into()],
            listening: Arc::default(),
            tls_ready: Arc::new(AtomicBool::new(true)),
            state: crate::state::handle(Default::default()),
            stats: Arc::default(),
            registry: prometheus::Registry::new(),
            outbox: None,
            webhook: Arc::default(),
            audit: Some(Arc::default()),
        };
        let get = |admin: AdminState, path: &'static str| async move {
            let request = axum::http::Request::get(path).body(Body::empty()).unwrap();
            let response = router(admin).oneshot(request).await.unwrap();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (
                status,
                content_type,
                String::from_utf8_lossy(&body).into_owned(),
            )
        };
        admin.listening.store(true, Ordering::Release);
        let (status, _, body) = get(admin.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: policy state\n");
        admin.state.store(Arc::new(crate::state::AgentState {
            epoch: "e".into(),
            ..Default::default()
        }));
        assert_eq!(get(admin.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, _, body) = get(admin.clone(), "/state").await;
        assert_eq!(status, StatusCode::OK);
        let state: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(state["audit"]["running"], false, "{state}");
        assert_eq!(
            state["controlPlane"],
            json!({"address": null, "resolved": null, "addresses": ["https://a:8443", "https://b:8443"]})
        );
        admin
            .stats
            .set_control_plane(Some(("https://b:8443".into(), "10.0.0.2:8443".into())));
        let (_, _, body) = get(admin.clone(), "/state").await;
        let state: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(state["controlPlane"]["address"], "https://b:8443");
        assert_eq!(state["controlPlane"]["resolved"], "10.0.0.2:8443");
        assert_eq!(state["audit"]["lastError"], "", "{state}");
        // Prometheus 3 refuses to scrape an unknown content type by default.
        let (status, content_type, _) = get(admin, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
    }
}
