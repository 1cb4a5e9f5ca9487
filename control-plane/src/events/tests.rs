use super::*;
use crate::store::test_support::temp_store;
use portcullis_proto::v1::EventFinding;

/// An event of `cluster`/`policy` at `millis`, with a fresh UUIDv7 of that time.
fn mk_event(cluster: &str, policy: &str, millis: i64) -> Event {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        (millis / 1000) as u64,
        ((millis % 1000) * 1_000_000) as u32,
    );
    Event {
        id: uuid::Uuid::new_v7(ts).to_string(),
        time: Some(timestamp_from_millis(millis)),
        cluster: cluster.into(),
        namespace: "demo".into(),
        kind: "Pod".into(),
        name: "web".into(),
        operation: "CREATE".into(),
        policy: policy.into(),
        action: "blocked".into(),
        images: vec!["nginx:1.25".into()],
        findings: vec![EventFinding {
            rule: "vulnerabilities".into(),
            cve_ids: vec!["CVE-2024-0001".into()],
            ..Default::default()
        }],
        count: 1,
        ..Default::default()
    }
}

fn parsed(events: Vec<Event>) -> Vec<(uuid::Uuid, Event)> {
    validate_batch("c1", events, 1000).unwrap()
}

async fn mk_store(settings: EventSettings) -> (EventStore, tempfile::TempDir) {
    let (store, dir) = temp_store();
    (EventStore::open(Arc::new(store), settings).unwrap(), dir)
}

fn ids(page: &EventPage) -> Vec<String> {
    page.events.iter().map(|e| e.id.clone()).collect()
}

#[tokio::test]
async fn ingest_is_idempotent_by_id() {
    let (events, _dir) = mk_store(EventSettings::default()).await;
    let now = now_millis();
    let batch = vec![mk_event("c1", "p", now), mk_event("c1", "p", now + 1)];
    let first = events.ingest(parsed(batch.clone())).await.unwrap();
    assert_eq!(
        first,
        Ingested {
            stored: 2,
            duplicates: 0
        }
    );
    // The same batch again, and one event twice in a batch.
    let again = events.ingest(parsed(batch.clone())).await.unwrap();
    assert_eq!(
        again,
        Ingested {
            stored: 0,
            duplicates: 2
        }
    );
    let twice = mk_event("c1", "p", now + 2);
    let result = events
        .ingest(parsed(vec![twice.clone(), twice]))
        .await
        .unwrap();
    assert_eq!(
        result,
        Ingested {
            stored: 1,
            duplicates: 1
        }
    );
    assert_eq!(events.len(), 3);
    let page = events.list(&EventFilter::default(), 10, None).unwrap();
    assert_eq!(page.events.len(), 3);
    assert_eq!(page.events[0].state, "new");
    assert!(page.events[0].received_time.is_some());
}

