//! What only the PostgreSQL backend has: replicas on one database, transactions committing out
//! of order, and the database going away.

use std::collections::HashSet;

use portcullis_testkit::Postgres;

use super::*;

/// Replica A (the harness) and replica B (an event store on a second store) on one fresh
/// database; None without PostgreSQL.
async fn two_replicas(test: &str) -> Option<(Harness, EventStore, Arc<Store>)> {
    let a = Harness::new(Backend::Postgres, test, EventSettings::default()).await?;
    let (url, _) = a.database.clone().expect("a PostgreSQL harness");
    let store = Arc::new(replica(&url).await);
    let b = EventStore::open(store.clone(), EventSettings::default()).unwrap();
    Some((a, b, store))
}

#[tokio::test]
async fn replicas_see_each_others_events_handling_and_retention() {
    let Some((mut a, mut b, _b_store)) = two_replicas("replicas").await else {
        return;
    };
    let (mut watching_a, mut watching_b) = (
        a.events.subscribe().await.unwrap(),
        b.subscribe().await.unwrap(),
    );
    let now = now_millis();
    let from_a = mk_event("c1", "p", now - 2);
    a.events.ingest(parsed(vec![from_a.clone()])).await.unwrap();
    assert_eq!(receive(&mut watching_b, 1).await[0].id, from_a.id);
    let from_b = mk_event("c1", "p", now - 1);
    b.ingest(parsed(vec![from_b.clone()])).await.unwrap();
    let seen_by_a = receive(&mut watching_a, 2).await;
    assert_eq!(
        seen_by_a.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&from_a.id, &from_b.id]
    );
    assert_eq!(receive(&mut watching_b, 1).await[0].id, from_b.id);
    // An id is stored once, whichever replica gets it.
    let again = b.ingest(parsed(vec![from_a.clone()])).await.unwrap();
    assert_eq!(again.duplicates, 1);
    assert_eq!(all_ids(&a.events).await, newest_first([&from_a, &from_b]));
    assert_eq!(all_ids(&b).await, all_ids(&a.events).await);

    b.handle(&[id_of(&from_a)], EventState::Ignored, "known", "bob")
        .await
        .unwrap();
    let handled = a.events.get(&id_of(&from_a)).await.unwrap().unwrap();
    assert_eq!(
        (handled.state.as_str(), handled.handled_by.as_str()),
        ("ignored", "bob")
    );
    let summary = a.events.summarize(None, None).await.unwrap();
    assert_eq!(summary.iter().map(|c| c.events).sum::<u64>(), 2);
    receives_nothing_more(&mut watching_a).await;

    // Both replicas enforcing retention at once delete what one would.
    a.events.settings.max_count = 1;
    b.settings.max_count = 1;
    let (on_a, on_b) = tokio::join!(a.events.enforce_retention(), b.enforce_retention());
    assert_eq!(on_a.unwrap() + on_b.unwrap(), 1);
    assert_eq!(all_ids(&b).await, newest_first([&from_b]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingest_on_two_replicas_reaches_every_watcher_once() {
    let Some((a, b, _b_store)) = two_replicas("concurrent").await else {
        return;
    };
    let a = Arc::new(a.events);
    let b = Arc::new(b);
    let (mut watching_a, mut watching_b) =
        (a.subscribe().await.unwrap(), b.subscribe().await.unwrap());
    let now = now_millis();
    // Eight writers, four per replica, 25 batches of 10 each: transactions overlap and commit
    // in another order than they began.
    let mut writers = Vec::new();
    for writer in 0..8i64 {
        let events = if writer % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for batch in 0..25i64 {
                let batch: Vec<Event> = (0..10i64)
                    .map(|i| mk_event("c1", "p", now - 5000 + writer * 250 + batch * 10 + i))
                    .collect();
                ids.extend(batch.iter().map(|e| e.id.clone()));
                let ingested = events.ingest(parsed(batch)).await.unwrap();
                assert_eq!(ingested.stored, 10);
            }
            ids
        }));
    }
    let mut stored = HashSet::new();
    for writer in writers {
        stored.extend(writer.await.unwrap());
    }
    assert_eq!(stored.len(), 2000);
    for watcher in [&mut watching_a, &mut watching_b] {
        let got = receive(watcher, 2000).await;
        let distinct: HashSet<String> = got.into_iter().map(|e| e.id).collect();
        assert_eq!(distinct, stored, "every event once");
        receives_nothing_more(watcher).await;
    }
    assert_eq!(
        a.list(&EventFilter::default(), 5000, None)
            .await
            .unwrap()
            .events
            .len(),
        2000
    );
}

#[tokio::test]
async fn a_transaction_still_running_delays_the_events_after_it_and_loses_none() {
    let Some(h) = Harness::new(Backend::Postgres, "running", EventSettings::default()).await else {
        return;
    };
    let mut watcher = h.events.subscribe().await.unwrap();
    let now = now_millis();
    // A transaction that inserts an event and stays open while another batch commits.
    let mut client = h.store.postgres_pool().unwrap().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let mut early = mk_event("c1", "p", now - 10);
    as_received(&mut early, timestamp_from_millis(now));
    tx.execute(
        "INSERT INTO events (id, cluster, policy, action, state, time_ms, admissions, record)
         VALUES ($1, 'c1', 'p', 'blocked', 'new', $2, 1, $3)",
        &[
            &id_of(&early).as_bytes().as_slice(),
            &(now - 10),
            &early.encode_to_vec(),
        ],
    )
    .await
    .unwrap();
    let late = mk_event("c1", "p", now - 5);
    h.events.ingest(parsed(vec![late.clone()])).await.unwrap();
    // Committed, listed, but not sent while an older transaction may still add rows before it.
    assert_eq!(all_ids(&h.events).await, newest_first([&late]));
    receives_nothing_more(&mut watcher).await;
    tx.commit().await.unwrap();
    let got = receive(&mut watcher, 2).await;
    assert_eq!(
        got.iter().map(|e| &e.id).collect::<Vec<_>>(),
        [&early.id, &late.id]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_fails_calls_with_unavailable_and_following_resumes() {
    // A server of its own: this one is stopped and started again.
    let Some(mut own) = Postgres::start() else {
        return;
    };
    let url = own.create_database("events_restart");
    let store = Arc::new(replica(&url).await);
    let events = EventStore::open(store.clone(), EventSettings::default()).unwrap();
    let mut watcher = events.subscribe().await.unwrap();
    let now = now_millis();
    let first = mk_event("c1", "p", now - 2);
    events.ingest(parsed(vec![first.clone()])).await.unwrap();
    assert_eq!(receive(&mut watcher, 1).await[0].id, first.id);

    own.stop();
    let error = events
        .ingest(parsed(vec![mk_event("c1", "p", now - 1)]))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    assert_eq!(tonic::Status::from(error).code(), tonic::Code::Unavailable);
    let error = events
        .list(&EventFilter::default(), 10, None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");

    own.start_again();
    let second = mk_event("c1", "p", now);
    let mut stored = false;
    for _ in 0..100 {
        match events.ingest(parsed(vec![second.clone()])).await {
            Ok(_) => {
                stored = true;
                break;
            }
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(stored, "an ingest after the restart");
    assert_eq!(receive(&mut watcher, 1).await[0].id, second.id);
    assert_eq!(all_ids(&events).await, newest_first([&first, &second]));
}
