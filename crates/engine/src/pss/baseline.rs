//! The baseline checks: known privilege escalations are forbidden, defaults are admitted.

use super::{CheckId, Ctx, confined_profile_type};
use crate::VolumeType;
use crate::k8s::{ContainerPath, Profile, SeLinuxOptions, SecurityContext};

/// Capabilities a baseline container may add (the runtime's default set).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Safe sysctls, each with the policy minor version that first allows it.
const SAFE_SYSCTLS: &[(&str, u32)] = &[
    ("kernel.shm_rmid_forced", 0),
    ("net.ipv4.ip_local_port_range", 0),
    ("net.ipv4.tcp_syncookies", 0),
    ("net.ipv4.ping_group_range", 0),
    ("net.ipv4.ip_unprivileged_port_start", 0),
    ("net.ipv4.ip_local_reserved_ports", 27),
    ("net.ipv4.tcp_keepalive_time", 29),
    ("net.ipv4.tcp_fin_timeout", 29),
    ("net.ipv4.tcp_keepalive_intvl", 29),
    ("net.ipv4.tcp_keepalive_probes", 29),
    ("net.ipv4.tcp_rmem", 32),
    ("net.ipv4.tcp_wmem", 32),
];

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// Runs every baseline check that exists at the context's version. In a restricted
/// evaluation, the baseline checks that restricted replaces with a Windows exemption are
/// skipped for exempt pods, as upstream's overrides do.
pub(super) fn check(ctx: &mut Ctx, restricted: bool) {
    host_namespaces(ctx);
    privileged(ctx);
    if !(restricted && ctx.windows_exempt()) {
        capabilities(ctx);
    }
    host_path_volumes(ctx);
    host_ports(ctx);
    app_armor(ctx);
    se_linux(ctx);
    if !ctx.user_namespace_relaxed() {
        proc_mount(ctx, CheckId::ProcMount);
    }
    if !(restricted && ctx.windows_exempt()) {
        if ctx.minor < 19 {
            seccomp_annotations(ctx);
        } else {
            seccomp_fields(ctx);
        }
    }
    sysctls(ctx);
    windows_host_process(ctx);
    if ctx.minor >= 34 {
        host_probes(ctx);
    }
}

fn host_namespaces(ctx: &mut Ctx) {
    let pod = ctx.pod;
    let spec = &pod.spec;
    for (set, field) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if set {
            let path = pod.spec_field(field);
            let message = format!("{field}=true shares a host namespace with the pod");
            ctx.report(CheckId::HostNamespaces, None, path, "true", message);
        }
    }
}

fn privileged(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (at, c) in pod.containers() {
        if c.security_context.privileged == Some(true) {
            let message = format!("container {:?} must not be privileged", c.name);
            let path = at.field("securityContext.privileged");
            ctx.report(CheckId::Privileged, Some(at), path, "true", message);
        }
    }
}

fn capabilities(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (at, c) in pod.containers() {
        for (i, cap) in c.security_context.capabilities.add.iter().enumerate() {
            if !BASELINE_CAPABILITIES.contains(&cap.as_str()) {
                let message = format!(
                    "container {:?} must not add capability {cap:?} (baseline allows only {})",
                    c.name,
                    BASELINE_CAPABILITIES.join(", ")
                );
                let path = at.field(&format!("securityContext.capabilities.add[{i}]"));
                ctx.report(
                    CheckId::CapabilitiesBaseline,
                    Some(at),
                    path,
                    cap.as_str(),
                    message,
                );
            }
        }
    }
}

fn host_path_volumes(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (i, volume) in pod.spec.volumes.iter().enumerate() {
        if volume.sources.contains(VolumeType::HostPath) {
            let host_path = volume.host_path.clone().unwrap_or_default();
            let message = format!("volume {:?} must not be a hostPath volume", volume.name);
            let path = pod.spec_field(&format!("volumes[{i}].hostPath"));
            ctx.report(CheckId::HostPathVolumes, None, path, host_path, message);
        }
    }
}

fn host_ports(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (at, c) in pod.containers() {
        for (i, port) in c.ports.iter().enumerate() {
            if port.host_port != 0 {
                let message = format!(
                    "container {:?} must not use host port {}",
                    c.name, port.host_port
                );
                let path = at.field(&format!("ports[{i}].hostPort"));
                ctx.report(
                    CheckId::HostPorts,
                    Some(at),
                    path,
                    port.host_port.to_string(),
                    message,
                );
            }
        }
    }
}

