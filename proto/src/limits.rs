//! Size limits of what agents and operators send and the control plane stores, in one place
//! both sides read: an agent fits its events (`fit_event`) to exactly what the control plane
//! accepts (`check_event`), so no event is refused for its size, and every stored string is
//! bounded, so no listing can grow past the message limit.

use crate::v1::{Event, EventFinding, Violation};

/// The largest message a gRPC client decodes by default (tonic, grpcurl): responses must fit.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A listing stops adding items once its response reaches this many encoded bytes (and says
/// where to go on), so a page stays under `MAX_MESSAGE_BYTES` whatever its items hold.
pub const RESPONSE_BUDGET_BYTES: usize = 3 * 1024 * 1024;

/// Appended to a text cut to its limit.
pub const TRUNCATED_MARKER: &str = "…[truncated]";

/// Events (`ReportEvents`).
pub mod event {
    /// Each of namespace, kind, name, operation, user, admission uid, policy.
    pub const MAX_TEXT: usize = 4096;
    /// Each group and each image.
    pub const MAX_ITEM_TEXT: usize = 1024;
    /// Groups and images listed; past it the last entry counts the rest.
    pub const MAX_ITEMS: usize = 256;
    /// Findings listed; past it the last finding counts the rest (rule `truncated`).
    pub const MAX_FINDINGS: usize = 256;
    /// Each of a finding's rule, path, value and message.
    pub const MAX_FINDING_TEXT: usize = 1024;
    /// Vulnerability ids per finding (past it the message counts the rest), each this long.
    pub const MAX_IDS: usize = 32;
    pub const MAX_ID: usize = 128;
    /// A whole event, encoded.
    pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
    /// An operator's note when handling events.
    pub const MAX_NOTE: usize = 4096;
}

/// Audit violations (`ReportViolations`): each field as in an event (`event`), the whole
/// violation at most `MAX_VIOLATION_BYTES` encoded (smaller than an event: the control plane
/// keeps every open one, and hands each change to every watcher).
pub mod violation {
    /// A whole violation, encoded.
    pub const MAX_VIOLATION_BYTES: usize = 64 * 1024;
    /// Images listed (each at most `event::MAX_ITEM_TEXT`); past it the last counts the rest.
    pub const MAX_IMAGES: usize = 32;
    /// Violations per `ReportViolations` call.
    pub const MAX_PER_REPORT: usize = 1000;
    /// The audit run's id (a UUID).
    pub const MAX_RUN: usize = 64;
}

/// Clusters and what their agents report (`RegisterCluster`, `ReportStatus`).
pub mod cluster {
    pub const MAX_DESCRIPTION: usize = 1024;
    pub const MAX_LABELS: usize = 64;
    /// A Kubernetes label key: a 253-byte prefix, `/`, a 63-byte name.
    pub const MAX_LABEL_KEY: usize = 317;
    pub const MAX_LABEL_VALUE: usize = 63;
    /// The agent's last error.
    pub const MAX_ERROR: usize = 4096;
    /// The agent's version, epoch and protection state.
    pub const MAX_STATUS_FIELD: usize = 128;
}

