//! The `/validate` handler: bounds, exemptions, evaluation, response.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use portcullis_policy::engine::{self, AdmissionInput, Operation, Outcome};

use super::{gatekeeper, respond, review};
use crate::{events::Recorder, state::StateHandle};

/// What the webhook exempts and how much it takes on.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub cluster: String,
    /// Namespaces whose objects are admitted without evaluation (exact names).
    pub exempt_namespaces: Vec<String>,
    /// Usernames whose requests are admitted (the agent's own service account).
    pub exempt_users: Vec<String>,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
}

/// The webhook's shared state.
#[derive(Clone)]
pub struct Webhook {
    config: Arc<WebhookConfig>,
    state: StateHandle,
    /// Where block and alert decisions go as events; `None` records nothing.
    recorder: Option<Recorder>,
    pub(super) in_flight: Arc<Semaphore>,
}

impl Webhook {
    pub fn new(config: WebhookConfig, state: StateHandle) -> Self {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Self {
            config: Arc::new(config),
            state,
            recorder: None,
            in_flight,
        }
    }

    /// Records an event for every block and alert decision (not dry runs).
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Decides one AdmissionReview body. Synchronous: nothing here waits.
    pub fn review(&self, body: &[u8]) -> Result<review::Response, review::ReviewError> {
        let request = review::parse(body)?;
        let uid = request.uid.as_str();
        let namespace = request.namespace.as_str();
        if !namespace.is_empty() && self.config.exempt_namespaces.iter().any(|n| n == namespace) {
            return Ok(review::Response::allow(uid));
        }
        if self
            .config
            .exempt_users
            .contains(&request.user_info.username)
        {
            return Ok(review::Response::allow(uid));
        }
        let input = AdmissionInput {
            operation: Operation::parse(&request.operation),
            kind: &request.kind.kind,
            sub_resource: request.sub_resource.as_deref().unwrap_or(""),
            namespace,
            name: &request.name,
            object: request.object().map(|raw| raw.get()),
            old_object: request.old_object().map(|raw| raw.get()),
        };
        let state = self.state.load();
        let decision = engine::evaluate(
            &input,
            &self.config.cluster,
            state.policies.values().map(|p| &p.policy),
            &state.scans,
        );
        let dry_run = request.dry_run.unwrap_or(false);
        match &decision.outcome {
            Outcome::Block | Outcome::Alert => info!(
                uid,
                kind = input.kind,
                namespace,
                name = input.name,
                operation = %request.operation,
                user = %request.user_info.username,
                dry_run,
                outcome = ?decision.outcome,
                policies = %decision.policy_names().join(","),
                "Admission decision"
            ),
            Outcome::Invalid(reason) => {
                warn!(uid, kind = input.kind, namespace, name = input.name, %reason, "Object not valid for its kind")
            }
            Outcome::Allow => {}
        }
        let response = respond::response(uid, input.kind, &decision);
        if let Some(recorder) = &self.recorder {
            recorder.record(&request, decision, arc_swap::Guard::into_inner(state));
        }
        Ok(response)
    }
}

/// `POST /validate` (AdmissionReview) and `POST /gatekeeper/verdicts` (Gatekeeper external
/// data), with the body limit and the in-flight bound.
pub fn router(webhook: Webhook) -> Router {
    let limit = webhook.config.max_body_bytes;
    Router::new()
        .route("/validate", post(validate))
        .route(GATEKEEPER_PATH, post(gatekeeper_verdicts))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(webhook)
}

/// Where Gatekeeper's `Provider` points (`url: https://<service>.<namespace>:443/gatekeeper/verdicts`).
pub const GATEKEEPER_PATH: &str = "/gatekeeper/verdicts";

fn overloaded() -> Response {
    warn!("Webhook overloaded: request refused");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "portcullis: too many requests in flight; retry\n",
    )
        .into_response()
}

async fn gatekeeper_verdicts(State(webhook): State<Webhook>, body: Bytes) -> Response {
    let Ok(_permit) = webhook.in_flight.clone().try_acquire_owned() else {
        return overloaded();
    };
    let state = webhook.state.load();
    match gatekeeper::answer(&body, &webhook.config.cluster, &state) {
        Ok(response) => axum::Json(response).into_response(),
        Err(error) => {
            warn!(%error, "Bad Gatekeeper ProviderRequest");
            (StatusCode::BAD_REQUEST, format!("portcullis: {error}\n")).into_response()
        }
    }
}

async fn validate(State(webhook): State<Webhook>, body: Bytes) -> Response {
    let Ok(_permit) = webhook.in_flight.clone().try_acquire_owned() else {
        return overloaded();
    };
    match webhook.review(&body) {
        Ok(response) => (
            [(header::CONTENT_TYPE, "application/json")],
            review::to_body(response),
        )
            .into_response(),
        Err(error) => {
            warn!(%error, "Bad AdmissionReview");
            (StatusCode::BAD_REQUEST, format!("portcullis: {error}\n")).into_response()
        }
    }
}
