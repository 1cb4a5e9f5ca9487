//! The event store's behaviour, on each backend: every test in `on_each_backend!` runs on sled
//! (in a temporary dir) and on PostgreSQL (a fresh database of the test binary's server;
//! skipped with a message when PostgreSQL is not installed). What only one backend has is in
//! `sled.rs` and `postgres.rs`.

mod postgres;
mod sled;

use super::*;
use crate::store::{now_millis, postgres::PgSettings, timestamp_from_millis};
use portcullis_proto::v1::EventFinding;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sled,
    Postgres,
}

/// Runs each named `async fn(Backend)` as a test on sled and a test on PostgreSQL.
macro_rules! on_each_backend {
    ($($test:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::Sled).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_each_backend!(
    ingest_is_idempotent_by_id,
    filters_and_pages_return_exactly_the_expected_events,
    pages_are_stable_under_concurrent_inserts,
    retention_by_count_and_age,
    events_and_their_handling_survive_a_restart,
    listing_pages_through_matches_spread_over_many_events,
    watchers_get_each_new_event_once,
);

/// An event store on one backend, with what opens it again.
struct Harness {
    events: EventStore,
    store: Arc<Store>,
    dir: tempfile::TempDir,
    /// With PostgreSQL: the database, and how many times a store was connected to it.
    database: Option<(String, u32)>,
}

impl Harness {
    /// A store on `backend` with `settings`; None (the test passes without running) when the
    /// backend is PostgreSQL and there is none.
    async fn new(backend: Backend, test: &str, settings: EventSettings) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (store, database) = match backend {
            Backend::Sled => (Store::open_sled(dir.path()).unwrap(), None),
            Backend::Postgres => {
                let url = portcullis_testkit::fresh_database(test)?;
                (replica(&url).await, Some((url, 0)))
            }
        };
        let store = Arc::new(store);
        let events = EventStore::open(store.clone(), settings).unwrap();
        Some(Self {
            events,
            store,
            dir,
            database,
        })
    }

    /// The same events, handling state included, on a store opened again.
    async fn reopened(self) -> Self {
        let Self {
            events,
            store,
            dir,
            database,
        } = self;
        let settings = events.settings.clone();
        drop((events, store));
        let (store, database) = match database {
            None => (crate::store::test_support::reopen(dir.path()), None),
            Some((url, n)) => {
                let again = replica(&url).await;
                (again, Some((url, n + 1)))
            }
        };
        let store = Arc::new(store);
        let events = EventStore::open(store.clone(), settings).unwrap();
        Self {
            events,
            store,
            dir,
            database,
        }
    }
}

/// A store (a replica) on PostgreSQL at `url`.
async fn replica(url: &str) -> Store {
    Store::connect_postgres(&PgSettings::new(url))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

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

fn id_of(event: &Event) -> uuid::Uuid {
    uuid::Uuid::parse_str(&event.id).unwrap()
}

fn ids(page: &EventPage) -> Vec<String> {
    page.events.iter().map(|e| e.id.clone()).collect()
}

/// The ids of `events`, newest first (as listings return them).
fn newest_first<'e>(events: impl IntoIterator<Item = &'e Event>) -> Vec<String> {
    let mut ids: Vec<String> = events.into_iter().map(|e| e.id.clone()).collect();
    ids.reverse();
    ids
}

/// Every event `filter` matches, page by page.
async fn list_all(events: &EventStore, filter: &EventFilter, page_size: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = events.list(filter, page_size, before).await.unwrap();
        assert!(page.events.len() <= page_size);
        out.extend(ids(&page));
        match page.more_after {
            Some(after) => {
                assert_eq!(page.events.len(), page_size, "only a full page has more");
                before = Some(after);
            }
            None => return out,
        }
    }
}

async fn all_ids(events: &EventStore) -> Vec<String> {
    ids(&events
        .list(&EventFilter::default(), 100_000, None)
        .await
        .unwrap())
}

/// The next `n` events `watcher` receives (waiting at most 30 s for each).
async fn receive(watcher: &mut broadcast::Receiver<Arc<Event>>, n: usize) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(30), watcher.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events within 30 s", got.len()))
            .unwrap();
        got.push((*event).clone());
    }
    got
}

