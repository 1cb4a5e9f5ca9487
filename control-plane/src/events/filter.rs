//! Matching events against an `EventFilter`, and the id range a time range maps to.

use portcullis_proto::v1::{Event, EventFilter};

/// Event times and the timestamps in their UUIDv7 ids may differ by this much (see
/// `validate`), so time ranges widen the id range by it and then check the time itself.
pub const ID_TIME_SLACK_MS: i64 = 1000;

/// A compiled filter.
pub struct Matcher<'f> {
    filter: &'f EventFilter,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    text: String,
}

impl<'f> Matcher<'f> {
    pub fn new(filter: &'f EventFilter) -> Self {
        Self {
            filter,
            since_ms: filter.since.as_ref().map(millis),
            until_ms: filter.until.as_ref().map(millis),
            text: filter.text.to_lowercase(),
        }
    }

    pub fn matches(&self, event: &Event) -> bool {
        let f = self.filter;
        let field = |want: &str, have: &str| want.is_empty() || want == have;
        if !(field(&f.cluster, &event.cluster)
            && field(&f.namespace, &event.namespace)
            && field(&f.kind, &event.kind)
            && field(&f.name, &event.name)
            && field(&f.policy, &event.policy)
            && field(&f.action, &event.action)
            && field(&f.state, &event.state))
        {
            return false;
        }
        if !self.time_matches(event.time.as_ref().map(millis).unwrap_or(0)) {
            return false;
        }
        if !self.text.is_empty() {
            let hit = |s: &str| s.to_lowercase().contains(&self.text);
            let found = event.images.iter().any(|i| hit(i))
                || event
                    .findings
                    .iter()
                    .any(|f| f.cve_ids.iter().any(|c| hit(c)));
            if !found {
                return false;
            }
        }
        true
    }
}

impl Matcher<'_> {
    /// Whether an event at `time` (milliseconds) is within the filter's time range.
    pub fn time_matches(&self, time: i64) -> bool {
        !(self.since_ms.is_some_and(|since| time < since)
            || self.until_ms.is_some_and(|until| time >= until))
    }
}

pub fn millis(t: &pbjson_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// The smallest (or, with `upper`, the largest) 16-byte UUIDv7 key at `millis`.
pub fn id_at_millis(millis: i64, upper: bool) -> [u8; 16] {
    let ms = millis.clamp(0, (1 << 48) - 1) as u64;
    let mut key = if upper { [0xff; 16] } else { [0; 16] };
    key[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    key
}

/// The key bound of a filter's `since` (lower) or `until` (upper) with the id slack; the
/// whole range when unset.
pub fn id_bound(time: Option<&pbjson_types::Timestamp>, upper: bool) -> [u8; 16] {
    match (time, upper) {
        (None, false) => [0; 16],
        (None, true) => [0xff; 16],
        (Some(t), false) => id_at_millis(millis(t) - ID_TIME_SLACK_MS, false),
        (Some(t), true) => id_at_millis(millis(t) + ID_TIME_SLACK_MS, true),
    }
}
