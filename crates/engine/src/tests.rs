//! Engine tests: outcomes, whitelists, workload paths, UPDATE and DELETE handling, ordering.
//! Image blocking from scan results is tested in `scan_tests`.

use super::*;
use crate::parse_policy_documents;

/// Policies from YAML documents (the file format).
fn policies(yaml: &str) -> Vec<Policy> {
    parse_policy_documents(yaml)
        .unwrap()
        .iter()
        .map(|p| Policy::try_from(p).unwrap())
        .collect()
}

/// `evaluate` with no scan results: these tests are about everything else (scan rules are in
/// `scan_tests`).
fn evaluate(input: &AdmissionInput<'_>, cluster: &str, policies: &[Policy]) -> Decision {
    super::evaluate(input, cluster, policies, &ScanIndex::default())
}

fn mk_pod(containers: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","namespace":"demo","labels":{{"app":"web"}}}},
            "spec":{{"containers":[{containers}]}}}}"#
    )
}

fn create<'a>(kind: &'a str, object: &'a str) -> AdmissionInput<'a> {
    AdmissionInput {
        operation: Operation::Create,
        kind,
        sub_resource: "",
        namespace: "demo",
        name: "p",
        object: Some(object),
        old_object: None,
    }
}

const NO_PRIVILEGED: &str = "name: no-privileged\nrules: {resource: {privileged: {}}}\n";
const PRIVILEGED: &str =
    r#"{"name":"app","image":"nginx:1.25","securityContext":{"privileged":true}}"#;
const PLAIN: &str = r#"{"name":"app","image":"nginx:1.25"}"#;

#[test]
fn a_block_policy_blocks_and_names_the_field() {
    let pod = mk_pod(PRIVILEGED);
    let decision = evaluate(&create("Pod", &pod), "c1", &policies(NO_PRIVILEGED));
    assert_eq!(decision.outcome, Outcome::Block);
    let finding = &decision.findings[0];
    assert_eq!(finding.policy, "no-privileged");
    assert_eq!(finding.finding.rule, "privileged");
    assert_eq!(
        finding.finding.path,
        "spec.containers[0].securityContext.privileged"
    );
    assert_eq!(finding.finding.value, "true");

    let pod = mk_pod(PLAIN);
    assert_eq!(
        evaluate(&create("Pod", &pod), "c1", &policies(NO_PRIVILEGED)).outcome,
        Outcome::Allow
    );
}

#[test]
fn alert_policies_admit_with_findings() {
    let pod = mk_pod(PRIVILEGED);
    let yaml = "name: watch\naction: alert\nrules: {resource: {privileged: {}}}\n";
    let decision = evaluate(&create("Pod", &pod), "c1", &policies(yaml));
    assert_eq!(decision.outcome, Outcome::Alert);
    assert_eq!(decision.policy_names_with(Action::Alert), ["watch"]);
    let both = format!("{yaml}---\n{NO_PRIVILEGED}");
    assert_eq!(
        evaluate(&create("Pod", &pod), "c1", &policies(&both)).outcome,
        Outcome::Block
    );
}

#[test]
fn workload_paths_point_into_the_template() {
    let deployment = format!(
        r#"{{"kind":"Deployment","metadata":{{"name":"web"}},"spec":{{"template":{{"spec":{{"containers":[{PLAIN},{PRIVILEGED}]}}}}}}}}"#
    );
    let decision = evaluate(
        &create("Deployment", &deployment),
        "c1",
        &policies(NO_PRIVILEGED),
    );
    assert_eq!(
        decision.findings[0].finding.path,
        "spec.template.spec.containers[1].securityContext.privileged"
    );
    let cronjob = format!(
        r#"{{"kind":"CronJob","spec":{{"jobTemplate":{{"spec":{{"template":{{"spec":{{"initContainers":[{PRIVILEGED}],"containers":[{PLAIN}]}}}}}}}}}}}}"#
    );
    let decision = evaluate(&create("CronJob", &cronjob), "c1", &policies(NO_PRIVILEGED));
    assert_eq!(
        decision.findings[0].finding.path,
        "spec.jobTemplate.spec.template.spec.initContainers[0].securityContext.privileged"
    );
}

