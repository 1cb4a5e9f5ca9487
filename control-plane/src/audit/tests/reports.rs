//! Reports: runs, resyncs, idempotency, the last of a key, reopening, deleted clusters, size,
//! damaged records.

use super::*;

#[tokio::test]
async fn runs_are_adopted_by_a_resync_and_earlier_runs_are_refused() {
    on_each_backend("runs", &["c1"], |f| async move {
        let audit = &f.audit;
        let c1 = f.agent("c1");
        // No run known: the agent must resync, and nothing is stored.
        let answer = c1
            .report(&run(1), PLAIN, vec![mk_open("a", "p")])
            .await
            .unwrap();
        assert!(answer.resync_required);
        assert!(list_all(audit, Default::default()).await.is_empty());

        let answer = c1
            .report(&run(2), START, vec![mk_open("a", "p")])
            .await
            .unwrap();
        assert_eq!((answer.opened, answer.resync_required), (1, false));
        // The same run goes on without a resync.
        let answer = c1
            .report(&run(2), PLAIN, vec![mk_open("b", "p")])
            .await
            .unwrap();
        assert_eq!(answer.opened, 1);
        // A later run must start with a resync.
        let answer = c1
            .report(&run(3), PLAIN, vec![mk_open("c", "p")])
            .await
            .unwrap();
        assert!(answer.resync_required);
        // An earlier run is refused, with or without a resync.
        for flags in [PLAIN, START, WHOLE] {
            let error = c1
                .report(&run(1), flags, vec![mk_open("d", "p")])
                .await
                .unwrap_err();
            assert!(
                matches!(&error, AuditError::Superseded { .. })
                    && error
                        .to_string()
                        .contains("superseded by a later audit run"),
                "{error}"
            );
        }
        assert_eq!(list_all(audit, Default::default()).await.len(), 2);
        // A later resync takes over; the earlier run is refused from then on.
        c1.report(&run(3), START, vec![]).await.unwrap();
        assert!(c1.report(&run(2), PLAIN, vec![]).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_resync_replaces_what_it_does_not_report() {
    on_each_backend("resync", &["c1", "c2"], |f| async move {
        let audit = &f.audit;
        let (c1, c2) = (f.agent("c1"), f.agent("c2"));
        let batch: Vec<Violation> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| mk_open(n, "p"))
            .collect();
        c1.report(&run(1), WHOLE, batch).await.unwrap();
        c2.report(&run(1), WHOLE, vec![mk_open("a", "p")])
            .await
            .unwrap();
        assert_eq!(audit.open_in("c1"), 4);

        // A new run resyncs in three batches: a, then b (changed), then the end. c and d were
        // not reported: resolved at the end, and only then.
        let mut changes = audit.subscribe();
        let answer = c1
            .report(&run(2), START, vec![mk_open("a", "p")])
            .await
            .unwrap();
        assert_eq!((answer.unchanged, answer.resolved), (1, 0));
        let mut b = mk_open("b", "p");
        b.action = "alert".into();
        let answer = c1.report(&run(2), PLAIN, vec![b]).await.unwrap();
        assert_eq!(answer.changed, 1);
        assert_eq!(audit.open_in("c1"), 4);
        let answer = c1.report(&run(2), END, vec![]).await.unwrap();
        assert_eq!(answer.resolved, 2);
        assert_eq!(
            names(&list_all(audit, Default::default()).await),
            [
                ("a".into(), "open".into()),
                ("b".into(), "open".into()),
                ("c".into(), "resolved".into()),
                ("d".into(), "resolved".into()),
                ("a".into(), "open".into()),
            ]
        );
        assert_eq!((audit.open_in("c1"), audit.open_in("c2")), (2, 1));
        // Watchers saw b change, then c and d resolve; not a's confirmation.
        let mut seen = Vec::new();
        while let Ok(v) = changes.try_recv() {
            seen.push((v.name.clone(), v.state.clone()));
        }
        assert_eq!(
            seen,
            [
                ("b".into(), "open".into()),
                ("c".into(), "resolved".into()),
                ("d".into(), "resolved".into()),
            ]
        );

        // A second resync of the same run replaces too: what the first one reported is not
        // kept.
        c1.report(&run(2), WHOLE, vec![mk_open("b", "p")])
            .await
            .unwrap();
        let open = list_all(audit, open_only()).await;
        assert_eq!(
            names(&open),
            [("b".into(), "open".into()), ("a".into(), "open".into())]
        );
        assert_eq!(open[1].cluster, "c2");
        assert_eq!(audit.open_in("c1"), 1);
    })
    .await;
}

#[tokio::test]
async fn a_resent_report_changes_nothing_more() {
    on_each_backend("resent", &["c1"], |f| async move {
        let audit = &f.audit;
        let c1 = f.agent("c1");
        c1.report(&run(1), WHOLE, vec![mk_open("a", "p"), mk_open("b", "p")])
            .await
            .unwrap();
        // A new resync: b is not reported again, so its end resolves it.
        c1.report(&run(2), START, vec![]).await.unwrap();
        let batch = vec![
            mk_open("c", "p"),
            mk_resolved("a", "p"),
            mk_resolved("x", "p"),
        ];
        let first = c1.report(&run(2), END, batch.clone()).await.unwrap();
        assert_eq!(
            first,
            Reported {
                opened: 1,
                resolved: 2,
                unchanged: 1,
                ..Default::default()
            }
        );
        let before = list_all(audit, Default::default()).await;
        let again = c1.report(&run(2), END, batch).await.unwrap();
        assert_eq!(
            again,
            Reported {
                unchanged: 3,
                ..Default::default()
            }
        );
        assert_eq!(list_all(audit, Default::default()).await, before);
        assert_eq!(before.len(), 3);
    })
    .await;
}

#[tokio::test]
async fn the_last_of_a_key_in_a_report_wins() {
    on_each_backend("last_of_a_key", &["c1"], |f| async move {
        let answer = f
            .agent("c1")
            .report(
                &run(1),
                WHOLE,
                vec![mk_open("a", "p"), mk_resolved("a", "p")],
            )
            .await
            .unwrap();
        // The open one is dropped, the resolve finds nothing stored: nothing is stored at all.
        assert_eq!(answer.unchanged, 2);
        assert!(list_all(&f.audit, Default::default()).await.is_empty());
        assert_eq!(f.records().await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_violation_reopened_keeps_its_history_and_first_seen_of_the_new_opening() {
    on_each_backend("reopened", &["c1"], |f| async move {
        let c1 = f.agent("c1");
        c1.report(&run(1), WHOLE, vec![mk_open("a", "p")])
            .await
            .unwrap();
        c1.report(&run(1), PLAIN, vec![mk_resolved("a", "p")])
            .await
            .unwrap();
        let mut again = mk_open("a", "p");
        again.first_seen = secs(1_700_000_300);
        again.last_seen = secs(1_700_000_300);
        let answer = c1.report(&run(1), PLAIN, vec![again]).await.unwrap();
        assert_eq!(answer.opened, 1);
        let v = &list_all(&f.audit, Default::default()).await[0];
        assert_eq!((v.first_seen, v.resolved_time), (secs(1_700_000_300), None));
        assert_eq!(v.history.len(), 1);
        assert_eq!(
            (v.history[0].opened, v.history[0].resolved),
            (secs(1_700_000_000), secs(1_700_000_200))
        );
        assert_eq!(v.cluster, "c1");
        assert!(v.received_time.is_some());
    })
    .await;
}

#[tokio::test]
async fn reports_of_a_deleted_cluster_are_refused_and_its_leftovers_removed_at_open() {
    on_each_backend("deleted_cluster", &["c1", "c2"], |f| async move {
        for cluster in ["c1", "c2"] {
            f.agent(cluster)
                .report(&run(1), WHOLE, vec![mk_open("a", "p")])
                .await
                .unwrap();
        }
        // Deleted from the store, not (yet) from the audit records: a crash in between.
        f.store.delete_cluster("c1").await.unwrap();
        let error = f
            .agent("c1")
            .report(&run(1), PLAIN, vec![mk_open("b", "p")])
            .await
            .unwrap_err();
        assert!(
            matches!(error, AuditError::Store(StoreError::NotFound { .. })),
            "{error}"
        );
        let f = f.reopen().await;
        assert_eq!((f.audit.open_in("c1"), f.audit.open_total()), (0, 1));
        // c2's violation and run.
        assert_eq!(f.runs().await, ["c2"]);
        assert_eq!(f.records().await, 1);
    })
    .await;
}

/// A full report of different keys, applied and listed: one read and one write per key, in a
/// few hundred milliseconds (a quadratic path would take minutes).
#[tokio::test]
async fn a_full_report_of_distinct_keys_is_applied_in_one_pass() {
    on_each_backend("full_report", &["c1"], |f| async move {
        let n = portcullis_proto::limits::violation::MAX_PER_REPORT;
        let batch: Vec<Violation> = (0..n).map(|i| mk_open(&format!("w{i:04}"), "p")).collect();
        let started = std::time::Instant::now();
        let c1 = f.agent("c1");
        let answer = c1.report(&run(1), WHOLE, batch.clone()).await.unwrap();
        assert_eq!(answer.opened as usize, n);
        let answer = c1.report(&run(2), WHOLE, batch).await.unwrap();
        assert_eq!(answer.unchanged as usize, n);
        assert_eq!(list_all(&f.audit, Default::default()).await.len(), n);
        assert_eq!(f.audit.open_in("c1"), n as u64);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

/// A damaged record is never read as data: skipped by listings, and at the next start dropped
/// with its cluster's run, so the agent's next report is asked to resync and restores it.
#[tokio::test]
async fn a_damaged_record_is_skipped_then_dropped_and_its_cluster_resynced() {
    let f = Fixture::sled(&["c1"]).await;
    f.agent("c1")
        .report(&run(1), WHOLE, vec![mk_open("a", "p"), mk_open("b", "p")])
        .await
        .unwrap();
    let tree = f.tree().clone();
    let key = tree
        .iter()
        .keys()
        .map(Result::unwrap)
        .find(|k| k.first() == Some(&b'v'))
        .unwrap();
    let mut value = tree.get(&key).unwrap().unwrap().to_vec();
    value[0] ^= 0x40;
    tree.insert(&key, value).unwrap();
    assert_eq!(
        list_all(&f.audit, open_only()).await.len(),
        1,
        "the damaged one is skipped"
    );
    drop(tree);

    let f = f.reopen().await;
    let agent = f.agent("c1");
    assert_eq!(f.audit.open_in("c1"), 1);
    let answer = agent.report(&run(1), PLAIN, vec![]).await.unwrap();
    assert!(answer.resync_required, "{answer:?}");
    agent
        .report(&run(1), WHOLE, vec![mk_open("a", "p"), mk_open("b", "p")])
        .await
        .unwrap();
    assert_eq!(list_all(&f.audit, open_only()).await.len(), 2);
    assert_eq!(f.audit.open_in("c1"), 2);
}

/// On PostgreSQL a record that does not decode is skipped by listings and overwritten by the
/// next report of its key; its columns still count it as open meanwhile.
#[tokio::test]
async fn a_record_that_does_not_decode_is_skipped_then_overwritten() {
    let Some(url) = fresh_database("undecodable") else {
        return;
    };
    let f = Fixture::postgres(&url, &["c1"]).await;
    let agent = f.agent("c1");
    agent
        .report(&run(1), WHOLE, vec![mk_open("a", "p"), mk_open("b", "p")])
        .await
        .unwrap();
    f.sql("UPDATE violations SET record = '\\xffff' WHERE name = 'b'::bytea")
        .await;
    let listed = list_all(&f.audit, Default::default()).await;
    assert_eq!(names(&listed), [("a".into(), "open".into())]);
    let answer = agent
        .report(&run(1), PLAIN, vec![mk_open("a", "p"), mk_open("b", "p")])
        .await
        .unwrap();
    assert_eq!((answer.opened, answer.unchanged), (1, 1));
    assert_eq!(list_all(&f.audit, open_only()).await.len(), 2);
    assert_eq!(f.audit.open_in("c1"), 2);
}