/// Asserts that `watcher` receives nothing for a while (longer than the follower's poll).
async fn receives_nothing_more(watcher: &mut broadcast::Receiver<Arc<Event>>) {
    let next = tokio::time::timeout(Duration::from_millis(700), watcher.recv()).await;
    assert!(next.is_err(), "unexpected: {next:?}");
}

async fn ingest_is_idempotent_by_id(backend: Backend) {
    let Some(h) = Harness::new(backend, "idempotent", EventSettings::default()).await else {
        return;
    };
    let events = &h.events;
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
        .ingest(parsed(vec![twice.clone(), twice.clone()]))
        .await
        .unwrap();
    assert_eq!(
        result,
        Ingested {
            stored: 1,
            duplicates: 1
        }
    );
    // A batch of a new and a stored event stores the new one.
    let mixed = vec![batch[0].clone(), mk_event("c1", "p", now + 3)];
    let result = events.ingest(parsed(mixed)).await.unwrap();
    assert_eq!(
        result,
        Ingested {
            stored: 1,
            duplicates: 1
        }
    );
    assert_eq!(events.len(), 4);
    let page = events
        .list(&EventFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 4);
    assert_eq!(page.events[0].state, "new");
    assert!(page.events[0].received_time.is_some());
    // An agent's handling fields are not taken over.
    let mut claimed = mk_event("c1", "p", now + 4);
    claimed.state = "handled".into();
    claimed.handled_by = "mallory".into();
    events.ingest(parsed(vec![claimed.clone()])).await.unwrap();
    let stored = events.get(&id_of(&claimed)).await.unwrap().unwrap();
    assert_eq!(
        (stored.state.as_str(), stored.handled_by.as_str()),
        ("new", "")
    );
    assert_eq!(events.get(&uuid::Uuid::now_v7()).await.unwrap(), None);
}

