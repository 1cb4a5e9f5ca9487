//! The wall clock, as the binaries store and send it: unix milliseconds and seconds, and
//! protobuf timestamps. A clock before 1970 reads as 1970, never as an error.

use std::time::{SystemTime, UNIX_EPOCH};

use pbjson_types::Timestamp;

/// Unix milliseconds now.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds as a protobuf timestamp.
pub fn timestamp_from_millis(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// `time` as a protobuf timestamp.
pub fn timestamp(time: SystemTime) -> Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_keep_the_millisecond_and_negative_times_round_down() {
        assert_eq!(
            timestamp_from_millis(1_700_000_000_123),
            Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000_000
            }
        );
        assert_eq!(
            timestamp_from_millis(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
        let time = UNIX_EPOCH + Duration::new(5, 7);
        assert_eq!(
            timestamp(time),
            Timestamp {
                seconds: 5,
                nanos: 7
            }
        );
        assert!(now_millis() > 1_700_000_000_000 && now_secs() > 1_700_000_000);
    }
}
