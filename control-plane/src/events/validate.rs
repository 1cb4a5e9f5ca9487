//! Checks of a `ReportEvents` batch. A batch is refused whole: another cluster's event is
//! `PermissionDenied`; anything malformed is `InvalidArgument` naming the event (its index and
//! id) and the field.

use portcullis_proto::v1::Event;
use portcullis_proto::words::EventAction;

use super::filter::{ID_TIME_SLACK_MS, millis};
use crate::store::now_millis;

/// How far in the future an event time may be (clock skew between agent and control plane).
const MAX_FUTURE_MS: i64 = 3600 * 1000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("{0}")]
    OtherCluster(String),
    #[error("{0}")]
    Invalid(String),
}

/// Validates every event of `cluster`'s batch; returns each event with its parsed id.
pub fn validate_batch(
    cluster: &str,
    events: Vec<Event>,
    max_batch: usize,
) -> Result<Vec<(uuid::Uuid, Event)>, BatchError> {
    if events.len() > max_batch {
        return Err(BatchError::Invalid(format!(
            "events: {} in one batch; at most {max_batch} are accepted",
            events.len()
        )));
    }
    let now = now_millis();
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let at = |reason: String| format!("events[{i}] (id {:?}): {reason}", event.id);
        if event.cluster != cluster {
            return Err(BatchError::OtherCluster(at(format!(
                "is for cluster {:?}; this agent reports for {cluster:?} only",
                event.cluster
            ))));
        }
        let id = uuid::Uuid::parse_str(&event.id)
            .ok()
            .filter(|u| u.get_version_num() == 7)
            .ok_or_else(|| BatchError::Invalid(at("id: not a UUIDv7".into())))?;
        let time = event
            .time
            .as_ref()
            .ok_or_else(|| BatchError::Invalid(at("time: required".into())))?;
        if !(0..1_000_000_000).contains(&time.nanos) || time.seconds < 0 {
            return Err(BatchError::Invalid(
                at("time: not a valid timestamp".into()),
            ));
        }
        let time_ms = millis(time);
        let id_ms = id
            .get_timestamp()
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                secs as i64 * 1000 + i64::from(nanos / 1_000_000)
            })
            .unwrap_or(0);
        if (time_ms - id_ms).abs() > ID_TIME_SLACK_MS {
            return Err(BatchError::Invalid(at(format!(
                "time: {time_ms} ms does not agree with the id's timestamp {id_ms} ms"
            ))));
        }
        if time_ms > now + MAX_FUTURE_MS {
            return Err(BatchError::Invalid(at(
                "time: more than an hour in the future".into(),
            )));
        }
        if let Err(error) = event.action.parse::<EventAction>() {
            return Err(BatchError::Invalid(at(format!("action: {error}"))));
        }
        if event.policy.is_empty() || event.policy.contains('\0') {
            return Err(BatchError::Invalid(at("policy: required".into())));
        }
        if event.count == 0 {
            return Err(BatchError::Invalid(at("count: at least 1".into())));
        }
        // The limits agents fit their events to (one definition for both sides).
        portcullis_proto::limits::check_event(&event)
            .map_err(|reason| BatchError::Invalid(at(reason)))?;
        out.push((id, event));
    }
    Ok(out)
}
