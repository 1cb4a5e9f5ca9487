//! The `/validate` handler: bounds, exemptions, evaluation, response. The body is read with a
//! size limit and a deadline on the connection's runtime; the decision is made on the
//! evaluation pool (`pool`), which refuses or sheds what it cannot answer in time.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use http_body_util::BodyExt;
use tracing::{Span, info, info_span, warn};

use portcullis_engine::{self as engine, AdmissionInput, Operation, Outcome};

use super::pool::{Pool, Refused};
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
    /// Requests waiting for an evaluator at most; more are refused with 503 at once.
    pub max_in_flight: usize,
    /// Evaluator threads.
    pub evaluators: usize,
    /// Longest wait for an evaluator; a request that waited longer is shed with 503.
    pub max_queue_wait: Duration,
    /// Longest time to receive a request body.
    pub body_timeout: Duration,
    /// Small reviews may be decided on their connection's thread, one at a time: only when
    /// the runtime serving connections has more than one thread (see `pool`).
    pub decide_small_inline: bool,
}

/// The webhook's shared state.
#[derive(Clone)]
pub struct Webhook {
    config: Arc<WebhookConfig>,
    state: StateHandle,
    /// Where block and alert decisions go as events; `None` records nothing.
    recorder: Option<Recorder>,
    pub(super) pool: Pool,
    /// The never-synced warning, logged once a minute at most.
    not_synced_warned: Throttle,
    /// Overloads, logged once a second at most.
    overload_logged: Throttle,
    /// Every how many reviews one gets a span when traces are exported (0: none).
    trace_every: u64,
    reviews: Arc<std::sync::atomic::AtomicU64>,
}

/// Lets a log line through at most once per period, whatever the request rate: under a flood,
/// a line per request would be a flood of its own.
#[derive(Clone, Default)]
struct Throttle(Arc<std::sync::atomic::AtomicU64>);

impl Throttle {
    /// Whether a line may be logged now (then not again for `seconds`).
    fn ready(&self, seconds: u64) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = portcullis_runtime::clock::now_secs();
        let last = self.0.load(Relaxed);
        (last == 0 || now >= last + seconds)
            && self.0.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    }
}

impl Webhook {
    /// The webhook and its evaluation pool (threads that end with the last clone).
    pub fn new(config: WebhookConfig, state: StateHandle) -> std::io::Result<Self> {
        let pool = Pool::new(
            config.evaluators,
            config.max_in_flight,
            config.max_queue_wait,
        )?
        .inline_small(config.decide_small_inline);
        Ok(Self {
            config: Arc::new(config),
            state,
            recorder: None,
            pool,
            not_synced_warned: Throttle::default(),
            overload_logged: Throttle::default(),
            trace_every: 0,
            reviews: Arc::default(),
        })
    }

    /// Gives a span to about `ratio` (0 to 1) of the reviews when traces are exported.
    pub fn with_trace_ratio(mut self, ratio: f64) -> Self {
        self.trace_every = if ratio > 0.0 {
            (1.0 / ratio).round().max(1.0) as u64
        } else {
            0
        };
        self
    }

    /// A span for this review when it is one of the sampled; else a disabled one (no cost).
    fn review_span(&self, request: &review::Request) -> Span {
        if self.trace_every == 0 || !portcullis_runtime::logging::tracing_enabled() {
            return Span::none();
        }
        let seen = self
            .reviews
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !seen.is_multiple_of(self.trace_every) {
            return Span::none();
        }
        // Bounded: the export queue holds up to 2,048 spans, and a hostile review may carry
        // megabytes in any of these.
        info_span!(
            parent: None,
            "admission.review",
            uid = bounded(&request.uid, 128),
            kind = bounded(&request.kind.kind, 128),
            namespace = bounded(&request.namespace, 128),
            name = bounded(&request.name, 256),
            operation = bounded(&request.operation, 16),
            outcome = tracing::field::Empty,
            policies = tracing::field::Empty,
        )
    }

    /// The evaluation pool's counts of refused and shed reviews.
    pub fn pool_stats(&self) -> Arc<super::pool::PoolStats> {
        self.pool.stats.clone()
    }

    /// What the pool refused so far: (queue full, shed after waiting).
    pub fn refused(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.pool.stats;
        (stats.full.load(Relaxed), stats.shed.load(Relaxed))
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
        let span = self.review_span(&request);
        let _in_span = span.enter();
        let state = self.state.load();
        let decision = engine::evaluate(
            &input,
            &self.config.cluster,
            state.policies.values().map(|p| &p.policy),
            &state.scans,
        );
        if !span.is_disabled() {
            span.record("outcome", decision.outcome.word());
            span.record(
                "policies",
                bounded(&decision.policy_names().join(","), 1024),
            );
        }
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
        let mut response = respond::response(uid, input.kind, &decision);
        if !state.is_loaded() {
            // Admitting everything unchecked must never look like a clean verdict.
            response.warnings.push(NOT_SYNCED.to_owned());
            self.warn_not_synced();
        }
        if let Some(recorder) = &self.recorder {
            recorder.record(&request, decision, arc_swap::Guard::into_inner(state));
        }
        Ok(response)
    }
}

