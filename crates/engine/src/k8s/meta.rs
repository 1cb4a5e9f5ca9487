//! Object metadata: the identity, labels and annotations that scope, whitelist and the legacy
//! seccomp and AppArmor annotations are read from.

use super::{Map, Text};

k8s_type! {
    /// `metav1.ObjectMeta`, reduced to what policies read.
    pub struct ObjectMeta {
        "name" => pub name: Text,
        /// Used when `name` is empty: the API server appends a random suffix.
        "generateName" => pub generate_name: Text,
        /// Empty in pod templates and often in the object of an admission request (the
        /// request carries it).
        "namespace" => pub namespace: Text,
        "labels" => pub labels: Map<Text>,
        "annotations" => pub annotations: Map<Text>,
    }
}

impl ObjectMeta {
    /// The annotations whose key starts with `prefix`, with the rest of the key (e.g. the
    /// container name of `container.apparmor.security.beta.kubernetes.io/<name>`).
    pub fn annotations_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a str)> + 'a {
        self.annotations
            .with_prefix(prefix)
            .map(move |(key, value)| (key, &key[prefix.len()..], value.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::k8s::parse;

    #[test]
    fn parses_identity_labels_and_annotations() {
        let meta: ObjectMeta = parse(&json!({
            "name": "web",
            "namespace": "shop",
            "labels": {"app": "web"},
            "annotations": {"a": "1"},
            "creationTimestamp": null,
            "uid": "123",
        }))
        .unwrap();
        assert_eq!(meta.name, "web");
        assert_eq!(meta.namespace, "shop");
        assert_eq!(meta.labels["app"], "web");
        assert_eq!(meta.annotations["a"], "1");
        assert!(parse::<ObjectMeta>(&json!({"labels": {"a": 1}})).is_err());
    }

    #[test]
    fn finds_annotations_by_prefix() {
        let meta: ObjectMeta = parse(&json!({"annotations": {
            "p/a": "1", "p/b": "2", "p": "x", "q/a": "3", "o": "4",
        }}))
        .unwrap();
        let found: Vec<_> = meta.annotations_with_prefix("p/").collect();
        assert_eq!(found, vec![("p/a", "a", "1"), ("p/b", "b", "2")]);
    }
}
