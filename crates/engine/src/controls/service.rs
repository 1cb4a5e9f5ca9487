//! Service rules: forbidden Service types and external IPs (CVE-2020-8554).

use crate::k8s::ServiceSpec;
use crate::{Finding, ServiceRule};

/// Checks a Service spec found at `path` in the admitted object (usually `spec`). Findings
/// have rule `service` and are sorted by path.
pub fn check_service(rule: &ServiceRule, spec: &ServiceSpec, path: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let type_ = spec.effective_type();
    if rule.disallow_types.iter().any(|t| t.as_str() == type_) {
        let message = format!("Services of type {type_} are not allowed");
        findings.push(Finding::new(
            "service",
            format!("{path}.type"),
            type_,
            message,
        ));
    }
    if rule.forbid_external_ips {
        for (i, ip) in spec.external_ips.iter().enumerate() {
            let message = format!("externalIPs are not allowed (CVE-2020-8554): {ip}");
            let field = format!("{path}.externalIPs[{i}]");
            findings.push(Finding::new("service", field, ip.as_str(), message));
        }
    }
    findings.sort();
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceType;

    fn mk_spec(type_: &str, external_ips: &[&str]) -> ServiceSpec {
        ServiceSpec {
            type_: (*type_).into(),
            external_ips: external_ips.iter().map(|ip| (*ip).into()).collect(),
        }
    }

    fn rule(disallow_types: Vec<ServiceType>, forbid_external_ips: bool) -> ServiceRule {
        ServiceRule {
            disallow_types,
            forbid_external_ips,
        }
    }

    #[test]
    fn disallowed_types_are_reported() {
        let r = rule(
            vec![ServiceType::NodePort, ServiceType::LoadBalancer],
            false,
        );
        let findings = check_service(&r, &mk_spec("NodePort", &[]), "spec");
        assert_eq!(findings.len(), 1);
        assert_eq!(
            (findings[0].rule.as_str(), findings[0].path.as_str()),
            ("service", "spec.type")
        );
        assert_eq!(findings[0].value, "NodePort");
        assert!(check_service(&r, &mk_spec("ClusterIP", &[]), "spec").is_empty());
    }

    #[test]
    fn an_unset_type_is_cluster_ip() {
        let r = rule(vec![ServiceType::ClusterIp], false);
        assert_eq!(
            check_service(&r, &mk_spec("", &[]), "spec")[0].value,
            "ClusterIP"
        );
    }

    #[test]
    fn external_ips_are_reported_one_by_one() {
        let r = rule(vec![], true);
        let findings = check_service(&r, &mk_spec("", &["10.0.0.1", "10.0.0.2"]), "spec");
        let paths: Vec<_> = findings.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["spec.externalIPs[0]", "spec.externalIPs[1]"]);
        assert!(
            check_service(&rule(vec![], false), &mk_spec("", &["10.0.0.1"]), "spec").is_empty()
        );
    }
}
