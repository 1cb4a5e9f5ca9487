//! The in-memory side of the event store: every stored event's location and the fields queries
//! filter and count on, ordered newest first; and the record format of the segments the events
//! are stored in. Rebuilt from the segments when the store opens.

use std::collections::{BTreeMap, HashMap};

use portcullis_proto::v1::Event;
use prost::Message;

use super::filter::millis;

/// One event in a segment: its 16-byte key, the length of its encoding (u32, little endian),
/// then the `Event` message.
pub const RECORD_HEADER: usize = 16 + 4;

/// Appends one record to a segment being built; returns the record's offset.
pub fn push_record(segment: &mut Vec<u8>, key: &[u8; 16], event: &Event) -> u32 {
    let offset = segment.len() as u32;
    segment.extend_from_slice(key);
    segment.extend_from_slice(&(event.encoded_len() as u32).to_le_bytes());
    event
        .encode(segment)
        .expect("a Vec grows to hold any message");
    offset
}

/// The records of a segment: (offset, key, encoded event). Stops at the first malformed
/// record (the caller reports it as corruption).
pub fn records(segment: &[u8]) -> Records<'_> {
    Records { segment, at: 0 }
}

pub struct Records<'s> {
    segment: &'s [u8],
    at: usize,
}

impl<'s> Iterator for Records<'s> {
    type Item = Result<(u32, [u8; 16], &'s [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at == self.segment.len() {
            return None;
        }
        let item = record_at(self.segment, self.at).map(|(key, bytes)| {
            let offset = self.at as u32;
            self.at += RECORD_HEADER + bytes.len();
            (offset, key, bytes)
        });
        if item.is_err() {
            self.at = self.segment.len();
        }
        Some(item)
    }
}

/// The key and encoded event of the record at `offset`.
pub fn record_at(segment: &[u8], offset: usize) -> Result<([u8; 16], &[u8]), String> {
    let header = segment
        .get(offset..offset + RECORD_HEADER)
        .ok_or_else(|| format!("record at {offset} past the segment's end"))?;
    let key: [u8; 16] = header[..16].try_into().expect("16 bytes");
    let length = u32::from_le_bytes(header[16..].try_into().expect("4 bytes")) as usize;
    let start = offset + RECORD_HEADER;
    let bytes = segment
        .get(start..start + length)
        .ok_or_else(|| format!("record at {offset} is cut short"))?;
    Ok((key, bytes))
}

/// Where an event is and what queries read without decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub segment: u64,
    pub offset: u32,
    /// Interned names.
    pub cluster: u32,
    pub policy: u32,
    pub action: u32,
    /// Admissions the event stands for (its `count`, at least 1).
    pub admissions: u32,
    /// The event's own time (milliseconds since the epoch).
    pub time_ms: i64,
    /// An operator changed its handling state: the current copy is in the updates tree.
    pub updated: bool,
}

/// Names (clusters, policies, actions) as small numbers.
#[derive(Debug, Default)]
pub struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// Every stored event by key (inverted id: iteration is newest first), with the live events
/// of each segment.
#[derive(Debug, Default)]
pub struct Index {
    pub events: BTreeMap<[u8; 16], Entry>,
    pub names: Names,
    /// Live events per segment.
    pub segments: BTreeMap<u64, u32>,
}

impl Index {
    /// The entry of `event`, stored at `offset` of `segment`.
    pub fn entry(&mut self, event: &Event, segment: u64, offset: u32) -> Entry {
        Entry {
            segment,
            offset,
            cluster: self.names.intern(&event.cluster),
            policy: self.names.intern(&event.policy),
            action: self.names.intern(&event.action),
            admissions: event.count.max(1),
            time_ms: event.time.as_ref().map(millis).unwrap_or(0),
            updated: false,
        }
    }

    pub fn insert(&mut self, key: [u8; 16], entry: Entry) {
        if let Some(old) = self.events.insert(key, entry) {
            self.release(old.segment);
        }
        *self.segments.entry(entry.segment).or_default() += 1;
    }

    pub fn remove(&mut self, key: &[u8; 16]) -> Option<Entry> {
        let entry = self.events.remove(key)?;
        self.release(entry.segment);
        Some(entry)
    }

    fn release(&mut self, segment: u64) {
        if let Some(live) = self.segments.get_mut(&segment) {
            *live -= 1;
            if *live == 0 {
                self.segments.remove(&segment);
            }
        }
    }

    /// The next unused segment number.
    pub fn next_segment(&self) -> u64 {
        self.segments.last_key_value().map_or(0, |(s, _)| s + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, count: u32) -> Event {
        Event {
            id: id.into(),
            cluster: "c1".into(),
            policy: "p".into(),
            action: "blocked".into(),
            count,
            ..Default::default()
        }
    }

    #[test]
    fn records_round_trip_and_malformed_segments_are_errors() {
        let mut segment = Vec::new();
        let a = push_record(&mut segment, &[1; 16], &event("a", 1));
        let b = push_record(&mut segment, &[2; 16], &event("bb", 3));
        let read: Vec<_> = records(&segment).map(Result::unwrap).collect();
        assert_eq!(read.len(), 2);
        assert_eq!((read[0].0, read[0].1), (a, [1; 16]));
        assert_eq!((read[1].0, read[1].1), (b, [2; 16]));
        assert_eq!(Event::decode(read[1].2).unwrap(), event("bb", 3));
        assert_eq!(record_at(&segment, b as usize).unwrap().0, [2; 16]);

        let cut = &segment[..segment.len() - 1];
        let read: Vec<_> = records(cut).collect();
        assert!(read[0].is_ok());
        assert!(read[1].as_ref().unwrap_err().contains("cut short"));
        assert_eq!(read.len(), 2, "iteration stops after the error");
        assert!(record_at(&segment, segment.len()).is_err());
    }

    #[test]
    fn index_counts_live_events_per_segment() {
        let mut index = Index::default();
        assert_eq!(index.next_segment(), 0);
        let e = index.entry(&event("a", 0), 4, 0);
        assert_eq!(e.admissions, 1, "a count of 0 stands for one admission");
        index.insert([1; 16], e);
        let e = index.entry(&event("b", 2), 4, 40);
        index.insert([2; 16], e);
        assert_eq!(index.segments[&4], 2);
        assert_eq!(index.next_segment(), 5);
        // Moving an event to another segment (a rewrite) releases the old one.
        index.insert([2; 16], Entry { segment: 7, ..e });
        assert_eq!((index.segments[&4], index.segments[&7]), (1, 1));
        index.remove(&[1; 16]);
        assert!(!index.segments.contains_key(&4));
        assert_eq!(index.names.name(e.cluster), "c1");
        assert_eq!(index.names.id("p"), Some(e.policy));
        assert_eq!(index.names.id("unknown"), None);
    }
}