async fn filters_and_pages_return_exactly_the_expected_events(backend: Backend) {
    let Some(h) = Harness::new(backend, "filters", EventSettings::default()).await else {
        return;
    };
    let events = &h.events;
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
        if i % 4 == 0 {
            event.namespace = "kube-system".into();
        }
        all.push(event);
    }
    for event in &all {
        let cluster = event.cluster.clone();
        let batch = validate_batch(&cluster, vec![event.clone()], 10).unwrap();
        events.ingest(batch).await.unwrap();
    }
    let expect = |pred: &dyn Fn(&Event) -> bool| newest_first(all.iter().filter(|e| pred(e)));
    let filter = |f: fn(&mut EventFilter)| {
        let mut filter = EventFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(
        list_all(events, &EventFilter::default(), 7).await,
        expect(&|_| true)
    );
    assert_eq!(
        list_all(events, &filter(|f| f.cluster = "c1".into()), 4).await,
        expect(&|e| e.cluster == "c1")
    );
    assert_eq!(
        list_all(events, &filter(|f| f.policy = "p2".into()), 3).await,
        expect(&|e| e.policy == "p2")
    );
    let narrow = filter(|f| {
        f.cluster = "c2".into();
        f.policy = "p3".into();
        f.action = "alerted".into();
    });
    assert_eq!(
        list_all(events, &narrow, 2).await,
        expect(&|e| e.cluster == "c2" && e.policy == "p3" && e.action == "alerted")
    );
    assert_eq!(
        list_all(events, &filter(|f| f.namespace = "kube-system".into()), 4).await,
        expect(&|e| e.namespace == "kube-system")
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
    assert_eq!(list_all(events, &ranged, 3).await, expect(&in_range));
    ranged.cluster = "c1".into();
    assert_eq!(
        list_all(events, &ranged, 100).await,
        expect(&|e| in_range(e) && e.cluster == "c1")
    );
    assert_eq!(
        list_all(events, &filter(|f| f.text = "special".into()), 10).await,
        vec![all[7].id.clone()]
    );
    assert_eq!(
        list_all(events, &filter(|f| f.text = "cve-2024-0001".into()), 100)
            .await
            .len(),
        60
    );
    assert!(
        list_all(events, &filter(|f| f.namespace = "other".into()), 10)
            .await
            .is_empty()
    );
    assert!(
        list_all(events, &filter(|f| f.cluster = "c9".into()), 10)
            .await
            .is_empty()
    );

    // Handling: by state, with who and the note.
    let handled: Vec<uuid::Uuid> = all[..3].iter().map(id_of).collect();
    let updated = events
        .handle(&handled, EventState::Handled, "patched", "alice")
        .await
        .unwrap();
    assert_eq!(updated.len(), 3);
    assert!(
        updated
            .iter()
            .zip(&handled)
            .all(|(e, id)| e.id == id.to_string()
                && e.handled_by == "alice"
                && e.note == "patched")
    );
    assert_eq!(
        list_all(events, &filter(|f| f.state = "handled".into()), 10).await,
        expect(&|e| handled.contains(&id_of(e)))
    );
    assert_eq!(
        list_all(events, &filter(|f| f.state = "new".into()), 100)
            .await
            .len(),
        57
    );
    let missing = uuid::Uuid::now_v7();
    let error = events
        .handle(&[handled[0], missing], EventState::Ignored, "", "alice")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    assert!(error.to_string().contains(&missing.to_string()), "{error}");
    let event = events.get(&handled[0]).await.unwrap().unwrap();
    assert_eq!(event.state, "handled", "nothing changed");
    // Back to new: who and when are cleared.
    let reopened = events
        .handle(&handled[..1], EventState::New, "", "bob")
        .await
        .unwrap();
    assert_eq!(
        (reopened[0].handled_by.as_str(), reopened[0].handled_time),
        ("", None)
    );
    assert_eq!(events.get(&handled[0]).await.unwrap().unwrap(), reopened[0]);

    // Summaries count by cluster, policy and action, in that order.
    let summary = events.summarize(None, None).await.unwrap();
    let total: u64 = summary.iter().map(|c| c.events).sum();
    assert_eq!(total, 60);
    let keys: Vec<_> = summary
        .iter()
        .map(|c| (&c.cluster, &c.policy, &c.action))
        .collect();
    assert!(keys.is_sorted(), "{keys:?}");
    let row = summary
        .iter()
        .find(|c| c.cluster == "c1" && c.policy == "p1" && c.action == "alerted")
        .unwrap();
    let expected = all
        .iter()
        .filter(|e| e.cluster == "c1" && e.policy == "p1" && e.action == "alerted")
        .count() as u64;
    assert_eq!((row.events, row.admissions), (expected, expected));
    let ranged = events
        .summarize(
            Some(&timestamp_from_millis(since)),
            Some(&timestamp_from_millis(until)),
        )
        .await
        .unwrap();
    assert_eq!(ranged.iter().map(|c| c.events).sum::<u64>(), 10);
}

async fn pages_are_stable_under_concurrent_inserts(backend: Backend) {
    let Some(h) = Harness::new(backend, "stable_pages", EventSettings::default()).await else {
        return;
    };
    let events = &h.events;
    let base = now_millis() - 50_000;
    let first: Vec<Event> = (0..10)
        .map(|i| mk_event("c1", "p", base + i * 100))
        .collect();
    events.ingest(parsed(first.clone())).await.unwrap();
    let page = events.list(&EventFilter::default(), 4, None).await.unwrap();
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
            .await
            .unwrap();
        seen.extend(ids(&page));
        before = page.more_after;
    }
    assert_eq!(seen, newest_first(&first));
}

