//! Image blocking from scan results, through `evaluate`: thresholds, fixable-only, ignored and
//! always-blocked ids, malware, baseline failures, unscanned images and their action, lookups
//! by digest and by normalised tag, whitelisted images, and the messages.

use super::*;
use crate::scan::{ImageIdentity, ScanSummary, SeverityCounts};
use crate::{Severity, parse_policy_documents};
use Severity::{Critical, High, Low, Medium, Unknown};

/// The image most tests run.
const NGINX: &[&str] = &["nginx:1.25"];
const D1: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";

/// One policy `p` of `action` with these image rules (YAML flow mapping contents).
fn mk_policy(action: &str, image_rules: &str) -> Vec<Policy> {
    mk_policies(&format!(
        "name: p\naction: {action}\nrules: {{image: {{{image_rules}}}}}\n"
    ))
}

/// One `block` policy `p` with these image rules.
fn block(image_rules: &str) -> Vec<Policy> {
    mk_policy("block", image_rules)
}

fn mk_policies(yaml: &str) -> Vec<Policy> {
    parse_policy_documents(yaml)
        .unwrap()
        .iter()
        .map(|p| Policy::try_from(p).unwrap())
        .collect()
}

fn mk_summary(vulnerabilities: &[(&str, Severity, bool)]) -> ScanSummary {
    mk_full_summary(vulnerabilities, &[], &[])
}

fn mk_full_summary(
    vulnerabilities: &[(&str, Severity, bool)],
    malware: &[&str],
    baseline: &[&str],
) -> ScanSummary {
    ScanSummary::new(
        vulnerabilities
            .iter()
            .map(|v| v.1)
            .collect::<SeverityCounts>(),
        vulnerabilities.iter().copied(),
        malware.iter().copied(),
        baseline.iter().copied(),
    )
}

/// An index holding `summary` for `repository` at `tag`.
fn mk_index(repository: &str, tag: &str, summary: ScanSummary) -> ScanIndex {
    let mut index = ScanIndex::default();
    let identity = ImageIdentity {
        repository: repository.to_owned(),
        tags: vec![tag.to_owned()],
        digests: Vec::new(),
        image_id: None,
    };
    index.insert_summary(&identity, summary);
    index
}

/// The usual index: `docker.io/library/nginx:1.25` with `summary`.
fn nginx(summary: ScanSummary) -> ScanIndex {
    mk_index("docker.io/library/nginx", "1.25", summary)
}

fn mk_pod(images: &[&str]) -> String {
    let containers: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, image)| format!(r#"{{"name":"c{i}","image":"{image}"}}"#))
        .collect();
    format!(
        r#"{{"metadata":{{"name":"p","namespace":"demo"}},"spec":{{"containers":[{}]}}}}"#,
        containers.join(",")
    )
}

fn decide(images: &[&str], policies: &[Policy], scans: &ScanIndex) -> Decision {
    let pod = mk_pod(images);
    let input = AdmissionInput {
        operation: Operation::Create,
        kind: "Pod",
        sub_resource: "",
        namespace: "demo",
        name: "p",
        object: Some(&pod),
        old_object: None,
    };
    evaluate(&input, "c1", policies, scans)
}

/// (rule, action, message) of each finding.
fn found(decision: &Decision) -> Vec<(&str, Action, &str)> {
    decision
        .findings
        .iter()
        .map(|f| (&*f.finding.rule, f.action, &*f.finding.message))
        .collect()
}

/// The message of the first finding.
fn message(decision: &Decision) -> &str {
    &decision.findings[0].finding.message
}