/// The first 64 bytes of `text` (at a character boundary), to quote hostile input in an
/// error without echoing all of it.
pub fn preview(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Cuts `text` to at most `max` bytes, on a character boundary, ending with
/// `TRUNCATED_MARKER`; true when it was cut.
pub fn truncate(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let keep = max.saturating_sub(TRUNCATED_MARKER.len());
    let mut end = keep.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    if TRUNCATED_MARKER.len() <= max {
        text.push_str(TRUNCATED_MARKER);
    }
    true
}

/// `list` cut to `MAX_ITEMS` entries (the last one then counts the rest) of at most
/// `MAX_ITEM_TEXT` bytes each.
fn fit_list(list: &mut Vec<String>, what: &str) {
    fit_list_to(list, event::MAX_ITEMS, what);
}

/// `fit_list` with at most `max` entries.
fn fit_list_to(list: &mut Vec<String>, max: usize, what: &str) {
    if list.len() > max {
        let rest = list.len() - (max - 1);
        list.truncate(max - 1);
        list.push(format!("…and {rest} more {what}"));
    }
    for item in list.iter_mut() {
        truncate(item, event::MAX_ITEM_TEXT);
    }
}

fn fit_finding(finding: &mut EventFinding) {
    for text in [
        &mut finding.rule,
        &mut finding.path,
        &mut finding.value,
        &mut finding.message,
    ] {
        truncate(text, event::MAX_FINDING_TEXT);
    }
    if finding.cve_ids.len() > event::MAX_IDS {
        let rest = finding.cve_ids.len() - event::MAX_IDS;
        finding.cve_ids.truncate(event::MAX_IDS);
        // Said before the message is cut, so the count is kept whatever the message's length.
        let note = format!(" ({rest} more vulnerability ids not listed)");
        let room = event::MAX_FINDING_TEXT.saturating_sub(note.len());
        truncate(&mut finding.message, room);
        finding.message.push_str(&note);
    }
    for id in &mut finding.cve_ids {
        truncate(id, event::MAX_ID);
    }
}

/// The finding that stands for `count` findings not listed.
fn summary_finding(count: usize) -> EventFinding {
    EventFinding {
        rule: "truncated".into(),
        message: format!(
            "{count} more findings not listed: the event holds at most {} (see the agent's log \
             for the admission)",
            event::MAX_FINDINGS
        ),
        ..Default::default()
    }
}

/// Fits `event` to the limits `check_event` enforces, losing no finding without counting it:
/// long texts are cut with a marker, lists past their limit end with an entry counting the
/// rest, and findings past the limit (or past the event's byte limit) are summarised by one
/// finding with their count. True when anything was cut.
pub fn fit_event(event: &mut Event) -> bool {
    fit_event_within(event, event::MAX_EVENT_BYTES)
}

/// `fit_event` to at most `max_bytes` encoded.
fn fit_event_within(event: &mut Event, max_bytes: usize) -> bool {
    let before = event.clone();
    for text in [
        &mut event.namespace,
        &mut event.kind,
        &mut event.name,
        &mut event.operation,
        &mut event.user,
        &mut event.admission_uid,
        &mut event.policy,
    ] {
        truncate(text, event::MAX_TEXT);
    }
    fit_list(&mut event.groups, "groups");
    fit_list(&mut event.images, "images");
    for finding in &mut event.findings {
        fit_finding(finding);
    }
    let total = event.findings.len();
    let mut listed = total.min(event::MAX_FINDINGS);
    if listed < total {
        listed -= 1;
    }
    loop {
        let mut fitted = event.clone();
        fitted.findings.truncate(listed);
        if listed < total {
            fitted.findings.push(summary_finding(total - listed));
        }
        if prost::Message::encoded_len(&fitted) <= max_bytes || listed == 0 {
            *event = fitted;
            break;
        }
        listed /= 2;
    }
    *event != before
}

/// Why `event` is over a limit (the field and its size), if it is.
pub fn check_event(event: &Event) -> Result<(), String> {
    let texts = [
        ("namespace", &event.namespace),
        ("kind", &event.kind),
        ("name", &event.name),
        ("operation", &event.operation),
        ("user", &event.user),
        ("admission_uid", &event.admission_uid),
        ("policy", &event.policy),
    ];
    for (field, text) in texts {
        if text.len() > event::MAX_TEXT {
            return Err(format!(
                "{field}: {} bytes; at most {}",
                text.len(),
                event::MAX_TEXT
            ));
        }
    }
    for (field, list) in [("groups", &event.groups), ("images", &event.images)] {
        if list.len() > event::MAX_ITEMS {
            return Err(format!(
                "{field}: {} entries; at most {}",
                list.len(),
                event::MAX_ITEMS
            ));
        }
        if let Some((i, item)) = list
            .iter()
            .enumerate()
            .find(|(_, item)| item.len() > event::MAX_ITEM_TEXT)
        {
            return Err(format!(
                "{field}[{i}]: {} bytes; at most {}",
                item.len(),
                event::MAX_ITEM_TEXT
            ));
        }
    }
    if event.findings.len() > event::MAX_FINDINGS {
        return Err(format!(
            "findings: {} entries; at most {}",
            event.findings.len(),
            event::MAX_FINDINGS
        ));
    }
    for (i, f) in event.findings.iter().enumerate() {
        let texts = [
            ("rule", &f.rule),
            ("path", &f.path),
            ("value", &f.value),
            ("message", &f.message),
        ];
        for (field, text) in texts {
            if text.len() > event::MAX_FINDING_TEXT {
                return Err(format!(
                    "findings[{i}].{field}: {} bytes; at most {}",
                    text.len(),
                    event::MAX_FINDING_TEXT
                ));
            }
        }
        if f.cve_ids.len() > event::MAX_IDS {
            return Err(format!(
                "findings[{i}].cve_ids: {} entries; at most {}",
                f.cve_ids.len(),
                event::MAX_IDS
            ));
        }
        if f.cve_ids.iter().any(|id| id.len() > event::MAX_ID) {
            return Err(format!(
                "findings[{i}].cve_ids: an id over {} bytes",
                event::MAX_ID
            ));
        }
    }
    let size = prost::Message::encoded_len(event);
    if size > event::MAX_EVENT_BYTES {
        return Err(format!(
            "{size} bytes encoded; at most {}",
            event::MAX_EVENT_BYTES
        ));
    }
    Ok(())
}

/// The event whose limits `violation`'s fields share (its uid as the admission uid).
fn as_event(violation: &mut Violation) -> Event {
    use std::mem::take;
    Event {
        namespace: take(&mut violation.namespace),
        kind: take(&mut violation.kind),
        name: take(&mut violation.name),
        admission_uid: take(&mut violation.uid),
        policy: take(&mut violation.policy),
        images: take(&mut violation.images),
        findings: take(&mut violation.findings),
        ..Default::default()
    }
}

fn restore(violation: &mut Violation, event: Event) {
    violation.namespace = event.namespace;
    violation.kind = event.kind;
    violation.name = event.name;
    violation.uid = event.admission_uid;
    violation.policy = event.policy;
    violation.images = event.images;
    violation.findings = event.findings;
}

/// Fits `violation` to what `check_violation` accepts, as `fit_event` fits an event: cut texts
/// are marked, findings past the limits are counted, never dropped silently. True when
/// anything was cut.
pub fn fit_violation(violation: &mut Violation) -> bool {
    let images = violation.images.len();
    fit_list_to(&mut violation.images, violation::MAX_IMAGES, "images");
    let listed_fewer = violation.images.len() < images;
    let mut event = as_event(violation);
    // Room for what a violation holds beside an event's fields (words, times, revision).
    let cut = fit_event_within(&mut event, violation::MAX_VIOLATION_BYTES - 1024);
    restore(violation, event);
    cut || listed_fewer
        || prost::Message::encoded_len(violation) > violation::MAX_VIOLATION_BYTES && {
            violation.history.clear();
            true
        }
}

/// Why `violation` is over a limit (the field and its size), if it is.
pub fn check_violation(violation: &Violation) -> Result<(), String> {
    let mut copy = violation.clone();
    let event = as_event(&mut copy);
    check_event(&event).map_err(|e| match e.strip_prefix("admission_uid") {
        Some(rest) => format!("uid{rest}"),
        None => e,
    })?;
    if violation.images.len() > violation::MAX_IMAGES {
        return Err(format!(
            "images: {} entries; at most {}",
            violation.images.len(),
            violation::MAX_IMAGES
        ));
    }
    let size = prost::Message::encoded_len(violation);
    if size > violation::MAX_VIOLATION_BYTES {
        return Err(format!(
            "{size} bytes encoded; at most {}",
            violation::MAX_VIOLATION_BYTES
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_char_boundaries_and_marks_the_cut() {
        let mut text = "é".repeat(100);
        assert!(truncate(&mut text, 51));
        assert!(
            text.len() <= 51 && text.ends_with(TRUNCATED_MARKER),
            "{text}"
        );
        let mut short = "abc".to_owned();
        assert!(!truncate(&mut short, 3));
        assert_eq!(short, "abc");
        let mut tiny = "abcdef".to_owned();
        truncate(&mut tiny, 2);
        assert!(tiny.len() <= 2);
    }

    fn finding(i: usize, ids: usize, text: usize) -> EventFinding {
        EventFinding {
            rule: "vulnerabilities".into(),
            path: format!("spec.containers[{i}].image"),
            value: "v".repeat(text),
            message: "m".repeat(text),
            cve_ids: (0..ids).map(|n| format!("CVE-2024-{n:05}")).collect(),
        }
    }

    /// Every field at many times its limit: the fitted event passes the control plane's check,
    /// and every finding is listed or counted.
    #[test]
    fn a_fitted_event_always_passes_the_check() {
        let huge = "x".repeat(3 * 1024 * 1024);
        let mut event = Event {
            namespace: huge.clone(),
            name: huge.clone(),
            user: huge.clone(),
            groups: vec![huge.clone(); 3],
            images: (0..1000)
                .map(|i| format!("registry.example.com/{i}"))
                .collect(),
            policy: "p".into(),
            findings: (0..2000).map(|i| finding(i, 300, 5000)).collect(),
            ..Default::default()
        };
        event.images[0] = huge;
        assert!(check_event(&event).is_err());
        assert!(fit_event(&mut event));
        check_event(&event).unwrap();
        let last = event.findings.last().unwrap();
        assert_eq!(last.rule, "truncated");
        let listed = event.findings.len() - 1;
        assert!(
            last.message
                .starts_with(&format!("{} more findings", 2000 - listed)),
            "{}",
            last.message
        );
        assert_eq!(event.images.len(), event::MAX_ITEMS);
        assert_eq!(event.images[255], "…and 745 more images");
        assert!(
            event.findings[0]
                .message
                .ends_with("(268 more vulnerability ids not listed)")
        );
    }

    #[test]
    fn an_event_within_the_limits_is_left_alone() {
        let mut event = Event {
            name: "web".into(),
            findings: (0..event::MAX_FINDINGS)
                .map(|i| finding(i, 3, 10))
                .collect(),
            ..Default::default()
        };
        let before = event.clone();
        assert!(!fit_event(&mut event));
        assert_eq!(event, before);
        check_event(&event).unwrap();
        // One finding more than the limit: the last listed one makes way for the count.
        event.findings.push(finding(999, 1, 10));
        assert!(fit_event(&mut event));
        assert_eq!(event.findings.len(), event::MAX_FINDINGS);
        assert!(event.findings[255].message.starts_with("2 more findings"));
    }

    #[test]
    fn a_fitted_violation_always_passes_the_check() {
        let huge = "x".repeat(2 * 1024 * 1024);
        let mut violation = Violation {
            uid: huge.clone(),
            name: huge.clone(),
            images: vec![huge.clone(); 300],
            findings: (0..2000).map(|i| finding(i, 300, 5000)).collect(),
            ..Default::default()
        };
        let error = check_violation(&violation).unwrap_err();
        assert!(error.starts_with("name: "), "{error}");
        violation.name = "n".into();
        let error = check_violation(&violation).unwrap_err();
        assert!(error.starts_with("uid: "), "{error}");
        assert!(fit_violation(&mut violation));
        check_violation(&violation).unwrap();
        assert_eq!(violation.findings.last().unwrap().rule, "truncated");
        assert_eq!(violation.images.len(), violation::MAX_IMAGES);
        assert!(prost::Message::encoded_len(&violation) <= violation::MAX_VIOLATION_BYTES);
    }
}
