//! A report's writes, decided without I/O: the backend reads the cluster's run and the stored
//! records, feeds them to a `Plan`, and writes what the plan holds in one batch or transaction.
//! Both backends so apply a report the same way; only the reading and the writing differ.

use std::collections::HashSet;

use pbjson_types::Timestamp;
use portcullis_proto::v1::Violation;
use portcullis_proto::words::ViolationState;

use super::apply::{Outcome, Touch, apply, resolve_unreported};
use super::record::{RunRecord, ViolationRecord};
use super::{AuditError, Report, Reported};

/// One record to write.
#[derive(Debug)]
pub struct Write {
    pub key: Vec<u8>,
    pub record: ViolationRecord,
    pub outcome: Outcome,
    /// The violation as it was stored, for counts kept by difference.
    pub before: Option<Violation>,
}

impl Write {
    /// Whether watchers see it (a confirmation is written but changes nothing they show).
    pub fn is_change(&self) -> bool {
        self.outcome != Outcome::Unchanged
    }
}

/// What a report writes.
#[derive(Debug)]
pub struct Plan {
    touch: Touch,
    /// The cluster's run to store: the report starts a resync.
    pub run: Option<RunRecord>,
    pub reported: Reported,
    /// In the order watchers see them: the reported records, then those a resync's end
    /// resolves.
    pub writes: Vec<Write>,
    reported_keys: HashSet<Vec<u8>>,
}

impl Plan {
    /// The plan of `report` against the cluster's stored run: `None` when the run is not the
    /// cluster's current one and the report starts no resync (nothing is to be stored), an
    /// error when a later run superseded it.
    pub fn new(
        report: &Report,
        stored_run: Option<RunRecord>,
        now: Timestamp,
    ) -> Result<Option<Self>, AuditError> {
        let superseded = |current: &RunRecord| AuditError::Superseded {
            cluster: report.cluster.clone(),
            run: report.run.clone(),
            current: current.run.clone(),
        };
        let (current, run) = match (report.resync_start, stored_run) {
            (true, Some(current)) if report.run < current.run => return Err(superseded(&current)),
            (true, current) => {
                let run = RunRecord {
                    run: report.run.clone(),
                    resync: current.map_or(0, |c| c.resync) + 1,
                };
                (run.clone(), Some(run))
            }
            (false, None) => return Ok(None),
            (false, Some(current)) if report.run > current.run => return Ok(None),
            (false, Some(current)) if report.run < current.run => return Err(superseded(&current)),
            (false, Some(current)) => (current, None),
        };
        Ok(Some(Self {
            touch: Touch {
                run: current.run,
                resync: current.resync,
                now,
            },
            run,
            reported: Reported {
                unchanged: report.superseded,
                ..Default::default()
            },
            writes: Vec::new(),
            reported_keys: HashSet::with_capacity(report.violations.len()),
        }))
    }

    /// The run and resync this report touches records with.
    pub fn touch(&self) -> &Touch {
        &self.touch
    }

    /// Applies a reported violation to its stored record (`None`: none, or unreadable).
    pub fn apply(&mut self, key: Vec<u8>, stored: Option<ViolationRecord>, reported: Violation) {
        let (outcome, written) = apply(stored.as_ref(), reported, &self.touch);
        self.count(outcome);
        if let Some(record) = written {
            self.writes.push(Write {
                key: key.clone(),
                record,
                outcome,
                before: stored.and_then(|s| s.violation),
            });
        }
        self.reported_keys.insert(key);
    }

    /// Whether the report named `key` (a resync's end leaves it as the report made it).
    pub fn was_reported(&self, key: &[u8]) -> bool {
        self.reported_keys.contains(key)
    }

    /// At a resync's end: resolves the stored record `stored` unless this report named it, this
    /// resync touched it, or it is not open.
    pub fn resolve_unreported(&mut self, key: Vec<u8>, stored: ViolationRecord) {
        if self.was_reported(&key) || self.touch.touched(&stored) {
            return;
        }
        let open = ViolationState::Open.as_str();
        let Some(before) = stored.violation.filter(|v| v.state == open) else {
            return;
        };
        let record = resolve_unreported(before.clone(), &self.touch);
        self.count(Outcome::Resolved);
        self.writes.push(Write {
            key,
            record,
            outcome: Outcome::Resolved,
            before: Some(before),
        });
    }

