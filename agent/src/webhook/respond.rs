//! Turning a decision into an admission response: a denial (HTTP status code 403 in
//! `status.code`) with a readable message listing each finding, warnings for alerts, and audit
//! annotations naming the policies.

use std::fmt::Write;

use portcullis_engine::{Decision, Outcome};
use portcullis_policy::Action;

use super::review::Response;

/// Longest denial message; past it the remaining findings are counted, not listed.
const MAX_MESSAGE: usize = 1500;
/// Warnings per response (the API server shows each to the user).
const MAX_WARNINGS: usize = 10;
const MAX_VALUE: usize = 80;

pub const BLOCKED_BY: &str = "portcullis.io/blocked-by";
pub const ALERTED_BY: &str = "portcullis.io/alerted-by";

pub fn response(uid: &str, kind: &str, decision: &Decision) -> Response {
    let mut response = match &decision.outcome {
        Outcome::Invalid(reason) => {
            return Response::deny(
                uid,
                400,
                "BadRequest",
                format!("portcullis: the {kind} is not valid: {reason}"),
            );
        }
        Outcome::Block => Response::deny(uid, 403, "Forbidden", denial_message(kind, decision)),
        Outcome::Allow | Outcome::Alert => Response::allow(uid),
    };
    let alerts: Vec<_> = decision
        .findings
        .iter()
        .filter(|f| f.action == Action::Alert)
        .collect();
    for finding in alerts.iter().take(MAX_WARNINGS) {
        response.warnings.push(format!(
            "portcullis [{}] {}",
            finding.policy,
            line(&finding.finding)
        ));
    }
    if alerts.len() > MAX_WARNINGS {
        response.warnings.push(format!(
            "portcullis: and {} more alert findings",
            alerts.len() - MAX_WARNINGS
        ));
    }
    for (key, action) in [(BLOCKED_BY, Action::Block), (ALERTED_BY, Action::Alert)] {
        let names = decision.policy_names_with(action);
        if !names.is_empty() {
            response
                .audit_annotations
                .insert(key.to_owned(), names.join(","));
        }
    }
    response
}

fn denial_message(kind: &str, decision: &Decision) -> String {
    let blocking: Vec<_> = decision
        .findings
        .iter()
        .filter(|f| f.action == Action::Block)
        .collect();
    let mut message = format!("portcullis blocked this {kind}: ");
    for (i, finding) in blocking.iter().enumerate() {
        let entry = format!(
            "{}[{}] {}",
            if i == 0 { "" } else { "; " },
            finding.policy,
            line(&finding.finding)
        );
        if message.len() + entry.len() > MAX_MESSAGE {
            let _ = write!(message, "; and {} more", blocking.len() - i);
            break;
        }
        message.push_str(&entry);
    }
    message
}

/// `rule at path = value: message`.
fn line(finding: &portcullis_policy::Finding) -> String {
    let mut text = format!("{} at {}", finding.rule, finding.path);
    if !finding.value.is_empty() {
        let value: String = finding.value.chars().take(MAX_VALUE).collect();
        let ellipsis = if finding.value.chars().count() > MAX_VALUE {
            "…"
        } else {
            ""
        };
        let _ = write!(text, " = {value}{ellipsis}");
    }
    let _ = write!(text, ": {}", finding.message);
    text
}
