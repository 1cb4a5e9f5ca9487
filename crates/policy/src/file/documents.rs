//! The serde visitors that read a document: `DocumentSeed` (a policy, a list of policies, or
//! nothing) and `NoEmptyValues` (the YAML check for keys without a value).

use std::cell::Cell;
use std::fmt;

use portcullis_proto::v1 as proto;
use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Rejects a YAML key with no value (`privileged:`): the proto reads it as an absent field,
/// so a control the operator meant to turn on (`privileged: {}`) would silently be off. JSON
/// keeps the proto3 rule that `null` means the default.
pub(super) struct NoEmptyValues {
    pub(super) in_map: bool,
}

impl<'de> DeserializeSeed<'de> for NoEmptyValues {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoEmptyValues {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.in_map {
            Err(E::custom(
                "empty value: write {} for a control without parameters, or remove the field",
            ))
        } else {
            Ok(())
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(NoEmptyValues { in_map: true })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(NoEmptyValues { in_map: false })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        IgnoredAny.visit_enum(data).map(|_| ())
    }
}

/// One document: a policy, a list of policies, or nothing. Records the list entry being read
/// in `item`, so an error can say which one failed.
pub(super) struct DocumentSeed<'a> {
    pub(super) item: &'a Cell<Option<usize>>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = Vec<proto::Policy>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_> {
    type Value = Vec<proto::Policy>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a policy (a mapping) or a list of policies")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let policy = proto::Policy::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(vec![policy])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut policies = Vec::new();
        loop {
            self.item.set(Some(policies.len() + 1));
            match seq.next_element::<proto::Policy>()? {
                Some(policy) => policies.push(policy),
                None => break,
            }
        }
        self.item.set(None);
        Ok(policies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_check_accepts_every_other_value() {
        let text =
            "a: !tag x\nb: 123456789012345678901234567890\nc: 1.5\nd: [1, ~, {e: true}]\nf: -3\n";
        let check = NoEmptyValues { in_map: false };
        check
            .deserialize(serde_yaml::Deserializer::from_str(text))
            .unwrap();
    }

    #[test]
    fn a_document_is_a_policy_a_list_or_nothing() {
        let item = Cell::new(None);
        let seed = DocumentSeed { item: &item };
        let one = seed
            .deserialize(serde_yaml::Deserializer::from_str("name: a"))
            .unwrap();
        assert_eq!(one.len(), 1);
        let seed = DocumentSeed { item: &item };
        let none = seed
            .deserialize(serde_yaml::Deserializer::from_str(""))
            .unwrap();
        assert!(none.is_empty());
        let seed = DocumentSeed { item: &item };
        let error = seed
            .deserialize(serde_yaml::Deserializer::from_str(
                "[{name: a}, {name: b}, 3]",
            ))
            .unwrap_err();
        assert_eq!(item.get(), Some(3), "{error}");
    }
}
