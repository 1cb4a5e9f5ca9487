//! The web console (docs/console.md): server-rendered pages on the control plane's TLS port,
//! beside gRPC. Every page calls the same API objects the gRPC services are, with the signed-in
//! operator's token, so roles, validation and errors are the API's own; the console adds
//! sessions, CSRF checks and HTML.

mod assets;
mod cache;
mod events;
mod fleet;
mod layout;
mod overview;
mod policies;
mod scans;
pub mod session;
mod signin;
mod split;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, FromRequestParts, Request},
    http::{HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use tonic::{Code, Status};

use crate::{
    api::{ClusterApi, EventApi, PolicyApi, ScanApi},
    auth::Authenticator,
};

pub use session::{SessionLimits, Sessions};
pub use split::{GrpcOrConsole, is_grpc};

use layout::Page;
use session::Session;

/// Largest policy upload (the CLI reads policy files up to the same size).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// What the console serves with.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    auth: Arc<Authenticator>,
    /// Pages that read every cluster or count a period's events, at most this many at once.
    heavy: tokio::sync::Semaphore,
    shutdown: tokio::sync::watch::Receiver<bool>,
    policies: Arc<PolicyApi>,
    clusters: Arc<ClusterApi>,
    events: Arc<EventApi>,
    scans: Arc<ScanApi>,
    sessions: Sessions,
    max_report_bytes: usize,
    /// Admissions per cluster over the last 24 hours (the fleet page).
    fleet_counts: Arc<cache::Cached<std::collections::HashMap<String, u64>>>,
    /// The overview's body (nothing in it depends on who reads it).
    overview: Arc<cache::Cached<String>>,
}

/// How long a period's event counts are served before they are counted again (in the
/// background: pages never wait for it but the first).
const SUMMARY_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// How the console runs.
pub struct ConsoleSettings {
    pub sessions: SessionLimits,
    /// The largest scan report an upload may carry (`--max-report-bytes`).
    pub max_report_bytes: usize,
    /// Becomes true when the control plane drains: live streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Heavy pages served at once (the rest wait their turn).
const HEAVY_PAGES: usize = 4;

/// The API objects the console calls (the ones the gRPC services serve).
pub struct Apis {
    pub policies: Arc<PolicyApi>,
    pub clusters: Arc<ClusterApi>,
    pub events: Arc<EventApi>,
    pub scans: Arc<ScanApi>,
}

impl Console {
    pub fn new(auth: Arc<Authenticator>, apis: Apis, settings: ConsoleSettings) -> Self {
        Console {
            inner: Arc::new(Inner {
                auth,
                heavy: tokio::sync::Semaphore::new(HEAVY_PAGES),
                shutdown: settings.shutdown,
                policies: apis.policies,
                clusters: apis.clusters,
                events: apis.events,
                scans: apis.scans,
                sessions: Sessions::new(settings.sessions),
                max_report_bytes: settings.max_report_bytes,
                fleet_counts: cache::Cached::new(SUMMARY_TTL),
                overview: cache::Cached::new(SUMMARY_TTL),
            }),
        }
    }

    /// A turn for a heavy page.
    async fn heavy(&self) -> tokio::sync::SemaphorePermit<'_> {
        // Never closed.
        self.inner
            .heavy
            .acquire()
            .await
            .expect("the heavy-page semaphore is never closed")
    }

    /// Resolves when the control plane starts draining.
    fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut shutdown = self.inner.shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    }

    /// The console's routes.
    pub fn router(&self) -> Router {
        let policy_limit = DefaultBodyLimit::max(MAX_POLICY_BYTES + 64 * 1024);
        let scan_limit = DefaultBodyLimit::max(self.inner.max_report_bytes + 64 * 1024);
        Router::new()
            .route("/", get(overview::page))
            .route("/signin", get(signin::form).post(signin::submit))
            .route("/signout", post(signin::signout))
            .route("/fleet", get(fleet::list))
            .route("/fleet/{name}", get(fleet::detail))
            .route("/fleet/{name}/protection", post(fleet::protection))
            .route("/policies", get(policies::list))
            .route(
                "/policies/apply",
                get(policies::apply_form)
                    .post(policies::apply)
                    .layer(policy_limit),
            )
            .route("/policies/{name}", get(policies::detail))
            .route(
                "/policies/{name}/delete",
                get(policies::confirm_delete).post(policies::delete),
            )
            .route("/events", get(events::list))
            .route("/events/stream", get(events::stream))
            .route("/events/handle", post(events::handle))
            .route("/events/{id}", get(events::detail))
            .route("/scans", get(scans::list))
            .route(
                "/scans/upload",
                get(scans::upload_form)
                    .post(scans::upload)
                    .layer(scan_limit),
            )
            .route("/scans/{id}", get(scans::detail))
            .route("/assets/{file}", get(assets::serve))
            .fallback(not_found)
            // Forms other than the uploads are small.
            .layer(DefaultBodyLimit::max(64 * 1024))
            .layer(middleware::from_fn(guard))
            .with_state(self.clone())
    }

    fn inner(&self) -> &Inner {
        &self.inner
    }
}

