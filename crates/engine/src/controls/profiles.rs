//! seccomp, AppArmor and SELinux controls, on each container's effective settings. For seccomp
//! and AppArmor, a container's own settings (field and legacy annotation) apply; without any,
//! the pod's do. Every setting that applies must be allowed, so a legacy annotation cannot
//! smuggle in a profile the field would not get.

use super::{Out, describe_list};
use crate::k8s::{ContainerPath, Profile, SeLinuxOptions};
use crate::{ProfileRule, ProfileType, SeLinuxRule};

const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";
const APPARMOR_CONTAINER_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// A profile as set in the object, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setting<'a> {
    RuntimeDefault,
    Unconfined,
    Localhost(&'a str),
    /// A value Kubernetes does not define: never allowed.
    Unknown(&'a str),
}

impl<'a> Setting<'a> {
    fn from_field(profile: &'a Profile) -> Self {
        match profile.type_.as_str() {
            "RuntimeDefault" => Self::RuntimeDefault,
            "Unconfined" => Self::Unconfined,
            "Localhost" => {
                Self::Localhost(profile.localhost_profile.as_deref().unwrap_or_default())
            }
            other => Self::Unknown(other),
        }
    }

    fn from_annotation(value: &'a str) -> Self {
        match value {
            "runtime/default" | "docker/default" => Self::RuntimeDefault,
            "unconfined" => Self::Unconfined,
            _ => match value.strip_prefix("localhost/") {
                Some(name) => Self::Localhost(name),
                None => Self::Unknown(value),
            },
        }
    }

    fn allowed_by(self, allow: &[ProfileType]) -> bool {
        allow.iter().any(|entry| match (entry, self) {
            (ProfileType::RuntimeDefault, Self::RuntimeDefault) => true,
            (ProfileType::Unconfined, Self::Unconfined) => true,
            (ProfileType::Localhost(None), Self::Localhost(_)) => true,
            (ProfileType::Localhost(Some(name)), Self::Localhost(set)) => name == set,
            _ => false,
        })
    }

    /// The value as shown in findings, in the policy spelling where there is one.
    fn text(self) -> String {
        match self {
            Self::RuntimeDefault => "RuntimeDefault".to_owned(),
            Self::Unconfined => "Unconfined".to_owned(),
            Self::Localhost(name) => format!("Localhost/{name}"),
            Self::Unknown(value) => value.to_owned(),
        }
    }
}

/// Which profile control: where its field and annotations live.
struct ProfileControl {
    rule: &'static str,
    field: &'static str,
    container_prefix: &'static str,
    pod_annotation: Option<&'static str>,
    container_field: fn(&crate::k8s::SecurityContext) -> Option<&Profile>,
    pod_field: fn(&crate::k8s::PodSecurityContext) -> Option<&Profile>,
}

const SECCOMP: ProfileControl = ProfileControl {
    rule: "seccomp",
    field: "seccompProfile",
    container_prefix: SECCOMP_CONTAINER_PREFIX,
    pod_annotation: Some(SECCOMP_POD_ANNOTATION),
    container_field: |sc| sc.seccomp_profile.as_ref(),
    pod_field: |sc| sc.seccomp_profile.as_ref(),
};

const APP_ARMOR: ProfileControl = ProfileControl {
    rule: "appArmor",
    field: "appArmorProfile",
    container_prefix: APPARMOR_CONTAINER_PREFIX,
    pod_annotation: None,
    container_field: |sc| sc.app_armor_profile.as_ref(),
    pod_field: |sc| sc.app_armor_profile.as_ref(),
};

pub(super) fn seccomp(out: &mut Out, rule: &ProfileRule) {
    profiles(out, rule, &SECCOMP);
}

pub(super) fn app_armor(out: &mut Out, rule: &ProfileRule) {
    profiles(out, rule, &APP_ARMOR);
}

fn profiles(out: &mut Out, rule: &ProfileRule, control: &ProfileControl) {
    if !out.linux_requirements_apply() {
        return;
    }
    let pod = out.pod;
    let field = || format!("securityContext.{}", control.field);
    // Most pods have no legacy annotations: skip the per-container lookups then.
    let annotated = pod
        .metadata
        .annotations_with_prefix(control.container_prefix)
        .next()
        .is_some();
    for (at, c) in pod.containers() {
        let judge = Judge {
            rule,
            control,
            at,
            name: &c.name,
        };
        let mut set = false;
        if let Some(profile) = (control.container_field)(&c.security_context) {
            set = true;
            judge.check(out, || at.field(&field()), Setting::from_field(profile));
        }
        // The container's own annotation, found by its key (a scan of every annotation per
        // container would be quadratic in a hostile pod of many of both).
        let annotation = annotated
            .then(|| {
                let key = format!("{}{}", control.container_prefix, c.name);
                pod.metadata.annotations.get_key_value(&key)
            })
            .flatten();
        // An empty annotation sets no profile (Pod Security Admission reads it so too).
        if let Some((key, value)) = annotation.filter(|(_, value)| !value.is_empty()) {
            set = true;
            let setting = Setting::from_annotation(value);
            judge.check(out, || pod.annotation_path(key), setting);
        }
        if set {
            continue;
        }
        if let Some(profile) = (control.pod_field)(&pod.spec.security_context) {
            set = true;
            judge.check(
                out,
                || pod.spec_field(&field()),
                Setting::from_field(profile),
            );
        }
        let pod_annotation = control
            .pod_annotation
            .and_then(|key| pod.metadata.annotations.get_key_value(key))
            .filter(|(_, value)| !value.is_empty());
        if let Some((key, value)) = pod_annotation {
            set = true;
            let setting = Setting::from_annotation(value);
            judge.check(out, || pod.annotation_path(key), setting);
        }
        if !set && !rule.allow_unset {
            let message = format!(
                "container {:?} must set a {} profile (allowed: {})",
                c.name,
                control.rule,
                describe_list(&rule.allow)
            );
            out.push(control.rule, Some(at), at.field(&field()), "", message);
        }
    }
}

/// Judges the profile settings that apply to one container.
struct Judge<'a> {
    rule: &'a ProfileRule,
    control: &'a ProfileControl,
    at: ContainerPath,
    name: &'a str,
}

