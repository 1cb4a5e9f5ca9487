//! The pod spec and its pod-level security context.

use super::Text;
use super::container::Container;
use super::volume::Volume;

k8s_type! {
    /// `corev1.PodSpec`, reduced to what policies read.
    pub struct PodSpec {
        "hostNetwork" => pub host_network: bool,
        "hostPID" => pub host_pid: bool,
        "hostIPC" => pub host_ipc: bool,
        /// `Some(false)` runs the pod in a user namespace, which relaxes some Pod Security
        /// checks.
        "hostUsers" => pub host_users: Option<bool>,
        "securityContext" => pub security_context: PodSecurityContext,
        "containers" => pub containers: Vec<Container>,
        "initContainers" => pub init_containers: Vec<Container>,
        /// Ephemeral containers share the container fields policies read.
        "ephemeralContainers" => pub ephemeral_containers: Vec<Container>,
        "volumes" => pub volumes: Vec<Volume>,
        "os" => pub os: Option<PodOs>,
    }
}

impl PodSpec {
    /// Windows pods cannot set Linux-only security fields, so checks that require them
    /// exempt these pods (as Pod Security Admission does from v1.25).
    pub fn is_windows(&self) -> bool {
        self.os.as_ref().is_some_and(|os| os.name == "windows")
    }

    /// Whether the pod runs in a user namespace (`hostUsers: false`).
    pub fn in_user_namespace(&self) -> bool {
        self.host_users == Some(false)
    }
}

k8s_type! {
    /// `corev1.PodOS`.
    pub struct PodOs {
        "name" => pub name: Text,
    }
}

k8s_type! {
    /// `corev1.PodSecurityContext`: defaults for every container, plus pod-only settings.
    pub struct PodSecurityContext {
        "runAsUser" => pub run_as_user: Option<i64>,
        "runAsGroup" => pub run_as_group: Option<i64>,
        "runAsNonRoot" => pub run_as_non_root: Option<bool>,
        "fsGroup" => pub fs_group: Option<i64>,
        "supplementalGroups" => pub supplemental_groups: Vec<i64>,
        "seccompProfile" => pub seccomp_profile: Option<Profile>,
        "appArmorProfile" => pub app_armor_profile: Option<Profile>,
        "seLinuxOptions" => pub se_linux_options: Option<SeLinuxOptions>,
        "sysctls" => pub sysctls: Vec<Sysctl>,
        "windowsOptions" => pub windows_options: WindowsOptions,
    }
}

k8s_type! {
    /// A seccomp or AppArmor profile field: `type` is `RuntimeDefault`, `Unconfined` or
    /// `Localhost` (then `localhostProfile` names the profile).
    pub struct Profile {
        "type" => pub type_: Text,
        "localhostProfile" => pub localhost_profile: Option<Text>,
    }
}

k8s_type! {
    /// `corev1.SELinuxOptions`; an empty string is an unset field.
    pub struct SeLinuxOptions {
        "user" => pub user: Text,
        "role" => pub role: Text,
        "type" => pub type_: Text,
        "level" => pub level: Text,
    }
}

impl SeLinuxOptions {
    /// True when no field is set, which is the same as no options at all.
    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
            && self.role.is_empty()
            && self.type_.is_empty()
            && self.level.is_empty()
    }
}

k8s_type! {
    /// A namespaced kernel parameter set for the pod.
    pub struct Sysctl {
        "name" => pub name: Text,
        "value" => pub value: Text,
    }
}

k8s_type! {
    /// `corev1.WindowsSecurityContextOptions`, reduced to HostProcess.
    pub struct WindowsOptions {
        "hostProcess" => pub host_process: Option<bool>,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::parse;

    #[test]
    fn parses_pod_level_settings() {
        let spec: PodSpec = parse(&json!({
            "hostNetwork": true, "hostPID": true, "hostIPC": false, "hostUsers": false,
            "os": {"name": "windows"},
            "securityContext": {
                "runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true, "fsGroup": 2000,
                "supplementalGroups": [4000],
                "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
                "appArmorProfile": {"type": "RuntimeDefault"},
                "seLinuxOptions": {"type": "container_t", "level": "s0:c1"},
                "sysctls": [{"name": "kernel.shm_rmid_forced", "value": "0"}],
                "windowsOptions": {"hostProcess": true},
            },
        }))
        .unwrap();
        assert!(spec.host_network && spec.host_pid && !spec.host_ipc);
        assert!(spec.in_user_namespace() && spec.is_windows());
        let sc = &spec.security_context;
        assert_eq!(
            (sc.run_as_user, sc.run_as_group, sc.fs_group),
            (Some(1000), Some(3000), Some(2000))
        );
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.supplemental_groups, vec![4000]);
        let seccomp = sc.seccomp_profile.as_ref().unwrap();
        assert_eq!(
            (seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()),
            ("Localhost", Some("p.json"))
        );
        assert_eq!(sc.se_linux_options.as_ref().unwrap().type_, "container_t");
        assert_eq!(sc.sysctls[0].name, "kernel.shm_rmid_forced");
        assert_eq!(sc.windows_options.host_process, Some(true));
    }

    #[test]
    fn empty_selinux_options_are_unset() {
        assert!(SeLinuxOptions::default().is_empty());
        let opts = SeLinuxOptions {
            level: "s0".into(),
            ..Default::default()
        };
        assert!(!opts.is_empty());
    }
}
