//! What the audit watches and how a watched object becomes something the engine judges: the
//! eight kinds, the owner rule (a Pod or ReplicaSet, or a CronJob's Job, with a watched
//! controller is judged through it) and the conversion of a watched object to the engine's
//! model, keeping only what the engine reads.

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{api::ApiResource, core::DynamicObject};

use portcullis_engine::Object;
use portcullis_policy::Kind;

/// A kind the audit watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
    Service,
}

impl AuditKind {
    pub const ALL: [AuditKind; 8] = [
        AuditKind::Pod,
        AuditKind::Deployment,
        AuditKind::StatefulSet,
        AuditKind::DaemonSet,
        AuditKind::ReplicaSet,
        AuditKind::Job,
        AuditKind::CronJob,
        AuditKind::Service,
    ];

    /// The Kubernetes kind, as violations name it.
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::Pod => "Pod",
            AuditKind::Deployment => "Deployment",
            AuditKind::StatefulSet => "StatefulSet",
            AuditKind::DaemonSet => "DaemonSet",
            AuditKind::ReplicaSet => "ReplicaSet",
            AuditKind::Job => "Job",
            AuditKind::CronJob => "CronJob",
            AuditKind::Service => "Service",
        }
    }

    /// The kind as the engine knows it.
    pub fn engine_kind(self) -> Kind {
        match Kind::from_name(self.name()) {
            Some(kind) => kind,
            None => unreachable!("the engine protects every audited kind"),
        }
    }

    /// Where the API server serves it.
    pub fn api_resource(self) -> ApiResource {
        match self {
            AuditKind::Pod => ApiResource::erase::<Pod>(&()),
            AuditKind::Deployment => ApiResource::erase::<Deployment>(&()),
            AuditKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            AuditKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
            AuditKind::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
            AuditKind::Job => ApiResource::erase::<Job>(&()),
            AuditKind::CronJob => ApiResource::erase::<CronJob>(&()),
            AuditKind::Service => ApiResource::erase::<Service>(&()),
        }
    }
}

/// Whether an object of `kind` with these owners is judged through its controller instead:
/// a Pod controlled by a ReplicaSet, StatefulSet, DaemonSet or Job, a ReplicaSet controlled by
/// a Deployment, a Job controlled by a CronJob. The controller runs the same pod template,
/// so judging both would report one problem twice. A controller the audit does not watch (a
/// custom resource, a Node for mirror pods) leaves the object judged on its own.
pub fn judged_through_owner(kind: AuditKind, owners: &[OwnerReference]) -> bool {
    let Some(controller) = owners.iter().find(|o| o.controller == Some(true)) else {
        return false;
    };
    let owner = (controller.api_version.as_str(), controller.kind.as_str());
    match kind {
        AuditKind::Pod => matches!(
            owner,
            ("apps/v1", "ReplicaSet" | "StatefulSet" | "DaemonSet") | ("batch/v1", "Job")
        ),
        AuditKind::ReplicaSet => owner == ("apps/v1", "Deployment"),
        AuditKind::Job => owner == ("batch/v1", "CronJob"),
        _ => false,
    }
}

/// The annotation `kubectl apply` keeps a copy of the whole object in: no check reads it, and
/// it would double what the audit keeps of every object applied that way.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The engine's model of a watched object: its metadata and spec as the admission engine
/// reads them (its status is dropped unread, and so is the last-applied copy of the object).
/// An error names the field that does not fit.
pub fn engine_object(kind: AuditKind, object: DynamicObject) -> Result<Object, String> {
    let DynamicObject {
        mut metadata, data, ..
    } = object;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    let mut fields = match data {
        serde_json::Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    };
    fields.remove("status");
    let metadata = serde_json::to_value(metadata).map_err(|e| format!("metadata: {e}"))?;
    fields.insert("metadata".into(), metadata);
    Object::from_value(kind.engine_kind(), &serde_json::Value::Object(fields))
        .map_err(|e| e.to_string())
}