#[test]
fn vulnerabilities_at_or_above_the_threshold_block_highest_first() {
    let scans = nginx(mk_summary(&[
        ("CVE-B", High, false),
        ("CVE-A", Critical, false),
        ("CVE-C", Medium, true),
        ("CVE-D", Unknown, true),
    ]));
    let decision = decide(NGINX, &block("vulnerabilities: {severity: high}"), &scans);
    assert_eq!(decision.outcome, Outcome::Block);
    let finding = &decision.findings[0].finding;
    assert_eq!(
        (
            finding.rule.as_str(),
            finding.path.as_str(),
            finding.value.as_str()
        ),
        ("vulnerabilities", "spec.containers[0].image", "nginx:1.25")
    );
    assert_eq!(
        finding.message,
        "image nginx:1.25 has 2 vulnerabilities at or above high: CVE-A, CVE-B"
    );
    let low = decide(
        &["nginx:1.25"],
        &block("vulnerabilities: {severity: low}"),
        &scans,
    );
    assert!(message(&low).contains("3 vulnerabilities"), "{low:?}");
    let critical = block("vulnerabilities: {severity: critical}");
    let clean = nginx(mk_summary(&[("CVE-B", High, true)]));
    assert_eq!(decide(NGINX, &critical, &clean).outcome, Outcome::Allow);
}

#[test]
fn fixable_only_counts_vulnerabilities_with_a_fix() {
    let policies = block("vulnerabilities: {severity: high, fixableOnly: true}");
    let scans = nginx(mk_summary(&[
        ("CVE-2023-1", High, true),
        ("CVE-2023-2", Critical, false),
        ("CVE-2023-3", High, true),
        ("CVE-2023-4", High, true),
    ]));
    let decision = decide(NGINX, &policies, &scans);
    assert_eq!(
        found(&decision),
        [(
            "vulnerabilities",
            Action::Block,
            "image nginx:1.25 has 3 vulnerabilities at or above high with a fix: CVE-2023-1, CVE-2023-3, CVE-2023-4"
        )]
    );
    let unfixed = nginx(mk_summary(&[("CVE-2023-2", Critical, false)]));
    assert_eq!(decide(NGINX, &policies, &unfixed).outcome, Outcome::Allow);
}

#[test]
fn ignored_ids_do_not_count() {
    let policies = block("vulnerabilities: {severity: medium, ignore: [CVE-1, CVE-3]}");
    let scans = nginx(mk_summary(&[
        ("CVE-1", Critical, true),
        ("CVE-2", Medium, true),
    ]));
    let decision = decide(NGINX, &policies, &scans);
    assert!(message(&decision).ends_with("1 vulnerability at or above medium: CVE-2"));
    let ignored = nginx(mk_summary(&[
        ("CVE-1", Critical, true),
        ("CVE-3", High, true),
    ]));
    assert_eq!(decide(NGINX, &policies, &ignored).outcome, Outcome::Allow);
}

#[test]
fn block_listed_ids_block_whatever_their_severity() {
    let only_named = block("vulnerabilities: {block: [CVE-2021-44228, CVE-9]}");
    let scans = nginx(mk_summary(&[
        ("CVE-2021-44228", Low, false),
        ("CVE-2", Critical, true),
    ]));
    let decision = decide(NGINX, &only_named, &scans);
    assert_eq!(
        found(&decision),
        [(
            "vulnerabilities",
            Action::Block,
            "image nginx:1.25 has 1 vulnerability named in vulnerabilities.block: CVE-2021-44228"
        )]
    );
    // With a threshold, ids it already counts are listed once.
    let both = block("vulnerabilities: {severity: critical, block: [CVE-2021-44228, CVE-2]}");
    let decision = decide(NGINX, &both, &scans);
    assert_eq!(
        message(&decision),
        "image nginx:1.25 has 1 vulnerability at or above critical: CVE-2; \
         and 1 vulnerability named in vulnerabilities.block: CVE-2021-44228"
    );
    let absent = nginx(mk_summary(&[("CVE-3", Critical, true)]));
    assert_eq!(decide(NGINX, &only_named, &absent).outcome, Outcome::Allow);
}