#[test]
fn whitelisted_images_drop_their_container_findings_only() {
    let yaml = "name: p\nwhitelist: {images: [\"nginx:1.25\"]}\nrules: {resource: {privileged: {}, hostNamespaces: {}}}\n";
    let pod = r#"{"metadata":{"name":"p"},"spec":{"hostPID":true,"containers":[
        {"name":"a","image":"nginx:1.25","securityContext":{"privileged":true}},
        {"name":"b","image":"busybox","securityContext":{"privileged":true}}]}}"#;
    let decision = evaluate(&create("Pod", pod), "c1", &policies(yaml));
    let paths: Vec<&str> = decision
        .findings
        .iter()
        .map(|f| f.finding.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "spec.containers[1].securityContext.privileged",
            "spec.hostPID"
        ]
    );
}

#[test]
fn scope_and_whole_object_whitelists() {
    let pod = mk_pod(PRIVILEGED);
    let scoped = "name: p\nscope: {clusters: [\"prod-*\"]}\nrules: {resource: {privileged: {}}}\n";
    assert_eq!(
        evaluate(&create("Pod", &pod), "dev-1", &policies(scoped)).outcome,
        Outcome::Allow
    );
    assert_eq!(
        evaluate(&create("Pod", &pod), "prod-1", &policies(scoped)).outcome,
        Outcome::Block
    );
    let excluded =
        "name: p\nwhitelist: {namespaces: [\"de*\"]}\nrules: {resource: {privileged: {}}}\n";
    assert_eq!(
        evaluate(&create("Pod", &pod), "c1", &policies(excluded)).outcome,
        Outcome::Allow
    );
    let selector = "name: p\nscope: {labelSelector: {matchLabels: {app: db}}}\nrules: {resource: {privileged: {}}}\n";
    assert_eq!(
        evaluate(&create("Pod", &pod), "c1", &policies(selector)).outcome,
        Outcome::Allow
    );
    let explained = explain(&create("Pod", &pod), "c1", &policies(selector));
    assert!(
        explained[0].1.starts_with("does not apply"),
        "{explained:?}"
    );
}

#[test]
fn disabled_policies_are_not_evaluated() {
    let pod = mk_pod(PRIVILEGED);
    let yaml = "name: p\nenabled: false\nrules: {resource: {privileged: {}}}\n";
    assert_eq!(
        evaluate(&create("Pod", &pod), "c1", &policies(yaml)).outcome,
        Outcome::Allow
    );
}

