//! The restricted checks: current pod hardening best practice, on top of baseline.

use super::baseline::proc_mount;
use super::{CheckId, Ctx, confined_profile_type};
use crate::VolumeType;

/// Volume sources a restricted pod may use: ephemeral or API-projected data and claims,
/// never node or network storage mounted directly.
const RESTRICTED_VOLUMES: &[VolumeType] = &[
    VolumeType::ConfigMap,
    VolumeType::Csi,
    VolumeType::DownwardApi,
    VolumeType::EmptyDir,
    VolumeType::Ephemeral,
    VolumeType::Image,
    VolumeType::PersistentVolumeClaim,
    VolumeType::Projected,
    VolumeType::Secret,
];

/// Runs every restricted check that exists at the context's version.
pub(super) fn check(ctx: &mut Ctx) {
    volumes(ctx);
    if ctx.minor >= 8 && !ctx.windows_exempt() {
        allow_privilege_escalation(ctx);
    }
    if !ctx.user_namespace_relaxed() {
        run_as_non_root(ctx);
        if ctx.minor >= 23 {
            run_as_user(ctx);
        }
    }
    if ctx.minor >= 19 && !ctx.windows_exempt() {
        seccomp(ctx);
    }
    if ctx.minor >= 22 && !ctx.windows_exempt() {
        capabilities(ctx);
    }
    if ctx.minor >= 35 {
        proc_mount(ctx, CheckId::ProcMountRestricted);
    }
}

fn volumes(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (i, volume) in pod.spec.volumes.iter().enumerate() {
        if RESTRICTED_VOLUMES
            .iter()
            .any(|t| volume.sources.contains(*t))
        {
            continue;
        }
        let Some(source) = volume.sources.iter().next() else {
            continue;
        };
        let message = format!(
            "volume {:?} must not use a {source} volume (restricted allows configMap, csi, \
             downwardAPI, emptyDir, ephemeral, image, persistentVolumeClaim, projected, secret)",
            volume.name
        );
        let path = pod.spec_field(&format!("volumes[{i}].{source}"));
        ctx.report(
            CheckId::RestrictedVolumes,
            None,
            path,
            source.as_str(),
            message,
        );
    }
}

fn allow_privilege_escalation(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (at, c) in pod.containers() {
        let value = c.security_context.allow_privilege_escalation;
        if value != Some(false) {
            let message = format!(
                "container {:?} must set securityContext.allowPrivilegeEscalation=false",
                c.name
            );
            let path = at.field("securityContext.allowPrivilegeEscalation");
            ctx.report(
                CheckId::AllowPrivilegeEscalation,
                Some(at),
                path,
                bool_text(value),
                message,
            );
        }
    }
}

fn run_as_non_root(ctx: &mut Ctx) {
    let pod = ctx.pod;
    let pod_value = pod.spec.security_context.run_as_non_root;
    if pod_value == Some(false) {
        let path = pod.spec_field("securityContext.runAsNonRoot");
        let message = "pod must not set securityContext.runAsNonRoot=false".to_owned();
        ctx.report(CheckId::RunAsNonRoot, None, path, "false", message);
    }
    for (at, c) in pod.containers() {
        let message = match c.security_context.run_as_non_root {
            Some(false) => format!(
                "container {:?} must not set securityContext.runAsNonRoot=false",
                c.name
            ),
            None if pod_value != Some(true) => {
                format!(
                    "pod or container {:?} must set securityContext.runAsNonRoot=true",
                    c.name
                )
            }
            _ => continue,
        };
        let value = bool_text(c.security_context.run_as_non_root);
        let path = at.field("securityContext.runAsNonRoot");
        ctx.report(CheckId::RunAsNonRoot, Some(at), path, value, message);
    }
}

fn run_as_user(ctx: &mut Ctx) {
    let pod = ctx.pod;
    if pod.spec.security_context.run_as_user == Some(0) {
        let path = pod.spec_field("securityContext.runAsUser");
        let message = "pod must not set securityContext.runAsUser=0".to_owned();
        ctx.report(CheckId::RunAsUser, None, path, "0", message);
    }
    for (at, c) in pod.containers() {
        if c.security_context.run_as_user == Some(0) {
            let message = format!(
                "container {:?} must not set securityContext.runAsUser=0",
                c.name
            );
            ctx.report(
                CheckId::RunAsUser,
                Some(at),
                at.field("securityContext.runAsUser"),
                "0",
                message,
            );
        }
    }
}

fn seccomp(ctx: &mut Ctx) {
    let pod = ctx.pod;
    let mut pod_confined = false;
    if let Some(profile) = &pod.spec.security_context.seccomp_profile {
        pod_confined = confined_profile_type(&profile.type_);
        if !pod_confined {
            let path = pod.spec_field("securityContext.seccompProfile.type");
            let message = format!(
                "pod must not set securityContext.seccompProfile.type to {:?} (allowed: RuntimeDefault, Localhost)",
                profile.type_
            );
            ctx.report(
                CheckId::SeccompProfileRestricted,
                None,
                path,
                profile.type_.as_str(),
                message,
            );
        }
    }
    for (at, c) in pod.containers() {
        let (value, message) = match &c.security_context.seccomp_profile {
            Some(profile) if !confined_profile_type(&profile.type_) => (
                profile.type_.as_str(),
                format!(
                    "container {:?} must not set securityContext.seccompProfile.type to {:?} (allowed: RuntimeDefault, Localhost)",
                    c.name, profile.type_
                ),
            ),
            None if !pod_confined => (
                "",
                format!(
                    "pod or container {:?} must set securityContext.seccompProfile.type to RuntimeDefault or Localhost",
                    c.name
                ),
            ),
            _ => continue,
        };
        let path = at.field("securityContext.seccompProfile.type");
        ctx.report(
            CheckId::SeccompProfileRestricted,
            Some(at),
            path,
            value,
            message,
        );
    }
}

fn capabilities(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (at, c) in pod.containers() {
        let caps = &c.security_context.capabilities;
        if !caps.drop.iter().any(|cap| cap == "ALL") {
            let message = format!(
                "container {:?} must set securityContext.capabilities.drop=[\"ALL\"]",
                c.name
            );
            let path = at.field("securityContext.capabilities.drop");
            ctx.report(CheckId::CapabilitiesRestricted, Some(at), path, "", message);
        }
        for (i, cap) in caps.add.iter().enumerate() {
            if cap != "NET_BIND_SERVICE" {
                let message = format!(
                    "container {:?} must not add capability {cap:?} (restricted allows only NET_BIND_SERVICE)",
                    c.name
                );
                let path = at.field(&format!("securityContext.capabilities.add[{i}]"));
                ctx.report(
                    CheckId::CapabilitiesRestricted,
                    Some(at),
                    path,
                    cap.as_str(),
                    message,
                );
            }
        }
    }
}

/// A tri-state boolean as written: `true`, `false`, or empty when unset.
fn bool_text(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "true",
        Some(false) => "false",
        None => "",
    }
}
