//! Unit tests of the Pod Security Standards checks; the upstream fixtures are exercised by
//! `tests/psa_conformance.rs`.

use serde_json::{Value, json};

use super::*;
use crate::Kind;
use crate::k8s::test_pod;

const BASELINE: PodSecurityLevel = PodSecurityLevel::Baseline;
const RESTRICTED: PodSecurityLevel = PodSecurityLevel::Restricted;

/// A Pod with this spec and these annotations, read as the webhook reads it.
fn mk_pod(spec: Value, annotations: Value) -> PodTemplate {
    let object = json!({"metadata": {"name": "p", "annotations": annotations}, "spec": spec});
    test_pod(Kind::Pod, &object)
}

/// A pod whose single container has this security context.
fn with_container(security_context: Value) -> PodTemplate {
    mk_pod(
        json!({"containers": [{"name": "app", "securityContext": security_context}]}),
        json!({}),
    )
}

/// A pod that passes restricted at every version, with `patch` merged into its spec.
fn restricted_pod(patch: Value) -> PodTemplate {
    let mut spec = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
    });
    if let (Some(spec), Value::Object(patch)) = (spec.as_object_mut(), patch) {
        spec.extend(patch);
    }
    mk_pod(spec, json!({}))
}

fn rules(findings: &[PodFinding]) -> Vec<&str> {
    findings.iter().map(|f| f.finding.rule.as_str()).collect()
}

fn at(level: PodSecurityLevel, minor: u32, pod: &PodTemplate) -> Vec<PodFinding> {
    check(level, PodSecurityVersion::Minor(minor), pod)
}

#[test]
fn check_ids_follow_upstream_spelling() {
    assert_eq!(CheckId::CapabilitiesBaseline.id(), "capabilities_baseline");
    assert_eq!(
        CheckId::HostProbesAndHostLifecycle.rule(),
        "podSecurity/hostProbesAndHostLifecycle"
    );
    assert_eq!(CheckId::ProcMountRestricted.id(), "procMount_restricted");
}

#[test]
fn findings_locate_the_field_and_the_container() {
    let pod = mk_pod(
        json!({"hostPID": true, "containers": [{"name": "a"}, {"name": "b", "securityContext": {"privileged": true}}]}),
        json!({}),
    );
    // Sorted by path: `spec.containers[1]...` before `spec.hostPID`.
    let findings = at(BASELINE, 35, &pod);
    assert_eq!(
        rules(&findings),
        vec!["podSecurity/privileged", "podSecurity/hostNamespaces"]
    );
    let privileged = &findings[0];
    assert_eq!(
        privileged.finding.path,
        "spec.containers[1].securityContext.privileged"
    );
    assert_eq!(privileged.finding.value, "true");
    assert_eq!(privileged.container.map(|c| c.index), Some(1));
    assert!(
        privileged.finding.message.contains("\"b\""),
        "{}",
        privileged.finding.message
    );
    assert_eq!(findings[1].finding.path, "spec.hostPID");
    assert_eq!(findings[1].container, None);
}

#[test]
fn workload_findings_are_under_the_template() {
    let object = json!({"spec": {"jobTemplate": {"spec": {"template": {
        "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}},
        "spec": {"containers": [{"name": "app", "ports": [{"hostPort": 80}]}]},
    }}}}});
    let pod = test_pod(Kind::CronJob, &object);
    let paths: Vec<_> = at(BASELINE, 35, &pod)
        .into_iter()
        .map(|f| f.finding.path)
        .collect();
    assert_eq!(
        paths,
        vec![
            "spec.jobTemplate.spec.template.metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/app\"]",
            "spec.jobTemplate.spec.template.spec.containers[0].ports[0].hostPort",
        ]
    );
}

#[test]
fn sysctls_follow_the_version_safe_set() {
    let pod = mk_pod(
        json!({"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_rmem", "value": "1"}]}}),
        json!({}),
    );
    assert_eq!(rules(&at(BASELINE, 31, &pod)), vec!["podSecurity/sysctls"]);
    assert!(at(BASELINE, 32, &pod).is_empty());
    let reserved = mk_pod(
        json!({"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_reserved_ports"}]}}),
        json!({}),
    );
    assert!(!at(BASELINE, 26, &reserved).is_empty());
    assert!(at(BASELINE, 27, &reserved).is_empty());
}

#[test]
fn selinux_container_engine_type_is_allowed_from_1_31() {
    let pod = with_container(json!({"seLinuxOptions": {"type": "container_engine_t"}}));
    assert_eq!(
        rules(&at(BASELINE, 30, &pod)),
        vec!["podSecurity/seLinuxOptions"]
    );
    assert!(at(BASELINE, 31, &pod).is_empty());
    let pod = with_container(json!({"seLinuxOptions": {"user": "system_u", "role": "r"}}));
    let paths: Vec<_> = at(BASELINE, 35, &pod)
        .into_iter()
        .map(|f| f.finding.path)
        .collect();
    assert_eq!(
        paths,
        vec![
            "spec.containers[0].securityContext.seLinuxOptions.role",
            "spec.containers[0].securityContext.seLinuxOptions.user"
        ]
    );
}

#[test]
fn seccomp_reads_annotations_before_1_19_and_fields_after() {
    let annotated = mk_pod(
        json!({"containers": [{"name": "app"}]}),
        json!({"container.seccomp.security.alpha.kubernetes.io/app": "unconfined",
               "container.seccomp.security.alpha.kubernetes.io/gone": "unconfined"}),
    );
    let findings = at(BASELINE, 18, &annotated);
    assert_eq!(
        rules(&findings),
        vec!["podSecurity/seccompProfile_baseline"]
    );
    assert!(findings[0].finding.path.ends_with("/app\"]"));
    assert!(at(BASELINE, 19, &annotated).is_empty());
    let field = with_container(json!({"seccompProfile": {"type": "Unconfined"}}));
    assert!(at(BASELINE, 18, &field).is_empty());
    assert_eq!(
        rules(&at(BASELINE, 19, &field)),
        vec!["podSecurity/seccompProfile_baseline"]
    );
}

