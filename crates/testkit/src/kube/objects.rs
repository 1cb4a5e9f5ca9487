//! Pods and requests for the Kubernetes tests: objects to create, and the API server's
//! verdict on them as kubectl reports it.

use std::{
    process::Output,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::ApiServer;
use crate::Agent;

/// A policy blocking privileged containers.
pub const NO_PRIVILEGED: &str =
    "name: no-privileged\naction: block\nrules: {resource: {privileged: {}}}\n";

/// A command's standard error, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A Pod with one container, privileged or not.
pub fn pod(namespace: &str, name: &str, privileged: bool) -> Value {
    pod_with_image(namespace, name, privileged, "registry.example.com/app:1")
}

/// A Pod with one container running `image`.
pub fn pod_with_image(namespace: &str, name: &str, privileged: bool, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": image,
            "securityContext": {"privileged": privileged}}]},
    })
}

/// `kubectl create -f -` as the admin (with `extra` flags).
pub fn create(api: &ApiServer, object: &Value, extra: &[&str]) -> Output {
    let mut args = vec!["create", "-f", "-"];
    args.extend(extra);
    api.kubectl_with_input(&args, Some(&object.to_string()))
}

/// Creates namespace `name`.
pub fn namespace(api: &ApiServer, name: &str) {
    let out = api.kubectl(&["create", "namespace", name]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Creates `object` until our webhook denies it (the API server picks up a new or changed
/// configuration within a moment); returns the denial. Deletes what got admitted meanwhile.
pub fn eventually_denied(api: &ApiServer, object: &Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = create(api, object, &[]);
        let text = stderr(&out);
        if !out.status.success() && text.contains("denied the request") {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not denied by the webhook: {text}",
            object["metadata"]["name"]
        );
        if out.status.success() {
            delete(api, object);
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// Deletes `object` without waiting.
pub fn delete(api: &ApiServer, object: &Value) {
    let out = api.kubectl_with_input(
        &["delete", "-f", "-", "--wait=false", "--grace-period=0"],
        Some(&object.to_string()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Creates `object`, which must be admitted.
pub fn admitted(api: &ApiServer, object: &Value) {
    let out = create(api, object, &[]);
    assert!(
        out.status.success(),
        "{} was not admitted: {}",
        object["metadata"]["name"],
        stderr(&out)
    );
}

/// The agent's protection state, once it says `state`.
pub fn wait_protection(agent: &Agent, state: &str) -> Value {
    agent.wait_for(&format!("protection {state}"), |s| {
        s["protectionState"] == state
    })
}
