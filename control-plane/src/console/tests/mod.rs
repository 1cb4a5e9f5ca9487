//! Handler tests: the console's router over a real sled store and the real API objects, with
//! an admin, a viewer and an agent token. Requests go through the router as a browser's would
//! (cookies, forms, multipart uploads), without a network.

mod access;
mod escaping;
mod pages;
mod writes;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode, header},
};
use http_body_util::BodyExt;
use tower::ServiceExt;

use portcullis_proto::v1::{Cluster, Event, EventFinding, Policy};

use super::{Apis, Console, ConsoleSettings, SessionLimits};
use crate::{
    api::{ClusterApi, EventApi, PolicyApi, ScanApi},
    audit::{AuditSettings, ViolationStore},
    auth::{Authenticator, Role, token_sha256},
    events::{EventSettings, EventStore},
    fleet::Fleet,
    store::Store,
};

pub const ADMIN: &str = "admin-token-0123456789";
pub const VIEWER: &str = "viewer-token-0123456789";
pub const AGENT: &str = "agent-token-0123456789";

pub struct Harness {
    pub router: Router,
    pub console: Console,
    pub store: Arc<Store>,
    pub events: Arc<EventStore>,
    /// Sends true to drain, as the server does on SIGTERM.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A signed-in browser: its cookie and the session's CSRF token.
#[derive(Clone)]
pub struct Browser {
    pub cookie: String,
    pub csrf: String,
}

pub async fn harness() -> Harness {
    harness_with(SessionLimits::default()).await
}

pub async fn harness_with(limits: SessionLimits) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_sled(dir.path()).unwrap());
    let mut auth = Authenticator::new(store.clone());
    auth.add_operator("alice", Role::Admin, ADMIN);
    auth.add_operator("victor", Role::Viewer, VIEWER);
    let auth = Arc::new(auth);
    store
        .register_cluster(
            Cluster {
                name: "prod-eu-1".into(),
                description: "Production, Frankfurt".into(),
                protection: Some(portcullis_proto::v1::ProtectionSettings {
                    enabled: true,
                    failure_policy: "ignore".into(),
                    timeout_seconds: 10,
                }),
                ..Cluster::default()
            },
            token_sha256(AGENT),
        )
        .await
        .unwrap();
    let events = Arc::new(EventStore::open(store.clone(), EventSettings::default()).unwrap());
    let violations = Arc::new(
        ViolationStore::open(store.clone(), AuditSettings::default())
            .await
            .unwrap(),
    );
    let apis = Apis {
        policies: Arc::new(PolicyApi::new(store.clone(), auth.clone())),
        clusters: Arc::new(ClusterApi::new(
            store.clone(),
            auth.clone(),
            Fleet::default(),
            violations,
        )),
        events: Arc::new(EventApi::new(events.clone(), auth.clone())),
        scans: Arc::new(ScanApi::new(store.clone(), auth.clone(), 256 * 1024)),
    };
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let console = Console::new(
        auth,
        apis,
        ConsoleSettings {
            sessions: limits,
            max_report_bytes: 256 * 1024,
            shutdown: shutdown_rx,
        },
    );
    Harness {
        router: console.router(),
        console,
        store,
        events,
        shutdown,
        _dir: dir,
    }
}

impl Harness {
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, browser: Option<&Browser>, path: &str) -> Reply {
        let mut request = Request::get(path);
        if let Some(browser) = browser {
            request = request.header(header::COOKIE, &browser.cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// POSTs a URL-encoded form (the CSRF field is the caller's to add).
    pub async fn post(
        &self,
        browser: Option<&Browser>,
        path: &str,
        form: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin");
        if let Some(browser) = browser {
            request = request.header(header::COOKIE, &browser.cookie);
        }
        let body = serde_urlencoded::to_string(form).unwrap();
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    /// POSTs a multipart form: (name, file name if a file, content).
    pub async fn post_multipart(
        &self,
        browser: &Browser,
        path: &str,
        parts: &[(&str, Option<&str>, &[u8])],
    ) -> Reply {
        let boundary = "----portcullis-test-boundary-7f3a";
        let mut body = Vec::new();
        for (name, file, content) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some(file) => body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let request = Request::post(path)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header("sec-fetch-site", "same-origin")
            .header(header::COOKIE, &browser.cookie)
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    /// Signs in with `token`; panics unless it worked.
    pub async fn sign_in(&self, token: &str) -> Browser {
        let reply = self.post(None, "/signin", &[("token", token)]).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        let set_cookie = reply.headers[header::SET_COOKIE].to_str().unwrap();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let mut browser = Browser {
            cookie,
            csrf: String::new(),
        };
        let page = self.get(Some(&browser), "/policies").await;
        browser.csrf = csrf_of(&page.body);
        browser
    }

    pub async fn apply_policy(&self, yaml: &str) {
        let policies = portcullis_policy::parse_policy_documents(yaml).unwrap();
        let policies: Vec<Policy> = policies;
        self.store.apply_policies(policies).await.unwrap();
    }

    /// Stores an event as an agent's report would.
    pub async fn add_event(&self, change: impl FnOnce(&mut Event)) -> Event {
        let id = uuid::Uuid::now_v7();
        let now = time::OffsetDateTime::now_utc();
        let mut event = Event {
            id: id.to_string(),
            time: Some(pbjson_types::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: 0,
            }),
            cluster: "prod-eu-1".into(),
            namespace: "shop".into(),
            kind: "Pod".into(),
            name: "web-1".into(),
            operation: "CREATE".into(),
            user: "system:serviceaccount:ci:deployer".into(),
            images: vec!["docker.io/library/nginx:1.25".into()],
            policy: "no-privileged".into(),
            policy_revision: 1,
            action: "blocked".into(),
            findings: vec![EventFinding {
                rule: "privileged".into(),
                path: "spec.containers[0].securityContext.privileged".into(),
                value: "true".into(),
                message: "privileged containers are not allowed".into(),
                cve_ids: Vec::new(),
            }],
            admission_uid: uuid::Uuid::new_v4().to_string(),
            count: 1,
            ..Event::default()
        };
        change(&mut event);
        let id = uuid::Uuid::parse_str(&event.id).unwrap_or(id);
        self.events.ingest(vec![(id, event.clone())]).await.unwrap();
        event
    }
}

/// The CSRF token in a page's forms.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_owned()
}

/// A policy that blocks privileged containers.
pub const PRIVILEGED: &str = "\
name: no-privileged
description: Privileged containers are not allowed
action: block
rules:
  resource:
    privileged: {}
";

pub fn wait() -> Duration {
    Duration::from_secs(5)
}
