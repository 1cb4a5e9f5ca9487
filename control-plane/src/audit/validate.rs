//! Checks of a `ReportViolations` request, refused whole: a violation of another cluster is
//! `PermissionDenied`; anything malformed is `InvalidArgument` naming the field
//! (`run`, `violations`, `violations[i].<field>`). Server-set fields are cleared, and of
//! several violations with one key the last wins (the earlier ones are counted unchanged).

use std::collections::HashMap;

use pbjson_types::Timestamp;
use portcullis_proto::limits::{self, violation::MAX_PER_REPORT, violation::MAX_RUN};
use portcullis_proto::v1::{ReportViolationsRequest, Violation};
use portcullis_proto::words::{ViolationAction, ViolationSeverity, ViolationState};

use super::record::violation_key;
use crate::store::now_millis;

/// How far in the future a reported time may be (clock skew between agent and control plane).
const MAX_FUTURE_MS: i64 = 3600 * 1000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    #[error("{0}")]
    OtherCluster(String),
    #[error("{0}")]
    Invalid(String),
}

/// A checked report of one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub cluster: String,
    /// The run id in its canonical form (lower-case, hyphenated), so runs compare as text.
    pub run: String,
    pub resync_start: bool,
    pub resync_end: bool,
    /// One per key, in the order of their last occurrence, each with its key.
    pub violations: Vec<(Vec<u8>, Violation)>,
    /// Violations dropped because a later one had the same key.
    pub superseded: u32,
}

/// Checks `request` of the agent of `cluster` (the caller checked `request.cluster`).
pub fn validate_report(
    cluster: &str,
    request: ReportViolationsRequest,
) -> Result<Report, ReportError> {
    let invalid = |what: String| Err(ReportError::Invalid(what));
    let run = match request.run.as_str() {
        "" => return invalid("run: required".into()),
        run if run.len() > MAX_RUN => {
            return invalid(format!("run: {} bytes; at most {MAX_RUN}", run.len()));
        }
        run => uuid::Uuid::parse_str(run)
            .ok()
            .filter(|u| u.get_version_num() == 7)
            .ok_or_else(|| ReportError::Invalid(format!("run: {run:?} is not a UUIDv7")))?,
    };
    // Runs are ordered by the time in them: one dated far ahead (an agent's clock gone wrong)
    // would supersede every later run until that time.
    let dated = run.get_timestamp().map_or(0, |t| {
        let (seconds, nanos) = t.to_unix();
        i64::try_from(seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
            + i64::from(nanos / 1_000_000)
    });
    if dated > now_millis() + MAX_FUTURE_MS {
        return invalid(format!(
            "run: {run} is dated more than an hour ahead of the control plane's clock"
        ));
    }
    if request.violations.len() > MAX_PER_REPORT {
        return invalid(format!(
            "violations: {} in one report; at most {MAX_PER_REPORT}",
            request.violations.len()
        ));
    }
    let now = now_millis();
    let mut checked = Vec::with_capacity(request.violations.len());
    for (i, mut v) in request.violations.into_iter().enumerate() {
        check_violation(cluster, &v, now).map_err(|error| match error {
            ReportError::OtherCluster(what) => {
                ReportError::OtherCluster(format!("violations[{i}].{what}"))
            }
            ReportError::Invalid(what) if what.starts_with(char::is_alphabetic) => {
                ReportError::Invalid(format!("violations[{i}].{what}"))
            }
            ReportError::Invalid(what) => ReportError::Invalid(format!("violations[{i}]: {what}")),
        })?;
        v.cluster = cluster.to_owned();
        v.stale = false;
        v.history.clear();
        v.received_time = None;
        checked.push((violation_key(cluster, &v), v));
    }
    // The last of each key wins.
    let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(checked.len());
    for (i, (key, _)) in checked.iter().enumerate() {
        last.insert(key, i);
    }
    let keep: Vec<bool> = (0..checked.len())
        .map(|i| last[checked[i].0.as_slice()] == i)
        .collect();
    let superseded = keep.iter().filter(|k| !**k).count() as u32;
    let mut keep = keep.into_iter();
    checked.retain(|_| keep.next().unwrap_or(false));
    Ok(Report {
        cluster: cluster.to_owned(),
        run: run.hyphenated().to_string(),
        resync_start: request.resync_start,
        resync_end: request.resync_end,
        violations: checked,
        superseded,
    })
}

/// Why `v` cannot be stored, naming its field (without the `violations[i]` prefix).
fn check_violation(cluster: &str, v: &Violation, now: i64) -> Result<(), ReportError> {
    let invalid = |what: String| Err(ReportError::Invalid(what));
    if !v.cluster.is_empty() && v.cluster != cluster {
        return Err(ReportError::OtherCluster(format!(
            "cluster: is {:?}; this agent reports for {cluster:?} only",
            v.cluster
        )));
    }
    for (field, value) in [("kind", &v.kind), ("name", &v.name), ("policy", &v.policy)] {
        if value.is_empty() {
            return invalid(format!("{field}: required"));
        }
    }
    // What the audit watches, named as Kubernetes names them: nothing else can make a key.
    if !AUDITED_KINDS.contains(&v.kind.as_str()) {
        return invalid(format!(
            "kind: {:?} is not an audited kind ({})",
            limits::preview(&v.kind),
            AUDITED_KINDS.join(", ")
        ));
    }
    if !portcullis_policy::is_dns_label(&v.namespace) {
        return invalid(format!(
            "namespace: {:?} is not a namespace name (a DNS label)",
            limits::preview(&v.namespace)
        ));
    }
    if !is_object_name(&v.name) {
        return invalid(format!(
            "name: {:?} is not an object name (a DNS subdomain: at most 253 of a-z, 0-9, '-' \
             and '.')",
            limits::preview(&v.name)
        ));
    }
    let state: ViolationState = v
        .state
        .parse()
        .map_err(|e| ReportError::Invalid(format!("state: {e}")))?;
    // A resolved violation needs only its key; what else it carries must still be valid.
    let needed = state == ViolationState::Open;
    if (needed || !v.action.is_empty())
        && let Err(e) = v.action.parse::<ViolationAction>()
    {
        return invalid(format!("action: {e}"));
    }
    if (needed || !v.severity.is_empty())
        && let Err(e) = v.severity.parse::<ViolationSeverity>()
    {
        return invalid(format!("severity: {e}"));
    }
    let times = [
        ("first_seen", &v.first_seen),
        ("last_seen", &v.last_seen),
        ("resolved_time", &v.resolved_time),
    ];
    for (field, time) in times {
        if let Some(time) = time {
            check_time(time, now).map_err(|e| ReportError::Invalid(format!("{field}: {e}")))?;
        }
    }
    limits::check_violation(v).map_err(ReportError::Invalid)
}

/// The kinds an agent's audit watches.
const AUDITED_KINDS: [&str; 8] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
    "Service",
];

