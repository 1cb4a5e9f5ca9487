//! The admitted object, parsed once by kind: a workload with its pod, or a Service. Also the
//! test whether an UPDATE changed anything the checks read.

use crate::{
    Kind,
    k8s::{self, K8sError, ObjectMeta, Service, Source, Workload},
};

/// An object the engine evaluates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Workload(Box<Workload>),
    Service(Box<Service>),
}

impl Object {
    /// Parses raw JSON of `kind` in one pass; an object that does not fit its kind names the
    /// field.
    pub fn parse(kind: Kind, raw: &str) -> Result<Self, K8sError> {
        // The direct reader takes the usual object; serde reads the rest and names errors.
        if kind == Kind::Service {
            if let Some(service) = k8s::fast_service(raw) {
                return Ok(Object::Service(Box::new(service)));
            }
        } else if let Some(workload) = k8s::fast_workload(kind, raw) {
            return Ok(Object::Workload(workload));
        }
        Self::from_source(kind, raw)
    }

    /// For fuzzing and tests: `parse` without the direct reader (serde's reading alone).
    #[doc(hidden)]
    pub fn parse_with_serde(kind: Kind, raw: &str) -> Result<Self, K8sError> {
        Self::from_source(kind, raw)
    }

    /// Reads an already parsed JSON value of `kind`.
    pub fn from_value(kind: Kind, value: &serde_json::Value) -> Result<Self, K8sError> {
        Self::from_source(kind, value)
    }

    fn from_source<S: Source + ?Sized>(kind: Kind, source: &S) -> Result<Self, K8sError> {
        match k8s::pod_template(kind, source)? {
            Some(workload) => Ok(Object::Workload(Box::new(workload))),
            None => Ok(Object::Service(Box::new(source.parse()?))),
        }
    }

    /// The object's own metadata (labels for the scope's selector).
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Workload(w) => &w.metadata,
            Object::Service(s) => &s.metadata,
        }
    }

    /// Whether `self` (the updated object) differs from `old` in anything a check reads: the
    /// pod spec (images included) and the pod's annotations, or the Service spec. Labels alone
    /// do not count, so relabelling an old object never fails.
    pub fn checked_parts_differ(&self, old: &Object) -> bool {
        match (self, old) {
            (Object::Workload(new), Object::Workload(old)) => {
                new.pod.spec != old.pod.spec
                    || new.pod.metadata.annotations != old.pod.metadata.annotations
            }
            (Object::Service(new), Object::Service(old)) => new.spec != old.spec,
            _ => true,
        }
    }
}