fn app_armor(ctx: &mut Ctx) {
    let pod = ctx.pod;
    let pod_profile = pod.spec.security_context.app_armor_profile.as_ref();
    profile_types(
        ctx,
        CheckId::AppArmorProfile,
        "appArmorProfile",
        pod_profile,
        |sc| sc.app_armor_profile.as_ref(),
    );
    // Built at the first annotation that needs it: one pass over the containers, not one per
    // annotation.
    let mut names = None;
    for (key, name, value) in pod
        .metadata
        .annotations_with_prefix(APPARMOR_ANNOTATION_PREFIX)
    {
        let allowed =
            value.is_empty() || value == "runtime/default" || value.starts_with("localhost/");
        if !allowed {
            let message = format!(
                "AppArmor annotation for container {name:?} must be runtime/default or localhost/<profile>, not {value:?}"
            );
            let container = names
                .get_or_insert_with(|| pod.containers_by_name())
                .get(name)
                .copied();
            ctx.report(
                CheckId::AppArmorProfile,
                container,
                pod.annotation_path(key),
                value,
                message,
            );
        }
    }
}

/// Reports pod and container profile fields whose type is neither RuntimeDefault nor Localhost.
fn profile_types(
    ctx: &mut Ctx,
    check: CheckId,
    field: &str,
    pod_profile: Option<&Profile>,
    container_profile: fn(&SecurityContext) -> Option<&Profile>,
) {
    let pod = ctx.pod;
    let message = |who: &str, profile: &Profile| {
        format!(
            "{who} must not set securityContext.{field}.type to {:?} (allowed: RuntimeDefault, Localhost)",
            profile.type_
        )
    };
    if let Some(profile) = pod_profile.filter(|p| !confined_profile_type(&p.type_)) {
        let path = pod.spec_field(&format!("securityContext.{field}.type"));
        ctx.report(
            check,
            None,
            path,
            profile.type_.as_str(),
            message("pod", profile),
        );
    }
    for (at, c) in pod.containers() {
        let Some(profile) = container_profile(&c.security_context) else {
            continue;
        };
        if !confined_profile_type(&profile.type_) {
            let path = at.field(&format!("securityContext.{field}.type"));
            let who = format!("container {:?}", c.name);
            ctx.report(
                check,
                Some(at),
                path,
                profile.type_.as_str(),
                message(&who, profile),
            );
        }
    }
}

fn se_linux(ctx: &mut Ctx) {
    let pod = ctx.pod;
    if let Some(options) = &pod.spec.security_context.se_linux_options {
        se_linux_options(ctx, None, options);
    }
    for (at, c) in pod.containers() {
        if let Some(options) = &c.security_context.se_linux_options {
            se_linux_options(ctx, Some((at, &c.name)), options);
        }
    }
}

/// Checks the options set by the pod (`owner` is `None`) or by a container.
fn se_linux_options(ctx: &mut Ctx, owner: Option<(ContainerPath, &str)>, options: &SeLinuxOptions) {
    let pod = ctx.pod;
    let path = |field: &str| match owner {
        Some((at, _)) => at.field(&format!("securityContext.seLinuxOptions.{field}")),
        None => pod.spec_field(&format!("securityContext.seLinuxOptions.{field}")),
    };
    let who = || match owner {
        Some((_, name)) => format!("container {name:?}"),
        None => "pod".to_owned(),
    };
    let container = owner.map(|(at, _)| at);
    let allowed_type = match options.type_.as_str() {
        "" | "container_t" | "container_init_t" | "container_kvm_t" => true,
        "container_engine_t" => ctx.minor >= 31,
        _ => false,
    };
    if !allowed_type {
        let message = format!("{} must not set SELinux type {:?}", who(), options.type_);
        ctx.report(
            CheckId::SeLinuxOptions,
            container,
            path("type"),
            options.type_.as_str(),
            message,
        );
    }
    for (field, value) in [("user", &options.user), ("role", &options.role)] {
        if !value.is_empty() {
            let message = format!("{} must not set an SELinux {field}", who());
            ctx.report(
                CheckId::SeLinuxOptions,
                container,
                path(field),
                value.as_str(),
                message,
            );
        }
    }
}