#[test]
fn malicious_files_and_baseline_failures() {
    let scans = nginx(mk_full_summary(
        &[],
        &["Unix.Trojan.Mirai", "Eicar-Signature"],
        &["DS-0002"],
    ));
    let both = block("maliciousFiles: true, baselineFailures: true");
    assert_eq!(
        found(&decide(NGINX, &both, &scans)),
        [
            (
                "baselineFailures",
                Action::Block,
                "image nginx:1.25 has 1 failed baseline check (misconfigurations or embedded secrets): DS-0002"
            ),
            (
                "maliciousFiles",
                Action::Block,
                "image nginx:1.25 has malicious files matching 2 signatures: Eicar-Signature, Unix.Trojan.Mirai"
            ),
        ]
    );
    let clean = nginx(mk_summary(&[("CVE-1", Critical, true)]));
    assert_eq!(decide(NGINX, &both, &clean).outcome, Outcome::Allow);
    // Rules that are off find nothing, even in an image full of problems.
    let tags_only = block("disallowedTags: [latest]");
    assert_eq!(decide(NGINX, &tags_only, &scans).outcome, Outcome::Allow);
}

#[test]
fn unscanned_images_follow_the_unscanned_action() {
    let empty = ScanIndex::default();
    let allow = block("vulnerabilities: {severity: high}, unscanned: allow");
    assert_eq!(decide(NGINX, &allow, &empty).outcome, Outcome::Allow);

    let block = block("unscanned: block");
    let decision = decide(&["nginx:1.25", "redis:7"], &block, &nginx(mk_summary(&[])));
    assert_eq!(decision.outcome, Outcome::Block);
    let finding = &decision.findings[0].finding;
    assert_eq!(
        (
            finding.rule.as_str(),
            finding.path.as_str(),
            finding.value.as_str()
        ),
        ("unscanned", "spec.containers[1].image", "redis:7")
    );
    assert_eq!(
        finding.message,
        "image redis:7 has no scan result (unscanned: block)"
    );
    assert_eq!(decision.findings.len(), 1, "{decision:?}");
}

#[test]
fn unscanned_alert_only_alerts_even_in_a_block_policy() {
    let policies = block("vulnerabilities: {severity: high}, unscanned: alert");
    let scans = nginx(mk_summary(&[("CVE-1", High, true)]));
    let alerted = decide(&["redis:7"], &policies, &scans);
    assert_eq!(alerted.outcome, Outcome::Alert);
    assert_eq!(
        found(&alerted),
        [(
            "unscanned",
            Action::Alert,
            "image redis:7 has no scan result (unscanned: alert)"
        )]
    );
    assert_eq!(alerted.policy_names_with(Action::Alert), ["p"]);
    assert!(alerted.policy_names_with(Action::Block).is_empty());

    // The same policy still blocks a scanned image's vulnerabilities.
    let mixed = decide(&["redis:7", "nginx:1.25"], &policies, &scans);
    assert_eq!(mixed.outcome, Outcome::Block);
    let actions: Vec<(&str, Action)> = mixed
        .findings
        .iter()
        .map(|f| (f.finding.rule.as_str(), f.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("unscanned", Action::Alert),
            ("vulnerabilities", Action::Block)
        ]
    );
}

#[test]
fn an_alert_policy_never_blocks() {
    let policies = mk_policy(
        "alert",
        "vulnerabilities: {severity: high}, unscanned: block",
    );
    let scans = nginx(mk_summary(&[("CVE-1", High, true)]));
    let decision = decide(&["redis:7", "nginx:1.25"], &policies, &scans);
    assert_eq!(decision.outcome, Outcome::Alert);
    assert!(decision.findings.iter().all(|f| f.action == Action::Alert));
    assert_eq!(decision.findings.len(), 2);
}

