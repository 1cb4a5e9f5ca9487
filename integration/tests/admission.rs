//! Admission end to end: a policy applied on the control plane reaches the agent, whose webhook
//! then denies a privileged pod (the AdmissionReview exactly as kube-apiserver sent it) over
//! TLS, and keeps denying it from its cache while the control plane is down.

use std::fs;

use portcullis_testkit::{Agent, ControlPlane, admission_fixture, post_review, success};

#[test]
fn the_agent_enforces_synced_policies_and_keeps_enforcing_offline() {
    let mut cp = ControlPlane::start();
    let token = cp.register("c1");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    fs::write(
        &file,
        "name: no-privileged\nrules: {resource: {privileged: {}}}\n",
    )
    .unwrap();
    let mut agent = Agent::start(&cp, "c1", &token);
    agent.wait_revision(cp.revision());

    // Before the policy: admitted.
    let (status, review) = post_review(&agent, admission_fixture("pod-create-privileged.json"));
    assert_eq!(
        (status, review["response"]["allowed"].as_bool()),
        (200, Some(true)),
        "{review}"
    );

    success(&cp.admin_cli(&["policy", "apply", "-f", file.to_str().unwrap()]));
    agent.wait_revision(cp.revision());
    let (status, review) = post_review(&agent, admission_fixture("pod-create-privileged.json"));
    assert_eq!(status, 200);
    let response = &review["response"];
    assert_eq!(response["allowed"], false, "{review}");
    assert_eq!(response["status"]["code"], 403);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no-privileged")
    );
    let (_, review) = post_review(&agent, admission_fixture("pod-create-plain.json"));
    assert_eq!(review["response"]["allowed"], true);

    // Control plane gone, agent restarted: it still blocks, from its cache.
    cp.kill();
    agent.restart();
    let (_, review) = post_review(&agent, admission_fixture("pod-create-privileged.json"));
    assert_eq!(review["response"]["allowed"], false, "{review}");

    // Bad input over the wire: a clear 400.
    let (status, body) = post_review(&agent, b"{not json".to_vec());
    assert_eq!(status, 400, "{body}");
}

/// Issue #5 end to end: a Trivy report (one critical CVE) imported on the control plane reaches the agent as a
/// summary; a Deployment running the image is blocked by a `severity: high` policy, admitted
/// once the image is whitelisted, and blocked again from the agent's cache with the control
/// plane stopped and the agent restarted. Gatekeeper's external data sees the same verdict.
#[test]
fn imported_scans_block_images_at_admission_even_offline() {
    let mut cp = ControlPlane::start();
    let token = cp.register("c1");
    let dir = tempfile::tempdir().unwrap();
    let report = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/scan/tests/scans/trivy/debian-buster.json");
    let imported = portcullis_testkit::json(&cp.admin_cli(&[
        "scan",
        "import",
        report.to_str().unwrap(),
        "--image",
        "nginx:1.25",
        "-o",
        "json",
    ]));
    assert!(
        imported["counts"]["critical"].as_u64().unwrap() > 0,
        "{imported}"
    );
    let policy = dir.path().join("p.yaml");
    let apply = |whitelist: &str| {
        fs::write(
            &policy,
            format!(
                "name: no-high\nwhitelist: {{images: [{whitelist}]}}\nrules: {{image: {{vulnerabilities: {{severity: high}}}}}}\n"
            ),
        )
        .unwrap();
        success(&cp.admin_cli(&["policy", "apply", "-f", policy.to_str().unwrap()]));
    };
    apply("");
    let mut agent = Agent::start(&cp, "c1", &token);
    agent.wait_revision(cp.revision());

    let blocked = |agent: &Agent| {
        let (status, review) =
            post_review(agent, admission_fixture("deployment-create-basic.json"));
        assert_eq!(status, 200, "{review}");
        let response = &review["response"];
        assert_eq!(response["allowed"], false, "{review}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("[no-high] vulnerabilities at spec.template.spec.containers[0].image")
                && message.contains("CVE-"),
            "{message}"
        );
    };
    blocked(&agent);

    // Whitelisted: admitted.
    apply("\"nginx:1.25\"");
    agent.wait_revision(cp.revision());
    let (_, review) = post_review(&agent, admission_fixture("deployment-create-basic.json"));
    assert_eq!(review["response"]["allowed"], true, "{review}");

    // A re-import arrives as a delta; the whitelist goes again.
    success(&cp.admin_cli(&[
        "scan",
        "import",
        report.to_str().unwrap(),
        "--image",
        "nginx:1.25",
    ]));
    apply("");
    agent.wait_revision(cp.revision());
    blocked(&agent);

    // Gatekeeper external data over the same HTTPS port.
    let request = serde_json::json!({
        "apiVersion": "externaldata.gatekeeper.sh/v1beta1",
        "kind": "ProviderRequest",
        "request": {"keys": ["nginx:1.25", "redis:7"]},
    });
    let (status, body) = portcullis_testkit::post_webhook(
        &agent,
        "/gatekeeper/verdicts",
        request.to_string().into_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let items = &body["response"]["items"];
    assert_eq!(items[0]["value"]["verdict"], "block", "{body}");
    assert_eq!(
        items[0]["value"]["counts"]["critical"], imported["counts"]["critical"],
        "{body}"
    );
    assert_eq!(items[1]["value"]["verdict"], "allow", "{body}");
    assert_eq!(items[1]["value"]["scanned"], false, "{body}");

    // Control plane stopped, agent restarted: still blocked, from the cache.
    cp.kill();
    agent.restart();
    blocked(&agent);
}