#[test]
fn delete_connect_unknown_kinds_and_unchanged_updates_are_admitted() {
    let pod = mk_pod(PRIVILEGED);
    let policies = policies(NO_PRIVILEGED);
    for operation in [Operation::Delete, Operation::Connect] {
        let input = AdmissionInput {
            operation,
            ..create("Pod", &pod)
        };
        assert_eq!(evaluate(&input, "c1", &policies).outcome, Outcome::Allow);
    }
    let unknown = evaluate(&create("ConfigMap", "{}"), "c1", &policies);
    assert_eq!(
        (unknown.outcome, unknown.skipped),
        (Outcome::Allow, Some("kind is not protected"))
    );

    // Relabelling a privileged pod that is already running must not fail.
    let relabelled = pod.replace(r#""app":"web""#, r#""app":"web","tier":"x""#);
    let update = AdmissionInput {
        operation: Operation::Update,
        old_object: Some(&pod),
        ..create("Pod", &relabelled)
    };
    assert_eq!(evaluate(&update, "c1", &policies).outcome, Outcome::Allow);
    // Changing the image is evaluated.
    let new_image = pod.replace("nginx:1.25", "nginx:1.26");
    let update = AdmissionInput {
        operation: Operation::Update,
        old_object: Some(&pod),
        ..create("Pod", &new_image)
    };
    assert_eq!(evaluate(&update, "c1", &policies).outcome, Outcome::Block);
}

#[test]
fn an_object_that_does_not_fit_its_kind_is_invalid() {
    let decision = evaluate(
        &create("Pod", r#"{"spec":{"containers":"nope"}}"#),
        "c1",
        &policies(NO_PRIVILEGED),
    );
    let Outcome::Invalid(reason) = decision.outcome else {
        panic!("{decision:?}")
    };
    assert!(reason.contains("spec.containers"), "{reason}");
    let decision = evaluate(&create("Pod", "not json"), "c1", &policies(NO_PRIVILEGED));
    assert!(matches!(decision.outcome, Outcome::Invalid(_)));
}

#[test]
fn services_and_image_hygiene() {
    let yaml = "name: svc\nrules: {resource: {service: {disallowTypes: [NodePort], forbidExternalIPs: true}}}\n---\n\
                name: tags\nrules: {image: {disallowedTags: [latest], registries: {allow: [docker.io/library]}}}\n";
    let service = r#"{"spec":{"type":"NodePort","externalIPs":["203.0.113.10"]}}"#;
    let decision = evaluate(&create("Service", service), "c1", &policies(yaml));
    assert_eq!(decision.outcome, Outcome::Block);
    assert_eq!(decision.findings.len(), 2, "{decision:?}");
    let pod = mk_pod(r#"{"name":"a","image":"alpine"},{"name":"b","image":"quay.io/x/y:1"}"#);
    let decision = evaluate(&create("Pod", &pod), "c1", &policies(yaml));
    let rules: Vec<(&str, &str)> = decision
        .findings
        .iter()
        .map(|f| (f.finding.rule.as_str(), f.finding.path.as_str()))
        .collect();
    assert_eq!(
        rules,
        [
            ("disallowedTags", "spec.containers[0].image"),
            ("registries", "spec.containers[1].image")
        ]
    );
}

#[test]
fn pod_security_findings_name_the_check() {
    let yaml = "name: pss\nrules: {resource: {podSecurity: {level: baseline}}}\n";
    let pod = r#"{"spec":{"hostNetwork":true,"containers":[{"name":"a","image":"x"}]}}"#;
    let decision = evaluate(&create("Pod", pod), "c1", &policies(yaml));
    assert_eq!(decision.outcome, Outcome::Block);
    assert_eq!(
        decision.findings[0].finding.rule,
        "podSecurity/hostNamespaces"
    );
}

#[test]
fn findings_are_ordered_by_policy_path_rule() {
    let yaml = format!(
        "{NO_PRIVILEGED}---\nname: a-first\nrules: {{resource: {{privileged: {{}}, hostNamespaces: {{}}}}}}\n"
    );
    let pod = r#"{"spec":{"hostIPC":true,"containers":[{"name":"a","image":"x","securityContext":{"privileged":true}}]}}"#;
    let decision = evaluate(&create("Pod", pod), "c1", &policies(&yaml));
    let order: Vec<(&str, &str)> = decision
        .findings
        .iter()
        .map(|f| (f.policy.as_str(), f.finding.path.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("a-first", "spec.containers[0].securityContext.privileged"),
            ("a-first", "spec.hostIPC"),
            (
                "no-privileged",
                "spec.containers[0].securityContext.privileged"
            ),
        ]
    );
}

#[test]
fn policies_evaluated_together_get_the_findings_each_gets_alone() {
    // Pod Security results and parsed images are shared between policies within one
    // admission; whitelists, actions and distinct parameters must still apply per policy.
    let mut yaml = String::new();
    for i in 0..12 {
        let rules = if i % 2 == 0 {
            "{resource: {podSecurity: {level: baseline}, hostPath: {allow: [{pathPrefix: /var/log}]}}, \
             image: {disallowedTags: [latest]}}"
                .to_owned()
        } else {
            let min = 1000 + i;
            format!(
                "{{resource: {{runAsUser: {{rule: MustRunAs, ranges: [{{min: {min}, max: 2000}}]}}}}, \
                 image: {{registries: {{allow: [docker.io/library]}}}}}}"
            )
        };
        let extra = match i {
            2 => "whitelist: {images: [\"nginx*\"]}\n",
            4 => "action: alert\n",
            _ => "",
        };
        yaml.push_str(&format!("---\nname: p{i:02}\n{extra}rules: {rules}\n"));
    }
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","namespace":"demo"}},
            "spec":{{"containers":[{PRIVILEGED},{{"name":"b","image":"quay.io/b/busybox","securityContext":{{"runAsUser":5}}}}],
            "volumes":[{{"name":"h","hostPath":{{"path":"/etc"}}}}]}}}}"#
    );
    let all = policies(&yaml);
    let together = evaluate(&create("Pod", &pod), "c1", &all);
    let alone: Vec<PolicyFinding> = all
        .iter()
        .flat_map(|p| evaluate(&create("Pod", &pod), "c1", std::slice::from_ref(p)).findings)
        .collect();
    assert_eq!(together.findings, alone);
    // The same with equal rule sets held as one value (as the agent and the CLI hold them):
    // found by address instead of by comparison.
    let mut shared = all.clone();
    crate::share_rules(&mut shared);
    let (p00, p02) = (&shared[0].rules, &shared[2].rules);
    assert!(std::sync::Arc::ptr_eq(
        p00.resource.as_ref().unwrap(),
        p02.resource.as_ref().unwrap()
    ));
    assert!(std::sync::Arc::ptr_eq(
        p00.image.as_ref().unwrap(),
        p02.image.as_ref().unwrap()
    ));
    assert_eq!(
        evaluate(&create("Pod", &pod), "c1", &shared).findings,
        alone
    );
    let rules = |name: &str| -> Vec<&str> {
        let of = alone.iter().filter(|f| f.policy == name);
        of.map(|f| f.finding.rule.as_str()).collect()
    };
    // Pod Security (privileged, hostPath), the untagged busybox, the hostPath control.
    let p00 = [
        "podSecurity/privileged",
        "disallowedTags",
        "podSecurity/hostPathVolumes",
        "hostPath",
    ];
    assert_eq!(rules("p00"), p00);
    // The whitelisted nginx container's finding is gone; pod-level ones stay.
    assert_eq!(rules("p02"), p00[1..]);
    assert!(
        alone
            .iter()
            .filter(|f| f.policy == "p04")
            .all(|f| f.action == Action::Alert)
    );
    assert_eq!(rules("p11"), ["runAsUser", "registries", "runAsUser"]);
}

#[test]
fn policies_whose_rule_hashes_collide_keep_their_own_findings() {
    // Shared results are found by hash and confirmed by comparing the rules: two different
    // rule sets with the same hashes (forced here) are each checked on their own.
    let mut all = policies(
        "---\nname: a\nrules: {resource: {privileged: {}}, image: {disallowedTags: [\"1.25\"]}}\n\
         ---\nname: b\nrules: {resource: {readOnlyRootFilesystem: true}, image: {disallowedTags: [dev]}}\n",
    );
    all[1].fingerprints = all[0].fingerprints;
    let decision = evaluate(&create("Pod", &mk_pod(PRIVILEGED)), "c1", &all);
    let found: Vec<(&str, &str)> = decision
        .findings
        .iter()
        .map(|f| (f.policy.as_str(), f.finding.rule.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            ("a", "disallowedTags"),
            ("a", "privileged"),
            ("b", "readOnlyRootFilesystem"),
        ]
    );
}
