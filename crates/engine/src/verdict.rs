//! The verdict on one image alone, outside any admission request: what the image rules of a
//! cluster's policies say about it (`portcullis` answers Gatekeeper's external-data requests
//! with it). Only the parts of a policy that can be judged without a workload count: the
//! policy must be enabled and its cluster scope must match; namespace, kind and label scopes
//! and namespace or workload whitelists are left to the caller's own rules; image whitelists
//! apply.

use crate::{Policy, applicability, hygiene};

use super::{Outcome, PolicyFinding, ScanIndex, outcome_of, scans, weaker};

/// What the image rules say about one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageVerdict {
    /// `Allow`, `Alert` or `Block`.
    pub outcome: Outcome,
    /// Whether `scans` holds a result for the image.
    pub scanned: bool,
    /// The findings, in policy then rule order; field paths are `image`.
    pub findings: Vec<PolicyFinding>,
}

/// Judges `image` (as a pod spec would write it) by the image rules of `policies` in `cluster`.
pub fn image_verdict<'p>(
    image: &str,
    cluster: &str,
    policies: impl IntoIterator<Item = &'p Policy>,
    scans: &ScanIndex,
) -> ImageVerdict {
    let scan = scans.lookup(image);
    let mut findings = Vec::new();
    for policy in policies {
        let Some(rules) = &policy.rules.image else {
            continue;
        };
        let in_cluster = policy.scope.clusters.is_empty()
            || policy.scope.clusters.iter().any(|g| g.matches(cluster));
        if !policy.enabled
            || !in_cluster
            || applicability::image_whitelisted(policy, cluster, image)
        {
            continue;
        }
        let mut push = |finding, action| {
            findings.push(PolicyFinding {
                policy: policy.name.clone(),
                action,
                finding,
            });
        };
        for finding in hygiene::check(rules, image, "image") {
            push(finding, policy.action);
        }
        if scans::reads_scans(rules) {
            for (finding, most) in scans::check(rules, image, scan, "image") {
                push(finding, weaker(policy.action, most));
            }
        }
    }
    ImageVerdict {
        outcome: outcome_of(&findings),
        scanned: scan.is_some(),
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Severity, parse_policy_documents,
        scan::{ImageIdentity, ScanSummary, SeverityCounts},
    };

    fn parse_policy(yaml: &str) -> Policy {
        let documents = parse_policy_documents(yaml).unwrap();
        Policy::try_from(&documents[0]).unwrap()
    }

    fn mk_index() -> ScanIndex {
        let mut index = ScanIndex::default();
        let image = ImageIdentity {
            repository: "docker.io/library/nginx".into(),
            tags: vec!["1.25".into()],
            ..Default::default()
        };
        let summary = ScanSummary::new(
            SeverityCounts([0, 0, 0, 1, 0]),
            [("CVE-2024-1", Severity::High, true)],
            [],
            [],
        );
        index.insert_summary(&image, summary);
        index
    }

    #[test]
    fn image_rules_decide_and_whitelists_and_scopes_apply() {
        let high = parse_policy(
            "name: high\naction: block\nrules:\n  image:\n    vulnerabilities:\n      severity: high\n",
        );
        let unscanned = parse_policy(
            "name: unscanned\naction: block\nrules:\n  image:\n    unscanned: alert\n",
        );
        let elsewhere = parse_policy(
            "name: elsewhere\naction: block\nscope:\n  clusters: [other]\nrules:\n  image:\n    disallowedTags: [latest]\n",
        );
        let policies = [high, unscanned, elsewhere];
        let index = mk_index();
        let verdict = image_verdict("nginx:1.25", "c1", &policies, &index);
        assert_eq!(verdict.outcome, Outcome::Block);
        assert!(verdict.scanned);
        assert_eq!(verdict.findings.len(), 1);
        assert_eq!(verdict.findings[0].finding.rule, "vulnerabilities");
        assert!(verdict.findings[0].finding.message.contains("CVE-2024-1"));
        assert_eq!(verdict.findings[0].finding.ids, ["CVE-2024-1"]);

        let verdict = image_verdict("redis:7", "c1", &policies, &index);
        assert_eq!((verdict.outcome, verdict.scanned), (Outcome::Alert, false));
        assert_eq!(verdict.findings[0].policy, "unscanned");

        let verdict = image_verdict("nginx:latest", "other", &policies[2..], &index);
        assert_eq!(verdict.outcome, Outcome::Block);

        let whitelisted = parse_policy(
            "name: high\naction: block\nwhitelist:\n  images: [\"nginx:1.25\"]\nrules:\n  image:\n    vulnerabilities:\n      severity: high\n",
        );
        let verdict = image_verdict("nginx:1.25", "c1", [&whitelisted], &index);
        assert_eq!(verdict.outcome, Outcome::Allow);
    }
}
