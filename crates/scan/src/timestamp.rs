//! RFC 3339 date-times (`2021-08-25T12:20:30.000000005Z`), checked by shape and range only:
//! enough to promise later layers (storage, proto `Timestamp`) a value they can parse.

use super::ScanError;
use super::error::quoted;

/// An optional RFC 3339 field: empty is absent, anything else must be well-formed.
pub(crate) fn optional(path: &str, value: Option<String>) -> Result<Option<String>, ScanError> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) if !is_rfc3339(&v) => Err(ScanError::invalid(path, not_rfc3339(&v))),
        v => Ok(v),
    }
}

/// The reason given for a malformed date-time.
pub(crate) fn not_rfc3339(value: &str) -> String {
    format!("{} is not an RFC 3339 date-time", quoted(value))
}

/// True for `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, `T` and `Z` in either case.
pub(crate) fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let at = |i: usize, expected: &[u8]| b.get(i).is_some_and(|c| expected.contains(c));
    let date_time = (|| {
        let year = number(0..4)?;
        let month = number(5..7)?;
        let day = number(8..10)?;
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        let separators =
            at(4, b"-") && at(7, b"-") && at(10, b"Tt") && at(13, b":") && at(16, b":");
        Some(
            separators
                && (1..=12).contains(&month)
                && (1..=days_in_month(year, month)).contains(&day)
                && hour < 24
                && minute < 60
                && second <= 60,
        )
    })();
    if date_time != Some(true) {
        return false;
    }
    let mut rest = &b[19..];
    if let [b'.', fraction @ ..] = rest {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &fraction[digits..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| u32::from(a - b'0') * 10 + u32::from(b - b'0'))
            };
            matches!((two(*h1, *h2), two(*m1, *m2)), (Some(h), Some(m)) if h < 24 && m < 60)
        }
        _ => false,
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_timestamps_are_accepted() {
        for ok in [
            "2021-08-25T12:20:30.000000005Z",
            "2019-09-10T17:15:00Z",
            "2024-02-29t23:59:60z",
            "2024-05-01T12:00:00+02:00",
            "0001-01-01T00:00:00Z",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for bad in [
            "",
            "2021-08-25",
            "2021-08-25 12:20:30Z",
            "2021-08-25T12:20:30",
            "2021-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2021-08-25T24:00:00Z",
            "2021-08-25T12:20:30.Z",
            "2021-08-25T12:20:30+0200",
            "2021-08-25T12:20:30+24:00",
            "2021-08-25T12:20:30Zjunk",
            "２021-08-25T12:20:30Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