    /// Anything is to be written (also a confirmation or a new resync).
    pub fn writes_anything(&self) -> bool {
        self.run.is_some() || !self.writes.is_empty()
    }

    /// The violations watchers see, in order.
    pub fn changed(&self) -> impl Iterator<Item = &Violation> {
        self.writes
            .iter()
            .filter(|w| w.is_change())
            .filter_map(|w| w.record.violation.as_ref())
    }

    fn count(&mut self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Opened => &mut self.reported.opened,
            Outcome::Changed => &mut self.reported.changed,
            Outcome::Resolved => &mut self.reported.resolved,
            Outcome::Unchanged => &mut self.reported.unchanged,
        };
        *counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(run: &str, resync_start: bool) -> Report {
        Report {
            cluster: "c".into(),
            run: run.into(),
            resync_start,
            resync_end: false,
            violations: Vec::new(),
            superseded: 2,
        }
    }

    fn stored(run: &str, resync: u64) -> Option<RunRecord> {
        Some(RunRecord {
            run: run.into(),
            resync,
        })
    }

    fn now() -> Timestamp {
        Timestamp {
            seconds: 1,
            nanos: 0,
        }
    }

    #[test]
    fn runs_are_adopted_by_a_resync_and_earlier_ones_refused() {
        // A resync starts the next resync of its run, or of a later one.
        for (run, current) in [
            ("r2", None),
            ("r2", stored("r1", 4)),
            ("r2", stored("r2", 4)),
        ] {
            let plan = Plan::new(&report(run, true), current.clone(), now())
                .unwrap()
                .unwrap();
            let resync = current.map_or(0, |c| c.resync) + 1;
            assert_eq!(plan.run, stored("r2", resync));
            assert_eq!(
                (plan.touch().run.as_str(), plan.touch().resync),
                ("r2", resync)
            );
            assert_eq!(plan.reported.unchanged, 2);
            assert!(plan.writes_anything());
        }
        // Without a resync: the current run goes on; none or a later one must resync first.
        let plan = Plan::new(&report("r2", false), stored("r2", 3), now())
            .unwrap()
            .unwrap();
        assert_eq!((plan.run.as_ref(), plan.touch().resync), (None, 3));
        assert!(!plan.writes_anything());
        for current in [None, stored("r1", 1)] {
            assert!(
                Plan::new(&report("r2", false), current, now())
                    .unwrap()
                    .is_none()
            );
        }
        for start in [false, true] {
            let error = Plan::new(&report("r1", start), stored("r2", 1), now()).unwrap_err();
            assert!(matches!(error, AuditError::Superseded { .. }), "{error}");
        }
    }

    #[test]
    fn a_resyncs_end_resolves_only_what_it_neither_reported_nor_touched() {
        let mut plan = Plan::new(&report("r2", true), stored("r1", 1), now())
            .unwrap()
            .unwrap();
        let open = |name: &str| Violation {
            name: name.into(),
            state: "open".into(),
            ..Default::default()
        };
        plan.apply(b"a".to_vec(), None, open("a"));
        let record = |v: Violation, run: &str, resync: u64| ViolationRecord {
            violation: Some(v),
            run: run.into(),
            resync,
        };
        plan.resolve_unreported(b"a".to_vec(), record(open("a"), "r1", 1));
        plan.resolve_unreported(b"t".to_vec(), record(open("t"), "r2", 2));
        let resolved = Violation {
            state: "resolved".into(),
            ..open("x")
        };
        plan.resolve_unreported(b"x".to_vec(), record(resolved, "r1", 1));
        plan.resolve_unreported(b"b".to_vec(), record(open("b"), "r2", 1));
        let seen: Vec<(&str, &str)> = plan
            .changed()
            .map(|v| (v.name.as_str(), v.state.as_str()))
            .collect();
        assert_eq!(seen, [("a", "open"), ("b", "resolved")]);
        assert_eq!((plan.reported.opened, plan.reported.resolved), (1, 1));
        assert_eq!(plan.writes[1].before.as_ref().unwrap().state, "open");
    }
}
