//! Who may do what: sign-in, sessions, CSRF, cross-site forms, headers, viewers.

use std::time::Duration;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};

use super::*;

const PAGES: &[&str] = &[
    "/",
    "/fleet",
    "/fleet/prod-eu-1",
    "/policies",
    "/policies/apply",
    "/events",
    "/scans",
    "/scans/upload",
];

#[tokio::test]
async fn pages_need_a_session() {
    let h = harness().await;
    for page in PAGES {
        let reply = h.get(None, page).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(reply.location(), "/signin", "{page}");
    }
    let reply = h.get(None, "/signin").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.contains("name=\"token\""));
}

#[tokio::test]
async fn sign_in_sets_a_strict_session_cookie() {
    let h = harness().await;
    let reply = h.post(None, "/signin", &[("token", ADMIN)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), "/");
    let cookie = reply.headers[header::SET_COOKIE].to_str().unwrap();
    for attribute in [
        "__Host-portcullis-session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(
        !cookie.contains(ADMIN),
        "the token never goes to the browser"
    );
    assert!(!cookie.contains("Domain"), "{cookie}");

    // Signing in again from the same browser ends its previous session.
    let first = h.sign_in(ADMIN).await;
    let again = h
        .send(
            Request::post("/signin")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::COOKIE, &first.cookie)
                .body(Body::from(format!("token={VIEWER}")))
                .unwrap(),
        )
        .await;
    assert_eq!(again.status, StatusCode::SEE_OTHER);
    assert_eq!(h.get(Some(&first), "/fleet").await.location(), "/signin");
}

#[tokio::test]
async fn wrong_and_agent_tokens_cannot_sign_in() {
    let h = harness().await;
    for (token, status, says) in [
        ("", StatusCode::UNAUTHORIZED, "not a token"),
        ("nope", StatusCode::UNAUTHORIZED, "not a token"),
        (&"x".repeat(10_000), StatusCode::UNAUTHORIZED, "not a token"),
        (
            "bad\u{7f}token\u{e9}",
            StatusCode::UNAUTHORIZED,
            "not a token",
        ),
        (AGENT, StatusCode::FORBIDDEN, "agents cannot sign in"),
    ] {
        let reply = h.post(None, "/signin", &[("token", token)]).await;
        assert_eq!(reply.status, status, "{token:.20}");
        assert!(reply.body.contains(says), "{}", reply.body);
        assert!(!reply.headers.contains_key(header::SET_COOKIE));
    }
    assert_eq!(h.console.inner().sessions.len(), 0);
}

