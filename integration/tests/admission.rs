//! Admission end to end: a policy applied on the control plane reaches the agent, whose webhook
//! then denies a privileged pod (the AdmissionReview exactly as kube-apiserver sent it) over
//! TLS, and keeps denying it from its cache while the control plane is down.

use std::fs;

use portcullis_integration::{Agent, ControlPlane, admission_fixture, post_review, success};

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
