//! AdmissionReview `admission.k8s.io/v1` as the API server sends it, and the response it
//! expects. Objects stay raw JSON here: they are parsed once, by kind, by the engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReviewError {
    #[error("body is not JSON of an AdmissionReview: {0}")]
    Malformed(String),
    #[error("apiVersion {0:?}: expected admission.k8s.io/v1")]
    ApiVersion(String),
    #[error("kind {0:?}: expected AdmissionReview")]
    Kind(String),
    #[error("request: required")]
    MissingRequest,
    #[error("request.uid: required")]
    MissingUid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow)]
    request: Option<Request<'a>>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `AdmissionReview.request`, with the objects left raw.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a> {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(borrow, default)]
    pub object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub old_object: Option<&'a RawValue>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

impl Request<'_> {
    /// A JSON `null` object counts as absent (the API server sends `"object": null` on DELETE).
    pub fn object(&self) -> Option<&RawValue> {
        self.object.filter(|raw| raw.get() != "null")
    }

    pub fn old_object(&self) -> Option<&RawValue> {
        self.old_object.filter(|raw| raw.get() != "null")
    }
}

/// Parses and checks an AdmissionReview request body.
pub fn parse(body: &[u8]) -> Result<Request<'_>, ReviewError> {
    let review: Review<'_> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if review.api_version != API_VERSION {
        return Err(ReviewError::ApiVersion(review.api_version));
    }
    if review.kind != KIND {
        return Err(ReviewError::Kind(review.kind));
    }
    let request = review.request.ok_or(ReviewError::MissingRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::MissingUid);
    }
    Ok(request)
}

/// `AdmissionReview.response`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

/// `metav1.Status` as admission responses carry it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Status {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl Response {
    pub fn allow(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            allowed: true,
            status: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        }
    }

    pub fn deny(uid: &str, code: u16, reason: &str, message: String) -> Self {
        Self {
            allowed: false,
            status: Some(Status {
                code,
                reason: reason.to_owned(),
                message,
            }),
            ..Self::allow(uid)
        }
    }
}

/// The full response body.
pub fn to_body(response: Response) -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out {
        api_version: &'static str,
        kind: &'static str,
        response: Response,
    }
    serde_json::to_vec(&Out {
        api_version: API_VERSION,
        kind: KIND,
        response,
    })
    .unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/admission/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(path).unwrap()
    }

    #[test]
    fn every_captured_request_parses() {
        let dir = format!("{}/tests/fixtures/admission", env!("CARGO_MANIFEST_DIR"));
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let body = std::fs::read(&path).unwrap();
                let request = parse(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!request.uid.is_empty());
                count += 1;
            }
        }
        assert_eq!(count, 23);
    }

    #[test]
    fn null_objects_count_as_absent() {
        let body = fixture("pod-delete-force-call1.json");
        let request = parse(&body).unwrap();
        assert_eq!(request.operation, "DELETE");
        assert!(request.object().is_none());
        assert!(request.old_object().is_some());
        let body = fixture("pod-create-dryrun-apply.json");
        let request = parse(&body).unwrap();
        assert_eq!(
            (request.dry_run, request.kind.kind.as_str()),
            (Some(true), "Pod")
        );
    }

    #[test]
    fn bad_reviews_are_named() {
        assert!(matches!(
            parse(b"{not json"),
            Err(ReviewError::Malformed(_))
        ));
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#).err(),
            Some(ReviewError::ApiVersion("admission.k8s.io/v1beta1".into()))
        );
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#).err(),
            Some(ReviewError::Kind("Pod".into()))
        );
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).err(),
            Some(ReviewError::MissingRequest)
        );
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"kind":"Pod"}}}"#).err(),
            Some(ReviewError::MissingUid)
        );
    }

    #[test]
    fn responses_serialize_as_the_api_server_expects() {
        let mut response = Response::deny("u1", 403, "Forbidden", "no".into());
        response
            .audit_annotations
            .insert("portcullis.io/policies".into(), "p".into());
        let body: serde_json::Value = serde_json::from_slice(&to_body(response)).unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["response"]["uid"], "u1");
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(body["response"]["status"]["code"], 403);
        assert_eq!(
            body["response"]["auditAnnotations"]["portcullis.io/policies"],
            "p"
        );
        assert!(body["response"].get("warnings").is_none());
    }
}
