//! Gatekeeper external data (`externaldata.gatekeeper.sh/v1beta1`): clusters that already run
//! Gatekeeper can ask the agent for each image's verdict from their own Rego. A
//! `ProviderRequest` carries image references as keys; the `ProviderResponse` has one item per
//! key: a verdict object as the value, or an error for that key (an invalid reference). A
//! `systemError` says the whole request cannot be answered (the agent has no state yet).
//!
//! The verdict is what the image rules of the agent's policies say about the image alone
//! (`engine::image_verdict`): namespace, kind and label scopes are left to the caller's Rego.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use portcullis_engine::{self as engine, Outcome};
use portcullis_policy::{Action, reference::ImageReference, scan::SeverityCounts};

use crate::state::AgentState;

pub const API_VERSION: &str = "externaldata.gatekeeper.sh/v1beta1";
/// Keys answered per request; Gatekeeper batches far fewer.
pub const MAX_KEYS: usize = 10_000;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderRequest {
    api_version: String,
    kind: String,
    request: Option<RequestBody>,
}

#[derive(Deserialize)]
struct RequestBody {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderResponse {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseBody,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseBody {
    idempotent: bool,
    items: Vec<Item>,
    #[serde(skip_serializing_if = "String::is_empty")]
    system_error: String,
}

#[derive(Serialize)]
struct Item {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

/// A request that is not a ProviderRequest at all (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("not a ProviderRequest: {0}")]
    Json(String),
    #[error("apiVersion {0:?} is not {API_VERSION}")]
    ApiVersion(String),
    #[error("kind {0:?} is not ProviderRequest")]
    Kind(String),
    #[error("request is missing")]
    MissingRequest,
}

/// Answers one ProviderRequest body against `state`.
pub fn answer(
    body: &[u8],
    cluster: &str,
    state: &AgentState,
) -> Result<ProviderResponse, ProviderError> {
    let request: ProviderRequest =
        serde_json::from_slice(body).map_err(|e| ProviderError::Json(e.to_string()))?;
    if request.api_version != API_VERSION {
        return Err(ProviderError::ApiVersion(request.api_version));
    }
    if request.kind != "ProviderRequest" {
        return Err(ProviderError::Kind(request.kind));
    }
    let keys = request.request.ok_or(ProviderError::MissingRequest)?.keys;
    let system_error = if !state.is_loaded() {
        "portcullis agent has not synced any state yet".to_owned()
    } else if keys.len() > MAX_KEYS {
        format!(
            "{} keys in one request; at most {MAX_KEYS} are answered",
            keys.len()
        )
    } else {
        String::new()
    };
    let items = if system_error.is_empty() {
        keys.into_iter()
            .map(|key| item(key, cluster, state))
            .collect()
    } else {
        Vec::new()
    };
    Ok(ProviderResponse {
        api_version: API_VERSION,
        kind: "ProviderResponse",
        response: ResponseBody {
            // The same key gets the same answer until the agent's state changes.
            idempotent: true,
            items,
            system_error,
        },
    })
}

fn item(key: String, cluster: &str, state: &AgentState) -> Item {
    if let Err(error) = ImageReference::parse(&key) {
        return Item {
            key,
            value: None,
            error: format!("invalid image reference: {error}"),
        };
    }
    let verdict = engine::image_verdict(
        &key,
        cluster,
        state.policies.values().map(|p| &p.policy),
        &state.scans,
    );
    let scan = state.scans.lookup_scan(&key);
    let word = match verdict.outcome {
        Outcome::Block => "block",
        Outcome::Alert => "alert",
        _ => "allow",
    };
    let findings: Vec<Value> = verdict
        .findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "policy": f.policy,
                "rule": f.finding.rule,
                "action": if f.action == Action::Block { "block" } else { "alert" },
                "message": f.finding.message,
            })
        })
        .collect();
    let mut value = serde_json::json!({
        "verdict": word,
        "scanned": verdict.scanned,
        "findings": findings,
    });
    if let Some(scan) = scan {
        let summary = &scan.summary;
        value["scanId"] = scan.id.as_ref().into();
        value["counts"] = counts(summary.counts());
        value["fixable"] = summary
            .vulnerabilities()
            .filter(|v| v.fixable)
            .count()
            .into();
        value["malware"] = summary
            .malware()
            .iter()
            .map(|s| &**s)
            .collect::<Vec<_>>()
            .into();
        value["baselineFailures"] = summary
            .baseline_failures()
            .iter()
            .map(|s| &**s)
            .collect::<Vec<_>>()
            .into();
    }
    Item {
        key,
        value: Some(value),
        error: String::new(),
    }
}

fn counts(counts: SeverityCounts) -> Value {
    use portcullis_policy::Severity::*;
    serde_json::json!({
        "critical": counts[Critical],
        "high": counts[High],
        "medium": counts[Medium],
        "low": counts[Low],
        "unknown": counts[Unknown],
    })
}
