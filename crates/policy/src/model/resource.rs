//! Resource admission rules: unsafe pod and service settings. A control that is present
//! restricts; its lists are the exceptions (`host_path: Some(empty)` forbids every hostPath).

use std::fmt;

use super::named_enum;
use super::security::{IdRule, ProcMountRule, ProfileRule, SeLinuxRule};
use crate::glob::Glob;

/// Resource controls. `Option` controls restrict when `Some`; parameterless controls are
/// booleans named after what they forbid or require.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceRules {
    pub pod_security: Option<PodSecurityRule>,
    /// Forbid privileged containers (`privileged: {}`).
    pub forbid_privileged: bool,
    pub host_namespaces: Option<HostNamespacesRule>,
    pub host_ports: Option<HostPortsRule>,
    pub host_path: Option<HostPathRule>,
    pub capabilities: Option<CapabilitiesRule>,
    /// Containers must set `allowPrivilegeEscalation: false` (`allowPrivilegeEscalation: false`).
    pub forbid_privilege_escalation: bool,
    /// Containers must set `readOnlyRootFilesystem: true` (`readOnlyRootFilesystem: true`).
    pub require_read_only_root_filesystem: bool,
    pub run_as_user: Option<IdRule>,
    pub run_as_group: Option<IdRule>,
    pub fs_group: Option<IdRule>,
    pub supplemental_groups: Option<IdRule>,
    pub seccomp: Option<ProfileRule>,
    pub app_armor: Option<ProfileRule>,
    pub se_linux: Option<SeLinuxRule>,
    pub proc_mount: Option<ProcMountRule>,
    pub sysctls: Option<SysctlsRule>,
    pub volumes: Option<VolumesRule>,
    /// Forbid Windows HostProcess containers (`windowsHostProcess: {}`).
    pub forbid_windows_host_process: bool,
    /// Forbid a `host` in probes and lifecycle handlers (`hostProbes: {}`).
    pub forbid_host_probes: bool,
    pub resources: Option<ResourcesRule>,
    pub service: Option<ServiceRule>,
}

impl ResourceRules {
    /// True when no control is set, i.e. the section would admit everything.
    pub fn restricts_nothing(&self) -> bool {
        *self == Self::default()
    }
}

/// The newest Pod Security Standards minor version this build knows (`latest` = v1.35).
pub const LATEST_PSS_MINOR: u32 = 35;

/// Enforce a Pod Security Standards level with the semantics of Pod Security Admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PodSecurityRule {
    pub level: PodSecurityLevel,
    pub version: PodSecurityVersion,
}

named_enum! {
    /// Pod Security Standards levels that restrict (`privileged` restricts nothing, so it is
    /// not a policy option).
    pub enum PodSecurityLevel {
        Baseline => "baseline",
        Restricted => "restricted",
    }
}

/// Which release of the standards to apply. `Latest` follows upgrades of Portcullis; a pinned
/// `Minor` keeps the checks of that Kubernetes release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodSecurityVersion {
    Latest,
    /// `v1.N`, with `N <= LATEST_PSS_MINOR`.
    Minor(u32),
}

impl PodSecurityVersion {
    /// The Kubernetes minor version whose checks apply.
    pub fn minor(self) -> u32 {
        match self {
            Self::Latest => LATEST_PSS_MINOR,
            Self::Minor(n) => n,
        }
    }
}

impl fmt::Display for PodSecurityVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Minor(n) => write!(f, "v1.{n}"),
        }
    }
}

/// Forbid hostNetwork, hostPID and hostIPC, except those allowed here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostNamespacesRule {
    pub allow_network: bool,
    pub allow_pid: bool,
    pub allow_ipc: bool,
}

/// Forbid host ports outside `allowed`; `None` forbids every host port (`hostPorts: {}`).
/// A `hostPort` of 0 means "no host port" and is never a violation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostPortsRule {
    pub allowed: Option<PortRange>,
}

/// An inclusive port range; validation guarantees `min <= max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

/// Forbid hostPath volumes except under the allowed prefixes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPathRule {
    pub allow: Vec<HostPathAllow>,
}

/// An allowed hostPath prefix. Validation guarantees an absolute, normalised path (no `.`,
/// `..` or empty components, no trailing `/` except for `/` itself), so the engine can compare
/// whole components.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPathAllow {
    pub path_prefix: String,
    /// Every mount of the volume, in every container, must be read-only.
    pub read_only: bool,
}

/// Forbid adding capabilities other than `allow`; require dropping `required_drop`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilitiesRule {
    pub allow: Vec<Capability>,
    /// Dropping `ALL` satisfies every entry.
    pub required_drop: Vec<Capability>,
}

/// A Linux capability name, normalised to upper case without the `CAP_` prefix, so that
/// `cap_net_admin`, `CAP_NET_ADMIN` and `NET_ADMIN` compare equal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Capability(String);

