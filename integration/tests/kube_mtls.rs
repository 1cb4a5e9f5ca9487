//! Mutual TLS between the real kube-apiserver and the agent's webhook: the API server is given
//! a client certificate for webhooks (its AdmissionConfiguration names a kubeconfig), the
//! agent runs with `--webhook-client-ca`, and admission works end to end; a client without a
//! certificate is refused. Needs envtest's `TEST_ASSET_*` variables (see `kube.rs`).

use std::process::Output;

use portcullis_testkit::{
    Agent, ControlPlane,
    kube::{ApiServer, client_pki},
    success,
};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_api_server_reaches_the_webhook_with_its_client_certificate() {
    let setup = tempfile::tempdir().unwrap();
    let (ca, cert, key) = client_pki("kube-apiserver");
    let path = |name: &str| setup.path().join(name);
    std::fs::write(path("client-ca.pem"), &ca).unwrap();
    std::fs::write(path("client.pem"), &cert).unwrap();
    std::fs::write(path("client.key"), &key).unwrap();
    // The kubeconfig the API server uses for webhooks: `*` matches every webhook host.
    std::fs::write(
        path("webhook-kubeconfig.yaml"),
        format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            path("client.pem").display(),
            path("client.key").display()
        ),
    )
    .unwrap();
    std::fs::write(
        path("admission.yaml"),
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n\
             - name: ValidatingAdmissionWebhook\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    \
             kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            path("webhook-kubeconfig.yaml").display()
        ),
    )
    .unwrap();
    let Some(api) = ApiServer::start(&[format!(
        "--admission-control-config-file={}",
        path("admission.yaml").display()
    )]) else {
        return;
    };

    let cp = ControlPlane::start();
    let token = cp.register("c1");
    let client_ca = path("client-ca.pem");
    let agent = Agent::start_with(
        &cp,
        "c1",
        &token,
        &["--webhook-client-ca", client_ca.to_str().unwrap()],
    );
    std::fs::write(
        path("policy.yaml"),
        "name: no-privileged\naction: block\nrules: {resource: {privileged: {}}}\n",
    )
    .unwrap();
    success(&cp.admin_cli(&[
        "policy",
        "apply",
        "-f",
        path("policy.yaml").to_str().unwrap(),
    ]));
    agent.wait_revision(cp.revision());

    // The webhook by URL, trusting the agent's serving certificate.
    let ca_bundle = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(agent.webhook_ca()).unwrap())
    };
    let configuration = format!(
        r#"{{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingWebhookConfiguration",
        "metadata":{{"name":"portcullis-mtls"}},
        "webhooks":[{{"name":"validate.portcullis.io","admissionReviewVersions":["v1"],"sideEffects":"None",
          "failurePolicy":"Fail","timeoutSeconds":10,
          "clientConfig":{{"url":"https://127.0.0.1:{}/validate","caBundle":"{ca_bundle}"}},
          "rules":[{{"apiGroups":[""],"apiVersions":["v1"],"operations":["CREATE"],"resources":["pods"]}}],
          "namespaceSelector":{{"matchExpressions":[{{"key":"kubernetes.io/metadata.name","operator":"NotIn","values":["kube-system"]}}]}}}}]}}"#,
        agent.webhook_port
    );
    let applied = api.kubectl_with_input(&["apply", "-f", "-"], Some(&configuration));
    assert!(applied.status.success(), "{}", stderr(&applied));

    let pod = |name: &str, privileged: bool| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"default"}},
            "spec":{{"containers":[{{"name":"c","image":"registry.example.com/app:1",
            "securityContext":{{"privileged":{privileged}}}}}]}}}}"#
        )
    };
    // The API server may need a moment to load the new configuration.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let denied = loop {
        let out = api.kubectl_with_input(&["create", "-f", "-"], Some(&pod("privileged", true)));
        let text = stderr(&out);
        if !out.status.success() && text.contains("portcullis") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the privileged pod was not denied by the webhook: {text}"
        );
        if out.status.success() {
            let _ = api.kubectl(&["delete", "pod", "privileged", "--wait=false"]);
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(denied.contains("no-privileged"), "{denied}");
    assert!(denied.contains("privileged"), "{denied}");
    let created = api.kubectl_with_input(&["create", "-f", "-"], Some(&pod("plain", false)));
    assert!(created.status.success(), "{}", stderr(&created));

    // Anyone else who reaches the webhook port without a certificate is refused at the
    // handshake (the harness's client has none).
    let refused = std::panic::catch_unwind(|| {
        portcullis_testkit::post_review(
            &agent,
            portcullis_testkit::admission_fixture("pod-create-plain.json"),
        )
    });
    assert!(
        refused.is_err(),
        "a client without a certificate got an answer"
    );
}
