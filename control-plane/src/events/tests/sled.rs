//! What only the sled backend has: segments, the index in memory, files on disk.

use super::*;
use crate::events::index::Entry;
use crate::events::sled::{Reader, key_of};

/// A store on sled (always there).
async fn on_sled(test: &str, settings: EventSettings) -> Harness {
    Harness::new(Backend::Sled, test, settings)
        .await
        .expect("sled needs nothing installed")
}

fn sled(events: &EventStore) -> &crate::events::sled::SledEvents {
    events.as_sled().expect("a sled store")
}

#[tokio::test]
async fn retention_rewrites_partly_expired_segments() {
    let mut h = on_sled("rewrites", EventSettings::default()).await;
    let now = now_millis();
    // One batch: its events go to segments in time order, the oldest in segment 0.
    let batch: Vec<Event> = (0..700)
        .map(|i| mk_event("c1", "p", now - 700 + i))
        .collect();
    h.events.ingest(parsed(batch.clone())).await.unwrap();
    let first = sled(&h.events).read_index().segments[&0] as usize;
    // All of segment 0 and half of segment 1 go.
    let doomed = first + first / 2;
    h.events.settings.max_count = (700 - doomed) as u64;
    let id = |i: usize| id_of(&batch[i]);
    let (gone, oldest_kept) = (id(doomed - 1), id(doomed));
    for handled in [gone, oldest_kept] {
        h.events
            .handle(&[handled], EventState::Handled, "", "bob")
            .await
            .unwrap();
    }

    assert_eq!(h.events.enforce_retention().await.unwrap(), doomed as u64);
    let expected = newest_first(&batch[doomed..]);
    assert_eq!(all_ids(&h.events).await, expected);
    {
        let index = sled(&h.events).read_index();
        assert!(!index.segments.contains_key(&0));
        assert_eq!(index.segments[&1] as usize, 2 * first - doomed);
    }
    assert_eq!(h.events.get(&gone).await.unwrap(), None);
    let kept = h.events.get(&oldest_kept).await.unwrap().unwrap();
    assert_eq!(kept.state, "handled");
    assert_eq!(
        sled(&h.events).updates.len(),
        1,
        "the deleted event's update went with it"
    );

    let h = h.reopened().await;
    assert_eq!(all_ids(&h.events).await, expected);
    let kept = h.events.get(&oldest_kept).await.unwrap().unwrap();
    assert_eq!(kept.state, "handled");
    assert_eq!(h.events.len(), 700 - doomed as u64);
}

#[tokio::test]
async fn events_of_the_layout_before_the_release_are_refused_not_left_unread() {
    let (store, _dir) = crate::store::test_support::temp_store();
    store
        .db()
        .open_tree("events")
        .unwrap()
        .insert(b"k", b"v")
        .unwrap();
    let error = EventStore::open(Arc::new(store), EventSettings::default())
        .err()
        .expect("refused");
    assert!(matches!(error, StoreError::PreRelease { .. }), "{error}");
}

#[tokio::test]
async fn a_damaged_segment_is_an_error_naming_it() {
    let h = on_sled("damaged", EventSettings::default()).await;
    let now = now_millis();
    h.events
        .ingest(parsed(vec![mk_event("c1", "p", now)]))
        .await
        .unwrap();
    let segments = &sled(&h.events).segments;
    let (key, value) = segments.first().unwrap().unwrap();
    segments.insert(key, &value[..value.len() - 3]).unwrap();
    let Harness {
        events, store, dir, ..
    } = h;
    let settings = events.settings.clone();
    drop((events, store));
    let store = crate::store::test_support::reopen(dir.path());
    let error = EventStore::open(Arc::new(store), settings).err().unwrap();
    assert!(error.to_string().contains("event segment 0"), "{error}");
}

#[tokio::test]
async fn an_index_entry_read_before_a_rewrite_moved_its_event_is_looked_up_again() {
    let h = on_sled("moved", EventSettings::default()).await;
    let now = now_millis();
    let batch: Vec<Event> = (0..20).map(|i| mk_event("c1", "p", now - 20 + i)).collect();
    h.events.ingest(parsed(batch.clone())).await.unwrap();
    let sled = sled(&h.events);
    let key = key_of(id_of(&batch[5]).as_bytes());
    let entry = sled.read_index().events[&key];
    let stale = Entry {
        offset: entry.offset + 1,
        ..entry
    };
    let mut reader = Reader::new(sled);
    let found = sled.load(&mut reader, &key, stale).unwrap().unwrap();
    assert_eq!(found.id, batch[5].id);
    assert_eq!(sled.load(&mut reader, &[7; 16], stale).unwrap(), None);
}
