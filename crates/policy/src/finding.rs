//! What a check reports: one violation, located by its field path in the admitted object.

/// One violation found by a check.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Finding {
    /// The check that found it: a resource control's field name (`privileged`, `hostPath`,
    /// `capabilities`, ...), `podSecurity/<upstream check id>` (`podSecurity/hostNamespaces`,
    /// `podSecurity/capabilities_restricted`, ...), or an image rule (`registries`,
    /// `disallowedTags`, `requireDigest`, `vulnerabilities`, ...).
    pub rule: String,
    /// Field path in the admitted object, e.g. `spec.containers[1].securityContext.privileged`
    /// or `spec.template.spec.volumes[0].hostPath.path`.
    pub path: String,
    /// The offending value as written in the object (`true`, `NET_ADMIN`, `/var/run/docker.sock`,
    /// an image reference); empty when the problem is a missing value.
    pub value: String,
    /// A sentence for people: what is wrong and what is allowed.
    pub message: String,
    /// Vulnerability ids the finding is about (scan rules), at most `MAX_IDS`; empty otherwise.
    pub ids: Vec<String>,
}

/// Most ids a finding carries (its message counts the rest).
pub const MAX_IDS: usize = 100;

impl Finding {
    pub fn new(
        rule: impl Into<String>,
        path: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            rule: rule.into(),
            path: path.into(),
            value: value.into(),
            message: message.into(),
            ids: Vec::new(),
        }
    }

    /// The finding with the vulnerability ids it names (the first `MAX_IDS`).
    pub fn with_ids<'a>(mut self, ids: impl IntoIterator<Item = &'a str>) -> Self {
        self.ids = ids.into_iter().take(MAX_IDS).map(str::to_owned).collect();
        self
    }
}