/// Shared with `procMount_restricted`, which applies the same test without relaxation.
pub(super) fn proc_mount(ctx: &mut Ctx, check: CheckId) {
    let pod = ctx.pod;
    for (at, c) in pod.containers() {
        if let Some(mount) = &c.security_context.proc_mount
            && mount != "Default"
        {
            let message = format!("container {:?} must not set procMount to {mount:?}", c.name);
            ctx.report(
                check,
                Some(at),
                at.field("securityContext.procMount"),
                mount.as_str(),
                message,
            );
        }
    }
}

/// Before v1.19 the standards read the legacy seccomp annotations.
fn seccomp_annotations(ctx: &mut Ctx) {
    let pod = ctx.pod;
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    if let Some(value) = pod.metadata.annotations.get(SECCOMP_POD_ANNOTATION)
        && !valid(value)
    {
        let message = format!("pod seccomp annotation must not be {value:?}");
        let path = pod.annotation_path(SECCOMP_POD_ANNOTATION);
        ctx.report(
            CheckId::SeccompProfileBaseline,
            None,
            path,
            value.as_str(),
            message,
        );
    }
    let mut names = None;
    for (key, name, value) in pod
        .metadata
        .annotations_with_prefix(SECCOMP_CONTAINER_ANNOTATION_PREFIX)
    {
        // Only annotations naming an existing container apply.
        let names = names.get_or_insert_with(|| pod.containers_by_name());
        let Some(container) = names.get(name).copied() else {
            continue;
        };
        if !valid(value) {
            let message =
                format!("seccomp annotation for container {name:?} must not be {value:?}");
            ctx.report(
                CheckId::SeccompProfileBaseline,
                Some(container),
                pod.annotation_path(key),
                value,
                message,
            );
        }
    }
}

/// From v1.19 the standards read the seccompProfile fields.
fn seccomp_fields(ctx: &mut Ctx) {
    let pod_profile = ctx.pod.spec.security_context.seccomp_profile.as_ref();
    profile_types(
        ctx,
        CheckId::SeccompProfileBaseline,
        "seccompProfile",
        pod_profile,
        |sc| sc.seccomp_profile.as_ref(),
    );
}

fn sysctls(ctx: &mut Ctx) {
    let pod = ctx.pod;
    let minor = ctx.minor;
    for (i, sysctl) in pod.spec.security_context.sysctls.iter().enumerate() {
        let safe = SAFE_SYSCTLS
            .iter()
            .any(|&(name, since)| name == sysctl.name && minor >= since);
        if !safe {
            let message = format!(
                "sysctl {:?} is not in the safe set of v1.{minor}",
                sysctl.name
            );
            let path = pod.spec_field(&format!("securityContext.sysctls[{i}].name"));
            ctx.report(CheckId::Sysctls, None, path, sysctl.name.as_str(), message);
        }
    }
}

fn windows_host_process(ctx: &mut Ctx) {
    let pod = ctx.pod;
    if pod.spec.security_context.windows_options.host_process == Some(true) {
        let path = pod.spec_field("securityContext.windowsOptions.hostProcess");
        let message = "pod must not run as a Windows HostProcess".to_owned();
        ctx.report(CheckId::WindowsHostProcess, None, path, "true", message);
    }
    for (at, c) in pod.containers() {
        if c.security_context.windows_options.host_process == Some(true) {
            let path = at.field("securityContext.windowsOptions.hostProcess");
            let message = format!(
                "container {:?} must not run as a Windows HostProcess",
                c.name
            );
            ctx.report(CheckId::WindowsHostProcess, Some(at), path, "true", message);
        }
    }
}

fn host_probes(ctx: &mut Ctx) {
    let pod = ctx.pod;
    for (at, c) in pod.containers() {
        for (field, target) in c.host_targets() {
            if !target.host.is_empty() {
                let message = format!("container {:?} must not set a host in {field}", c.name);
                let path = at.field(&format!("{field}.host"));
                ctx.report(
                    CheckId::HostProbesAndHostLifecycle,
                    Some(at),
                    path,
                    target.host.as_str(),
                    message,
                );
            }
        }
    }
}
