//! Pod Security Standards (`baseline`, `restricted`) with the semantics of Kubernetes Pod
//! Security Admission for every policy version v1.0 ..= v1.35: one finding per offending field,
//! with rule `podSecurity/<upstream check id>`. Restricted runs every baseline check too, so a
//! field can be reported by both a baseline check and the restricted check that tightens it;
//! the admission verdict is exactly upstream's.

mod baseline;
mod restricted;

use crate::k8s::{ContainerPath, PodFinding, PodTemplate};
use crate::{Finding, LATEST_PSS_MINOR, PodSecurityLevel, PodSecurityVersion};

/// The upstream checks, named as Pod Security Admission names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckId {
    HostNamespaces,
    Privileged,
    CapabilitiesBaseline,
    HostPathVolumes,
    HostPorts,
    AppArmorProfile,
    SeLinuxOptions,
    ProcMount,
    SeccompProfileBaseline,
    Sysctls,
    WindowsHostProcess,
    HostProbesAndHostLifecycle,
    RestrictedVolumes,
    AllowPrivilegeEscalation,
    RunAsNonRoot,
    RunAsUser,
    SeccompProfileRestricted,
    CapabilitiesRestricted,
    ProcMountRestricted,
}

impl CheckId {
    /// The upstream check id (`capabilities_baseline`).
    pub fn id(self) -> &'static str {
        &self.rule()[RULE_PREFIX.len()..]
    }

    /// The `Finding::rule` of this check's findings (`podSecurity/capabilities_baseline`).
    pub const fn rule(self) -> &'static str {
        match self {
            Self::HostNamespaces => "podSecurity/hostNamespaces",
            Self::Privileged => "podSecurity/privileged",
            Self::CapabilitiesBaseline => "podSecurity/capabilities_baseline",
            Self::HostPathVolumes => "podSecurity/hostPathVolumes",
            Self::HostPorts => "podSecurity/hostPorts",
            Self::AppArmorProfile => "podSecurity/appArmorProfile",
            Self::SeLinuxOptions => "podSecurity/seLinuxOptions",
            Self::ProcMount => "podSecurity/procMount",
            Self::SeccompProfileBaseline => "podSecurity/seccompProfile_baseline",
            Self::Sysctls => "podSecurity/sysctls",
            Self::WindowsHostProcess => "podSecurity/windowsHostProcess",
            Self::HostProbesAndHostLifecycle => "podSecurity/hostProbesAndHostLifecycle",
            Self::RestrictedVolumes => "podSecurity/restrictedVolumes",
            Self::AllowPrivilegeEscalation => "podSecurity/allowPrivilegeEscalation",
            Self::RunAsNonRoot => "podSecurity/runAsNonRoot",
            Self::RunAsUser => "podSecurity/runAsUser",
            Self::SeccompProfileRestricted => "podSecurity/seccompProfile_restricted",
            Self::CapabilitiesRestricted => "podSecurity/capabilities_restricted",
            Self::ProcMountRestricted => "podSecurity/procMount_restricted",
        }
    }
}

const RULE_PREFIX: &str = "podSecurity/";

/// Evaluates a pod against a level of the standards as of `version`. Findings are sorted by
/// path, then rule; an empty result means Pod Security Admission would admit the pod.
pub fn check(
    level: PodSecurityLevel,
    version: PodSecurityVersion,
    pod: &PodTemplate,
) -> Vec<PodFinding> {
    let mut ctx = Ctx {
        pod,
        minor: version.minor().min(LATEST_PSS_MINOR),
        findings: Vec::new(),
    };
    let restricted = level == PodSecurityLevel::Restricted;
    baseline::check(&mut ctx, restricted);
    if restricted {
        restricted::check(&mut ctx);
    }
    let mut findings = ctx.findings;
    findings.sort_by(|a, b| {
        (&a.finding.path, &a.finding.rule).cmp(&(&b.finding.path, &b.finding.rule))
    });
    findings
}

/// What one evaluation reads and writes.
struct Ctx<'a> {
    pod: &'a PodTemplate,
    /// The policy version's minor, at most `LATEST_PSS_MINOR`.
    minor: u32,
    findings: Vec<PodFinding>,
}

impl Ctx<'_> {
    /// Windows pods are exempt from the Linux-only restricted checks from v1.25.
    fn windows_exempt(&self) -> bool {
        self.minor >= 25 && self.pod.spec.is_windows()
    }

    /// User-namespace pods are relaxed for root-related checks from v1.35.
    fn user_namespace_relaxed(&self) -> bool {
        self.minor >= 35 && self.pod.spec.in_user_namespace()
    }

    fn report(
        &mut self,
        check: CheckId,
        container: Option<ContainerPath>,
        path: String,
        value: impl Into<String>,
        message: String,
    ) {
        let finding = Finding::new(check.rule(), path, value, message);
        self.findings.push(PodFinding { container, finding });
    }
}

/// The seccomp and AppArmor profile types the standards accept in fields.
fn confined_profile_type(type_: &str) -> bool {
    matches!(type_, "RuntimeDefault" | "Localhost")
}

#[cfg(test)]
mod tests;
