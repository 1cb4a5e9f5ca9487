//! Hostile shapes of an admitted object: each is a body of about 3 MB (the API server's request
//! limit is 3 MiB) built so that any per-item search over another list of the object turns
//! quadratic. The engine must decide each in time linear (or n log n) in the body.
//!
//! These are complexity tests, not benchmarks: each bound is about 20 times the cost measured
//! in a debug build on the project's 2-core machine (noted beside it), while the quadratic
//! versions these shapes were built against take minutes.

use std::time::{Duration, Instant};

use portcullis_engine::{self as engine, AdmissionInput, Operation, Outcome, ScanIndex};
use portcullis_policy::{Policy, parse_policy_documents};

/// Every control that reads a list of the object, in one policy.
const POLICY: &str = r#"
name: everything
action: block
rules:
  resource:
    podSecurity: {level: restricted, version: latest}
    privileged: {}
    hostNamespaces: {}
    hostPorts: {min: 8000, max: 8080}
    hostPath: {allow: [{pathPrefix: /var/log, readOnly: true}]}
    capabilities: {allow: [NET_BIND_SERVICE], requiredDrop: [ALL, NET_RAW]}
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsUser: {rule: MustRunAsNonRoot}
    seccomp: {allow: [RuntimeDefault]}
    appArmor: {allow: [RuntimeDefault]}
    sysctls: {allow: ["net.ipv4.*"], forbid: ["kernel.*"]}
    volumes: {allow: [configMap, secret]}
    resources: {requireLimits: [cpu, memory]}
  image:
    registries: {allow: [registry.example.com], deny: [evil.example.com]}
    disallowedTags: [latest]
    unscanned: alert
"#;

fn policies() -> Vec<Policy> {
    parse_policy_documents(POLICY)
        .unwrap()
        .iter()
        .map(|p| Policy::try_from(p).unwrap())
        .collect()
}

fn pod(metadata: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","namespace":"n"{metadata}}},"spec":{{{spec}}}}}"#
    )
}

/// `n` items made by `item`, comma-separated.
fn list(n: usize, item: impl Fn(usize) -> String) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(",")
}

/// Decides `body` (a Pod) and asserts it took less than `bound`; returns the decision's
/// finding count, so the caller can check the work was done.
#[track_caller]
fn decide_within(shape: &str, body: &str, bound: Duration) -> usize {
    assert!(
        (2_500_000..=3_700_000).contains(&body.len()),
        "{shape}: the body is {} bytes; the shapes are meant to be 2.5 - 3.7 MB",
        body.len()
    );
    let policies = policies();
    let input = AdmissionInput {
        operation: Operation::Create,
        kind: "Pod",
        sub_resource: "",
        namespace: "n",
        name: "p",
        object: Some(body),
        old_object: None,
    };
    let started = Instant::now();
    let decision = engine::evaluate(&input, "c", &policies, &ScanIndex::default());
    let took = started.elapsed();
    assert!(
        took < bound,
        "{shape}: {took:?} to decide a {} byte body (bound {bound:?})",
        body.len()
    );
    assert!(
        !matches!(decision.outcome, Outcome::Invalid(_)),
        "{shape}: {:?}",
        decision.outcome
    );
    decision.findings.len()
}

/// 250,000 label keys in reverse order (each inserted into the middle of a sorted vector took
/// ~25 s in a release build). Measured: 0.13 s.
#[test]
fn labels_in_reverse_order() {
    let labels = list(250_000, |i| format!(r#""k{:06}":"""#, 250_000 - i));
    let body = pod(
        &format!(r#","labels":{{{labels}}}"#),
        r#""containers":[{"name":"c","image":"registry.example.com/a:1"}]"#,
    );
    decide_within("labels", &body, Duration::from_secs(3));
}

/// 18,000 AppArmor and 18,000 seccomp container annotations, each naming one of 18,000
/// containers (a search of the containers per annotation, or of the annotations per
/// container: 68 s). Measured: 0.8 s.
#[test]
fn container_annotations_naming_many_containers() {
    let n = 18_000;
    let annotations = list(n, |i| {
        format!(
            r#""container.apparmor.security.beta.kubernetes.io/c{i}":"unconfined","container.seccomp.security.alpha.kubernetes.io/c{i}":"unconfined""#
        )
    });
    let containers = list(n, |i| {
        format!(r#"{{"name":"c{i}","image":"registry.example.com/a:1"}}"#)
    });
    let body = pod(
        &format!(r#","annotations":{{{annotations}}}"#),
        &format!(r#""containers":[{containers}]"#),
    );
    let findings = decide_within("annotations", &body, Duration::from_secs(16));
    assert!(findings > n, "{findings}");
}

/// 40,000 read-only hostPath volumes and 40,000 writable mounts of them (a search of every
/// mount per volume). Measured: 0.5 s.
#[test]
fn host_path_volumes_and_their_mounts() {
    let n = 40_000;
    let volumes = list(n, |i| {
        format!(r#"{{"name":"v{i}","hostPath":{{"path":"/var/log/x"}}}}"#)
    });
    let mounts = list(n, |i| format!(r#"{{"name":"v{i}","mountPath":"/m{i}"}}"#));
    let body = pod(
        "",
        &format!(
            r#""volumes":[{volumes}],"containers":[{{"name":"c","image":"registry.example.com/a:1","volumeMounts":[{mounts}]}}]"#
        ),
    );
    let findings = decide_within("hostPath", &body, Duration::from_secs(10));
    assert!(findings >= n, "{findings}");
}

/// One container adding and dropping 60,000 capabilities, and 60,000 sysctls.
/// Measured: 0.85 s.
#[test]
fn long_capability_and_sysctl_lists() {
    let n = 60_000;
    let add = list(n, |i| format!(r#""CAP{i}""#));
    let drop = list(n, |i| format!(r#""D{i}""#));
    let sysctls = list(n, |i| format!(r#"{{"name":"kernel.k{i}","value":"1"}}"#));
    let body = pod(
        "",
        &format!(
            r#""securityContext":{{"sysctls":[{sysctls}]}},"containers":[{{"name":"c","image":"registry.example.com/a:1","securityContext":{{"capabilities":{{"add":[{add}],"drop":[{drop}]}}}}}}]"#
        ),
    );
    let findings = decide_within("capabilities", &body, Duration::from_secs(17));
    assert!(findings >= n, "{findings}");
}

/// 26,000 containers with distinct images, each with a host port (image rules and
/// per-container controls on every one; the decision's image list was deduplicated by a scan
/// of itself per image: 8.8 s). Measured: 1.5 s.
#[test]
fn many_containers_with_distinct_images() {
    let n = 26_000;
    let containers = list(n, |i| {
        format!(
            r#"{{"name":"c{i}","image":"evil.example.com/x{i}:latest","ports":[{{"containerPort":80,"hostPort":{}}}]}}"#,
            1 + i % 60_000
        )
    });
    let body = pod("", &format!(r#""containers":[{containers}]"#));
    let findings = decide_within("containers", &body, Duration::from_secs(30));
    assert!(findings >= n, "{findings}");
}