impl Capability {
    /// Normalises a capability name; `None` unless it is letters, digits and underscores
    /// (after an optional, case-insensitive `CAP_` prefix). The engine uses this on container
    /// settings too, so both sides compare in the same form.
    pub fn parse(name: &str) -> Option<Self> {
        let bare = match name.get(..4) {
            Some(prefix) if prefix.eq_ignore_ascii_case("CAP_") => &name[4..],
            _ => name,
        };
        let valid =
            !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        valid.then(|| Self(bare.to_ascii_uppercase()))
    }

    /// The normalised name (`NET_ADMIN`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `ALL`: every capability (only meaningful in `required_drop`).
    pub fn is_all(&self) -> bool {
        self.0 == "ALL"
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Forbid every sysctl that does not match `allow` or that matches `forbid`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SysctlsRule {
    pub allow: Vec<Glob>,
    pub forbid: Vec<Glob>,
}

/// Forbid volume sources not in `allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumesRule {
    pub allow: Vec<VolumeType>,
    /// FlexVolume drivers allowed when `flexVolume` is in `allow`; empty = any driver (as in
    /// PodSecurityPolicy `allowedFlexVolumes`). Validation rejects drivers without
    /// `flexVolume` in `allow`.
    pub flex_volume_drivers: Vec<String>,
}

named_enum! {
    /// Pod volume sources, named as the field in the pod spec's `volumes[]` entry.
    pub enum VolumeType {
        AwsElasticBlockStore => "awsElasticBlockStore",
        AzureDisk => "azureDisk",
        AzureFile => "azureFile",
        Cephfs => "cephfs",
        Cinder => "cinder",
        ConfigMap => "configMap",
        Csi => "csi",
        DownwardApi => "downwardAPI",
        EmptyDir => "emptyDir",
        Ephemeral => "ephemeral",
        Fc => "fc",
        FlexVolume => "flexVolume",
        Flocker => "flocker",
        GcePersistentDisk => "gcePersistentDisk",
        GitRepo => "gitRepo",
        Glusterfs => "glusterfs",
        HostPath => "hostPath",
        Image => "image",
        Iscsi => "iscsi",
        Nfs => "nfs",
        PersistentVolumeClaim => "persistentVolumeClaim",
        PhotonPersistentDisk => "photonPersistentDisk",
        PortworxVolume => "portworxVolume",
        Projected => "projected",
        Quobyte => "quobyte",
        Rbd => "rbd",
        ScaleIo => "scaleIO",
        Secret => "secret",
        Storageos => "storageos",
        VsphereVolume => "vsphereVolume",
    }
}

/// Require resource limits on every container. Validation guarantees a non-empty list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourcesRule {
    pub require_limits: Vec<ComputeResource>,
}

named_enum! {
    /// Container resources whose limits can be required.
    pub enum ComputeResource {
        Cpu => "cpu",
        Memory => "memory",
    }
}

/// Service checks. Validation guarantees at least one of them is set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRule {
    pub disallow_types: Vec<ServiceType>,
    /// Forbid `spec.externalIPs` (CVE-2020-8554).
    pub forbid_external_ips: bool,
}

named_enum! {
    /// Kubernetes Service types.
    pub enum ServiceType {
        ClusterIp => "ClusterIP",
        NodePort => "NodePort",
        LoadBalancer => "LoadBalancer",
        ExternalName => "ExternalName",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_normalise() {
        let net_admin = Capability::parse("NET_ADMIN").unwrap();
        assert_eq!(Capability::parse("cap_net_admin"), Some(net_admin.clone()));
        assert_eq!(Capability::parse("CAP_NET_ADMIN"), Some(net_admin.clone()));
        assert_eq!(Capability::parse("Net_Admin"), Some(net_admin));
        assert!(Capability::parse("all").unwrap().is_all());
        assert_eq!(Capability::parse("CAP_"), None);
        assert_eq!(Capability::parse(""), None);
        assert_eq!(Capability::parse("NET ADMIN"), None);
        assert_eq!(Capability::parse("NET-ADMIN"), None);
        assert_eq!(Capability::parse("çap_x"), None);
    }

    #[test]
    fn latest_pss_version_resolves_to_the_newest_minor() {
        assert_eq!(PodSecurityVersion::Latest.minor(), LATEST_PSS_MINOR);
        assert_eq!(PodSecurityVersion::Minor(25).minor(), 25);
        assert_eq!(PodSecurityVersion::Minor(25).to_string(), "v1.25");
        assert_eq!(PodSecurityVersion::Latest.to_string(), "latest");
    }

    #[test]
    fn volume_type_names_follow_the_pod_spec() {
        assert_eq!(VolumeType::ALL.len(), 30);
        assert_eq!(
            VolumeType::from_name("downwardAPI"),
            Some(VolumeType::DownwardApi)
        );
        assert_eq!(VolumeType::from_name("scaleIO"), Some(VolumeType::ScaleIo));
        assert_eq!(VolumeType::from_name("configmap"), None);
    }

    #[test]
    fn empty_resource_rules_restrict_nothing() {
        assert!(ResourceRules::default().restricts_nothing());
        let rules = ResourceRules {
            forbid_host_probes: true,
            ..ResourceRules::default()
        };
        assert!(!rules.restricts_nothing());
    }
}