#[test]
fn digests_are_looked_up_before_tags() {
    let mut scans = nginx(mk_summary(&[]));
    let pinned = ImageIdentity {
        repository: "mirror.example.com/nginx".into(),
        tags: Vec::new(),
        digests: vec![D1.into()],
        image_id: None,
    };
    scans.insert_summary(&pinned, mk_summary(&[("CVE-IN-DIGEST", Critical, true)]));
    let policies = block("vulnerabilities: {severity: high}, unscanned: block");
    let image = format!("nginx:1.25@{D1}");
    let decision = decide(&[&image], &policies, &scans);
    assert_eq!(decision.outcome, Outcome::Block);
    assert!(message(&decision).ends_with(": CVE-IN-DIGEST"));
    assert_eq!(decision.findings[0].finding.value, image);
    assert_eq!(decide(NGINX, &policies, &scans).outcome, Outcome::Allow);
}

#[test]
fn tags_are_looked_up_normalised() {
    let scans = nginx(mk_summary(&[("CVE-1", High, true)]));
    let policies = block("vulnerabilities: {severity: high}, unscanned: alert");
    for image in [
        "nginx:1.25",
        "docker.io/nginx:1.25",
        "docker.io/library/nginx:1.25",
    ] {
        let decision = decide(&[image], &policies, &scans);
        assert_eq!(found(&decision)[0].0, "vulnerabilities", "{image}");
    }
    let latest = mk_index(
        "docker.io/library/alpine",
        "latest",
        mk_summary(&[("CVE-2", High, true)]),
    );
    assert_eq!(
        decide(&["alpine"], &policies, &latest).outcome,
        Outcome::Block
    );
    // Another tag is another image: unscanned.
    let other = decide(&["nginx:1.26"], &policies, &scans);
    assert_eq!(found(&other)[0].0, "unscanned");
}

#[test]
fn whitelisted_images_are_exempt() {
    let yaml = "name: p\nwhitelist: {images: [\"nginx:1.25\"]}\n\
                rules: {image: {vulnerabilities: {severity: high}, unscanned: block}}\n";
    let policies = mk_policies(yaml);
    let scans = nginx(mk_summary(&[("CVE-1", Critical, true)]));
    let decision = decide(&["nginx:1.25", "redis:7"], &policies, &scans);
    let paths: Vec<(&str, &str)> = decision
        .findings
        .iter()
        .map(|f| (f.finding.rule.as_str(), f.finding.path.as_str()))
        .collect();
    assert_eq!(paths, [("unscanned", "spec.containers[1].image")]);
    assert_eq!(
        decide(NGINX, &policies, &ScanIndex::default()).outcome,
        Outcome::Allow
    );
}

#[test]
fn messages_name_the_first_five_ids_and_count_the_rest() {
    let ids: Vec<String> = (1..=8).map(|i| format!("CVE-2024-000{i}")).collect();
    let vulnerabilities: Vec<(&str, Severity, bool)> =
        ids.iter().map(|id| (id.as_str(), High, true)).collect();
    let scans = nginx(mk_summary(&vulnerabilities));
    let decision = decide(NGINX, &block("vulnerabilities: {severity: high}"), &scans);
    assert_eq!(
        message(&decision),
        "image nginx:1.25 has 8 vulnerabilities at or above high: CVE-2024-0001, CVE-2024-0002, \
         CVE-2024-0003, CVE-2024-0004, CVE-2024-0005 and 3 more"
    );
}

#[test]
fn workload_paths_and_every_container_list() {
    let scans = nginx(mk_summary(&[("CVE-1", High, true)]));
    let deployment = r#"{"kind":"Deployment","metadata":{"name":"web"},"spec":{"template":{"spec":{
        "initContainers":[{"name":"init","image":"nginx:1.25"}],"containers":[{"name":"a","image":"nginx:1.25"}]}}}}"#;
    let input = AdmissionInput {
        operation: Operation::Create,
        kind: "Deployment",
        sub_resource: "",
        namespace: "demo",
        name: "web",
        object: Some(deployment),
        old_object: None,
    };
    let policies = block("vulnerabilities: {severity: high}");
    let decision = evaluate(&input, "c1", &policies, &scans);
    let paths: Vec<&str> = decision
        .findings
        .iter()
        .map(|f| f.finding.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "spec.template.spec.containers[0].image",
            "spec.template.spec.initContainers[0].image"
        ]
    );
}

