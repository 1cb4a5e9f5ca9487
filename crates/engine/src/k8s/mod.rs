//! A minimal typed model of the Kubernetes objects Portcullis checks: only the fields a check
//! reads. Every field is optional (absent or `null` reads as its default) and unknown fields are
//! ignored, so any valid object parses; a field of the wrong JSON type is an error naming its
//! path (`spec.template.spec.containers[0].ports[1].hostPort: invalid type: ...`).

#[macro_use]
mod declare;

mod container;
mod fast;
mod map;
mod meta;
mod pod;
mod service;
mod volume;
mod workload;

pub use container::{
    Capabilities, Container, ContainerPort, Handler, HostTarget, Lifecycle, Quantity,
    ResourceRequirements, SecurityContext, VolumeMount,
};
#[doc(hidden)]
pub use fast::direct_reader_agrees;
pub(crate) use fast::{service as fast_service, workload as fast_workload};
pub use map::Map;
pub use meta::ObjectMeta;
pub use pod::{
    PodOs, PodSecurityContext, PodSpec, Profile, SeLinuxOptions, Sysctl, WindowsOptions,
};
pub use service::{Service, ServiceSpec};
pub use volume::{Volume, VolumeSources};
pub use workload::{
    ContainerKind, ContainerPath, PodFinding, PodTemplate, TemplatePaths, Workload, pod_template,
};

/// A string of the model. Most of an object's strings (names, capabilities, quantities, label
/// keys) fit in 24 bytes and are kept inline, so reading an object allocates for few of them.
pub type Text = compact_str::CompactString;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Why an object does not fit the model of its kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum K8sError {
    /// A field holds a value of the wrong type (the path is `object` for the whole object).
    #[error("{path}: {reason}")]
    InvalidField { path: String, reason: String },
}

/// JSON an object can be read from: a parsed value, or the raw text (read in one pass, which
/// is what the webhook's hot path does).
pub trait Source {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, K8sError>;
}

impl Source for serde_json::Value {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, K8sError> {
        parse(self)
    }
}

impl Source for str {
    fn parse<T: DeserializeOwned>(&self) -> Result<T, K8sError> {
        // Fast path without path tracking; a failure is parsed again to name the field.
        if let Ok(value) = serde_json::from_str(self) {
            return Ok(value);
        }
        let mut deserializer = serde_json::Deserializer::from_str(self);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(path_error)?;
        deserializer.end().map_err(|e| K8sError::InvalidField {
            path: "object".into(),
            reason: e.to_string(),
        })?;
        Ok(value)
    }
}

/// Parses any model type from a JSON value, naming the field path of the first error.
pub fn parse<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, K8sError> {
    serde_path_to_error::deserialize(value).map_err(path_error)
}

fn path_error<E: std::fmt::Display>(error: serde_path_to_error::Error<E>) -> K8sError {
    let path = error.path().to_string();
    let path = if path == "." {
        "object".to_owned()
    } else {
        path
    };
    K8sError::InvalidField {
        path,
        reason: error.into_inner().to_string(),
    }
}

/// For tests: the pod of an object of `kind`, read as the webhook reads it (by the direct
/// reader, which must read it itself and read what serde reads).
#[cfg(test)]
pub(crate) fn test_pod(kind: crate::Kind, object: &serde_json::Value) -> PodTemplate {
    let raw = object.to_string();
    assert_eq!(direct_reader_agrees(kind, &raw), Ok(true), "{raw}");
    fast_workload(kind, &raw).expect("read directly").pod
}

/// Reads `null` as the default value, as the API server does for non-pointer fields.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn wrong_types_name_the_field_path() {
        let error = parse::<PodSpec>(&json!({"containers": "nginx"})).unwrap_err();
        let K8sError::InvalidField { path, reason } = &error;
        assert_eq!(path, "containers");
        assert!(reason.contains("expected a sequence"), "{reason}");

        let spec = json!({"containers": [{"name": "a", "ports": [{"hostPort": "80"}]}]});
        let error = parse::<PodSpec>(&spec).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("containers[0].ports[0].hostPort: invalid type"),
            "{error}"
        );

        let error = parse::<PodSpec>(&json!("pod")).unwrap_err();
        assert!(error.to_string().starts_with("object: "), "{error}");
    }

    #[test]
    fn nulls_and_unknown_fields_read_as_defaults() {
        let spec = json!({
            "containers": null,
            "securityContext": null,
            "hostNetwork": null,
            "volumes": [{"name": "v", "emptyDir": null, "secret": {"secretName": "s"}}],
            "futureField": {"anything": [1, 2]},
        });
        let spec: PodSpec = parse(&spec).unwrap();
        assert!(spec.containers.is_empty());
        assert!(!spec.host_network);
        assert_eq!(spec.security_context, PodSecurityContext::default());
        assert_eq!(spec.volumes[0].name, "v");
    }
}