#[tokio::test]
async fn forged_ended_and_expired_sessions_are_refused() {
    let h = harness_with(SessionLimits {
        idle: Duration::from_millis(300),
        ..SessionLimits::default()
    })
    .await;
    let forged = Browser {
        cookie: format!("__Host-portcullis-session={}", "a".repeat(64)),
        csrf: String::new(),
    };
    assert_eq!(h.get(Some(&forged), "/fleet").await.location(), "/signin");
    let junk = Browser {
        cookie: "__Host-portcullis-session=<script>; other=1".into(),
        csrf: String::new(),
    };
    assert_eq!(h.get(Some(&junk), "/fleet").await.location(), "/signin");

    let browser = h.sign_in(ADMIN).await;
    assert_eq!(h.get(Some(&browser), "/fleet").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        h.get(Some(&browser), "/fleet").await.location(),
        "/signin",
        "idle past the limit"
    );

    let browser = h.sign_in(ADMIN).await;
    let reply = h
        .post(Some(&browser), "/signout", &[("csrf", &browser.csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(
        reply.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(h.get(Some(&browser), "/fleet").await.location(), "/signin");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let h = harness().await;
    let browser = h.sign_in(ADMIN).await;
    let mut replies = vec![h.get(None, "/signin").await, h.get(None, "/fleet").await];
    for page in PAGES {
        replies.push(h.get(Some(&browser), page).await);
    }
    replies.push(
        h.post(Some(&browser), "/fleet/prod-eu-1/protection", &[])
            .await,
    );
    for reply in replies {
        let csp = reply.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(reply.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(reply.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(reply.headers[header::X_FRAME_OPTIONS], "DENY");
        assert!(!reply.body.contains("<script>"), "no inline script");
    }
    let js = h.get(None, "/assets/console.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        h.get(None, "/assets/../../etc/passwd").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get(None, "/assets/secret.txt").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Every state-changing route with a plausible form, but `csrf` as given.
fn writes(csrf: &str) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    vec![
        (
            "/fleet/prod-eu-1/protection",
            vec![
                ("csrf", csrf.to_owned()),
                ("enabled", "false".into()),
                ("failure_policy", "ignore".into()),
                ("timeout_seconds", "10".into()),
            ],
        ),
        (
            "/policies/no-privileged/delete",
            vec![("csrf", csrf.to_owned()), ("revision", "0".into())],
        ),
        (
            "/events/handle",
            vec![
                ("csrf", csrf.to_owned()),
                ("ids", uuid::Uuid::now_v7().to_string()),
                ("state", "handled".into()),
            ],
        ),
        // Last: it ends the session.
        ("/signout", vec![("csrf", csrf.to_owned())]),
    ]
}

async fn post_each(h: &Harness, browser: &Browser, csrf: &str) -> Vec<(String, Reply)> {
    let mut replies = Vec::new();
    for (path, form) in writes(csrf) {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        replies.push((path.to_owned(), h.post(Some(browser), path, &form).await));
    }
    replies
}

#[tokio::test]
async fn writes_without_the_sessions_csrf_token_are_refused() {
    let h = harness().await;
    h.apply_policy(PRIVILEGED).await;
    let browser = h.sign_in(ADMIN).await;
    let other = h.sign_in(ADMIN).await;
    for csrf in ["", "0000", other.csrf.as_str()] {
        for (path, reply) in post_each(&h, &browser, csrf).await {
            assert_eq!(
                reply.status,
                StatusCode::FORBIDDEN,
                "{path} with csrf {csrf:?}"
            );
            assert!(reply.body.contains("CSRF"), "{path}: {}", reply.body);
        }
    }
    for (path, parts) in [
        (
            "/policies/apply",
            vec![
                ("yaml", None, PRIVILEGED.as_bytes()),
                ("mode", None, &b"apply"[..]),
            ],
        ),
        (
            "/scans/upload",
            vec![("report", Some("r.json"), &b"{}"[..])],
        ),
    ] {
        let reply = h.post_multipart(&browser, path, &parts).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
    }
    // Nothing changed.
    let cluster = h.store.get_cluster("prod-eu-1").await.unwrap().unwrap();
    assert!(
        cluster.protection.unwrap_or_default().enabled,
        "protection unchanged"
    );
    assert!(h.store.get_policy("no-privileged").await.unwrap().is_some());
    assert_eq!(
        h.get(Some(&browser), "/fleet").await.status,
        StatusCode::OK,
        "still signed in"
    );
}

#[tokio::test]
async fn cross_site_forms_are_refused_before_anything_runs() {
    let h = harness().await;
    let browser = h.sign_in(ADMIN).await;
    for (site, origin) in [
        (Some("cross-site"), None),
        (Some("same-site"), None),
        (None, Some("https://evil.example")),
        (None, Some("null")),
    ] {
        let mut request = Request::post("/signout")
            .header(header::HOST, "console.example")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, &browser.cookie);
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let body = format!("csrf={}", browser.csrf);
        let reply = h.send(request.body(Body::from(body)).unwrap()).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{site:?} {origin:?}");
    }
    // Login CSRF: a cross-site sign-in form is refused too.
    let request = Request::post("/signin")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .body(Body::from(format!("token={ADMIN}")))
        .unwrap();
    assert_eq!(h.send(request).await.status, StatusCode::FORBIDDEN);
    // The same origin is fine.
    let request = Request::post("/signout")
        .header(header::HOST, "console.example")
        .header(header::ORIGIN, "https://console.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, &browser.cookie)
        .body(Body::from(format!("csrf={}", browser.csrf)))
        .unwrap();
    assert_eq!(h.send(request).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_viewer_sees_no_write_controls_and_the_server_refuses_their_writes() {
    let h = harness().await;
    h.apply_policy(PRIVILEGED).await;
    let event = h.add_event(|_| {}).await;
    let viewer = h.sign_in(VIEWER).await;
    for page in [
        "/".to_owned(),
        "/fleet".to_owned(),
        "/fleet/prod-eu-1".to_owned(),
        "/policies".to_owned(),
        "/policies/no-privileged".to_owned(),
        "/events".to_owned(),
        format!("/events/{}", event.id),
        "/scans".to_owned(),
    ] {
        let reply = h.get(Some(&viewer), &page).await;
        assert_eq!(reply.status, StatusCode::OK, "{page}");
        // The only form a viewer gets is sign-out.
        assert_eq!(
            reply.body.matches("method=\"post\"").count(),
            1,
            "{page}: {}",
            reply.body
        );
        for control in [
            "/policies/apply",
            "/delete",
            "/protection",
            "/events/handle",
            "/scans/upload",
            "name=\"ids\"",
        ] {
            assert!(!reply.body.contains(control), "{page} offers {control}");
        }
    }
    for page in [
        "/policies/apply",
        "/scans/upload",
        "/policies/no-privileged/delete",
    ] {
        let reply = h.get(Some(&viewer), page).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{page}");
        assert!(reply.body.contains("viewer"), "{page}");
    }
    // Forms crafted by hand, with the viewer's valid CSRF token: refused by the API.
    for (path, reply) in post_each(&h, &viewer, &viewer.csrf.clone()).await {
        if path == "/signout" {
            continue;
        }
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: {}",
            reply.body
        );
        assert!(reply.body.contains("read-only"), "{path}: {}", reply.body);
    }
    let viewer = h.sign_in(VIEWER).await;
    let reply = h
        .post_multipart(
            &viewer,
            "/policies/apply",
            &[
                ("csrf", None, viewer.csrf.as_bytes()),
                ("yaml", None, PRIVILEGED.as_bytes()),
                ("mode", None, b"apply"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let report = std::fs::read(trivy_fixture()).unwrap();
    let reply = h
        .post_multipart(
            &viewer,
            "/scans/upload",
            &[
                ("csrf", None, viewer.csrf.as_bytes()),
                ("report", Some("r.json"), &report),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(
        h.store
            .get_cluster("prod-eu-1")
            .await
            .unwrap()
            .unwrap()
            .protection
            .unwrap()
            .enabled
    );
    assert_eq!(
        h.events
            .get(&uuid::Uuid::parse_str(&event.id).unwrap())
            .await
            .unwrap()
            .unwrap()
            .state,
        "new"
    );
}

/// A real Trivy report (the scan crate's fixtures, Apache-2.0: crates/scan/tests/scans).
pub fn trivy_fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/scan/tests/scans/trivy/alpine-310.json")
}