/// A Kubernetes object name: a DNS subdomain (RFC 1123), at most 253 bytes.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && portcullis_policy::is_dns_label(label)
        })
}

fn check_time(t: &Timestamp, now: i64) -> Result<(), &'static str> {
    if !(0..1_000_000_000).contains(&t.nanos) || t.seconds < 0 {
        return Err("not a valid timestamp");
    }
    if t.seconds.saturating_mul(1000) > now + MAX_FUTURE_MS {
        return Err("more than an hour in the future");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "0190f3a0-1c2d-7e4f-8a5b-6c7d8e9f0a1b";

    fn mk(name: &str) -> Violation {
        Violation {
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: name.into(),
            policy: "p".into(),
            action: "block".into(),
            severity: "high".into(),
            state: "open".into(),
            ..Default::default()
        }
    }

    fn request(violations: Vec<Violation>) -> ReportViolationsRequest {
        ReportViolationsRequest {
            cluster: "c1".into(),
            run: RUN.into(),
            violations,
            ..Default::default()
        }
    }

    fn refused(request: ReportViolationsRequest) -> ReportError {
        validate_report("c1", request).unwrap_err()
    }

    fn invalid(request: ReportViolationsRequest) -> String {
        match refused(request) {
            ReportError::Invalid(what) => what,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runs_must_be_uuidv7_and_are_made_canonical() {
        let mut r = request(vec![]);
        r.run = RUN.to_uppercase();
        assert_eq!(validate_report("c1", r).unwrap().run, RUN);
        for (run, expected) in [
            ("", "run: required"),
            (&"0".repeat(65), "run: 65 bytes; at most 64"),
            ("not-a-uuid", r#"run: "not-a-uuid" is not a UUIDv7"#),
            (
                "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f",
                r#"run: "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f" is not a UUIDv7"#,
            ),
        ] {
            let mut r = request(vec![]);
            r.run = run.into();
            assert_eq!(invalid(r), expected);
        }
        // Dated two hours ahead: it would supersede every honest run until then.
        let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(7200);
        let since = ahead.duration_since(std::time::UNIX_EPOCH).unwrap();
        let stamp = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), 0);
        let mut r = request(vec![]);
        r.run = uuid::Uuid::new_v7(stamp).to_string();
        assert!(
            invalid(r).ends_with("is dated more than an hour ahead of the control plane's clock"),
            "a run from the future"
        );
    }

    #[test]
    fn too_many_violations_are_refused() {
        let r = request(vec![mk("a"); MAX_PER_REPORT + 1]);
        assert_eq!(invalid(r), "violations: 1001 in one report; at most 1000");
    }

    #[test]
    fn another_clusters_violation_is_permission_denied() {
        let mut other = mk("b");
        other.cluster = "c2".into();
        let mine = Violation {
            cluster: "c1".into(),
            ..mk("a")
        };
        assert_eq!(
            refused(request(vec![mine, other])),
            ReportError::OtherCluster(
                r#"violations[1].cluster: is "c2"; this agent reports for "c1" only"#.into()
            )
        );
    }

    #[test]
    fn malformed_violations_name_the_field() {
        type Spoil = fn(&mut Violation);
        let cases: Vec<(Spoil, &str)> = vec![
            (|v| v.kind.clear(), "violations[1].kind: required"),
            (|v| v.name.clear(), "violations[1].name: required"),
            (|v| v.policy.clear(), "violations[1].policy: required"),
            (
                |v| v.state = "closed".into(),
                r#"violations[1].state: unknown violation state "closed": expected open or resolved"#,
            ),
            (
                |v| v.action = "deny".into(),
                r#"violations[1].action: unknown violation action "deny": expected block or alert"#,
            ),
            (
                |v| v.severity.clear(),
                "violations[1].severity: unknown violation severity",
            ),
            (
                |v| {
                    v.first_seen = Some(Timestamp {
                        seconds: 1,
                        nanos: -1,
                    })
                },
                "violations[1].first_seen: not a valid timestamp",
            ),
            (
                |v| {
                    v.last_seen = Some(Timestamp {
                        seconds: 4_000_000_000,
                        nanos: 0,
                    })
                },
                "violations[1].last_seen: more than an hour in the future",
            ),
            (
                |v| v.name = "n".repeat(5000),
                r#"violations[1].name: "nnnn"#,
            ),
            (
                |v| v.name = "Web_1".into(),
                r#"violations[1].name: "Web_1" is not an object name"#,
            ),
            (
                |v| v.kind = "ConfigMap".into(),
                r#"violations[1].kind: "ConfigMap" is not an audited kind (Pod, Deployment"#,
            ),
            (
                |v| v.namespace = "a/b".into(),
                r#"violations[1].namespace: "a/b" is not a namespace name"#,
            ),
            (
                |v| v.uid = "u".repeat(5000),
                "violations[1].uid: 5000 bytes; at most 4096",
            ),
            (
                |v| v.images = vec!["i".into(); 300],
                "violations[1].images: 300 entries; at most 256",
            ),
            (
                |v| {
                    v.findings = (0..256)
                        .map(|_| portcullis_proto::v1::EventFinding {
                            message: "m".repeat(1024),
                            path: "p".repeat(1024),
                            value: "v".repeat(1024),
                            rule: "r".repeat(1024),
                            ..Default::default()
                        })
                        .collect()
                },
                "violations[1]: 1",
            ),
        ];
        for (spoil, expected) in cases {
            let mut bad = mk("b");
            spoil(&mut bad);
            let what = invalid(request(vec![mk("a"), bad]));
            assert!(what.starts_with(expected), "{what} (expected {expected})");
        }
    }

    #[test]
    fn a_resolved_violation_needs_only_its_key() {
        let resolved = Violation {
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: "a".into(),
            policy: "p".into(),
            state: "resolved".into(),
            ..Default::default()
        };
        let report = validate_report("c1", request(vec![resolved])).unwrap();
        assert_eq!(report.violations.len(), 1);
        let bad = Violation {
            severity: "severe".into(),
            ..report.violations[0].1.clone()
        };
        assert!(invalid(request(vec![bad])).starts_with("violations[0].severity: "));
    }

    #[test]
    fn server_fields_are_set_and_the_last_of_a_key_wins() {
        let mut first = mk("a");
        first.stale = true;
        first.history = vec![Default::default()];
        let mut last = mk("a");
        last.action = "alert".into();
        let report = validate_report("c1", request(vec![first, mk("b"), last])).unwrap();
        assert_eq!(report.superseded, 1);
        let kept: Vec<(&str, &str, &str)> = report
            .violations
            .iter()
            .map(|(_, v)| (v.cluster.as_str(), v.name.as_str(), v.action.as_str()))
            .collect();
        assert_eq!(kept, [("c1", "b", "block"), ("c1", "a", "alert")]);
        assert!(
            report
                .violations
                .iter()
                .all(|(_, v)| !v.stale && v.history.is_empty())
        );
    }
}
