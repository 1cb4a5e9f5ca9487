//! Changes made through the console: policies applied (text or file, validate only), refused
//! with their field paths, deleted; protection switched; events handled; reports uploaded.

use axum::http::StatusCode;

use super::*;

async fn apply(h: &Harness, browser: &Browser, yaml: &[u8], mode: &str) -> Reply {
    h.post_multipart(
        browser,
        "/policies/apply",
        &[
            ("csrf", None, browser.csrf.as_bytes()),
            ("yaml", None, yaml),
            ("mode", None, mode.as_bytes()),
        ],
    )
    .await
}

#[tokio::test]
async fn policies_are_validated_applied_and_deleted() {
    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;

    let preview = apply(&h, &admin, PRIVILEGED.as_bytes(), "validate").await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
    assert!(preview.body.contains("Valid: nothing was applied"));
    assert!(h.store.get_policy("no-privileged").await.unwrap().is_none());

    // A form without a mode (not the page's buttons) applies nothing.
    let modeless = h
        .post_multipart(
            &admin,
            "/policies/apply",
            &[
                ("csrf", None, admin.csrf.as_bytes()),
                ("yaml", None, PRIVILEGED.as_bytes()),
            ],
        )
        .await;
    assert!(
        modeless.body.contains("Valid: nothing was applied"),
        "{}",
        modeless.body
    );
    assert!(h.store.get_policy("no-privileged").await.unwrap().is_none());

    let applied = apply(&h, &admin, PRIVILEGED.as_bytes(), "apply").await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.body);
    assert!(applied.body.contains("created"), "{}", applied.body);
    let stored = h.store.get_policy("no-privileged").await.unwrap().unwrap();

    // As a file upload: the file wins over the text.
    let file = PRIVILEGED.replace("not allowed", "never allowed");
    let reply = h
        .post_multipart(
            &admin,
            "/policies/apply",
            &[
                ("csrf", None, admin.csrf.as_bytes()),
                ("yaml", None, b"junk: ["),
                ("file", Some("p.yaml"), file.as_bytes()),
                ("mode", None, b"apply"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.contains("updated"), "{}", reply.body);

    let confirm = h.get(Some(&admin), "/policies/no-privileged/delete").await;
    assert!(confirm.body.contains("Delete policy"));
    let revision = h
        .store
        .get_policy("no-privileged")
        .await
        .unwrap()
        .unwrap()
        .revision;
    assert!(revision > stored.revision);
    let stale = h
        .post(
            Some(&admin),
            "/policies/no-privileged/delete",
            &[
                ("csrf", &admin.csrf),
                ("revision", &stored.revision.to_string()),
            ],
        )
        .await;
    assert_eq!(
        stale.status,
        StatusCode::CONFLICT,
        "a stale confirmation deletes nothing"
    );
    assert!(h.store.get_policy("no-privileged").await.unwrap().is_some());
    let bad = h
        .post(
            Some(&admin),
            "/policies/no-privileged/delete",
            &[("csrf", &admin.csrf), ("revision", "x")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let deleted = h
        .post(
            Some(&admin),
            "/policies/no-privileged/delete",
            &[("csrf", &admin.csrf), ("revision", &revision.to_string())],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert!(h.store.get_policy("no-privileged").await.unwrap().is_none());
}

#[tokio::test]
async fn invalid_policies_are_refused_with_their_field_paths_and_nothing_applied() {
    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;
    let invalid = "name: Bad_Name\naction: deny\nrules:\n  resource:\n    runAsUser: {rule: MustRunAs, ranges: [{min: 10, max: 1}]}\n";
    for (yaml, shows) in [
        (
            invalid,
            vec!["name", "action", "rules.resource.runAsUser.ranges[0]"],
        ),
        ("name: [unclosed\n", vec!["document 2"]),
        (
            "name: ok\nrules: {resource: {privileged: {}}}\nsurprise: 1\n",
            vec!["surprise"],
        ),
        ("\u{0}\u{1}binary", vec![]),
    ] {
        let mixed = format!("{PRIVILEGED}---\n{yaml}");
        let reply = apply(&h, &admin, mixed.as_bytes(), "apply").await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{yaml}: {}",
            reply.body
        );
        assert!(reply.body.contains("Nothing was applied"), "{yaml}");
        for path in shows {
            assert!(reply.body.contains(path), "{path} in {}", reply.body);
        }
        assert!(
            h.store.get_policy("no-privileged").await.unwrap().is_none(),
            "all or nothing"
        );
    }
    let empty = apply(&h, &admin, b"# nothing here\n", "apply").await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(empty.body.contains("no policies"), "{}", empty.body);
    let not_utf8 = h
        .post_multipart(
            &admin,
            "/policies/apply",
            &[
                ("csrf", None, admin.csrf.as_bytes()),
                ("file", Some("p.yaml"), &[0xff, 0xfe, 0x00]),
            ],
        )
        .await;
    assert_eq!(not_utf8.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(not_utf8.body.contains("not UTF-8"));

    let deep = format!(
        "name: deep\nx: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let reply = apply(&h, &admin, deep.as_bytes(), "apply").await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);

    let huge = format!(
        "{PRIVILEGED}description: {}\n",
        "x".repeat(10 * 1024 * 1024)
    );
    let reply = apply(&h, &admin, huge.as_bytes(), "apply").await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.body
    );
    assert!(reply.body.contains("larger than"));
    let garbage = |body: String| {
        Request::post("/policies/apply")
            .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
            .header(header::COOKIE, &admin.cookie)
            .body(Body::from(body))
            .unwrap()
    };
    let reply = h.send(garbage("--y\r\nnot a part".into())).await;
    assert_eq!(
        reply.status,
        StatusCode::FORBIDDEN,
        "no CSRF token first: not read"
    );
    let csrf_then_garbage = format!(
        "--x\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{}\r\n--x\r\nnot a part",
        admin.csrf
    );
    let reply = h.send(garbage(csrf_then_garbage)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(h.store.get_policy("no-privileged").await.unwrap().is_none());
}

#[tokio::test]
async fn protection_is_switched_with_checked_input() {
    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;
    let path = "/fleet/prod-eu-1/protection";
    let form = |enabled: &'static str, policy: &'static str, timeout: &'static str| {
        vec![
            ("enabled", enabled),
            ("failure_policy", policy),
            ("timeout_seconds", timeout),
        ]
    };
    for (bad, says) in [
        (form("maybe", "fail", "10"), "enabled"),
        (form("false", "fail", "ten"), "timeout_seconds"),
        (form("false", "explode", "10"), "failurePolicy"),
        (form("false", "fail", "99"), "timeoutSeconds"),
    ] {
        let mut fields = bad.clone();
        fields.push(("csrf", &admin.csrf));
        let reply = h.post(Some(&admin), path, &fields).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{bad:?}: {}",
            reply.body
        );
        assert!(reply.body.contains(says), "{says}: {}", reply.body);
    }
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
    let mut fields = form("false", "fail", "5");
    fields.push(("csrf", &admin.csrf));
    let reply = h.post(Some(&admin), path, &fields).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let protection = h
        .store
        .get_cluster("prod-eu-1")
        .await
        .unwrap()
        .unwrap()
        .protection
        .unwrap();
    assert!(!protection.enabled);
    assert_eq!(
        (
            protection.failure_policy.as_str(),
            protection.timeout_seconds
        ),
        ("fail", 5)
    );
    let page = h.get(Some(&admin), reply.location()).await;
    assert!(page.body.contains("Protection saved"));
    let missing = h
        .post(Some(&admin), "/fleet/nowhere/protection", &fields)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn events_are_handled_one_at_a_time_or_together() {
    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;
    let a = h.add_event(|_| {}).await;
    let b = h.add_event(|_| {}).await;
    let c = h.add_event(|_| {}).await;
    let reply = h
        .post(
            Some(&admin),
            "/events/handle",
            &[
                ("csrf", &admin.csrf),
                ("ids", &a.id),
                ("ids", &b.id),
                ("state", "ignored"),
                ("note", "known test cluster"),
                ("back", "/events?state=new"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    assert_eq!(reply.location(), "/events?state=new");
    let state = |id: &str| {
        let events = h.events.clone();
        let id = uuid::Uuid::parse_str(id).unwrap();
        async move { events.get(&id).await.unwrap().unwrap() }
    };
    for id in [&a.id, &b.id] {
        let event = state(id).await;
        assert_eq!(
            (
                event.state.as_str(),
                event.note.as_str(),
                event.handled_by.as_str()
            ),
            ("ignored", "known test cluster", "alice")
        );
    }
    assert_eq!(state(&c.id).await.state, "new");
    let open = h.get(Some(&admin), "/events?state=new").await;
    assert_eq!(open.body.matches("<tr id=\"event-").count(), 1);

    // Not back to another site, whatever the form says.
    for back in [
        "https://evil.example/",
        "//evil.example/events",
        "/events\\@evil",
        "/events\r\nSet-Cookie: x=1",
        "/events \u{e9}",
    ] {
        let reply = h
            .post(
                Some(&admin),
                "/events/handle",
                &[
                    ("csrf", &admin.csrf),
                    ("ids", &c.id),
                    ("state", "handled"),
                    ("back", back),
                ],
            )
            .await;
        assert_eq!(reply.location(), "/events", "{back}");
    }
    for (fields, status) in [
        (vec![("state", "handled")], StatusCode::BAD_REQUEST),
        (
            vec![("ids", "nonsense"), ("state", "handled")],
            StatusCode::BAD_REQUEST,
        ),
        (
            vec![("ids", c.id.as_str()), ("state", "closed")],
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let mut fields = fields.clone();
        fields.push(("csrf", &admin.csrf));
        let reply = h.post(Some(&admin), "/events/handle", &fields).await;
        assert_eq!(reply.status, status, "{fields:?}: {}", reply.body);
    }
}

#[tokio::test]
async fn scan_uploads_are_checked() {
    let h = harness().await;
    let admin = h.sign_in(ADMIN).await;
    let upload = |parts: Vec<(&'static str, Option<&'static str>, Vec<u8>)>| {
        let h = &h;
        let admin = admin.clone();
        async move {
            let mut all: Vec<(&str, Option<&str>, Vec<u8>)> =
                vec![("csrf", None, admin.csrf.as_bytes().to_vec())];
            all.extend(parts);
            let borrowed: Vec<(&str, Option<&str>, &[u8])> =
                all.iter().map(|(n, f, c)| (*n, *f, c.as_slice())).collect();
            h.post_multipart(&admin, "/scans/upload", &borrowed).await
        }
    };
    let missing = upload(vec![]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert!(missing.body.contains("choose a report file"));
    let garbage = upload(vec![(
        "report",
        Some("r.json"),
        b"{\"not\": \"a report\"}".to_vec(),
    )])
    .await;
    assert_eq!(
        garbage.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        garbage.body
    );
    assert!(garbage.body.contains("Not imported"));
    let wrong_format = upload(vec![
        (
            "report",
            Some("r.json"),
            std::fs::read(super::access::trivy_fixture()).unwrap(),
        ),
        ("format", None, b"grype".to_vec()),
    ])
    .await;
    assert_eq!(wrong_format.status, StatusCode::UNPROCESSABLE_ENTITY);
    // The harness allows 256 KiB reports.
    let oversize = upload(vec![("report", Some("r.json"), vec![b' '; 512 * 1024])]).await;
    assert_eq!(
        oversize.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        oversize.body
    );
    assert!(oversize.body.contains("--max-report-bytes"));
    let grype = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/scan/tests/scans/grype/image.json");
    let imported = upload(vec![(
        "report",
        Some("grype.json"),
        std::fs::read(grype).unwrap(),
    )])
    .await;
    assert_eq!(imported.status, StatusCode::SEE_OTHER, "{}", imported.body);
}
