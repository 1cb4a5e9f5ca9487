//! Which image a report describes. Scanners name it several ways (repo digests, repo tags,
//! the name the user typed); an operator's override replaces them all. The first reference
//! fixes the repository (digest references are offered first); tags of other repositories
//! are dropped, digests of any are kept, since a digest names content, not a place.

use super::{ImageIdentity, ScanError};
use crate::reference::ImageReference;

/// Collects the identity from a report's references, in order of preference.
#[derive(Debug, Default)]
pub(crate) struct IdentityBuilder {
    repository: Option<String>,
    tags: Vec<String>,
    digests: Vec<String>,
    image_id: Option<String>,
}

/// The identity an operator named: it wins over whatever the report says.
pub(crate) fn from_override(
    text: &str,
    image_id: Option<String>,
) -> Result<ImageIdentity, ScanError> {
    let mut builder = IdentityBuilder {
        image_id,
        ..IdentityBuilder::default()
    };
    builder.reference(|| "image override".to_owned(), text)?;
    Ok(builder
        .finish()
        .expect("a parsed reference always names a repository"))
}

impl IdentityBuilder {
    /// Adds a reference the report states (`repo:tag`, `repo@digest`); invalid is an error.
    /// `<none>` placeholders some tools write for untagged images are skipped.
    pub(crate) fn reference(
        &mut self,
        field: impl FnOnce() -> String,
        text: &str,
    ) -> Result<(), ScanError> {
        if text.contains("<none>") {
            return Ok(());
        }
        let reference = ImageReference::parse(text).map_err(|source| ScanError::InvalidImage {
            field: field(),
            source,
        })?;
        self.add(&reference);
        Ok(())
    }

    /// Adds the name a user typed, when nothing better named the image. It may be a file
    /// path (`images/app.tar` parses as a repository), so it counts only when it parses
    /// and pins a tag or digest explicitly; otherwise it is ignored.
    pub(crate) fn fallback_name(&mut self, text: &str) {
        if self.repository.is_some() {
            return;
        }
        if let Ok(reference) = ImageReference::parse(text)
            && (reference.tag().is_some() || reference.digest().is_some())
        {
            self.add(&reference);
        }
    }

    /// Sets the repository from a bare `registry/path` (no tag, no digest).
    pub(crate) fn repository(
        &mut self,
        field: impl Fn() -> String,
        text: &str,
    ) -> Result<(), ScanError> {
        let reference = ImageReference::parse(text).map_err(|source| ScanError::InvalidImage {
            field: field(),
            source,
        })?;
        if reference.tag().is_some() || reference.digest().is_some() {
            let reason = "a repository without tag or digest (those go in tags and digests)";
            return Err(ScanError::invalid(field(), format!("expected {reason}")));
        }
        self.repository = Some(reference.repository_path().to_owned());
        Ok(())
    }

    /// Adds a bare tag of the repository already set.
    pub(crate) fn tag(&mut self, field: impl Fn() -> String, tag: &str) -> Result<(), ScanError> {
        let repository = self.repository.as_deref().unwrap_or("localhost/image");
        let parsed = ImageReference::parse(&format!("{repository}:{tag}"));
        match parsed {
            Ok(r) if r.tag() == Some(tag) && r.digest().is_none() => {
                push_unique(&mut self.tags, tag);
                Ok(())
            }
            Ok(_) => Err(ScanError::invalid(field(), "expected a bare tag")),
            Err(source) => Err(ScanError::InvalidImage {
                field: field(),
                source,
            }),
        }
    }

    /// Adds a digest (`sha256:<hex>`) stated without a repository.
    pub(crate) fn digest(
        &mut self,
        field: impl Fn() -> String,
        digest: &str,
    ) -> Result<(), ScanError> {
        match ImageReference::parse(&format!("localhost/image@{digest}")) {
            Ok(r) if r.digest() == Some(digest) => {
                push_unique(&mut self.digests, digest);
                Ok(())
            }
            Ok(_) => Err(ScanError::invalid(
                field(),
                "expected a digest such as sha256:<hex>",
            )),
            Err(source) => Err(ScanError::InvalidImage {
                field: field(),
                source,
            }),
        }
    }

