//! What one reported violation does to its stored record, as a pure function: the store reads
//! the record, calls `apply`, and writes what it returns (nothing when nothing changed), so a
//! re-sent report changes nothing more.

use pbjson_types::Timestamp;
use portcullis_proto::v1::{Violation, ViolationPeriod};
use portcullis_proto::words::ViolationState;

use super::record::ViolationRecord;

/// Earlier openings a record keeps (the oldest are dropped).
pub const MAX_HISTORY: usize = 32;

/// What a report did to a record (`ReportViolationsResponse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Opened,
    Changed,
    Resolved,
    Unchanged,
}

/// The report being applied: its run, the cluster's resync counter, and the time now.
#[derive(Clone, Debug)]
pub struct Touch {
    pub run: String,
    pub resync: u64,
    pub now: Timestamp,
}

impl Touch {
    /// Whether `record` was touched by this run since its current resync started.
    pub fn touched(&self, record: &ViolationRecord) -> bool {
        record.run == self.run && record.resync == self.resync
    }

    fn stamp(&self, violation: Violation) -> ViolationRecord {
        ViolationRecord {
            violation: Some(violation),
            run: self.run.clone(),
            resync: self.resync,
        }
    }
}

/// `reported` (validated, its `state` a `ViolationState` word, `cluster` set) applied to the
/// record `stored`: the outcome, and the record to write when anything is to be written (an
/// unchanged open violation is still written when its `last_seen` or run moved, so a resync
/// knows it was confirmed).
pub fn apply(
    stored: Option<&ViolationRecord>,
    mut reported: Violation,
    touch: &Touch,
) -> (Outcome, Option<ViolationRecord>) {
    let current = stored.and_then(|r| r.violation.as_ref());
    let open = ViolationState::Open.as_str();
    if reported.state != open {
        return match current {
            Some(v) if v.state == open => (
                Outcome::Resolved,
                Some(touch.stamp(resolved(v.clone(), &reported, touch))),
            ),
            _ => (Outcome::Unchanged, None),
        };
    }
    let now = touch.now;
    reported.stale = false;
    reported.history.clear();
    reported.resolved_time = None;
    reported.received_time = Some(now);
    reported.first_seen = reported.first_seen.or(Some(now));
    reported.last_seen = reported.last_seen.or(Some(now));
    match current {
        None => (Outcome::Opened, Some(touch.stamp(reported))),
        Some(v) if v.state != open => {
            let mut history = v.history.clone();
            history.push(ViolationPeriod {
                opened: v.first_seen,
                resolved: v.resolved_time,
            });
            let excess = history.len().saturating_sub(MAX_HISTORY);
            history.drain(..excess);
            reported.history = history;
            (Outcome::Opened, Some(touch.stamp(reported)))
        }
        Some(v) => {
            let same = v.uid == reported.uid
                && v.policy_revision == reported.policy_revision
                && v.action == reported.action
                && v.findings == reported.findings
                && v.images == reported.images
                && v.severity == reported.severity;
            let last_seen = later(v.last_seen, reported.last_seen);
            if same {
                let mut kept = v.clone();
                let moved = kept.last_seen != last_seen;
                kept.last_seen = last_seen;
                let write = moved || !stored.is_some_and(|r| touch.touched(r));
                (Outcome::Unchanged, write.then(|| touch.stamp(kept)))
            } else {
                reported.first_seen = v.first_seen;
                reported.history = v.history.clone();
                reported.last_seen = last_seen;
                (Outcome::Changed, Some(touch.stamp(reported)))
            }
        }
    }
}

/// The open record `v` resolved by the end of a resync of this run that did not report it: at
/// now, its last_seen unchanged (nothing confirmed it).
pub fn resolve_unreported(mut v: Violation, touch: &Touch) -> ViolationRecord {
    v.state = ViolationState::Resolved.as_str().into();
    v.resolved_time = Some(touch.now);
    v.received_time = Some(touch.now);
    touch.stamp(v)
}

fn resolved(mut v: Violation, report: &Violation, touch: &Touch) -> Violation {
    v.state = ViolationState::Resolved.as_str().into();
    v.resolved_time = report.resolved_time.or(Some(touch.now));
    v.last_seen = later(v.last_seen, report.last_seen.or(Some(touch.now)));
    v.received_time = Some(touch.now);
    v
}

fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if (b.seconds, b.nanos) > (a.seconds, a.nanos) {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::v1::EventFinding;

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn mk_open(first: i64, last: i64) -> Violation {
        Violation {
            cluster: "c".into(),
            kind: "Deployment".into(),
            namespace: "ns".into(),
            name: "web".into(),
            uid: "u1".into(),
            policy: "p".into(),
            policy_revision: 3,
            action: "block".into(),
            severity: "high".into(),
            state: "open".into(),
            images: vec!["nginx:1".into()],
            first_seen: ts(first),
            last_seen: ts(last),
            ..Default::default()
        }
    }

    fn mk_resolved(at: i64) -> Violation {
        Violation {
            state: "resolved".into(),
            resolved_time: ts(at),
            ..mk_open(0, 0)
        }
    }

    fn touch(run: &str, resync: u64, now: i64) -> Touch {
        Touch {
            run: run.into(),
            resync,
            now: ts(now).unwrap(),
        }
    }

    /// Applies `v` to `stored`, returning the outcome and the record as it is afterwards.
    fn step(
        stored: Option<ViolationRecord>,
        v: Violation,
        t: &Touch,
    ) -> (Outcome, Option<ViolationRecord>) {
        let (outcome, written) = apply(stored.as_ref(), v, t);
        (outcome, written.or(stored))
    }

    fn violation(record: &Option<ViolationRecord>) -> &Violation {
        record.as_ref().unwrap().violation.as_ref().unwrap()
    }

    #[test]
    fn open_change_confirm_resolve_and_reopen() {
        let t = touch("r1", 1, 100);
        let (outcome, record) = step(None, mk_open(10, 20), &t);
        assert_eq!(outcome, Outcome::Opened);
        let v = violation(&record);
        assert_eq!(
            (v.first_seen, v.last_seen, v.received_time),
            (ts(10), ts(20), ts(100))
        );
        assert!(v.history.is_empty());
        assert_eq!(record.as_ref().unwrap().run, "r1");

        // The same content again: nothing to write. A later confirmation moves last_seen only.
        assert_eq!(
            apply(record.as_ref(), mk_open(10, 20), &t),
            (Outcome::Unchanged, None)
        );
        let (outcome, confirmed) = step(record, mk_open(15, 30), &touch("r1", 1, 200));
        assert_eq!(outcome, Outcome::Unchanged);
        let v = violation(&confirmed);
        assert_eq!(
            (v.first_seen, v.last_seen, v.received_time),
            (ts(10), ts(30), ts(100))
        );

        // New findings: changed, first_seen kept.
        let mut more = mk_open(25, 40);
        more.findings = vec![EventFinding {
            rule: "privileged".into(),
            ..Default::default()
        }];
        let (outcome, changed) = step(confirmed, more, &touch("r1", 1, 300));
        assert_eq!(outcome, Outcome::Changed);
        let v = violation(&changed);
        assert_eq!(
            (v.first_seen, v.last_seen, v.received_time),
            (ts(10), ts(40), ts(300))
        );

        // Resolved with the report's time; resolving again changes nothing.
        let (outcome, resolved) = step(changed, mk_resolved(50), &touch("r1", 1, 400));
        assert_eq!(outcome, Outcome::Resolved);
        assert_eq!(violation(&resolved).resolved_time, ts(50));
        assert_eq!(violation(&resolved).state, "resolved");
        assert_eq!(
            apply(resolved.as_ref(), mk_resolved(60), &t),
            (Outcome::Unchanged, None)
        );

        // Opened again: the earlier period goes to the history.
        let (outcome, reopened) = step(resolved, mk_open(70, 70), &touch("r1", 1, 500));
        assert_eq!(outcome, Outcome::Opened);
        let v = violation(&reopened);
        assert_eq!((v.first_seen, v.resolved_time), (ts(70), None));
        assert_eq!(
            v.history,
            [ViolationPeriod {
                opened: ts(10),
                resolved: ts(50)
            }]
        );
    }

    #[test]
    fn a_resolved_report_of_nothing_stored_stores_nothing() {
        assert_eq!(
            apply(None, mk_resolved(5), &touch("r", 1, 9)),
            (Outcome::Unchanged, None)
        );
    }

    #[test]
    fn an_unchanged_record_is_written_once_per_resync_to_mark_it_confirmed() {
        let (_, record) = step(None, mk_open(1, 2), &touch("r1", 1, 10));
        let (outcome, written) = apply(record.as_ref(), mk_open(1, 2), &touch("r1", 2, 20));
        assert_eq!(outcome, Outcome::Unchanged);
        let written = written.expect("marked with the new resync");
        assert_eq!(written.resync, 2);
        assert_eq!(written.violation.unwrap().received_time, ts(10));
    }

    #[test]
    fn history_keeps_the_latest_32_openings() {
        let mut record = None;
        for i in 0..40 {
            record = step(record, mk_open(i * 10, i * 10), &touch("r", 1, i * 10)).1;
            record = step(record, mk_resolved(i * 10 + 5), &touch("r", 1, i * 10 + 5)).1;
        }
        assert_eq!(violation(&record).history.len(), MAX_HISTORY);
        let (_, record) = step(record, mk_open(1000, 1000), &touch("r", 1, 1000));
        let v = violation(&record);
        assert_eq!(v.history.len(), MAX_HISTORY);
        assert_eq!(v.history[0].opened, ts(80));
        assert_eq!(v.history[31].resolved, ts(395));
    }

    #[test]
    fn a_resync_resolves_at_now_and_keeps_last_seen() {
        let (_, record) = step(None, mk_open(1, 2), &touch("r1", 1, 10));
        let v = record.unwrap().violation.unwrap();
        let resolved = resolve_unreported(v, &touch("r2", 1, 99));
        let v = resolved.violation.unwrap();
        assert_eq!(
            (v.state.as_str(), v.resolved_time, v.last_seen),
            ("resolved", ts(99), ts(2))
        );
        assert_eq!(resolved.run, "r2");
    }
}
