//! Pod volumes: which source each volume uses, plus the source fields policies read (the
//! hostPath path, the flexVolume driver and an image volume's reference). A volume without a source is an `emptyDir`, as
//! the API server defaults it.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::Text;
use super::fast::Read;
use crate::VolumeType;

/// A pod volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    pub name: Text,
    /// The sources set (exactly one in a valid object).
    pub sources: VolumeSources,
    /// `hostPath.path`, when the volume is a hostPath.
    pub host_path: Option<Text>,
    /// `flexVolume.driver`, when the volume is a flexVolume.
    pub flex_volume_driver: Option<Text>,
    /// `image.reference`, when the volume is an image volume: an image the kubelet pulls, so
    /// every image rule judges it as it judges a container's.
    pub image: Option<Text>,
}

/// A set of volume sources, one bit per `VolumeType`, so checks iterate without allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VolumeSources(u32);

impl VolumeSources {
    /// Adds a source (idempotent).
    pub fn insert(&mut self, source: VolumeType) {
        self.0 |= bit(source);
    }

    /// Whether the volume uses this source.
    pub fn contains(self, source: VolumeType) -> bool {
        self.0 & bit(source) != 0
    }

    /// True only while parsing: a parsed volume has at least one source.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The sources in `VolumeType::ALL` order.
    pub fn iter(self) -> impl Iterator<Item = VolumeType> {
        VolumeType::ALL
            .iter()
            .copied()
            .filter(move |t| self.contains(*t))
    }
}

fn bit(source: VolumeType) -> u32 {
    // `VolumeType` is a fieldless enum with fewer than 32 variants.
    1 << (source as u32)
}

k8s_type! {
    /// `hostPath`, reduced to its path.
    struct HostPathSource {
        "path" => path: Text,
    }
}

k8s_type! {
    /// `flexVolume`, reduced to its driver.
    struct FlexVolumeSource {
        "driver" => driver: Text,
    }
}

k8s_type! {
    /// `image`, reduced to its reference.
    struct ImageSource {
        "reference" => reference: Text,
    }
}

k8s_type! {
    /// Any other source: only checked to be an object.
    struct OtherSource {}
}

/// The values of a volume object's members, read by serde or by the direct reader: a volume
/// is read member by member (its keys are the source names of `VolumeType`), by `member`, the
/// one description of it for both readers.
pub(super) trait Members {
    type Error;
    /// The current member's value; `None` for `null`.
    fn value<T: Read + DeserializeOwned>(&mut self) -> Result<Option<T>, Self::Error>;
    /// Skips the current member's value.
    fn skip(&mut self) -> Result<(), Self::Error>;
}

impl Volume {
    /// Reads the member `key` of a volume: a repeated `name` or source is not an error (the
    /// last name wins; sources add up); `null` leaves a source unset, as in the API.
    pub(super) fn member<M: Members>(&mut self, key: &str, m: &mut M) -> Result<(), M::Error> {
        if key == "name" {
            self.name = m.value::<Text>()?.unwrap_or_default();
            return Ok(());
        }
        let Some(source) = VolumeType::from_name(key) else {
            return m.skip();
        };
        let set = match source {
            VolumeType::HostPath => m
                .value::<HostPathSource>()?
                .map(|s| self.host_path = Some(s.path))
                .is_some(),
            VolumeType::FlexVolume => m
                .value::<FlexVolumeSource>()?
                .map(|s| self.flex_volume_driver = Some(s.driver))
                .is_some(),
            VolumeType::Image => m
                .value::<ImageSource>()?
                .map(|s| self.image = Some(s.reference))
                .is_some(),
            _ => m.value::<OtherSource>()?.is_some(),
        };
        if set {
            self.sources.insert(source);
        }
        Ok(())
    }

    /// After the last member: a volume without a source is an `emptyDir`.
    pub(super) fn finish(&mut self) {
        if self.sources.is_empty() {
            self.sources.insert(VolumeType::EmptyDir);
        }
    }
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(VolumeVisitor)
    }
}

struct VolumeVisitor;

impl<'de> Visitor<'de> for VolumeVisitor {
    type Value = Volume;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a volume object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Volume, A::Error> {
        let mut volume = Volume::default();
        while let Some(key) = map.next_key::<String>()? {
            volume.member(&key, &mut SerdeMembers(&mut map, PhantomData))?;
        }
        volume.finish();
        Ok(volume)
    }
}

struct SerdeMembers<'a, 'de, A>(&'a mut A, PhantomData<&'de ()>);

impl<'de, A: MapAccess<'de>> Members for SerdeMembers<'_, 'de, A> {
    type Error = A::Error;
    fn value<T: Read + DeserializeOwned>(&mut self) -> Result<Option<T>, A::Error> {
        self.0.next_value()
    }
    fn skip(&mut self) -> Result<(), A::Error> {
        self.0.next_value::<IgnoredAny>().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::parse;

    fn volume(value: serde_json::Value) -> Volume {
        parse(&value).unwrap()
    }

    #[test]
    fn records_the_source_and_its_fields() {
        let v = volume(json!({"name": "h", "hostPath": {"path": "/var/log", "type": "Directory"}}));
        assert_eq!(v.name, "h");
        assert_eq!(
            v.sources.iter().collect::<Vec<_>>(),
            vec![VolumeType::HostPath]
        );
        assert_eq!(v.host_path.as_deref(), Some("/var/log"));

        let v = volume(json!({"name": "f", "flexVolume": {"driver": "example/lvm"}}));
        assert!(v.sources.contains(VolumeType::FlexVolume));
        assert_eq!(v.flex_volume_driver.as_deref(), Some("example/lvm"));

        let v = volume(json!({"name": "d", "downwardAPI": {"items": []}, "scaleIO": null}));
        assert_eq!(
            v.sources.iter().collect::<Vec<_>>(),
            vec![VolumeType::DownwardApi]
        );
    }

    #[test]
    fn a_volume_without_source_is_an_empty_dir() {
        let v = volume(json!({"name": "scratch"}));
        assert_eq!(
            v.sources.iter().collect::<Vec<_>>(),
            vec![VolumeType::EmptyDir]
        );
    }

    #[test]
    fn every_source_set_is_kept() {
        let v = volume(json!({"name": "x", "configMap": {"name": "c"}, "hostPath": {"path": "/"}}));
        let sources: Vec<_> = v.sources.iter().collect();
        assert_eq!(sources, vec![VolumeType::ConfigMap, VolumeType::HostPath]);
    }

    #[test]
    fn a_source_of_the_wrong_type_is_an_error() {
        let error = parse::<Volume>(&json!({"name": "x", "secret": "s"})).unwrap_err();
        assert!(
            error.to_string().starts_with("secret: invalid type"),
            "{error}"
        );
        assert!(parse::<Volume>(&json!({"hostPath": {"path": 1}})).is_err());
        assert!(parse::<Volume>(&json!("v")).is_err());
    }
}