#[test]
fn host_probes_are_checked_from_1_34() {
    let pod = mk_pod(
        json!({"initContainers": [{"name": "i", "startupProbe": {"tcpSocket": {"host": "10.0.0.1"}}}]}),
        json!({}),
    );
    assert!(at(BASELINE, 33, &pod).is_empty());
    let findings = at(BASELINE, 34, &pod);
    assert_eq!(
        findings[0].finding.path,
        "spec.initContainers[0].startupProbe.tcpSocket.host"
    );
    assert_eq!(findings[0].finding.value, "10.0.0.1");
}

#[test]
fn proc_mount_is_relaxed_for_user_namespaces_only_in_baseline_from_1_35() {
    let unmasked = |host_users: bool| {
        restricted_pod(
            json!({"hostUsers": host_users, "containers": [{"name": "app", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "procMount": "Unmasked"}}]}),
        )
    };
    assert_eq!(
        rules(&at(BASELINE, 34, &unmasked(false))),
        vec!["podSecurity/procMount"]
    );
    assert!(at(BASELINE, 35, &unmasked(false)).is_empty());
    assert_eq!(
        rules(&at(RESTRICTED, 35, &unmasked(false))),
        vec!["podSecurity/procMount_restricted"]
    );
    assert_eq!(
        rules(&at(RESTRICTED, 35, &unmasked(true))),
        vec!["podSecurity/procMount", "podSecurity/procMount_restricted"]
    );
}

#[test]
fn restricted_checks_appear_at_their_versions() {
    let pod = mk_pod(
        json!({"containers": [{"name": "app", "securityContext": {"runAsUser": 0}}]}),
        json!({}),
    );
    assert_eq!(
        rules(&at(RESTRICTED, 0, &pod)),
        vec!["podSecurity/runAsNonRoot"]
    );
    assert_eq!(
        rules(&at(RESTRICTED, 8, &pod)),
        vec![
            "podSecurity/allowPrivilegeEscalation",
            "podSecurity/runAsNonRoot"
        ]
    );
    let latest = check(RESTRICTED, PodSecurityVersion::Latest, &pod);
    assert_eq!(
        rules(&latest),
        vec![
            "podSecurity/allowPrivilegeEscalation",
            "podSecurity/capabilities_restricted",
            "podSecurity/runAsNonRoot",
            "podSecurity/runAsUser",
            "podSecurity/seccompProfile_restricted",
        ]
    );
    assert!(at(RESTRICTED, 35, &restricted_pod(json!({}))).is_empty());
}

#[test]
fn run_as_checks_are_relaxed_for_user_namespaces_from_1_35() {
    let pod = restricted_pod(json!({"hostUsers": false, "securityContext": {
        "runAsNonRoot": false, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}}));
    assert_eq!(rules(&at(RESTRICTED, 34, &pod)).len(), 3);
    assert!(at(RESTRICTED, 35, &pod).is_empty());
}

#[test]
fn windows_pods_are_exempt_from_linux_only_restricted_checks_from_1_25() {
    let pod = mk_pod(
        json!({"os": {"name": "windows"}, "securityContext": {"runAsNonRoot": true},
               "containers": [{"name": "app", "securityContext": {
                   "capabilities": {"add": ["SYS_ADMIN"]}, "seccompProfile": {"type": "Unconfined"}}}]}),
        json!({}),
    );
    assert!(at(RESTRICTED, 25, &pod).is_empty());
    // Baseline has no exemption, and restricted before 1.25 has none either.
    assert_eq!(
        rules(&at(BASELINE, 25, &pod)),
        vec![
            "podSecurity/capabilities_baseline",
            "podSecurity/seccompProfile_baseline"
        ]
    );
    assert!(rules(&at(RESTRICTED, 24, &pod)).contains(&"podSecurity/capabilities_restricted"));
}

#[test]
fn run_as_non_root_distinguishes_explicit_and_missing() {
    let pod = mk_pod(
        json!({"securityContext": {"runAsNonRoot": false}, "containers": [
            {"name": "a", "securityContext": {"runAsNonRoot": true}}, {"name": "b"}]}),
        json!({}),
    );
    let findings: Vec<_> = at(RESTRICTED, 35, &pod)
        .into_iter()
        .filter(|f| f.finding.rule == "podSecurity/runAsNonRoot")
        .map(|f| (f.finding.path, f.finding.value))
        .collect();
    assert_eq!(
        findings,
        vec![
            (
                "spec.containers[1].securityContext.runAsNonRoot".to_owned(),
                String::new()
            ),
            (
                "spec.securityContext.runAsNonRoot".to_owned(),
                "false".to_owned()
            ),
        ]
    );
}

#[test]
fn restricted_volumes_name_the_source() {
    let pod = restricted_pod(
        json!({"volumes": [{"name": "ok", "image": {"reference": "x"}},
        {"name": "nfs", "nfs": {"server": "s", "path": "/"}}]}),
    );
    let findings = at(RESTRICTED, 35, &pod);
    assert_eq!(rules(&findings), vec!["podSecurity/restrictedVolumes"]);
    assert_eq!(findings[0].finding.path, "spec.volumes[1].nfs");
    assert_eq!(findings[0].finding.value, "nfs");
}
