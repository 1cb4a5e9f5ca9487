//! Work done once per admitted pod and shared by every policy that needs it: Pod Security
//! results per (level, version), and each container's image reference parsed and normalised
//! once with its field path. Fifty policies on a four-container pod otherwise parse the same
//! images and run the same standards dozens of times.

use crate::hygiene::Subject;
use crate::{
    PodSecurityLevel, PodSecurityVersion,
    k8s::{ContainerPath, PodFinding, PodTemplate},
    pss,
};

/// One container's image: where it is, and parsed.
pub(crate) struct ContainerImage<'o> {
    pub path: ContainerPath,
    /// `…containers[i].image`.
    pub field: String,
    /// Parsed and normalised once for every policy's image rules.
    pub subject: Subject<'o>,
}

/// Per-pod results, filled on first use.
#[derive(Default)]
pub(crate) struct PodCache<'o> {
    pod_security: Vec<((PodSecurityLevel, PodSecurityVersion), Vec<PodFinding>)>,
    images: Option<Vec<ContainerImage<'o>>>,
}

impl<'o> PodCache<'o> {
    /// The standards' findings for `pod` at this level and version, computed once.
    pub fn pod_security(
        &mut self,
        level: PodSecurityLevel,
        version: PodSecurityVersion,
        pod: &PodTemplate,
    ) -> &[PodFinding] {
        let key = (level, version);
        let index = match self.pod_security.iter().position(|(k, _)| *k == key) {
            Some(index) => index,
            None => {
                self.pod_security
                    .push((key, pss::check(level, version, pod)));
                self.pod_security.len() - 1
            }
        };
        &self.pod_security[index].1
    }

    /// Every container's image, parsed once (in container order).
    pub fn images(&mut self, pod: &'o PodTemplate) -> &[ContainerImage<'o>] {
        self.images.get_or_insert_with(|| {
            pod.containers()
                .map(|(path, container)| ContainerImage {
                    path,
                    field: path.field("image"),
                    subject: Subject::new(container.image.as_str()),
                })
                .collect()
        })
    }
}