#[test]
fn a_real_report_through_insert() {
    let bytes = include_bytes!("../../scan/tests/scans/trivy/debian-buster.json");
    let scan =
        portcullis_scan::parse_report(portcullis_scan::ReportFormat::Trivy, bytes, None, 1 << 20)
            .unwrap();
    let mut scans = ScanIndex::default();
    scans.insert(&scan);
    let image = "ghcr.io/aquasecurity/trivy-test-images:debian-buster";
    let policies = block("vulnerabilities: {severity: high, fixableOnly: true}");
    let decision = decide(&[image], &policies, &scans);
    assert_eq!(
        found(&decision),
        [(
            "vulnerabilities",
            Action::Block,
            "image ghcr.io/aquasecurity/trivy-test-images:debian-buster has 1 vulnerability at or \
             above high with a fix: CVE-2019-18224"
        )]
    );
}

/// An image volume (`volumes[].image.reference`) is pulled by the kubelet like a container's
/// image: every image rule judges it, a whitelist entry exempts it, and the decision lists it.
#[test]
fn image_volumes_are_judged_as_container_images() {
    let pod = |reference: &str| {
        format!(
            r#"{{"metadata":{{"name":"p","namespace":"demo"}},"spec":{{
            "containers":[{{"name":"a","image":"registry.example.com/app:1"}}],
            "volumes":[{{"name":"cfg","configMap":{{"name":"x"}}}},
                       {{"name":"payload","image":{{"reference":"{reference}","pullPolicy":"Always"}}}}]}}}}"#
        )
    };
    let decide_pod = |body: &str, policies: &[Policy], scans: &ScanIndex| {
        let input = AdmissionInput {
            operation: Operation::Create,
            kind: "Pod",
            sub_resource: "",
            namespace: "demo",
            name: "p",
            object: Some(body),
            old_object: None,
        };
        evaluate(&input, "c1", policies, scans)
    };
    let rules = "registries: {allow: [registry.example.com]}, disallowedTags: [latest], \
                 vulnerabilities: {severity: high}, unscanned: block";
    let mut scans = mk_index(
        "registry.example.com/app",
        "1",
        mk_summary(&[("CVE-0", Low, true)]),
    );
    let nginx = ImageIdentity {
        repository: "docker.io/library/nginx".into(),
        tags: vec!["1.25".into()],
        digests: Vec::new(),
        image_id: None,
    };
    scans.insert_summary(&nginx, mk_summary(&[("CVE-1", Critical, true)]));
    let body = pod("evil.example.com/payload");
    let decision = decide_pod(&body, &block(rules), &scans);
    let rules_at: Vec<(&str, &str)> = decision
        .findings
        .iter()
        .map(|f| (f.finding.rule.as_str(), f.finding.path.as_str()))
        .collect();
    assert_eq!(
        rules_at,
        [
            ("disallowedTags", "spec.volumes[1].image.reference"),
            ("registries", "spec.volumes[1].image.reference"),
            ("unscanned", "spec.volumes[1].image.reference"),
        ]
    );
    assert_eq!(decision.outcome, Outcome::Block);
    assert_eq!(
        decision.images,
        ["registry.example.com/app:1", "evil.example.com/payload"]
    );
    // Scan rules read the volume image's report.
    let body = pod("nginx:1.25");
    let decision = decide_pod(&body, &block("vulnerabilities: {severity: high}"), &scans);
    assert_eq!(found(&decision)[0].0, "vulnerabilities");
    assert_eq!(
        decision.findings[0].finding.path,
        "spec.volumes[1].image.reference"
    );
    // A whitelisted volume image is exempt, as a container's would be.
    let yaml = "name: p\nwhitelist: {images: [\"nginx:1.25\"]}\n\
                rules: {image: {vulnerabilities: {severity: high}}}\n";
    let decision = decide_pod(&body, &mk_policies(yaml), &scans);
    assert_eq!(decision.outcome, Outcome::Allow);
}