impl Judge<'_> {
    /// Reports `setting`, found at `path`, unless it is allowed; the path is only built then.
    fn check(&self, out: &mut Out, path: impl FnOnce() -> String, setting: Setting) {
        if setting.allowed_by(&self.rule.allow) {
            return;
        }
        let value = setting.text();
        let message = format!(
            "container {:?} runs with {} profile {value:?} (allowed: {})",
            self.name,
            self.control.rule,
            describe_list(&self.rule.allow)
        );
        out.push(self.control.rule, Some(self.at), path(), value, message);
    }
}

/// The effective options are the container's when it sets any (they replace the pod's as a
/// whole, as in the kubelet), else the pod's.
pub(super) fn se_linux(out: &mut Out, rule: &SeLinuxRule) {
    let pod = out.pod;
    let pod_options = pod.spec.security_context.se_linux_options.as_ref();
    for (at, c) in pod.containers() {
        let (options, inherited) = match (&c.security_context.se_linux_options, pod_options) {
            (Some(own), _) => (own, false),
            (None, Some(inherited)) => (inherited, true),
            (None, None) => continue,
        };
        if options.is_empty()
            || rule
                .allow
                .iter()
                .any(|entry| se_linux_matches(entry, options))
        {
            continue;
        }
        let value = describe_se_linux(options);
        let (path, from) = if inherited {
            (
                pod.spec_field("securityContext.seLinuxOptions"),
                ", inherited from the pod,",
            )
        } else {
            (at.field("securityContext.seLinuxOptions"), "")
        };
        let message = format!(
            "container {:?} runs with SELinux options {value}{from} that no entry allows",
            c.name
        );
        out.push("seLinux", Some(at), path, value, message);
    }
}

