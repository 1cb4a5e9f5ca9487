//! Severity words as scanners write them. `critical`, `high`, `medium`, `low` and `unknown` in
//! any case; Grype's `Negligible` (below Low in its scale) counts as Low, the lowest level a
//! policy can name, so it is neither lost nor promoted. Any other word, and a missing severity,
//! becomes `Unknown` and is counted, never dropped.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::Severity;

/// A severity field read without allocating; `None` inside means a word we do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SeverityText(Option<Severity>);

/// Maps a scanner's severity word; `None` for a word we do not know.
pub(crate) fn parse_severity(text: &str) -> Option<Severity> {
    const WORDS: [(&str, Severity); 6] = [
        ("critical", Severity::Critical),
        ("high", Severity::High),
        ("medium", Severity::Medium),
        ("low", Severity::Low),
        ("negligible", Severity::Low),
        ("unknown", Severity::Unknown),
    ];
    WORDS
        .iter()
        .find(|(word, _)| word.eq_ignore_ascii_case(text))
        .map(|&(_, severity)| severity)
}

/// Counts the severities that were missing or not recognised while a report is converted.
#[derive(Debug, Default)]
pub(crate) struct UnknownSeverities(u32);

impl UnknownSeverities {
    /// The severity to record: the recognised one, else `Unknown` (and counted).
    pub(crate) fn resolve(&mut self, text: Option<SeverityText>) -> Severity {
        match text {
            Some(SeverityText(Some(severity))) => severity,
            _ => {
                self.0 = self.0.saturating_add(1);
                Severity::Unknown
            }
        }
    }

    pub(crate) fn count(&self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for SeverityText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Word;
        impl Visitor<'_> for Word {
            type Value = SeverityText;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a severity string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<SeverityText, E> {
                Ok(SeverityText(parse_severity(text)))
            }
        }
        deserializer.deserialize_str(Word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_case_insensitive_and_negligible_is_low() {
        assert_eq!(parse_severity("CRITICAL"), Some(Severity::Critical));
        assert_eq!(parse_severity("High"), Some(Severity::High));
        assert_eq!(parse_severity("medium"), Some(Severity::Medium));
        assert_eq!(parse_severity("LOW"), Some(Severity::Low));
        assert_eq!(parse_severity("Negligible"), Some(Severity::Low));
        assert_eq!(parse_severity("UNKNOWN"), Some(Severity::Unknown));
        assert_eq!(parse_severity("important"), None);
        assert_eq!(parse_severity(""), None);
    }

    #[test]
    fn unrecognised_and_missing_severities_are_counted() {
        let mut unknown = UnknownSeverities::default();
        let word = |s: &str| serde_json::from_str::<SeverityText>(&format!("{s:?}")).unwrap();
        assert_eq!(unknown.resolve(Some(word("HIGH"))), Severity::High);
        assert_eq!(unknown.resolve(Some(word("unknown"))), Severity::Unknown);
        assert_eq!(unknown.count(), 0);
        assert_eq!(unknown.resolve(Some(word("Moderate"))), Severity::Unknown);
        assert_eq!(unknown.resolve(None), Severity::Unknown);
        assert_eq!(unknown.count(), 2);
    }
}