#[tokio::test]
async fn filters_and_pages_return_exactly_the_expected_events() {
    let (events, _dir) = mk_store(EventSettings::default()).await;
    let base = now_millis() - 100_000;
    let mut all = Vec::new();
    for i in 0..60 {
        let cluster = if i % 2 == 0 { "c1" } else { "c2" };
        let policy = ["p1", "p2", "p3"][i % 3];
        let mut event = mk_event(cluster, policy, base + i as i64 * 1000);
        if i % 5 == 0 {
            event.action = "alerted".into();
        }
        if i == 7 {
            event.images = vec!["registry.example.com/team/Special:1".into()];
        }
        all.push(event);
    }
    for event in &all {
        let cluster = event.cluster.clone();
        let batch = validate_batch(&cluster, vec![event.clone()], 10).unwrap();
        events.ingest(batch).await.unwrap();
    }
    let expect = |pred: &dyn Fn(&Event) -> bool| -> Vec<String> {
        let mut ids: Vec<String> = all
            .iter()
            .filter(|e| pred(e))
            .map(|e| e.id.clone())
            .collect();
        ids.reverse();
        ids
    };
    let list_all = |filter: EventFilter, page_size: usize| -> Vec<String> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page = events.list(&filter, page_size, before).unwrap();
            out.extend(ids(&page));
            match page.more_after {
                Some(after) => before = Some(after),
                None => return out,
            }
        }
    };
    let filter = |f: fn(&mut EventFilter)| {
        let mut filter = EventFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(list_all(EventFilter::default(), 7), expect(&|_| true));
    assert_eq!(
        list_all(filter(|f| f.cluster = "c1".into()), 4),
        expect(&|e| e.cluster == "c1")
    );
    assert_eq!(
        list_all(filter(|f| f.policy = "p2".into()), 3),
        expect(&|e| e.policy == "p2")
    );
    assert_eq!(
        list_all(
            filter(|f| {
                f.cluster = "c2".into();
                f.policy = "p3".into();
                f.action = "alerted".into();
            }),
            2
        ),
        expect(&|e| e.cluster == "c2" && e.policy == "p3" && e.action == "alerted")
    );
    let since = base + 10_000;
    let until = base + 20_000;
    let mut ranged = EventFilter {
        since: Some(timestamp_from_millis(since)),
        until: Some(timestamp_from_millis(until)),
        ..Default::default()
    };
    let in_range = |e: &Event| {
        let t = filter::millis(e.time.as_ref().unwrap());
        t >= since && t < until
    };
    assert_eq!(list_all(ranged.clone(), 3), expect(&in_range));
    ranged.cluster = "c1".into();
    assert_eq!(
        list_all(ranged, 100),
        expect(&|e| in_range(e) && e.cluster == "c1")
    );
    assert_eq!(
        list_all(filter(|f| f.text = "special".into()), 10),
        vec![all[7].id.clone()]
    );
    assert_eq!(
        list_all(filter(|f| f.text = "cve-2024-0001".into()), 100).len(),
        60
    );
    assert!(list_all(filter(|f| f.namespace = "other".into()), 10).is_empty());

    // Handling: by state, with who and the note.
    let handled: Vec<uuid::Uuid> = all[..3]
        .iter()
        .map(|e| uuid::Uuid::parse_str(&e.id).unwrap())
        .collect();
    let updated = events
        .handle(&handled, EventState::Handled, "patched", "alice")
        .await
        .unwrap();
    assert!(
        updated
            .iter()
            .all(|e| e.handled_by == "alice" && e.note == "patched")
    );
    assert_eq!(
        list_all(filter(|f| f.state = "handled".into()), 10).len(),
        3
    );
    assert_eq!(list_all(filter(|f| f.state = "new".into()), 100).len(), 57);
    let missing = uuid::Uuid::now_v7();
    let error = events
        .handle(&[handled[0], missing], EventState::Ignored, "", "alice")
        .await
        .unwrap_err();
    assert!(error.to_string().contains(&missing.to_string()), "{error}");
    assert_eq!(
        events.get(&handled[0]).unwrap().unwrap().state,
        "handled",
        "nothing changed"
    );

    // Summaries count by cluster, policy and action.
    let summary = events.summarize(None, None).unwrap();
    let total: u64 = summary.iter().map(|c| c.events).sum();
    assert_eq!(total, 60);
    let row = summary
        .iter()
        .find(|c| c.cluster == "c1" && c.policy == "p1" && c.action == "alerted")
        .unwrap();
    let expected = all
        .iter()
        .filter(|e| e.cluster == "c1" && e.policy == "p1" && e.action == "alerted")
        .count() as u64;
    assert_eq!(row.events, expected);
}