/// Every field the object sets must equal the entry's.
fn se_linux_matches(entry: &crate::SeLinuxOptions, options: &SeLinuxOptions) -> bool {
    let same =
        |allowed: &Option<String>, set: &str| set.is_empty() || allowed.as_deref() == Some(set);
    same(&entry.user, &options.user)
        && same(&entry.role, &options.role)
        && same(&entry.type_, &options.type_)
        && same(&entry.level, &options.level)
}

fn describe_se_linux(options: &SeLinuxOptions) -> String {
    let fields = [
        ("user", &options.user),
        ("role", &options.role),
        ("type", &options.type_),
        ("level", &options.level),
    ];
    let set: Vec<String> = fields
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    set.join(",")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::check;
    use super::super::testing::{mk_annotated, mk_pod, paths, values, with_context};
    use crate::{ProfileRule, ProfileType, ResourceRules, SeLinuxOptions, SeLinuxRule};

    fn seccomp(allow: Vec<ProfileType>, allow_unset: bool) -> ResourceRules {
        let rule = ProfileRule { allow, allow_unset };
        ResourceRules {
            seccomp: Some(rule),
            ..Default::default()
        }
    }

    fn app_armor(allow: Vec<ProfileType>, allow_unset: bool) -> ResourceRules {
        let rule = ProfileRule { allow, allow_unset };
        ResourceRules {
            app_armor: Some(rule),
            ..Default::default()
        }
    }

    fn localhost(name: &str) -> ProfileType {
        ProfileType::Localhost(Some(name.to_owned()))
    }

    #[test]
    fn profile_entries_match_types_and_local_profile_names() {
        let pod = mk_pod(json!({"containers": [
            {"name": "a", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
            {"name": "b", "securityContext": {"seccompProfile": {"type": "Unconfined"}}},
            {"name": "c", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "audit.json"}}},
            {"name": "d", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "other.json"}}},
            {"name": "e", "securityContext": {"seccompProfile": {"type": "Bogus"}}},
        ]}));
        let named = seccomp(
            vec![ProfileType::RuntimeDefault, localhost("audit.json")],
            false,
        );
        let findings = check(&named, &pod);
        assert_eq!(
            values(&findings),
            vec!["Unconfined", "Localhost/other.json", "Bogus"]
        );
        assert_eq!(
            findings[0].finding.path,
            "spec.containers[1].securityContext.seccompProfile"
        );
        let any_local = seccomp(
            vec![ProfileType::Localhost(None), ProfileType::Unconfined],
            false,
        );
        assert_eq!(
            values(&check(&any_local, &pod)),
            vec!["RuntimeDefault", "Bogus"]
        );
    }

    #[test]
    fn unset_profiles_follow_allow_unset() {
        let pod = with_context(json!({}));
        let strict = check(&seccomp(vec![ProfileType::RuntimeDefault], false), &pod);
        assert_eq!(
            paths(&strict),
            vec!["seccomp spec.containers[0].securityContext.seccompProfile"]
        );
        assert_eq!(values(&strict), vec![""]);
        assert!(check(&seccomp(vec![ProfileType::RuntimeDefault], true), &pod).is_empty());
    }

    #[test]
    fn containers_inherit_the_pod_profile() {
        let pod = mk_pod(
            json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}},
            "containers": [{"name": "a"}, {"name": "b", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}]}),
        );
        let findings = check(&seccomp(vec![ProfileType::RuntimeDefault], false), &pod);
        assert_eq!(
            paths(&findings),
            vec!["seccomp spec.securityContext.seccompProfile"]
        );
        assert_eq!(findings[0].container.map(|c| c.index), Some(0));
    }

    #[test]
    fn legacy_seccomp_annotations_count() {
        let rules = seccomp(vec![ProfileType::RuntimeDefault], false);
        let pod = mk_annotated(
            json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}]}),
            json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined",
                   "container.seccomp.security.alpha.kubernetes.io/b": "docker/default",
                   "container.seccomp.security.alpha.kubernetes.io/c": "localhost/x.json"}),
        );
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "seccomp metadata.annotations[\"container.seccomp.security.alpha.kubernetes.io/c\"]",
                "seccomp metadata.annotations[\"seccomp.security.alpha.kubernetes.io/pod\"]",
            ]
        );
        assert_eq!(values(&findings), vec!["Localhost/x.json", "Unconfined"]);
        assert_eq!(findings[1].container.map(|c| c.index), Some(0));
    }

    #[test]
    fn app_armor_reads_fields_and_container_annotations() {
        let rules = app_armor(
            vec![ProfileType::RuntimeDefault, ProfileType::Localhost(None)],
            true,
        );
        let pod = mk_annotated(
            json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}},
                   "containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}),
            json!({"container.apparmor.security.beta.kubernetes.io/b": "localhost/k8s-nginx",
                   "container.apparmor.security.beta.kubernetes.io/c": "unconfined"}),
        );
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec![
                "appArmor metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/c\"]",
                "appArmor spec.securityContext.appArmorProfile",
            ]
        );
        assert_eq!(findings[1].container.map(|c| c.index), Some(0));
        let unset = app_armor(vec![ProfileType::RuntimeDefault], false);
        assert_eq!(values(&check(&unset, &with_context(json!({})))), vec![""]);
    }

    #[test]
    fn windows_pods_need_no_profile() {
        let pod = mk_pod(json!({"os": {"name": "windows"}, "containers": [{"name": "a"}]}));
        assert!(check(&seccomp(vec![ProfileType::RuntimeDefault], false), &pod).is_empty());
    }

    fn se_linux(entries: &[(Option<&str>, Option<&str>)]) -> ResourceRules {
        let allow = entries
            .iter()
            .map(|(type_, level)| SeLinuxOptions {
                type_: type_.map(str::to_owned),
                level: level.map(str::to_owned),
                ..Default::default()
            })
            .collect();
        ResourceRules {
            se_linux: Some(SeLinuxRule { allow }),
            ..Default::default()
        }
    }

    #[test]
    fn selinux_options_must_match_an_entry_on_every_set_field() {
        let rules = se_linux(&[
            (Some("container_t"), None),
            (Some("container_init_t"), Some("s0")),
        ]);
        let pod = mk_pod(json!({"containers": [
            {"name": "a", "securityContext": {"seLinuxOptions": {"type": "container_t"}}},
            {"name": "b", "securityContext": {"seLinuxOptions": {"type": "container_t", "level": "s0"}}},
            {"name": "c", "securityContext": {"seLinuxOptions": {"type": "container_init_t", "level": "s0"}}},
            {"name": "d", "securityContext": {"seLinuxOptions": {"level": "s0"}}},
            {"name": "e", "securityContext": {"seLinuxOptions": {"type": "spc_t"}}},
            {"name": "f", "securityContext": {"seLinuxOptions": {"type": "container_t", "user": "system_u"}}},
            {"name": "g"},
        ]}));
        let findings = check(&rules, &pod);
        assert_eq!(
            values(&findings),
            vec![
                "type=container_t,level=s0",
                "type=spc_t",
                "user=system_u,type=container_t"
            ]
        );
        assert_eq!(
            findings[1].finding.path,
            "spec.containers[4].securityContext.seLinuxOptions"
        );
    }

    #[test]
    fn container_selinux_options_replace_the_pod_ones() {
        let rules = se_linux(&[(Some("container_t"), None)]);
        let pod = mk_pod(
            json!({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}, "containers": [
                {"name": "a"},
                {"name": "b", "securityContext": {"seLinuxOptions": {"type": "container_t"}}},
            ]}),
        );
        let findings = check(&rules, &pod);
        assert_eq!(
            paths(&findings),
            vec!["seLinux spec.securityContext.seLinuxOptions"]
        );
        assert_eq!(findings[0].container.map(|c| c.index), Some(0));
        assert_eq!(
            values(&check(&se_linux(&[]), &pod)),
            vec!["type=container_t", "type=spc_t"]
        );
    }
}
