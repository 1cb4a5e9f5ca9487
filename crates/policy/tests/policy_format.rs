//! The examples of POLICY-FORMAT.md (the contract) parse, validate and round-trip, and read the
//! same whether written as YAML, JSON, or grpcurl's proto JSON.

use portcullis_policy::{
    Action, Capability, HostPortsRule, IdRuleKind, Kind, PodSecurityLevel, PodSecurityVersion,
    Policy, PolicyFileError, PortRange, ProfileType, Severity, UnscannedAction, VolumeType,
    parse_policy_documents, validate_policy_set,
};
use portcullis_proto::v1 as proto;

const EXAMPLE_YAML: &str = include_str!("data/policy-format-example.yaml");
const EXAMPLE_JSON: &str = include_str!("data/policy-format-example.json");
const GRPCURL_JSON: &str = include_str!("data/restricted-workloads.grpcurl.json");

fn example() -> Vec<proto::Policy> {
    parse_policy_documents(EXAMPLE_YAML).expect("the example file parses")
}

#[test]
fn example_file_has_two_valid_policies() {
    let policies = validate_policy_set(&example()).expect("the examples are valid");
    assert_eq!(policies.len(), 2);

    let images = &policies[0];
    assert_eq!(images.name, "no-high-vulns");
    assert!(images.enabled);
    assert_eq!(images.action, Action::Block);
    assert_eq!(images.scope.kinds.len(), 7);
    assert!(!images.scope.kinds.contains(&Kind::Service));
    assert!(images.scope.clusters[0].matches("prod-eu-1"));
    assert_eq!(
        images.whitelist.workloads[0].to_string(),
        "payments/legacy-batch"
    );
    let image = images.rules.image.as_ref().unwrap();
    let vulnerabilities = image.vulnerabilities.as_ref().unwrap();
    assert_eq!(vulnerabilities.severity, Some(Severity::High));
    assert!(vulnerabilities.fixable_only);
    assert_eq!(image.unscanned, UnscannedAction::Alert);
    assert_eq!(image.disallowed_tags, ["latest"]);
    assert!(images.rules.resource.is_none());

    let workloads = &policies[1];
    assert_eq!(workloads.name, "restricted-workloads");
    assert!(workloads.rules.image.is_none());
    let resource = workloads.rules.resource.as_ref().unwrap();
    let pss = resource.pod_security.unwrap();
    assert_eq!(pss.level, PodSecurityLevel::Restricted);
    assert_eq!(pss.version, PodSecurityVersion::Latest);
    assert!(resource.forbid_privileged);
    assert_eq!(
        resource.host_ports,
        Some(HostPortsRule {
            allowed: Some(PortRange {
                min: 8000,
                max: 8080
            })
        })
    );
    let capabilities = resource.capabilities.as_ref().unwrap();
    assert_eq!(
        capabilities.allow,
        [Capability::parse("NET_BIND_SERVICE").unwrap()]
    );
    assert!(capabilities.required_drop[0].is_all());
    assert!(resource.forbid_privilege_escalation);
    assert!(resource.require_read_only_root_filesystem);
    assert_eq!(
        resource.run_as_user.as_ref().unwrap().rule,
        IdRuleKind::MustRunAsNonRoot
    );
    let seccomp = resource.seccomp.as_ref().unwrap();
    assert_eq!(
        seccomp.allow,
        [ProfileType::RuntimeDefault, ProfileType::Localhost(None)]
    );
    assert!(!seccomp.allow_unset);
    let volumes = resource.volumes.as_ref().unwrap();
    assert!(volumes.allow.contains(&VolumeType::FlexVolume));
    assert!(resource.forbid_windows_host_process && resource.forbid_host_probes);
    assert!(resource.service.as_ref().unwrap().forbid_external_ips);
}

#[test]
fn examples_round_trip_through_the_normalised_proto() {
    for original in example() {
        let domain = Policy::try_from(&original).unwrap();
        let normalised = proto::Policy::from(&domain);
        assert_eq!(Policy::try_from(&normalised).unwrap(), domain);
        assert_eq!(normalised.enabled, Some(true));
        assert_eq!(normalised.action, "block");
    }
}

#[test]
fn json_file_equals_yaml_file() {
    assert_eq!(parse_policy_documents(EXAMPLE_JSON).unwrap(), example());
}

#[test]
fn grpcurl_json_equals_yaml() {
    let grpcurl = parse_policy_documents(GRPCURL_JSON).unwrap();
    assert_eq!(grpcurl, [example()[1].clone()]);
}

#[test]
fn snake_case_json_field_names_are_accepted() {
    let text =
        r#"{"name": "svc", "rules": {"resource": {"service": {"forbid_external_ips": true}}}}"#;
    let policies = parse_policy_documents(text).unwrap();
    let domain = Policy::try_from(&policies[0]).unwrap();
    let service = domain.rules.resource.unwrap().service.clone().unwrap();
    assert!(service.forbid_external_ips);
}

#[test]
fn serialised_protos_read_back_equal() {
    let policies = example();
    // What grpcurl prints (proto JSON) and what a CLI could print as YAML.
    let json = serde_json::to_string_pretty(&policies).unwrap();
    assert_eq!(parse_policy_documents(&json).unwrap(), policies);
    let yaml = policies
        .iter()
        .map(|p| serde_yaml::to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    assert_eq!(parse_policy_documents(&yaml).unwrap(), policies);
}

#[test]
fn unknown_field_in_the_second_document_is_located() {
    let text = EXAMPLE_YAML.replace(
        "    privileged: {}",
        "    privileged: {}\n    privilege: {}",
    );
    let error = parse_policy_documents(&text).unwrap_err();
    assert!(
        matches!(error, PolicyFileError::Document { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.starts_with("document 2, line "), "{message}");
    assert!(message.contains("unknown field `privilege`"), "{message}");
}

#[test]
fn invalid_values_in_the_example_are_all_reported() {
    let text = EXAMPLE_YAML
        .replace("severity: high", "severity: hihg")
        .replace("version: latest", "version: v1.99")
        .replace("name: restricted-workloads", "name: no-high-vulns");
    let error = validate_policy_set(&parse_policy_documents(&text).unwrap()).unwrap_err();
    let lines: Vec<_> = error.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            r#"policies[0].rules.image.vulnerabilities.severity: unknown severity "hihg": expected one of critical, high, medium, low"#,
            r#"policies[1].rules.resource.podSecurity.version: unknown Pod Security Standards version "v1.99": expected latest or v1.0 to v1.35"#,
            r#"policies[1].name: duplicate name "no-high-vulns" (also policies[0])"#,
        ]
    );
}
