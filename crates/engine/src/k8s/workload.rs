//! Finding the pod in an admitted object: a Pod is its own pod; a workload carries a pod
//! template at a fixed path. Checks report field paths under that path, and say which
//! container a finding concerns so the engine can exempt whitelisted containers.

use std::fmt;

use serde::de::DeserializeOwned;

use super::container::Container;
use super::fast::Read;
use super::meta::ObjectMeta;
use super::pod::PodSpec;
use super::{K8sError, Source};
use crate::{Finding, Kind};

/// Where a pod's metadata and spec sit in the admitted object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TemplatePaths {
    pub metadata: &'static str,
    pub spec: &'static str,
}

impl TemplatePaths {
    pub const POD: Self = Self {
        metadata: "metadata",
        spec: "spec",
    };
    /// Deployment, ReplicaSet, StatefulSet, DaemonSet and Job.
    pub const WORKLOAD: Self = Self {
        metadata: "spec.template.metadata",
        spec: "spec.template.spec",
    };
    pub const CRON_JOB: Self = Self {
        metadata: "spec.jobTemplate.spec.template.metadata",
        spec: "spec.jobTemplate.spec.template.spec",
    };

    /// The paths for a kind; `None` for kinds without a pod (Service).
    pub fn of(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Pod => Some(Self::POD),
            Kind::Deployment
            | Kind::ReplicaSet
            | Kind::StatefulSet
            | Kind::DaemonSet
            | Kind::Job => Some(Self::WORKLOAD),
            Kind::CronJob => Some(Self::CRON_JOB),
            Kind::Service => None,
        }
    }
}

/// The pod a check evaluates: its metadata (for the legacy seccomp and AppArmor annotations),
/// its spec, and where both sit in the admitted object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodTemplate {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub paths: TemplatePaths,
}

impl Default for TemplatePaths {
    fn default() -> Self {
        Self::POD
    }
}

impl PodTemplate {
    /// Every container with its path: `containers`, then `initContainers`, then
    /// `ephemeralContainers`, each in order.
    pub fn containers(&self) -> impl Iterator<Item = (ContainerPath, &Container)> {
        let spec = self.paths.spec;
        let lists = [
            (ContainerKind::Container, &self.spec.containers),
            (ContainerKind::InitContainer, &self.spec.init_containers),
            (
                ContainerKind::EphemeralContainer,
                &self.spec.ephemeral_containers,
            ),
        ];
        lists.into_iter().flat_map(move |(kind, list)| {
            list.iter()
                .enumerate()
                .map(move |(index, c)| (ContainerPath { spec, kind, index }, c))
        })
    }

    /// Every image the pod pulls, with where it is named: each container's (in
    /// `containers()` order), then each image volume's reference.
    pub fn images(&self) -> impl Iterator<Item = (ContainerPath, &str)> {
        let spec = self.paths.spec;
        let volumes = self
            .spec
            .volumes
            .iter()
            .enumerate()
            .filter_map(move |(index, v)| {
                let path = ContainerPath {
                    spec,
                    kind: ContainerKind::ImageVolume,
                    index,
                };
                v.image.as_deref().map(|image| (path, image))
            });
        self.containers()
            .map(|(path, c)| (path, c.image.as_str()))
            .chain(volumes)
    }

    /// The first container of each name (names are unique in a valid pod; a hostile object
    /// may repeat them), for lookups by name without a scan of every container per lookup.
    pub fn containers_by_name(&self) -> std::collections::HashMap<&str, ContainerPath> {
        let mut by_name = std::collections::HashMap::new();
        for (at, c) in self.containers() {
            by_name.entry(c.name.as_str()).or_insert(at);
        }
        by_name
    }

    /// A field path under the pod spec (`spec.template.spec.hostNetwork`).
    pub fn spec_field(&self, field: &str) -> String {
        format!("{}.{field}", self.paths.spec)
    }

    /// The path of one annotation (`metadata.annotations["key"]`).
    pub fn annotation_path(&self, key: &str) -> String {
        format!("{}.annotations[{key:?}]", self.paths.metadata)
    }
}

/// The three container lists of a pod spec, and its image volumes: every place an image the
/// kubelet pulls is named. `pod.containers()` yields containers only; `pod.images()` all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContainerKind {
    Container,
    InitContainer,
    EphemeralContainer,
    /// A volume with an `image` source (`spec.volumes[i]`).
    ImageVolume,
}

impl ContainerKind {
    /// The pod spec field holding the list.
    pub const fn field(self) -> &'static str {
        match self {
            Self::Container => "containers",
            Self::InitContainer => "initContainers",
            Self::EphemeralContainer => "ephemeralContainers",
            Self::ImageVolume => "volumes",
        }
    }

    /// The field naming the image: `image`, or an image volume's `image.reference`.
    pub const fn image_field(self) -> &'static str {
        match self {
            Self::ImageVolume => "image.reference",
            _ => "image",
        }
    }
}