async fn retention_by_count_and_age(backend: Backend) {
    let settings = EventSettings {
        max_age: Duration::from_secs(3600),
        max_count: 5,
        max_batch: 1000,
    };
    let Some(h) = Harness::new(backend, "retention", settings).await else {
        return;
    };
    let events = &h.events;
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
    let kept = events
        .list(&EventFilter::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(ids(&kept), newest_first(&recent[2..]));
    // The indexes went with them.
    let by_cluster = EventFilter {
        cluster: "c1".into(),
        policy: "p".into(),
        ..Default::default()
    };
    let listed = events.list(&by_cluster, 100, None).await.unwrap();
    assert_eq!(listed.events.len(), 5);
    assert_eq!(events.get(&id_of(&old)).await.unwrap(), None);
    if let Some(sled) = events.as_sled() {
        assert_eq!(sled.read_index().segments.values().sum::<u32>(), 5);
    }
    assert_eq!(events.enforce_retention().await.unwrap(), 0);
}

async fn events_and_their_handling_survive_a_restart(backend: Backend) {
    let Some(h) = Harness::new(backend, "restart", EventSettings::default()).await else {
        return;
    };
    let now = now_millis();
    // Big enough for several segments.
    let batch: Vec<Event> = (0..700)
        .map(|i| mk_event("c1", "p", now - 700 + i))
        .collect();
    h.events.ingest(parsed(batch.clone())).await.unwrap();
    if let Some(sled) = h.events.as_sled() {
        assert!(sled.read_index().segments.len() >= 3);
    }
    let handled = id_of(&batch[10]);
    h.events
        .handle(&[handled], EventState::Ignored, "known", "alice")
        .await
        .unwrap();
    let before = all_ids(&h.events).await;
    let summary = h.events.summarize(None, None).await.unwrap();

    let h = h.reopened().await;
    let events = &h.events;
    assert_eq!(all_ids(events).await, before);
    let event = events.get(&handled).await.unwrap().unwrap();
    assert_eq!(
        (event.state.as_str(), event.handled_by.as_str()),
        ("ignored", "alice")
    );
    assert_eq!(events.summarize(None, None).await.unwrap(), summary);
    // Ids already stored are still duplicates after the restart.
    let again = events.ingest(parsed(batch[..5].to_vec())).await.unwrap();
    assert_eq!(again.duplicates, 5);
    assert_eq!(events.len(), 700);
}

async fn listing_pages_through_matches_spread_over_many_events(backend: Backend) {
    let Some(h) = Harness::new(backend, "spread", EventSettings::default()).await else {
        return;
    };
    let events = &h.events;
    let now = now_millis();
    // Every 100th of 1,000 events is rare, by policy and by namespace: candidates span several
    // batches of the sled index, and several chunks of PostgreSQL rows for the namespace (a
    // filter on the decoded events).
    let batch: Vec<Event> = (0..1000)
        .map(|i| {
            let mut event = mk_event("c1", "p", now - 1000 + i);
            if i % 100 == 0 {
                event.policy = "rare".into();
                event.namespace = "rare".into();
            }
            event
        })
        .collect();
    events.ingest(parsed(batch.clone())).await.unwrap();
    let expected = newest_first(batch.iter().step_by(100));
    for filter in [
        EventFilter {
            policy: "rare".into(),
            ..Default::default()
        },
        EventFilter {
            namespace: "rare".into(),
            ..Default::default()
        },
    ] {
        for page_size in [1, 3, 10, 11] {
            assert_eq!(
                list_all(events, &filter, page_size).await,
                expected,
                "{filter:?} by {page_size}"
            );
        }
    }
}

async fn watchers_get_each_new_event_once(backend: Backend) {
    let Some(h) = Harness::new(backend, "watchers", EventSettings::default()).await else {
        return;
    };
    let events = &h.events;
    let mut watcher = events.subscribe().await.unwrap();
    let now = now_millis();
    let first = vec![mk_event("c1", "p", now), mk_event("c1", "p", now + 1)];
    events.ingest(parsed(first.clone())).await.unwrap();
    // A stored event again, with a new one.
    let third = mk_event("c1", "p", now + 2);
    events
        .ingest(parsed(vec![first[0].clone(), third.clone()]))
        .await
        .unwrap();
    // Handling is not news.
    events
        .handle(&[id_of(&first[1])], EventState::Handled, "", "alice")
        .await
        .unwrap();
    let last = mk_event("c1", "p", now + 3);
    events.ingest(parsed(vec![last.clone()])).await.unwrap();
    let got = receive(&mut watcher, 4).await;
    let got_ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(got_ids, [&first[0].id, &first[1].id, &third.id, &last.id]);
    assert!(got.iter().all(|e| e.received_time.is_some()));
    receives_nothing_more(&mut watcher).await;
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
