//! The webhook's serving certificate on the real kube-apiserver v1.28.7 (issue #17): creates
//! keep working with failurePolicy Fail across rotations, and the first certificate names the
//! `--webhook-url` host (by address and by name) and is not re-issued. Needs envtest's
//! `TEST_ASSET_*` variables (see `crates/testkit/src/kube/mod.rs`; `.ci/run` sets them).

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use portcullis_testkit::{
    kube::{
        KubeEnv,
        objects::{NO_PRIVILEGED, admitted, create, eventually_denied, namespace, pod, stderr},
    },
    success,
};
use serde_json::{Value, json};

#[test]
fn creates_keep_working_across_certificate_rotations() {
    let Some(env) = KubeEnv::new("k-rotate", json!({})) else {
        return;
    };
    // A 30 s certificate renewed 20 s early: a new one about every 10 s.
    let _agent = env.start_agent(
        "agent-0",
        &[
            "--cert-validity-seconds=30",
            "--cert-renew-before-seconds=20",
        ],
    );
    env.apply_policy(NO_PRIVILEGED);
    let ns = "k-rotate-apps";
    namespace(env.api, ns);
    eventually_denied(env.api, &pod(ns, "probe", true));
    // Fail closed, so a handshake that fails would fail the create.
    success(
        &env.cp
            .admin_cli(&["cluster", "protect", "k-rotate", "--failure-policy", "fail"]),
    );
    env.wait_config("failurePolicy Fail", |c| {
        c.is_some_and(|c| c["webhooks"][0]["failurePolicy"] == "Fail")
    });
    let secret = env.flag("cert-secret");
    let leaf = || -> String {
        env.api.get("secret", Some("k-rotate"), &secret).unwrap()["data"]["tls.crt"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut leaves = vec![leaf()];
    let start = Instant::now();
    let mut creates = 0;
    while leaves.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the certificate was not rotated twice"
        );
        creates += 1;
        admitted(env.api, &pod(ns, &format!("plain-{creates}"), false));
        if creates % 5 == 0 {
            // And the webhook is still the one deciding.
            let out = create(env.api, &pod(ns, &format!("priv-{creates}"), true), &[]);
            assert!(
                stderr(&out).contains("denied the request"),
                "{}",
                stderr(&out)
            );
        }
        let now = leaf();
        if leaves.last() != Some(&now) {
            leaves.push(now);
        }
    }
    assert!(creates > 10, "only {creates} creates across two rotations");
}

/// The serving certificate's subjectAltName, as openssl prints it.
fn alt_names(pem: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_first_certificate_names_the_url_host_and_is_not_reissued() {
    for (name, host, san) in [
        ("k-url-ip", "127.0.0.1", "IP Address:127.0.0.1"),
        ("k-url-name", "localhost", "DNS:localhost"),
    ] {
        let Some(env) = KubeEnv::new(
            name,
            json!({"webhook": {"url": format!("https://{host}:{{port}}/validate")}}),
        ) else {
            return;
        };
        let url = format!("https://{host}:{}/validate", env.forwarder.port);
        assert_eq!(env.flag("webhook-url"), url);
        let secret_name = env.flag("cert-secret");
        let _agent = env.start_agent("agent-0", &[]);
        let secret = || env.api.get("secret", Some(name), &secret_name);
        // The first version of the Secret there is.
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some(secret) = secret() {
                break secret;
            }
            assert!(Instant::now() < deadline, "{name}: no Secret");
            thread::sleep(Duration::from_millis(50));
        };
        use base64::Engine;
        let leaf = |secret: &Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(secret["data"]["tls.crt"].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        let names = alt_names(&leaf(&first));
        assert!(names.contains(san), "{name}: {names}");
        // The API server reaches the webhook by that URL.
        env.wait_config("programmed", |c| {
            c.is_some_and(|c| c["webhooks"][0]["clientConfig"]["url"] == url.as_str())
        });
        env.apply_policy(NO_PRIVILEGED);
        let ns = format!("{name}-apps");
        namespace(env.api, &ns);
        eventually_denied(env.api, &pod(&ns, "probe", true));
        // Five reconciles (one a second) later, still the first version.
        thread::sleep(Duration::from_secs(6));
        let now = secret().unwrap();
        assert_eq!(
            now["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"],
            "{name}: the Secret was rewritten"
        );
    }
}