    /// Records the image configuration digest (informational).
    pub(crate) fn image_id(&mut self, image_id: Option<String>) {
        self.image_id = image_id.filter(|id| !id.is_empty());
    }

    /// The identity, or `None` when nothing named a repository or a digest. A digest alone is
    /// an identity (an image scanned from an OCI layout has no name, only its manifest
    /// digest, which is what a pod pinning it pulls); its repository is then empty.
    pub(crate) fn finish(self) -> Option<ImageIdentity> {
        if self.repository.is_none() && self.digests.is_empty() {
            return None;
        }
        Some(ImageIdentity {
            repository: self.repository.unwrap_or_default(),
            tags: self.tags,
            digests: self.digests,
            image_id: self.image_id,
        })
    }

    fn add(&mut self, reference: &ImageReference) {
        let repository = self
            .repository
            .get_or_insert_with(|| reference.repository_path().to_owned());
        if let Some(tag) = reference.effective_tag()
            && repository == reference.repository_path()
        {
            push_unique(&mut self.tags, tag);
        }
        if let Some(digest) = reference.digest() {
            push_unique(&mut self.digests, digest);
        }
    }
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|i| i == item) {
        list.push(item.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:4c0fdaa8b6341bfdeca5f18f7837462c80cff90527ee35ef185571e1c327beac";
    const D2: &str = "sha256:ca738abb87a8d58f112d3400ebb079b61ceae7dc290beb34bda735be4b1941d5";

    fn field() -> String {
        "field".to_owned()
    }

    #[test]
    fn the_first_reference_fixes_the_repository() {
        let mut b = IdentityBuilder::default();
        b.reference(field, &format!("alpine@{D1}")).unwrap();
        b.reference(field, &format!("mirror.example.com/alpine@{D2}"))
            .unwrap();
        b.reference(field, "alpine:3.10").unwrap();
        b.reference(field, "docker.io/library/alpine:3.10").unwrap();
        b.reference(field, "mirror.example.com/alpine:3.10-mirror")
            .unwrap();
        b.reference(field, "<none>:<none>").unwrap();
        let identity = b.finish().unwrap();
        assert_eq!(identity.repository, "docker.io/library/alpine");
        assert_eq!(identity.tags, ["3.10"]);
        assert_eq!(identity.digests, [D1, D2]);
    }

    #[test]
    fn a_fallback_name_must_pin_a_tag_or_digest() {
        for path in ["images/alpine.tar", "alpine"] {
            let mut b = IdentityBuilder::default();
            b.fallback_name(path);
            assert_eq!(b.finish(), None, "{path}");
        }
        let mut b = IdentityBuilder::default();
        b.fallback_name("ghcr.io/org/app:1.2");
        assert_eq!(b.finish().unwrap().tags, ["1.2"]);
    }

    #[test]
    fn an_override_without_tag_means_latest() {
        let identity = from_override("nginx", None).unwrap();
        assert_eq!(identity.repository, "docker.io/library/nginx");
        assert_eq!(identity.tags, ["latest"]);
        let pinned = from_override(&format!("nginx@{D1}"), None).unwrap();
        assert_eq!(
            (pinned.tags.len(), pinned.digests),
            (0, vec![D1.to_owned()])
        );
        let error = from_override("Nginx", None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("image override: invalid image reference")
        );
    }

    #[test]
    fn bare_tags_and_digests_are_checked() {
        let mut b = IdentityBuilder::default();
        b.repository(field, "alpine").unwrap();
        b.tag(field, "3.10").unwrap();
        b.digest(field, D1).unwrap();
        assert!(b.tag(field, &format!("3.10@{D1}")).is_err());
        assert!(b.tag(field, "-x").is_err());
        assert!(b.digest(field, "sha256:abc").is_err());
        assert!(b.repository(field, "alpine:3.10").is_err());
        let identity = b.finish().unwrap();
        assert_eq!(identity.repository, "docker.io/library/alpine");
        assert_eq!(
            (identity.tags, identity.digests),
            (vec!["3.10".to_owned()], vec![D1.to_owned()])
        );
    }
}