/// Headers on every console response, and the cross-site check of every state change.
async fn guard(request: Request, next: Next) -> Response {
    let state_changing = !matches!(*request.method(), Method::GET | Method::HEAD);
    if state_changing && !same_origin(&request) {
        let mut response = (
            StatusCode::FORBIDDEN,
            "cross-site request refused: the console accepts forms only from its own pages\n",
        )
            .into_response();
        secure_headers(&mut response);
        return response;
    }
    let mut response = next.run(request).await;
    secure_headers(&mut response);
    response
}

/// A browser says where a request comes from (`Sec-Fetch-Site`, `Origin`); a request it marks
/// as coming from another site is refused. The session's CSRF token is checked besides.
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .map(HeaderValue::as_bytes)
                .or_else(|| request.uri().authority().map(|a| a.as_str().as_bytes()));
            match (origin.as_bytes().strip_prefix(b"https://"), host) {
                (Some(origin_host), Some(host)) => origin_host == host,
                _ => false,
            }
        }
    }
}

fn secure_headers(response: &mut Response) {
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        axum::http::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
}

/// The signed-in operator of a request; without a live session a page sends the browser to
/// the sign-in page.
pub struct Signed(pub Session);

impl FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        session::cookie_value(&parts.headers)
            .and_then(|value| console.inner().sessions.get(value))
            .map(Signed)
            .ok_or_else(|| Redirect::to("/signin").into_response())
    }
}

/// A request to the API in the operator's name.
fn call<T>(session: &Session, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {}", session.token).parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A refused CSRF token.
fn csrf_refused(session: &Session) -> Response {
    Page::new("Refused", session)
        .status(StatusCode::FORBIDDEN)
        .error("The form was not from this session (CSRF token missing or wrong): reload the page and try again.")
        .render()
}

/// Why a multipart form was not read.
enum FormRefused {
    /// Larger than the route's body limit.
    TooLarge,
    /// Not from this session.
    Csrf,
}

/// Checks that a multipart form starts with the session's CSRF token (the forms put it first)
/// before anything else of it is read: an upload may be large, and is not read for a forged
/// or stale form.
async fn multipart_csrf(
    multipart: &mut axum::extract::Multipart,
    session: &Session,
) -> Result<(), FormRefused> {
    let refused = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            FormRefused::TooLarge
        } else {
            FormRefused::Csrf
        }
    };
    let mut field = match multipart.next_field().await {
        Ok(Some(field)) => field,
        Ok(None) => return Err(FormRefused::Csrf),
        Err(e) => return Err(refused(e)),
    };
    if field.name() != Some("csrf") {
        return Err(FormRefused::Csrf);
    }
    let mut value = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => value.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return Err(refused(e)),
        }
        if value.len() > 256 {
            return Err(FormRefused::Csrf);
        }
    }
    match std::str::from_utf8(&value) {
        Ok(csrf) if session.csrf_matches(csrf.trim()) => Ok(()),
        _ => Err(FormRefused::Csrf),
    }
}

/// What a viewer gets for a write page (the API refuses their writes anyway).
fn viewer_refused(session: &Session) -> Response {
    Page::new("Refused", session)
        .status(StatusCode::FORBIDDEN)
        .error(format!(
            "operator {:?} has role viewer, which is read-only",
            session.operator.name
        ))
        .render()
}

/// The page for an API error; a token no longer accepted ends at the sign-in page.
fn api_error(session: &Session, status: &Status) -> Response {
    let code = match status.code() {
        Code::Unauthenticated => return Redirect::to("/signin").into_response(),
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Page::new("Error", session)
        .status(code)
        .error(status.message())
        .render()
}

async fn not_found(signed: Option<Signed>) -> Response {
    match signed {
        Some(Signed(session)) => Page::new("Not found", &session)
            .status(StatusCode::NOT_FOUND)
            .error("No such page.")
            .render(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

impl axum::extract::OptionalFromRequestParts<Console> for Signed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Signed as FromRequestParts<Console>>::from_request_parts(parts, console)
                .await
                .ok(),
        )
    }
}
