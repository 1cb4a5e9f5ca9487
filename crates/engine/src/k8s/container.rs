//! Containers (regular, init and ephemeral share these fields) and their security context.

use compact_str::ToCompactString;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use smallvec::SmallVec;

use super::pod::{Profile, SeLinuxOptions, WindowsOptions};
use super::{Map, Text};

k8s_type! {
    /// `corev1.Container`, reduced to what policies read.
    pub struct Container {
        "name" => pub name: Text,
        "image" => pub image: Text,
        "ports" => pub ports: SmallVec<[ContainerPort; 2]>,
        "securityContext" => pub security_context: SecurityContext,
        "volumeMounts" => pub volume_mounts: SmallVec<[VolumeMount; 2]>,
        "resources" => pub resources: ResourceRequirements,
        "livenessProbe" => pub liveness_probe: Option<Handler>,
        "readinessProbe" => pub readiness_probe: Option<Handler>,
        "startupProbe" => pub startup_probe: Option<Handler>,
        "lifecycle" => pub lifecycle: Lifecycle,
    }
}

impl Container {
    /// Every probe and lifecycle action that can name a host, with its field path relative to
    /// the container (`livenessProbe.httpGet`), in a fixed order.
    pub fn host_targets(&self) -> impl Iterator<Item = (&'static str, &HostTarget)> {
        let handlers = [
            self.liveness_probe.as_ref(),
            self.readiness_probe.as_ref(),
            self.startup_probe.as_ref(),
            self.lifecycle.post_start.as_ref(),
            self.lifecycle.pre_stop.as_ref(),
        ];
        let targets = handlers.map(|h| {
            h.map_or((None, None), |h| {
                (h.http_get.as_ref(), h.tcp_socket.as_ref())
            })
        });
        HOST_TARGET_PATHS
            .into_iter()
            .zip(targets)
            .flat_map(|((http_path, tcp_path), (http, tcp))| {
                [http.map(|t| (http_path, t)), tcp.map(|t| (tcp_path, t))]
            })
            .flatten()
    }
}

/// The `httpGet` and `tcpSocket` paths of each handler of `Container::host_targets`.
const HOST_TARGET_PATHS: [(&str, &str); 5] = [
    ("livenessProbe.httpGet", "livenessProbe.tcpSocket"),
    ("readinessProbe.httpGet", "readinessProbe.tcpSocket"),
    ("startupProbe.httpGet", "startupProbe.tcpSocket"),
    (
        "lifecycle.postStart.httpGet",
        "lifecycle.postStart.tcpSocket",
    ),
    ("lifecycle.preStop.httpGet", "lifecycle.preStop.tcpSocket"),
];

k8s_type! {
    /// A container port; only the host side matters to policies.
    pub struct ContainerPort {
        /// 0 (the default) means no host port.
        "hostPort" => pub host_port: i32,
        "containerPort" => pub container_port: i32,
    }
}

k8s_type! {
    /// `corev1.SecurityContext`; unset fields fall back to the pod's where Kubernetes does.
    pub struct SecurityContext {
        "privileged" => pub privileged: Option<bool>,
        "capabilities" => pub capabilities: Capabilities,
        "allowPrivilegeEscalation" => pub allow_privilege_escalation: Option<bool>,
        "readOnlyRootFilesystem" => pub read_only_root_filesystem: Option<bool>,
        "runAsUser" => pub run_as_user: Option<i64>,
        "runAsGroup" => pub run_as_group: Option<i64>,
        "runAsNonRoot" => pub run_as_non_root: Option<bool>,
        "seccompProfile" => pub seccomp_profile: Option<Profile>,
        "appArmorProfile" => pub app_armor_profile: Option<Profile>,
        "seLinuxOptions" => pub se_linux_options: Option<SeLinuxOptions>,
        "procMount" => pub proc_mount: Option<Text>,
        "windowsOptions" => pub windows_options: WindowsOptions,
    }
}

