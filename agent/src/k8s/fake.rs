//! A fake Kubernetes API server for tests: `tower_test::mock` under a real `kube::Client`. It
//! keeps the objects the agent writes (by path), answers GET, POST, PUT, PATCH (apply) and
//! DELETE as the API server would (404, 409 on a stale resourceVersion or an existing name),
//! records every call (method, path with query, body) for tests to assert, and can be told to
//! fail the next calls matching a method and path with a status code.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// One call the agent made.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    /// Path and query, e.g. `/api/v1/namespaces/ns/secrets/s?fieldManager=...`.
    pub uri: String,
    pub body: Value,
}

impl Call {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
    failures: VecDeque<(Method, String, u16)>,
    version: u64,
}

/// The fake's state, shared with the test.
#[derive(Clone, Default)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
}

impl FakeApi {
    /// A client whose requests this fake answers (the serving task runs until the client
    /// is dropped).
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let uri = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let (status, out) = fake.answer(parts.method, uri, body);
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap();
                respond.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    /// The next call with `method` on `path` (no query) fails with `code`.
    pub fn fail_next(&self, method: Method, path: &str, code: u16) {
        self.lock()
            .failures
            .push_back((method, path.to_owned(), code));
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the recorded calls.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The writes (not GETs) so far, as `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.method != Method::GET)
            .map(|c| format!("{} {}", c.method, c.path()))
            .collect()
    }

    /// The object stored at `path`.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Stores or replaces an object directly (someone else's edit).
    pub fn put_object(&self, path: &str, object: Value) {
        let mut inner = self.lock();
        inner.version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = inner.version.to_string().into();
        inner.objects.insert(path.to_owned(), object);
    }

    pub fn remove_object(&self, path: &str) {
        self.lock().objects.remove(path);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answer(&self, method: Method, uri: String, body: Value) -> (StatusCode, Value) {
        let mut inner = self.lock();
        let path = uri.split('?').next().unwrap_or_default().to_owned();
        inner.calls.push(Call {
            method: method.clone(),
            uri: uri.clone(),
            body: body.clone(),
        });
        if let Some(at) = inner
            .failures
            .iter()
            .position(|(m, p, _)| *m == method && *p == path)
        {
            let (_, _, code) =
                inner
                    .failures
                    .remove(at)
                    .unwrap_or((Method::GET, String::new(), 500));
            return status(code, "injected failure");
        }
        match method {
            Method::GET => match inner.objects.get(&path) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => status(404, "not found"),
            },
            Method::DELETE => match inner.objects.remove(&path) {
                Some(_) => (
                    StatusCode::OK,
                    json!({"kind": "Status", "status": "Success"}),
                ),
                None => status(404, "not found"),
            },
            Method::POST => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let path = format!("{path}/{name}");
                if inner.objects.contains_key(&path) {
                    return status(409, "already exists");
                }
                inner.version += 1;
                let mut object = body;
                object["metadata"]["resourceVersion"] = inner.version.to_string().into();
                inner.objects.insert(path, object.clone());
                (StatusCode::CREATED, object)
            }
            Method::PUT => {
                let Some(current) = inner.objects.get(&path) else {
                    return status(404, "not found");
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(409, "the object has been modified");
                }
                inner.version += 1;
                let mut object = body;
                object["metadata"]["resourceVersion"] = inner.version.to_string().into();
                inner.objects.insert(path, object.clone());
                (StatusCode::OK, object)
            }
            Method::PATCH => {
                // Server-side apply: the applied fields win; others are kept.
                inner.version += 1;
                let mut object = inner
                    .objects
                    .get(&path)
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                merge(&mut object, &body);
                object["metadata"]["resourceVersion"] = inner.version.to_string().into();
                inner.objects.insert(path, object.clone());
                (StatusCode::OK, object)
            }
            _ => status(405, "method not allowed"),
        }
    }
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (into, from) => *into = from.clone(),
    }
}

fn status(code: u16, message: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": match code { 404 => "NotFound", 409 => "Conflict", 403 => "Forbidden", _ => "InternalError" },
            "code": code,
        }),
    )
}
