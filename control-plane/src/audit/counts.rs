//! Open violations counted in memory by (cluster, namespace, policy, severity) and by cluster:
//! what `SummarizeViolations` and the fleet view read, without touching the records. Counted
//! from the records when the store opens, then moved by every stored change.

use std::collections::{BTreeMap, HashMap};

use portcullis_proto::v1::{Violation, ViolationCount};
use portcullis_proto::words::ViolationState;

type Row = (String, String, String, String);

#[derive(Debug, Default)]
pub struct Counts {
    rows: BTreeMap<Row, u64>,
    clusters: HashMap<String, u64>,
}

fn is_open(v: &Violation) -> bool {
    v.state == ViolationState::Open.as_str()
}

fn row(v: &Violation) -> Row {
    (
        v.cluster.clone(),
        v.namespace.clone(),
        v.policy.clone(),
        v.severity.clone(),
    )
}

impl Counts {
    /// Counts the change of one record from `old` to `new` (either may be absent).
    pub fn change(&mut self, old: Option<&Violation>, new: Option<&Violation>) {
        if let Some(old) = old.filter(|v| is_open(v)) {
            let key = row(old);
            if let Some(n) = self.rows.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.rows.remove(&key);
                }
            }
            if let Some(n) = self.clusters.get_mut(&old.cluster) {
                *n -= 1;
                if *n == 0 {
                    self.clusters.remove(&old.cluster);
                }
            }
        }
        if let Some(new) = new.filter(|v| is_open(v)) {
            *self.rows.entry(row(new)).or_default() += 1;
            *self.clusters.entry(new.cluster.clone()).or_default() += 1;
        }
    }

    /// Forgets every count of `cluster` (its violations were deleted).
    pub fn remove_cluster(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
        self.rows.retain(|(c, ..), _| c != cluster);
    }

    pub fn open_in(&self, cluster: &str) -> u64 {
        self.clusters.get(cluster).copied().unwrap_or(0)
    }

    pub fn open_total(&self) -> u64 {
        self.clusters.values().sum()
    }

    /// The rows of `cluster` (every cluster when `None`), ordered.
    pub fn rows(&self, cluster: Option<&str>) -> Vec<ViolationCount> {
        let rows: Box<dyn Iterator<Item = (&Row, &u64)>> = match cluster {
            Some(c) => {
                let from = (c.to_owned(), String::new(), String::new(), String::new());
                Box::new(
                    self.rows
                        .range(from..)
                        .take_while(move |((rc, ..), _)| rc == c),
                )
            }
            None => Box::new(self.rows.iter()),
        };
        rows.map(
            |((cluster, namespace, policy, severity), &violations)| ViolationCount {
                cluster: cluster.clone(),
                namespace: namespace.clone(),
                policy: policy.clone(),
                severity: severity.clone(),
                violations,
            },
        )
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk(cluster: &str, namespace: &str, severity: &str, state: &str) -> Violation {
        Violation {
            cluster: cluster.into(),
            namespace: namespace.into(),
            policy: "p".into(),
            severity: severity.into(),
            state: state.into(),
            ..Default::default()
        }
    }

    #[test]
    fn open_violations_are_counted_by_row_and_cluster() {
        let mut counts = Counts::default();
        let a = mk("c1", "ns", "high", "open");
        let b = mk("c1", "other", "low", "open");
        let c = mk("c2", "ns", "high", "open");
        for v in [&a, &b, &c] {
            counts.change(None, Some(v));
        }
        counts.change(None, Some(&mk("c1", "ns", "high", "resolved")));
        assert_eq!((counts.open_in("c1"), counts.open_total()), (2, 3));
        // a's severity changes; b resolves.
        let a2 = mk("c1", "ns", "critical", "open");
        counts.change(Some(&a), Some(&a2));
        counts.change(Some(&b), Some(&mk("c1", "other", "low", "resolved")));
        let rows: Vec<(String, String, u64)> = counts
            .rows(Some("c1"))
            .into_iter()
            .map(|r| (r.namespace, r.severity, r.violations))
            .collect();
        assert_eq!(rows, [("ns".into(), "critical".into(), 1)]);
        assert_eq!(counts.rows(None).len(), 2);
        assert_eq!(counts.rows(Some("c")).len(), 0);
        counts.remove_cluster("c1");
        assert_eq!((counts.open_in("c1"), counts.open_total()), (0, 1));
        assert_eq!(counts.rows(None)[0].cluster, "c2");
    }
}