/// `text` cut to at most `max` bytes (at a character boundary).
fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The warning every review gets from an agent that has never received its policies.
pub const NOT_SYNCED: &str = "portcullis: this agent has not received its policies from the control plane yet; nothing was checked";

impl Webhook {
    /// Logs (at most once a minute) that reviews are admitted unchecked.
    fn warn_not_synced(&self) {
        if self.not_synced_warned.ready(60) {
            warn!(
                "Admission reviews are admitted unchecked: the agent has never received its policies from the control plane"
            );
        }
    }
}

/// `POST /validate` (AdmissionReview) and `POST /gatekeeper/verdicts` (Gatekeeper external
/// data), with the body limit, the body deadline and the evaluation pool's bounds.
pub fn router(webhook: Webhook) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route(GATEKEEPER_PATH, post(gatekeeper_verdicts))
        .with_state(webhook)
}

/// Where Gatekeeper's `Provider` points (`url: https://<service>.<namespace>:443/gatekeeper/verdicts`).
pub const GATEKEEPER_PATH: &str = "/gatekeeper/verdicts";

fn overloaded(webhook: &Webhook, refused: Refused) -> Response {
    if webhook.overload_logged.ready(1) {
        let (full, shed) = webhook.refused();
        warn!(reason = %refused, refused_total = full, shed_total = shed, "Webhook overloaded: requests refused with 503");
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        format!("portcullis: overloaded ({refused}); retry\n"),
    )
        .into_response()
}

/// The whole body, within the size limit and the deadline, or the response that refuses it.
async fn read_body(webhook: &Webhook, body: Body) -> Result<Bytes, Response> {
    let limit = webhook.config.max_body_bytes;
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(webhook.config.body_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("portcullis: the body is over {limit} bytes\n"),
        )
            .into_response()),
        Ok(Err(error)) => Err((
            StatusCode::BAD_REQUEST,
            format!("portcullis: reading the body: {error}\n"),
        )
            .into_response()),
        Err(_) => {
            warn!("Webhook request body not received in time");
            Err((
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "portcullis: the body did not arrive within {:?}\n",
                    webhook.config.body_timeout
                ),
            )
                .into_response())
        }
    }
}

async fn gatekeeper_verdicts(State(webhook): State<Webhook>, body: Body) -> Response {
    let body = match read_body(&webhook, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let hook = webhook.clone();
    let answer = webhook.pool.run(move || {
        let state = hook.state.load();
        gatekeeper::answer(&body, &hook.config.cluster, &state)
    });
    match answer.await {
        Ok(Ok(response)) => axum::Json(response).into_response(),
        Ok(Err(error)) => {
            warn!(%error, "Bad Gatekeeper ProviderRequest");
            (StatusCode::BAD_REQUEST, format!("portcullis: {error}\n")).into_response()
        }
        Err(refused) => overloaded(&webhook, refused),
    }
}

async fn validate(State(webhook): State<Webhook>, body: Body) -> Response {
    let body = match read_body(&webhook, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let hook = webhook.clone();
    let decided = webhook
        .pool
        .run_small(body.len(), move || hook.review(&body).map(review::to_body));
    match decided.await {
        Ok(Ok(response)) => {
            ([(header::CONTENT_TYPE, "application/json")], response).into_response()
        }
        Ok(Err(error)) => {
            warn!(%error, "Bad AdmissionReview");
            (StatusCode::BAD_REQUEST, format!("portcullis: {error}\n")).into_response()
        }
        Err(refused) => overloaded(&webhook, refused),
    }
}

#[cfg(test)]
mod tests {
    use super::{Throttle, bounded};

    #[test]
    fn span_attributes_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("pod", 128), "pod");
        assert_eq!(bounded(&"a".repeat(300), 256).len(), 256);
        // "é" is two bytes: a cut inside it moves back before it.
        assert_eq!(bounded("aé", 2), "a");
    }

    #[test]
    fn a_throttle_lets_one_line_through_per_period() {
        let throttle = Throttle::default();
        assert!(throttle.ready(60));
        assert!(!throttle.ready(60));
        assert!(!throttle.clone().ready(60), "clones share the period");
    }
}
