//! Open violations counted in memory by (cluster, namespace, policy, severity) and by cluster:
//! what `SummarizeViolations` and the fleet view read, without touching the records. On sled:
//! counted from the records when the store opens, then moved by every stored change. On
//! PostgreSQL: each cluster's counts replaced by a count of the database whenever the cluster
//! changed (on any replica).

use std::collections::{BTreeMap, HashMap, HashSet};

use portcullis_proto::v1::{Violation, ViolationCount};
use portcullis_proto::words::ViolationState;

/// Cluster, namespace, policy, severity.
pub type Row = (String, String, String, String);

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
        if self.clusters.remove(cluster).is_none() {
            return;
        }
        let from = (
            cluster.to_owned(),
            String::new(),
            String::new(),
            String::new(),
        );
        let rows: Vec<Row> = self
            .rows
            .range(from..)
            .map(|(row, _)| row)
            .take_while(|(c, ..)| c == cluster)
            .cloned()
            .collect();
        for row in rows {
            self.rows.remove(&row);
        }
    }

    /// Replaces the counts of `clusters` (of every cluster when `None`) with `rows`, as
    /// counted from the records.
    pub fn replace(
        &mut self,
        clusters: Option<&HashSet<String>>,
        rows: impl IntoIterator<Item = (Row, u64)>,
    ) {
        match clusters {
            None => *self = Self::default(),
            Some(clusters) => clusters.iter().for_each(|c| self.remove_cluster(c)),
        }
        for (row, n) in rows.into_iter().filter(|(_, n)| *n > 0) {
            *self.clusters.entry(row.0.clone()).or_default() += n;
            *self.rows.entry(row).or_default() += n;
        }
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

    #[test]
    fn replacing_a_clusters_counts_leaves_the_others() {
        let mut counts = Counts::default();
        for v in [
            mk("c1", "ns", "high", "open"),
            mk("c2", "ns", "high", "open"),
        ] {
            counts.change(None, Some(&v));
        }
        let row = |c: &str, s: &str| ((c.into(), "ns".into(), "p".into(), s.into()), 2);
        let c1 = HashSet::from(["c1".to_owned(), "c3".to_owned()]);
        counts.replace(Some(&c1), [row("c1", "low"), row("c1", "critical")]);
        assert_eq!((counts.open_in("c1"), counts.open_in("c2")), (4, 1));
        assert_eq!(counts.rows(Some("c1")).len(), 2);
        counts.replace(None, [row("c3", "low")]);
        assert_eq!((counts.open_in("c1"), counts.open_total()), (0, 2));
        assert_eq!(counts.rows(None).len(), 1);
    }
}
