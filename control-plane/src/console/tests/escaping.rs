//! Text anyone can put into the console's data (policy descriptions, notes, object, user and
//! image names, scan contents) is shown as text, never as markup.

use axum::http::StatusCode;

use super::*;

const ATTACK: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";

fn assert_escaped(page: &str, what: &str) {
    assert!(
        !page.contains("<script>alert"),
        "{what}: raw script in {page}"
    );
    assert!(!page.contains("<img src=x"), "{what}: raw tag");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{what}: escaped text missing in {page}"
    );
}

#[tokio::test]
async fn user_supplied_strings_are_escaped_everywhere() {
    let h = harness().await;
    let yaml = format!(
        "name: hostile\ndescription: {ATTACK:?}\nrules:\n  resource:\n    privileged: {{}}\n"
    );
    h.apply_policy(&yaml).await;
    let event = h
        .add_event(|e| {
            e.policy = "hostile".into();
            e.name = ATTACK.into();
            e.namespace = ATTACK.into();
            e.user = ATTACK.into();
            e.images = vec![ATTACK.into()];
            e.findings[0].message = ATTACK.into();
            e.findings[0].value = ATTACK.into();
        })
        .await;
    let admin = h.sign_in(ADMIN).await;
    let reply = h
        .post(
            Some(&admin),
            "/events/handle",
            &[
                ("csrf", &admin.csrf),
                ("ids", &event.id),
                ("state", "handled"),
                ("note", ATTACK),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);

    for page in [
        "/policies".to_owned(),
        "/policies/hostile".to_owned(),
        "/events".to_owned(),
        format!("/events/{}", event.id),
        "/".to_owned(),
        "/fleet/prod-eu-1".to_owned(),
    ] {
        let reply = h.get(Some(&admin), &page).await;
        assert_eq!(reply.status, StatusCode::OK, "{page}");
        assert_escaped(&reply.body, &page);
    }
    // Echoed input: filters, searches and a refused policy's text.
    for page in [
        format!("/events?text={}", urlencode(ATTACK)),
        format!("/fleet?q={}", urlencode(ATTACK)),
        format!("/scans?q={}", urlencode("<script>alert(1)</script>")),
    ] {
        let reply = h.get(Some(&admin), &page).await;
        assert!(
            !reply.body.contains("<script>alert"),
            "{page}: {}",
            reply.body
        );
    }
    let refused = h
        .post_multipart(
            &admin,
            "/policies/apply",
            &[
                ("csrf", None, admin.csrf.as_bytes()),
                (
                    "yaml",
                    None,
                    format!("name: x\nrules: {ATTACK}\n").as_bytes(),
                ),
                ("mode", None, b"apply"),
            ],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_escaped(&refused.body, "apply");
    let sign_in = h.post(None, "/signin", &[("token", ATTACK)]).await;
    assert!(!sign_in.body.contains("<script>alert"));
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).unwrap()[2..].to_owned()
}