#[tokio::test]
async fn pages_are_stable_under_concurrent_inserts() {
    let (events, _dir) = mk_store(EventSettings::default()).await;
    let base = now_millis() - 50_000;
    let first: Vec<Event> = (0..10)
        .map(|i| mk_event("c1", "p", base + i * 100))
        .collect();
    events.ingest(parsed(first.clone())).await.unwrap();
    let page = events.list(&EventFilter::default(), 4, None).unwrap();
    // Newer events arrive between pages.
    events
        .ingest(parsed(vec![mk_event("c1", "p", base + 20_000)]))
        .await
        .unwrap();
    let mut seen = ids(&page);
    let mut before = page.more_after;
    while let Some(after) = before {
        let page = events
            .list(&EventFilter::default(), 4, Some(after))
            .unwrap();
        seen.extend(ids(&page));
        before = page.more_after;
    }
    let mut expected: Vec<String> = first.iter().map(|e| e.id.clone()).collect();
    expected.reverse();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn retention_by_count_and_age() {
    let settings = EventSettings {
        max_age: Duration::from_secs(3600),
        max_count: 5,
        max_batch: 1000,
    };
    let (events, _dir) = mk_store(settings).await;
    let now = now_millis();
    let old = mk_event("c1", "p", now - 2 * 3600 * 1000);
    let recent: Vec<Event> = (0..7)
        .map(|i| mk_event("c1", "p", now - 1000 + i))
        .collect();
    let mut batch = vec![old.clone()];
    batch.extend(recent.clone());
    events.ingest(parsed(batch)).await.unwrap();
    assert_eq!(events.enforce_retention().await.unwrap(), 3);
    assert_eq!(events.len(), 5);
    let kept = events.list(&EventFilter::default(), 100, None).unwrap();
    let mut expected: Vec<String> = recent[2..].iter().map(|e| e.id.clone()).collect();
    expected.reverse();
    assert_eq!(ids(&kept), expected);
    // The indexes went with them.
    let by_cluster = EventFilter {
        cluster: "c1".into(),
        policy: "p".into(),
        ..Default::default()
    };
    assert_eq!(events.list(&by_cluster, 100, None).unwrap().events.len(), 5);
    assert_eq!(events.read_index().segments.values().sum::<u32>(), 5);
    assert_eq!(events.enforce_retention().await.unwrap(), 0);
}

/// The same events, handling state included, after the store is opened again.
async fn reopened(events: EventStore, dir: &tempfile::TempDir) -> EventStore {
    let settings = events.settings.clone();
    drop(events);
    let store = crate::store::test_support::reopen(dir.path());
    EventStore::open(Arc::new(store), settings).unwrap()
}

fn all_ids(events: &EventStore) -> Vec<String> {
    ids(&events.list(&EventFilter::default(), 100_000, None).unwrap())
}

#[tokio::test]
async fn events_and_their_handling_survive_a_restart() {
    let (events, dir) = mk_store(EventSettings::default()).await;
    let now = now_millis();
    // Big enough for several segments.
    let batch: Vec<Event> = (0..700)
        .map(|i| mk_event("c1", "p", now - 700 + i))
        .collect();
    events.ingest(parsed(batch.clone())).await.unwrap();
    assert!(events.read_index().segments.len() >= 3);
    let handled = uuid::Uuid::parse_str(&batch[10].id).unwrap();
    events
        .handle(&[handled], EventState::Ignored, "known", "alice")
        .await
        .unwrap();
    let before = all_ids(&events);
    let summary = events.summarize(None, None).unwrap();

    let events = reopened(events, &dir).await;
    assert_eq!(events.len(), 700);
    assert_eq!(all_ids(&events), before);
    let event = events.get(&handled).unwrap().unwrap();
    assert_eq!(
        (event.state.as_str(), event.handled_by.as_str()),
        ("ignored", "alice")
    );
    assert_eq!(events.summarize(None, None).unwrap(), summary);
    // Ids already stored are still duplicates after the restart.
    let again = events.ingest(parsed(batch[..5].to_vec())).await.unwrap();
    assert_eq!(again.duplicates, 5);
}

#[tokio::test]
async fn retention_rewrites_partly_expired_segments() {
    let (mut events, dir) = mk_store(EventSettings::default()).await;
    let now = now_millis();
    // One batch: its events go to segments in time order, the oldest in segment 0.
    let batch: Vec<Event> = (0..700)
        .map(|i| mk_event("c1", "p", now - 700 + i))
        .collect();
    events.ingest(parsed(batch.clone())).await.unwrap();
    let first = events.read_index().segments[&0] as usize;
    // All of segment 0 and half of segment 1 go.
    let doomed = first + first / 2;
    events.settings.max_count = (700 - doomed) as u64;
    let id = |i: usize| uuid::Uuid::parse_str(&batch[i].id).unwrap();
    let (gone, oldest_kept) = (id(doomed - 1), id(doomed));
    for handled in [gone, oldest_kept] {
        events
            .handle(&[handled], EventState::Handled, "", "bob")
            .await
            .unwrap();
    }

    assert_eq!(events.enforce_retention().await.unwrap(), doomed as u64);
    let mut expected: Vec<String> = batch[doomed..].iter().map(|e| e.id.clone()).collect();
    expected.reverse();
    assert_eq!(all_ids(&events), expected);
    assert!(!events.read_index().segments.contains_key(&0));
    assert_eq!(
        events.read_index().segments[&1] as usize,
        2 * first - doomed
    );
    assert_eq!(events.get(&gone).unwrap(), None);
    assert_eq!(events.get(&oldest_kept).unwrap().unwrap().state, "handled");
    assert_eq!(
        events.updates.len(),
        1,
        "the deleted event's update went with it"
    );

    let events = reopened(events, &dir).await;
    assert_eq!(all_ids(&events), expected);
    assert_eq!(events.get(&oldest_kept).unwrap().unwrap().state, "handled");
    assert_eq!(events.len(), 700 - doomed as u64);
}

#[tokio::test]
async fn events_of_the_layout_before_the_release_are_refused_not_left_unread() {
    let (store, _dir) = temp_store();
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
    let (events, dir) = mk_store(EventSettings::default()).await;
    let now = now_millis();
    events
        .ingest(parsed(vec![mk_event("c1", "p", now)]))
        .await
        .unwrap();
    let (key, value) = events.segments.first().unwrap().unwrap();
    events
        .segments
        .insert(key, &value[..value.len() - 3])
        .unwrap();
    let settings = events.settings.clone();
    drop(events);
    let store = crate::store::test_support::reopen(dir.path());
    let error = EventStore::open(Arc::new(store), settings).err().unwrap();
    assert!(error.to_string().contains("event segment 0"), "{error}");
}

#[test]
fn bad_batches_are_refused_naming_the_event() {
    let now = now_millis();
    let good = mk_event("c1", "p", now);
    let case = |f: &dyn Fn(&mut Event)| {
        let mut event = good.clone();
        f(&mut event);
        validate_batch("c1", vec![good.clone(), event], 10).unwrap_err()
    };
    let other = case(&|e| e.cluster = "c2".into());
    assert!(
        matches!(&other, BatchError::OtherCluster(m) if m.starts_with("events[1]") && m.contains("\"c2\"")),
        "{other:?}"
    );
    for (f, expected) in [
        (
            &(|e: &mut Event| e.id = "not-a-uuid".into()) as &dyn Fn(&mut Event),
            "id: not a UUIDv7",
        ),
        (
            &|e| e.id = uuid::Uuid::new_v4().to_string(),
            "id: not a UUIDv7",
        ),
        (&|e| e.time = None, "time: required"),
        (
            &|e| e.time = Some(timestamp_from_millis(now - 60_000)),
            "does not agree with the id",
        ),
        (&|e| e.action = "denied".into(), "action"),
        (&|e| e.count = 0, "count"),
        (&|e| e.policy.clear(), "policy: required"),
        (&|e| e.name = "x".repeat(5000), "name: 5000 bytes"),
    ] {
        let error = case(f);
        assert!(
            matches!(&error, BatchError::Invalid(m) if m.starts_with("events[1] (id ") && m.contains(expected)),
            "{expected}: {error:?}"
        );
    }
    let big = vec![good; 11];
    let error = validate_batch("c1", big, 10).unwrap_err();
    assert_eq!(
        error,
        BatchError::Invalid("events: 11 in one batch; at most 10 are accepted".into())
    );
}

#[tokio::test]
async fn listing_reads_the_index_in_batches_and_finds_moved_events() {
    let (events, _dir) = mk_store(EventSettings::default()).await;
    let now = now_millis();
    // Policy `rare` on every 100th of 1,000 events: candidates span several index batches.
    let batch: Vec<Event> = (0..1000)
        .map(|i| {
            let policy = if i % 100 == 0 { "rare" } else { "p" };
            mk_event("c1", policy, now - 1000 + i)
        })
        .collect();
    events.ingest(parsed(batch.clone())).await.unwrap();
    let filter = EventFilter {
        policy: "rare".into(),
        ..Default::default()
    };
    let mut expected: Vec<String> = batch.iter().step_by(100).map(|e| e.id.clone()).collect();
    expected.reverse();
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = events.list(&filter, 3, before).unwrap();
        seen.extend(ids(&page));
        match page.more_after {
            Some(after) => before = Some(after),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    // An entry read before a rewrite moved its event is looked up again.
    let id = uuid::Uuid::parse_str(&batch[5].id).unwrap();
    let key = key_of(id.as_bytes());
    let entry = events.read_index().events[&key];
    let stale = Entry {
        offset: entry.offset + 1,
        ..entry
    };
    let mut reader = Reader::new(&events);
    let found = events.load(&mut reader, &key, stale).unwrap().unwrap();
    assert_eq!(found.id, batch[5].id);
    assert_eq!(events.load(&mut reader, &[7; 16], stale).unwrap(), None);
}