k8s_type! {
    /// Capabilities added to and dropped from the runtime's default set, as written.
    pub struct Capabilities {
        "add" => pub add: SmallVec<[Text; 1]>,
        "drop" => pub drop: SmallVec<[Text; 1]>,
    }
}

k8s_type! {
    /// A volume mounted into a container.
    pub struct VolumeMount {
        "name" => pub name: Text,
        "readOnly" => pub read_only: bool,
        "mountPath" => pub mount_path: Text,
    }
}

k8s_type! {
    /// Container resources; only which limits are set matters to policies.
    pub struct ResourceRequirements {
        "limits" => pub limits: Map<Quantity>,
    }
}

/// A resource quantity as written (`500m`, `1Gi`); YAML often writes plain numbers (`cpu: 1`),
/// which are kept as their decimal text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quantity(pub Text);

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a quantity (string or number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Ok(Quantity(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_compact_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_compact_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Ok(Quantity(v.to_compact_string()))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

k8s_type! {
    /// Container lifecycle hooks.
    pub struct Lifecycle {
        "postStart" => pub post_start: Option<Handler>,
        "preStop" => pub pre_stop: Option<Handler>,
    }
}

k8s_type! {
    /// A probe or lifecycle hook, reduced to the actions that reach the network (`tcpSocket` is
    /// deprecated for hooks but still accepted, so still checked).
    pub struct Handler {
        "httpGet" => pub http_get: Option<HostTarget>,
        "tcpSocket" => pub tcp_socket: Option<HostTarget>,
    }
}

k8s_type! {
    /// An `httpGet` or `tcpSocket` action: a non-empty `host` makes the kubelet connect to
    /// another machine, which lets a pod probe hosts it could not reach itself.
    pub struct HostTarget {
        "host" => pub host: Text,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::parse;

    #[test]
    fn parses_container_settings() {
        let c: Container = parse(&json!({
            "name": "app", "image": "nginx:1.27",
            "ports": [{"containerPort": 80, "hostPort": 8080}],
            "securityContext": {
                "privileged": true, "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true, "runAsUser": 0, "procMount": "Unmasked",
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "windowsOptions": {"hostProcess": false},
            },
            "volumeMounts": [{"name": "logs", "mountPath": "/var/log", "readOnly": true}],
            "resources": {"limits": {"cpu": 1, "memory": "128Mi"}},
        }))
        .unwrap();
        assert_eq!((c.name.as_str(), c.image.as_str()), ("app", "nginx:1.27"));
        assert_eq!(c.ports[0].host_port, 8080);
        let sc = &c.security_context;
        assert_eq!(sc.privileged, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_user, Some(0));
        assert_eq!(sc.proc_mount.as_deref(), Some("Unmasked"));
        assert_eq!(sc.capabilities.add.as_slice(), ["NET_ADMIN"]);
        assert!(c.volume_mounts[0].read_only);
        assert_eq!(c.resources.limits["cpu"], Quantity("1".into()));
        assert!(parse::<Quantity>(&json!(true)).is_err());
    }

    #[test]
    fn lists_probe_and_lifecycle_hosts_in_order() {
        let c: Container = parse(&json!({
            "readinessProbe": {"tcpSocket": {"host": "b", "port": 1}},
            "livenessProbe": {"httpGet": {"host": "a", "port": "http"}, "tcpSocket": {"port": 1}},
            "lifecycle": {"preStop": {"httpGet": {"host": "d"}}, "postStart": {"exec": {}}},
        }))
        .unwrap();
        let hosts: Vec<_> = c
            .host_targets()
            .map(|(path, t)| (path, t.host.as_str()))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("livenessProbe.httpGet", "a"),
                ("livenessProbe.tcpSocket", ""),
                ("readinessProbe.tcpSocket", "b"),
                ("lifecycle.preStop.httpGet", "d"),
            ]
        );
    }
}
