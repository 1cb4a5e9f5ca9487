//! The maps of an object (labels, annotations, resource limits): entries kept in a small vector
//! sorted by key, the first two inline. Objects carry a handful of entries, usually already in
//! key order (the API server writes map keys sorted), and a vector is cheaper to fill, search
//! and drop than a `BTreeMap` at that size (and a map of one or two entries, such as a
//! container's limits, costs no allocation at all); admission reads every object once, so that
//! cost is on the hot path.
//!
//! A map read from a request is built in one pass: entries are appended, and only when a key
//! arrives out of order is the whole list sorted once at the end (O(n log n)); a key inserted
//! into the middle one at a time would make a hostile object of many keys in reverse order
//! cost O(n²).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Index;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use smallvec::SmallVec;

use super::Text;

/// String keys to `V`, in key order; a key is held once.
#[derive(Clone, PartialEq, Eq)]
pub struct Map<V> {
    entries: SmallVec<[(Text, V); 2]>,
}

impl<V> Default for Map<V> {
    fn default() -> Self {
        Self {
            entries: SmallVec::new_const(),
        }
    }
}

impl<V> Map<V> {
    pub const fn new() -> Self {
        Self {
            entries: SmallVec::new_const(),
        }
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The map of `entries` in any order; a repeated key keeps its last value, as a JSON
    /// object read by serde does. One pass when the keys are in order (the usual case), else
    /// one stable sort: O(n log n) whatever the order.
    pub fn from_entries(mut entries: SmallVec<[(Text, V); 2]>) -> Self {
        let sorted = entries
            .windows(2)
            .all(|pair| pair[0].0.as_str() < pair[1].0.as_str());
        if !sorted {
            // Stable, so equal keys stay in arrival order; `dedup_by` then moves each later
            // value into the kept (first) entry before dropping the later one.
            entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(&mut later.1, &mut kept.1);
                }
                same
            });
        }
        Self { entries }
    }

    /// Sets `key` to `value`; a repeated key keeps the last value, as a JSON object read by
    /// serde does. A key out of order costs a shift of the entries after it: for building a
    /// map of many entries, use `from_entries` or `collect`.
    pub fn insert(&mut self, key: Text, value: V) {
        // Keys in order (the usual case) are appended without a search.
        if (self.entries.last()).is_none_or(|(last, _)| last.as_str() < key.as_str()) {
            self.entries.push((key, value));
            return;
        }
        match self.find(&key) {
            Ok(at) => self.entries[at].1 = value,
            Err(at) => self.entries.insert(at, (key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    pub fn get_key_value(&self, key: &str) -> Option<(&str, &V)> {
        let at = self.find(key).ok()?;
        let (k, v) = &self.entries[at];
        Some((k.as_str(), v))
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a V)> {
        let start = self.entries.partition_point(|(k, _)| k.as_str() < prefix);
        self.entries[start..]
            .iter()
            .map_while(move |(k, v)| k.starts_with(prefix).then_some((k.as_str(), v)))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

impl<V> Index<&str> for Map<V> {
    type Output = V;

    fn index(&self, key: &str) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

impl<K: Into<Text>, V> FromIterator<(K, V)> for Map<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        Self::from_entries(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl<V: fmt::Debug> fmt::Debug for Map<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Map<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = Map<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Map<V>, A::Error> {
                let mut entries = SmallVec::new();
                while let Some(entry) = access.next_entry::<Text, V>()? {
                    entries.push(entry);
                }
                Ok(Map::from_entries(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_keys_in_order_once_with_the_last_value() {
        let mut map: Map<u32> = [("b", 1), ("a", 2), ("c", 3)].into_iter().collect();
        map.insert("b".into(), 4);
        map.insert("ab".into(), 5);
        let entries: Vec<_> = map.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(entries, [("a", 2), ("ab", 5), ("b", 4), ("c", 3)]);
        assert_eq!((map.get("b"), map.get("x"), map["c"]), (Some(&4), None, 3));
        assert!(map.contains_key("ab") && !map.contains_key(""));
        assert_eq!(map.get_key_value("a"), Some(("a", &2)));
        let prefixed: Vec<_> = map.with_prefix("a").map(|(k, _)| k).collect();
        assert_eq!(prefixed, ["a", "ab"]);
        assert_eq!(map.with_prefix("d").count(), 0);
        assert_eq!(format!("{map:?}"), r#"{"a": 2, "ab": 5, "b": 4, "c": 3}"#);
        map.clear();
        assert!(map.is_empty());
    }

    #[test]
    fn entries_in_any_order_keep_the_last_value_of_a_key() {
        let entries = [("c", 1), ("a", 2), ("c", 3), ("b", 4), ("a", 5), ("c", 6)];
        let map: Map<u32> = entries.into_iter().collect();
        let got: Vec<_> = map.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(got, [("a", 5), ("b", 4), ("c", 6)]);
        let sorted: Map<u32> = [("a", 1), ("b", 2)].into_iter().collect();
        assert_eq!(sorted.iter().count(), 2);
    }

    /// 200,000 keys in reverse order: one sort, not 200,000 shifts of the vector (which took
    /// minutes). The bound is far above the sort's cost, so it never flakes.
    #[test]
    fn many_keys_in_reverse_order_are_read_in_n_log_n() {
        let n = 200_000;
        let mut json = String::from("{");
        for i in (0..n).rev() {
            json.push_str(&format!("\"k{i:07}\":\"v\","));
        }
        json.pop();
        json.push('}');
        let started = std::time::Instant::now();
        let map: Map<Text> = serde_json::from_str(&json).unwrap();
        assert_eq!(map.iter().count(), n);
        assert_eq!(map.iter().next().map(|(k, _)| k), Some("k0000000"));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn reads_a_json_object_as_serde_reads_a_map() {
        let map: Map<u32> = serde_json::from_str(r#"{"z": 1, "a": 2, "z": 3}"#).unwrap();
        assert_eq!(map.iter().collect::<Vec<_>>(), [("a", &2), ("z", &3)]);
        assert!(serde_json::from_str::<Map<u32>>(r#"{"a": "x"}"#).is_err());
        assert!(serde_json::from_str::<Map<u32>>("[1]").is_err());
    }
}
