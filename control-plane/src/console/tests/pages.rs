//! What each page shows: fleet paging, filters and sorting; policies with where they apply;
//! events with filters, paging and live arrivals; scans; the overview.

use axum::http::StatusCode;
use futures_util::StreamExt;
use tower::ServiceExt;

use super::*;
use crate::auth::token_sha256;

async fn register(h: &Harness, name: &str) {
    h.store
        .register_cluster(
            Cluster {
                name: name.into(),
                ..Cluster::default()
            },
            token_sha256(&format!("token-of-{name}")),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_fleet_pages_filters_and_sorts_many_clusters() {
    let h = harness().await;
    for i in 0..250 {
        register(&h, &format!("edge-{i:04}")).await;
    }
    for i in 0..3 {
        h.add_event(|e| e.cluster = format!("edge-{:04}", 200 + i))
            .await;
    }
    h.add_event(|e| e.cluster = "edge-0201".into()).await;
    let admin = h.sign_in(ADMIN).await;

    let first = h.get(Some(&admin), "/fleet").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first.body.contains("251 of 251 clusters match"),
        "{}",
        first.body
    );
    assert_eq!(
        first.body.matches("href=\"/fleet/").count(),
        100,
        "100 a page"
    );
    assert!(first.body.contains("Page 1 of 3"));
    assert!(first.body.contains("edge-0000") && !first.body.contains("edge-0150"));

    let third = h.get(Some(&admin), "/fleet?page=3").await;
    assert!(third.body.contains("Page 3 of 3") && third.body.contains("prod-eu-1"));
    let beyond = h.get(Some(&admin), "/fleet?page=99").await;
    assert!(
        beyond.body.contains("Page 3 of 3"),
        "clamped to the last page"
    );

    let filtered = h.get(Some(&admin), "/fleet?q=edge-002").await;
    assert!(
        filtered.body.contains("10 of 251 clusters match"),
        "{}",
        filtered.body
    );
    let disconnected = h.get(Some(&admin), "/fleet?state=disconnected").await;
    assert!(disconnected.body.contains("251 of 251"));
    let connected = h.get(Some(&admin), "/fleet?state=connected").await;
    assert!(connected.body.contains("0 of 251"));

    // Most events in the last 24 h first.
    let by_events = h.get(Some(&admin), "/fleet?sort=events&desc=1").await;
    let at = |name: &str| by_events.body.find(&format!(">{name}<")).unwrap();
    assert!(at("edge-0201") < at("edge-0200") && at("edge-0200") < at("edge-0000"));

    for bad in ["/fleet?page=-1", "/fleet?page=x", "/fleet?desc=x"] {
        let reply = h.get(Some(&admin), bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        h.get(Some(&admin), "/fleet?sort=nonsense&state=nonsense")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_cluster_page_shows_its_policies_and_events() {
    let h = harness().await;
    h.apply_policy(PRIVILEGED).await;
    h.apply_policy("name: elsewhere\nscope:\n  clusters: [\"staging-*\"]\nrules:\n  resource:\n    privileged: {}\n").await;
    let event = h.add_event(|_| {}).await;
    let admin = h.sign_in(ADMIN).await;
    let page = h.get(Some(&admin), "/fleet/prod-eu-1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Policies in scope (1)"), "{}", page.body);
    assert!(page.body.contains("no-privileged") && !page.body.contains("elsewhere"));
    assert!(page.body.contains(&event.id));
    assert!(page.body.contains("Save protection"));
    let missing = h.get(Some(&admin), "/fleet/nowhere").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let invalid = h.get(Some(&admin), "/fleet/NOT_A_NAME").await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_policy_page_shows_its_normalised_yaml_and_clusters() {
    let h = harness().await;
    h.apply_policy(PRIVILEGED).await;
    let admin = h.sign_in(ADMIN).await;
    let list = h.get(Some(&admin), "/policies").await;
    assert!(list.body.contains("href=\"/policies/no-privileged\""));
    let page = h.get(Some(&admin), "/policies/no-privileged").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("privileged: {}"), "{}", page.body);
    assert!(
        page.body.contains("Applied by 0 of 1 clusters in scope"),
        "{}",
        page.body
    );
    assert_eq!(
        h.get(Some(&admin), "/policies/missing").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn events_filter_page_and_show_their_findings() {
    let h = harness().await;
    for i in 0..60 {
        h.add_event(|e| {
            e.name = format!("web-{i}");
            if i % 2 == 0 {
                e.action = "alerted".into();
                e.images = vec!["ghcr.io/acme/api:2.1".into()];
            }
        })
        .await;
    }
    let admin = h.sign_in(ADMIN).await;
    let page = h.get(Some(&admin), "/events").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body.matches("<tr id=\"event-").count(), 50);
    assert!(
        page.body.contains("data-live-events"),
        "live on the first page"
    );
    let next = page.body.split("rel=\"next\"").next().unwrap();
    let href = &next[next.rfind("href=\"").unwrap() + 6..];
    let href = href[..href.find('"').unwrap()].replace("&amp;", "&");
    let older = h.get(Some(&admin), &href).await;
    assert_eq!(older.body.matches("<tr id=\"event-").count(), 10, "{href}");
    assert!(!older.body.contains("data-live-events"));

    let blocked = h
        .get(Some(&admin), "/events?action=blocked&text=nginx&since=1h")
        .await;
    assert_eq!(blocked.body.matches("<tr id=\"event-").count(), 30);
    let none = h.get(Some(&admin), "/events?cluster=elsewhere").await;
    assert!(none.body.contains("No events match"));

    for bad in [
        "/events?since=yesterday",
        "/events?action=denied",
        "/events?page_token=forged",
        "/events?until=99999999999d",
    ] {
        let reply = h.get(Some(&admin), bad).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            reply.body
        );
        assert!(reply.body.contains("class=\"error\""), "{bad}");
    }

    let event = h
        .add_event(|e| e.findings[0].cve_ids = vec!["CVE-2021-44228".into()])
        .await;
    let detail = h.get(Some(&admin), &format!("/events/{}", event.id)).await;
    assert_eq!(detail.status, StatusCode::OK);
    for shown in [
        "spec.containers[0].securityContext.privileged",
        "CVE-2021-44228",
        "system:serviceaccount:ci:deployer",
        "Findings (1)",
    ] {
        assert!(detail.body.contains(shown), "{shown}");
    }
    assert_eq!(
        h.get(Some(&admin), "/events/not-an-id").await.status,
        StatusCode::BAD_REQUEST
    );
    let unknown = format!("/events/{}", uuid::Uuid::now_v7());
    assert_eq!(
        h.get(Some(&admin), &unknown).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn new_events_arrive_on_the_stream_as_rows() {
    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;
    let request = Request::get("/events/stream?action=blocked")
        .header(header::COOKIE, &admin.cookie)
        .body(Body::empty())
        .unwrap();
    let response = h.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    // Let the watch subscribe before the events are stored.
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.add_event(|e| e.action = "alerted".into()).await;
    let event = h.add_event(|e| e.name = "arrives-live".into()).await;
    let mut text = String::new();
    while !text.contains("arrives-live") {
        let chunk = tokio::time::timeout(wait(), body.next())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: event"), "{text}");
    assert!(text.contains(&format!("id: {}", event.id)));
    assert!(text.contains(&format!("<tr id=\"event-{}\"", event.id)));
    assert!(!text.contains("alerted"), "filtered out: {text}");

    let anonymous = h.get(None, "/events/stream").await;
    assert_eq!(anonymous.location(), "/signin");

    // Signed out: the stream ends (within its liveness check, with no event to send), and
    // an event after it never reaches it.
    let reply = h
        .post(Some(&admin), "/signout", &[("csrf", &admin.csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    h.add_event(|e| e.name = "after-sign-out".into()).await;
    assert!(!rest_of(&mut body).await.contains("after-sign-out"));
}

/// What a stream still sends until it ends; panics unless it ends within 10 s.
async fn rest_of(body: &mut axum::body::BodyDataStream) -> String {
    let mut rest = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), body.next()).await {
            Ok(Some(chunk)) => rest.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            Ok(None) => return rest,
            Err(_) => panic!("the stream did not end: {rest}"),
        }
    }
}

async fn open_stream(h: &Harness, browser: &Browser) -> axum::body::BodyDataStream {
    let request = Request::get("/events/stream")
        .header(header::COOKIE, &browser.cookie)
        .body(Body::empty())
        .unwrap();
    let response = h.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().into_data_stream()
}

#[tokio::test]
async fn a_quiet_stream_ends_with_its_session_and_when_the_server_drains() {
    let h = harness_with(SessionLimits {
        idle: Duration::from_secs(2),
        ..SessionLimits::default()
    })
    .await;
    let admin = h.sign_in(ADMIN).await;
    let mut body = open_stream(&h, &admin).await;
    // No request for longer than the idle limit: the session expires, the stream ends.
    let started = std::time::Instant::now();
    rest_of(&mut body).await;
    assert!(started.elapsed() >= Duration::from_secs(2));

    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;
    let mut body = open_stream(&h, &admin).await;
    h.shutdown.send(true).unwrap();
    rest_of(&mut body).await;
}

#[tokio::test]
async fn scans_and_the_overview_render() {
    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;
    let report = std::fs::read(super::access::trivy_fixture()).unwrap();
    let reply = h
        .post_multipart(
            &admin,
            "/scans/upload",
            &[
                ("csrf", None, admin.csrf.as_bytes()),
                ("report", Some("alpine.json"), &report),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let detail = h.get(Some(&admin), reply.location()).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", reply.location());
    assert!(detail.body.contains("Vulnerabilities ("), "{}", detail.body);
    let list = h.get(Some(&admin), "/scans").await;
    assert!(list.body.contains("alpine"), "{}", list.body);
    let search = h
        .get(
            Some(&admin),
            "/scans?q=docker.io/library/alpine&min_severity=low",
        )
        .await;
    assert!(search.body.contains("alpine"));
    let by_cve = h
        .get(Some(&admin), "/scans?vulnerability=cve-2019-1549")
        .await;
    assert!(by_cve.body.contains("alpine"), "{}", by_cve.body);
    let other_cve = h
        .get(Some(&admin), "/scans?vulnerability=CVE-1999-0001")
        .await;
    assert!(other_cve.body.contains("No scans match"));
    let bad_cve = h
        .get(Some(&admin), "/scans?vulnerability=%3Cscript%3E%20x")
        .await;
    assert_eq!(bad_cve.status, StatusCode::BAD_REQUEST);
    let none = h.get(Some(&admin), "/scans?q=ghcr.io/none/*").await;
    assert!(none.body.contains("No scans match"));
    let by_reference = h.get(Some(&admin), "/scans?q=nothing:1.0").await;
    assert!(by_reference.body.contains("No scans match"));
    let bad = h.get(Some(&admin), "/scans?min_severity=apocalyptic").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    h.add_event(|_| {}).await;
    h.add_event(|e| e.action = "alerted".into()).await;
    let overview = h.get(Some(&admin), "/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("<svg"), "a chart");
    assert!(
        overview.body.contains("1 blocked, 1 alerted"),
        "{}",
        overview.body
    );
    assert!(overview.body.contains("docker.io/library/nginx:1.25"));
}