/// Where a container sits: displays as `spec.template.spec.initContainers[1]`. Cheap to copy;
/// the text is only built when a finding needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerPath {
    /// The pod spec path (`TemplatePaths::spec`).
    pub spec: &'static str,
    pub kind: ContainerKind,
    pub index: usize,
}

impl ContainerPath {
    /// A field path under the container (`....containers[0].securityContext.privileged`).
    pub fn field(&self, field: &str) -> String {
        // Built by hand: the engine asks for one per container image of every admission.
        let (spec, list) = (self.spec, self.kind.field());
        let mut out = String::with_capacity(spec.len() + list.len() + field.len() + 24);
        for piece in [spec, ".", list, "["] {
            out.push_str(piece);
        }
        push_decimal(&mut out, self.index);
        out.push_str("].");
        out.push_str(field);
        out
    }

    /// Whether `path` is this container or a field under it.
    pub fn covers(&self, path: &str) -> bool {
        let Some(rest) = path
            .strip_prefix(self.spec)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.strip_prefix(self.kind.field()))
            .and_then(|rest| rest.strip_prefix('['))
        else {
            return false;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let bytes = rest.as_bytes();
        digits > 0
            && rest[..digits].parse::<usize>() == Ok(self.index)
            && bytes.get(digits) == Some(&b']')
            && matches!(bytes.get(digits + 1), None | Some(b'.' | b'['))
    }
}

/// `n` in decimal digits, without the formatting machinery.
fn push_decimal(out: &mut String, n: usize) {
    let mut digits = [0u8; 20];
    let (mut at, mut n) = (digits.len(), n);
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

impl fmt::Display for ContainerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}[{}]", self.spec, self.kind.field(), self.index)
    }
}

/// A finding about a pod, with the container whose effective settings it concerns (`None` for
/// pod-level settings: host namespaces, volumes, sysctls, fsGroup, ...). A finding about a
/// value a container inherits from the pod names that container, and its path is the pod-level
/// field. The engine drops findings whose container runs a whitelisted image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodFinding {
    pub container: Option<ContainerPath>,
    pub finding: Finding,
}

/// An admitted object with a pod: its own metadata (identity, labels) and its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub kind: Kind,
    pub metadata: ObjectMeta,
    pub pod: PodTemplate,
}

/// Reads the pod of an admitted object of `kind`; `Ok(None)` for kinds without a pod
/// (Service). An object that does not fit its kind is an error naming the field.
pub fn pod_template<S: Source + ?Sized>(
    kind: Kind,
    object: &S,
) -> Result<Option<Workload>, K8sError> {
    read_workload(kind, SerdeShapes(object))
}

/// Reads one of the shapes below from a whole object: with serde, or with the direct reader.
pub(super) trait ShapeReader {
    type Error;
    fn read<T: Read + DeserializeOwned>(self) -> Result<T, Self::Error>;
}

struct SerdeShapes<'a, S: ?Sized>(&'a S);

impl<S: Source + ?Sized> ShapeReader for SerdeShapes<'_, S> {
    type Error = K8sError;
    fn read<T: Read + DeserializeOwned>(self) -> Result<T, K8sError> {
        self.0.parse()
    }
}

/// The workload of `kind` (see `pod_template`), its shape read by `reader`.
pub(super) fn read_workload<R: ShapeReader>(
    kind: Kind,
    reader: R,
) -> Result<Option<Workload>, R::Error> {
    let Some(paths) = TemplatePaths::of(kind) else {
        return Ok(None);
    };
    let (metadata, pod) = match kind {
        Kind::Pod => {
            let pod: PodShape = reader.read()?;
            (pod.metadata.clone(), pod)
        }
        Kind::CronJob => {
            let cron: CronJobShape = reader.read()?;
            (cron.metadata, cron.spec.job_template.spec.template)
        }
        _ => {
            let owner: TemplateOwner = reader.read()?;
            (owner.metadata, owner.spec.template)
        }
    };
    Ok(Some(Workload {
        kind,
        metadata,
        pod: PodTemplate {
            metadata: pod.metadata,
            spec: pod.spec,
            paths,
        },
    }))
}

// The shapes around a pod, by kind (`TemplatePaths` names their paths).

k8s_type! {
    /// A Pod, or a pod template: metadata and spec.
    pub(super) struct PodShape {
        "metadata" => pub(super) metadata: ObjectMeta,
        "spec" => pub(super) spec: PodSpec,
    }
}

k8s_type! {
    /// A workload whose spec holds a pod template.
    pub(super) struct TemplateOwner {
        "metadata" => pub(super) metadata: ObjectMeta,
        "spec" => pub(super) spec: TemplateHolder,
    }
}

k8s_type! {
    pub(super) struct TemplateHolder {
        "template" => pub(super) template: PodShape,
    }
}

