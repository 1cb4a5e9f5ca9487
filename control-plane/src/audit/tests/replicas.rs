//! Replicas on one PostgreSQL database: what one stores, the others list, count and watch.

use tokio::sync::broadcast;

use super::*;

use crate::store::conformance::eventually;

/// The next `n` changes a watcher sees (bounded wait), as (name, state).
async fn next_changes(
    changes: &mut broadcast::Receiver<Arc<Violation>>,
    n: usize,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while seen.len() < n {
        let v = tokio::time::timeout(Duration::from_secs(15), changes.recv())
            .await
            .expect("a change within 15 s")
            .unwrap();
        seen.push((v.name.clone(), v.state.clone()));
    }
    seen
}

/// A second replica on `a`'s database.
async fn replica_of(a: &Fixture) -> Fixture {
    let url = a.url.as_deref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(connect(url).await);
    let audit = ViolationStore::open(store.clone(), AuditSettings::default())
        .await
        .unwrap();
    Fixture {
        audit: Arc::new(audit),
        store,
        url: Some(url.to_owned()),
        dir,
        opened: 1,
    }
}

#[tokio::test]
async fn a_report_on_one_replica_is_listed_counted_and_watched_on_another() {
    let Some(url) = fresh_database("replicas") else {
        return;
    };
    let a = Fixture::postgres(&url, &["c1", "c2"]).await;
    let b = replica_of(&a).await;
    let mut on_a = a.audit.subscribe();
    let mut on_b = b.audit.subscribe();

    a.agent("c1")
        .report(&run(1), WHOLE, vec![mk_open("x", "p"), mk_open("y", "p")])
        .await
        .unwrap();
    let opened = [("x".into(), "open".into()), ("y".into(), "open".into())];
    assert_eq!(next_changes(&mut on_b, 2).await, opened);
    eventually("B counts A's report", || b.audit.open_in("c1") == 2).await;
    assert_eq!(b.audit.summarize(Some("c1")).1, 2);
    assert_eq!(names(&list_all(&b.audit, Default::default()).await), opened);
    assert_eq!(next_changes(&mut on_a, 2).await, opened);

    // B goes on with the run A adopted: one run per cluster, whichever replica it reports to.
    let answer = b
        .agent("c1")
        .report(&run(1), PLAIN, vec![mk_resolved("x", "p")])
        .await
        .unwrap();
    assert_eq!(answer.resolved, 1);
    assert_eq!(b.audit.open_in("c1"), 1, "B counts its own report at once");
    assert_eq!(
        next_changes(&mut on_a, 1).await,
        [("x".into(), "resolved".into())]
    );
    eventually("A counts B's report", || a.audit.open_in("c1") == 1).await;
    // A run superseded on one replica is refused on the other.
    a.agent("c1").report(&run(2), START, vec![]).await.unwrap();
    assert!(matches!(
        b.agent("c1").report(&run(1), PLAIN, vec![]).await,
        Err(AuditError::Superseded { .. })
    ));

    // A cluster deleted on A leaves B's counts.
    a.store.delete_cluster("c1").await.unwrap();
    assert_eq!(a.audit.delete_cluster("c1").await.unwrap(), 2);
    eventually("B forgets the deleted cluster", || {
        b.audit.open_in("c1") == 0 && b.audit.open_total() == 0
    })
    .await;
    assert!(list_all(&b.audit, Default::default()).await.is_empty());

    // A replica started later counts what is stored.
    a.agent("c2")
        .report(&run(1), WHOLE, vec![mk_open("z", "p")])
        .await
        .unwrap();
    let c = replica_of(&a).await;
    assert_eq!((c.audit.open_in("c2"), c.audit.open_total()), (1, 1));
}

/// Reports of one cluster sent to two replicas at once are applied one after the other: none
/// is lost, and every replica's watchers see each change once.
#[tokio::test]
async fn concurrent_reports_on_two_replicas_are_all_applied_and_seen() {
    let Some(url) = fresh_database("concurrent") else {
        return;
    };
    let a = Fixture::postgres(&url, &["c1"]).await;
    let b = replica_of(&a).await;
    a.agent("c1").report(&run(1), START, vec![]).await.unwrap();
    let mut on_b = b.audit.subscribe();
    let mut reports = Vec::new();
    for i in 0..20 {
        let audit = if i % 2 == 0 { &a.audit } else { &b.audit };
        let audit = audit.clone();
        reports.push(tokio::spawn(async move {
            let agent = Agent {
                audit: &audit,
                cluster: "c1",
            };
            agent
                .report(&run(1), PLAIN, vec![mk_open(&format!("w{i:02}"), "p")])
                .await
                .unwrap()
        }));
    }
    for report in reports {
        assert_eq!(report.await.unwrap().opened, 1);
    }
    let mut seen = next_changes(&mut on_b, 20).await;
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    eventually("both replicas count every report", || {
        a.audit.open_in("c1") == 20 && b.audit.open_in("c1") == 20
    })
    .await;
    // The end of a resync on B resolves what neither replica was told of since it started.
    a.agent("c1").report(&run(2), START, vec![]).await.unwrap();
    let answer = b
        .agent("c1")
        .report(&run(2), END, vec![mk_open("w00", "p")])
        .await
        .unwrap();
    assert_eq!((answer.unchanged, answer.resolved), (1, 19));
    eventually("A counts B's resync", || a.audit.open_in("c1") == 1).await;
}
