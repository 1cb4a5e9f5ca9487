//! Matching violations against a `ViolationFilter`, and the key range a filter's leading exact
//! fields narrow a scan to (a cluster's violations are read alone).

use portcullis_proto::v1::{Violation, ViolationFilter};

use super::record;

/// A compiled filter.
pub struct Matcher<'f> {
    filter: &'f ViolationFilter,
    image: String,
    vulnerability: String,
}

impl<'f> Matcher<'f> {
    pub fn new(filter: &'f ViolationFilter) -> Self {
        Self {
            filter,
            image: filter.image.to_lowercase(),
            vulnerability: filter.vulnerability_id.to_lowercase(),
        }
    }

    pub fn matches(&self, v: &Violation) -> bool {
        let f = self.filter;
        let field = |want: &str, have: &str| want.is_empty() || want == have;
        let exact = field(&f.cluster, &v.cluster)
            && field(&f.namespace, &v.namespace)
            && field(&f.kind, &v.kind)
            && field(&f.name, &v.name)
            && field(&f.policy, &v.policy)
            && field(&f.action, &v.action)
            && field(&f.state, &v.state);
        exact
            && (self.image.is_empty()
                || v.images
                    .iter()
                    .any(|i| i.to_lowercase().contains(&self.image)))
            && (self.vulnerability.is_empty()
                || v.findings.iter().any(|finding| {
                    finding
                        .cve_ids
                        .iter()
                        .any(|id| id.to_lowercase() == self.vulnerability)
                }))
    }

    /// The prefix every matching key has: the set fields of cluster, namespace, kind, name and
    /// policy, from the left, up to the first one not set.
    pub fn key_prefix(&self) -> Vec<u8> {
        let f = self.filter;
        let parts: Vec<&str> = [&f.cluster, &f.namespace, &f.kind, &f.name, &f.policy]
            .into_iter()
            .map(String::as_str)
            .take_while(|part| !part.is_empty())
            .collect();
        record::violation_prefix(&parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::v1::EventFinding;

    fn mk() -> Violation {
        Violation {
            cluster: "c1".into(),
            namespace: "ns".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            policy: "p".into(),
            action: "block".into(),
            state: "open".into(),
            images: vec!["Registry.example.com/team/NGINX:1.25".into()],
            findings: vec![EventFinding {
                cve_ids: vec!["CVE-2024-3094".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn every_field_must_match() {
        let v = mk();
        let matches = |f: fn(&mut ViolationFilter)| {
            let mut filter = ViolationFilter::default();
            f(&mut filter);
            Matcher::new(&filter).matches(&v)
        };
        assert!(matches(|_| {}));
        assert!(matches(|f| f.image = "nginx:1.2".into()));
        assert!(matches(|f| f.vulnerability_id = "cve-2024-3094".into()));
        assert!(!matches(|f| f.vulnerability_id = "CVE-2024".into()));
        assert!(!matches(|f| f.image = "redis".into()));
        assert!(matches(|f| {
            f.cluster = "c1".into();
            f.namespace = "ns".into();
            f.kind = "Deployment".into();
            f.name = "web".into();
            f.policy = "p".into();
            f.action = "block".into();
            f.state = "open".into();
        }));
        assert!(!matches(|f| f.state = "resolved".into()));
        assert!(!matches(|f| f.action = "alert".into()));
        assert!(!matches(|f| f.kind = "Pod".into()));
    }

    #[test]
    fn the_scan_is_narrowed_by_the_leading_exact_fields() {
        let filter = ViolationFilter {
            cluster: "c1".into(),
            namespace: "ns".into(),
            name: "web".into(),
            ..Default::default()
        };
        assert_eq!(
            Matcher::new(&filter).key_prefix(),
            record::violation_prefix(&["c1", "ns"])
        );
        let any = ViolationFilter {
            namespace: "ns".into(),
            ..Default::default()
        };
        assert_eq!(Matcher::new(&any).key_prefix(), record::all_violations());
    }
}