k8s_type! {
    pub(super) struct CronJobShape {
        "metadata" => pub(super) metadata: ObjectMeta,
        "spec" => pub(super) spec: CronJobSpec,
    }
}

k8s_type! {
    pub(super) struct CronJobSpec {
        "jobTemplate" => pub(super) job_template: JobTemplate,
    }
}

k8s_type! {
    pub(super) struct JobTemplate {
        "spec" => pub(super) spec: TemplateHolder,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn pod_spec() -> Value {
        json!({
            "containers": [{"name": "app"}, {"name": "sidecar"}],
            "initContainers": [{"name": "init"}],
            "ephemeralContainers": [{"name": "debug", "targetContainerName": "app"}],
        })
    }

    fn paths_of(workload: &Workload) -> Vec<String> {
        workload
            .pod
            .containers()
            .map(|(path, _)| path.to_string())
            .collect()
    }

    #[test]
    fn a_pod_is_its_own_template() {
        let object = json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}, "spec": pod_spec()});
        let w = pod_template(Kind::Pod, &object).unwrap().unwrap();
        assert_eq!(w.metadata.name, "p");
        assert_eq!(w.pod.metadata.namespace, "ns");
        assert_eq!(w.pod.paths, TemplatePaths::POD);
        assert_eq!(
            paths_of(&w),
            vec![
                "spec.containers[0]",
                "spec.containers[1]",
                "spec.initContainers[0]",
                "spec.ephemeralContainers[0]"
            ]
        );
        assert_eq!(w.pod.spec_field("hostPID"), "spec.hostPID");
        assert_eq!(
            w.pod.annotation_path("a/b"),
            r#"metadata.annotations["a/b"]"#
        );
    }

    #[test]
    fn workloads_put_the_pod_under_spec_template() {
        for kind in [
            Kind::Deployment,
            Kind::ReplicaSet,
            Kind::StatefulSet,
            Kind::DaemonSet,
            Kind::Job,
        ] {
            let object = json!({
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"replicas": 2, "template": {"metadata": {"annotations": {"a": "b"}}, "spec": pod_spec()}},
            });
            let w = pod_template(kind, &object).unwrap().unwrap();
            assert_eq!(w.metadata.name, "web");
            assert_eq!(w.pod.metadata.annotations["a"], "b");
            assert_eq!(paths_of(&w)[2], "spec.template.spec.initContainers[0]");
            assert_eq!(
                w.pod.annotation_path("k"),
                r#"spec.template.metadata.annotations["k"]"#
            );
        }
    }

    #[test]
    fn cron_jobs_put_the_pod_under_the_job_template() {
        let object = json!({"metadata": {"name": "nightly"}, "spec": {"schedule": "@daily",
            "jobTemplate": {"spec": {"template": {"spec": pod_spec()}}}}});
        let w = pod_template(Kind::CronJob, &object).unwrap().unwrap();
        assert_eq!(
            paths_of(&w)[1],
            "spec.jobTemplate.spec.template.spec.containers[1]"
        );
        assert_eq!(
            w.pod.spec_field("volumes"),
            "spec.jobTemplate.spec.template.spec.volumes"
        );
    }

    #[test]
    fn services_have_no_pod() {
        assert_eq!(pod_template(Kind::Service, &json!({})).unwrap(), None);
    }

    #[test]
    fn a_misshapen_object_names_the_field() {
        let object = json!({"spec": {"template": {"spec": {"containers": "nginx"}}}});
        let error = pod_template(Kind::Deployment, &object).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("spec.template.spec.containers: invalid type"),
            "{error}"
        );
        let object =
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"hostPID": "yes"}}}}}});
        let error = pod_template(Kind::CronJob, &object).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("spec.jobTemplate.spec.template.spec.hostPID: "),
            "{error}"
        );
    }

    #[test]
    fn container_paths_cover_their_fields_only() {
        let path = ContainerPath {
            spec: "spec.template.spec",
            kind: ContainerKind::InitContainer,
            index: 1,
        };
        assert_eq!(path.to_string(), "spec.template.spec.initContainers[1]");
        assert_eq!(
            path.field("ports[0].hostPort"),
            "spec.template.spec.initContainers[1].ports[0].hostPort"
        );
        assert!(path.covers("spec.template.spec.initContainers[1]"));
        assert!(path.covers("spec.template.spec.initContainers[1].securityContext.privileged"));
        assert!(!path.covers("spec.template.spec.initContainers[10].securityContext"));
        assert!(!path.covers("spec.template.spec.initContainers[0]"));
        assert!(!path.covers("spec.template.spec.containers[1]"));
        assert!(!path.covers("spec.template.spec.initContainers[1]x"));
        assert!(!path.covers("spec.initContainers[1]"));
        for index in [0, 9, 10, 407, usize::MAX] {
            let path = ContainerPath { index, ..path };
            assert_eq!(path.field("image"), format!("{path}.image"));
        }
    }
}
