//! The words of the wire: string fields of `portcullis.v1` that hold one of a fixed set of
//! values. Each is an enum here, written with `as_str` and read once at each edge with
//! `FromStr` (whose error lists the words allowed), so a misspelling does not compile and a
//! peer's unknown word is caught where it arrives. `NAMES` feeds clap's value parsers.

use std::{fmt, str::FromStr};

/// A word that is not one of a set; displays as "unknown <what> \"x\": expected a, b or c".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownWord {
    pub what: &'static str,
    pub found: String,
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self
            .expected
            .iter()
            .filter(|w| !w.is_empty())
            .map(|w| w.to_string())
            .collect();
        let list = match shown.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        write!(f, "unknown {} {:?}: expected {list}", self.what, self.found)
    }
}

impl std::error::Error for UnknownWord {}

macro_rules! words {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;

            fn from_str(text: &str) -> Result<Self, UnknownWord> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    other => Err(UnknownWord {
                        what: $what,
                        found: other.to_owned(),
                        expected: Self::NAMES,
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

words! {
    /// `SyncStart.mode`: how the control plane answers a `SyncRequest`.
    SyncMode, "sync mode" {
        /// Everything follows, then `SnapshotEnd`.
        Snapshot = "snapshot",
        /// Deltas from the agent's revision follow.
        Resume = "resume",
    }
}

words! {
    /// `Event.action`: what the agent did with the admission.
    EventAction, "event action" {
        Blocked = "blocked",
        Alerted = "alerted",
    }
}

words! {
    /// `Event.state`: where an operator is with an event.
    EventState, "event state" {
        New = "new",
        Handled = "handled",
        Ignored = "ignored",
    }
}

words! {
    /// `ProtectionSettings.failure_policy`, as stored (lower case; the agent writes the
    /// Kubernetes spelling, `Ignore` or `Fail`, into its webhook configuration).
    FailurePolicy, "failure policy" {
        Ignore = "ignore",
        Fail = "fail",
    }
}

impl FailurePolicy {
    /// The `failurePolicy` of a Kubernetes webhook.
    pub const fn kubernetes(self) -> &'static str {
        match self {
            Self::Ignore => "Ignore",
            Self::Fail => "Fail",
        }
    }
}

words! {
    /// `ClusterStatus.protection_state`: what the agent's webhook configuration is now.
    #[derive(Default)]
    ProtectionState, "protection state" {
        /// Programmed and reachable.
        Protected = "protected",
        /// Programmed, but the agent holds no policy yet.
        ProtectedWithoutPolicy = "protected-without-policy",
        /// Programming it failed (the status's error says why).
        DeployFailed = "deploy-failed",
        /// Not programmed (protection disabled, or removed).
        Unprotected = "unprotected",
        /// Standalone, or not known yet.
        #[default]
        Unknown = "",
    }
}

words! {
    /// `Violation.state`: whether an audit violation still holds.
    ViolationState, "violation state" {
        Open = "open",
        Resolved = "resolved",
    }
}

words! {
    /// `Violation.action`: what admission would do with the object now.
    ViolationAction, "violation action" {
        Block = "block",
        Alert = "alert",
    }
}

words! {
    /// `Violation.severity`: the highest severity of the vulnerabilities its findings name.
    ViolationSeverity, "violation severity" {
        Critical = "critical",
        High = "high",
        Medium = "medium",
        Low = "low",
        Unknown = "unknown",
        /// No finding names a vulnerability.
        None = "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_and_others_are_named() {
        for name in EventState::NAMES {
            assert_eq!(name.parse::<EventState>().unwrap().as_str(), *name);
        }
        for name in ProtectionState::NAMES {
            assert_eq!(name.parse::<ProtectionState>().unwrap().as_str(), *name);
        }
        let error = "Handled".parse::<EventState>().unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"unknown event state "Handled": expected new, handled or ignored"#
        );
        let error = "x".parse::<SyncMode>().unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"unknown sync mode "x": expected snapshot or resume"#
        );
        assert_eq!(FailurePolicy::Fail.kubernetes(), "Fail");
        for name in ViolationSeverity::NAMES {
            assert_eq!(name.parse::<ViolationSeverity>().unwrap().as_str(), *name);
        }
        assert_eq!(
            "closed".parse::<ViolationState>().unwrap_err().to_string(),
            r#"unknown violation state "closed": expected open or resolved"#
        );
    }
}
