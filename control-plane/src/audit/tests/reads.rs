//! What operators read: stale flags, filters and pages, summaries and counts, retention.

use portcullis_proto::v1::{EventFinding, Policy};

use super::*;

#[tokio::test]
async fn stale_is_computed_against_the_current_policy_when_read() {
    on_each_backend("stale", &["c1"], |f| async move {
        let (audit, store) = (&f.audit, &f.store);
        let policy = store
            .create_policy(Policy {
                name: "p".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let c1 = f.agent("c1");
        let mut current = mk_open("a", "p");
        current.policy_revision = policy.revision;
        let mut older = mk_open("b", "p");
        older.policy_revision = policy.revision - 1;
        let unknown = mk_open("c", "nope");
        c1.report(&run(1), WHOLE, vec![current, older, unknown])
            .await
            .unwrap();
        async fn stale(audit: &ViolationStore) -> Vec<bool> {
            list_all(audit, Default::default())
                .await
                .iter()
                .map(|v| v.stale)
                .collect()
        }
        assert_eq!(stale(audit).await, [false, true, true]);
        // The policy changes: every violation judged with it is now stale; then it is deleted.
        let mut changed = policy.clone();
        changed.description = "new".into();
        let changed = store.update_policy(changed).await.unwrap();
        assert_eq!(stale(audit).await, [true, true, true]);
        let mut b = mk_open("b", "p");
        b.policy_revision = changed.revision;
        c1.report(&run(1), PLAIN, vec![b]).await.unwrap();
        assert_eq!(stale(audit).await, [true, false, true]);
        store.delete_policy("p", 0).await.unwrap();
        assert_eq!(stale(audit).await, [true, true, true]);
    })
    .await;
}

#[tokio::test]
async fn filters_and_pages_list_exactly_the_matching_violations_in_key_order() {
    on_each_backend("filters", &["c1", "c2"], |f| async move {
        let audit = &f.audit;
        let mut all = Vec::new();
        for (cluster, n) in [("c2", 0), ("c1", 1)] {
            let mut batch = Vec::new();
            for i in (0..30).rev() {
                let mut v = mk_open(&format!("w{i:02}"), ["p1", "p2", "p3"][i % 3]);
                v.namespace = ["ns-a", "ns-b"][i % 2].into();
                v.kind = if i % 5 == 0 { "Service" } else { "Deployment" }.into();
                v.action = if i % 4 == 0 { "alert" } else { "block" }.into();
                if i == 7 {
                    v.images = vec!["Registry.example.com/team/SPECIAL:1".into()];
                    v.findings = vec![EventFinding {
                        cve_ids: vec!["CVE-2024-3094".into()],
                        ..Default::default()
                    }];
                }
                v.cluster = cluster.into();
                batch.push(v);
            }
            f.agent(cluster)
                .report(&run(n), WHOLE, batch.clone())
                .await
                .unwrap();
            all.extend(batch);
        }
        let resolved = Violation {
            namespace: "ns-b".into(),
            ..mk_resolved("w01", "p2")
        };
        f.agent("c1")
            .report(&run(1), PLAIN, vec![resolved])
            .await
            .unwrap();
        let id = |v: &Violation| {
            let parts = [&v.cluster, &v.namespace, &v.kind, &v.name, &v.policy];
            parts.map(String::as_str).join("/")
        };
        // Key order is the order of these ids' parts.
        all.sort_by_key(|v| {
            (
                v.cluster.clone(),
                v.namespace.clone(),
                v.kind.clone(),
                v.name.clone(),
                v.policy.clone(),
            )
        });
        let expect = |pred: &dyn Fn(&Violation) -> bool| -> Vec<String> {
            all.iter().filter(|v| pred(v)).map(id).collect()
        };
        let paged = async |filter: ViolationFilter, size: usize| -> Vec<String> {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let page = audit.read_page(&filter, size, after).await.unwrap();
                assert!(page.violations.len() <= size);
                out.extend(page.violations.iter().map(id));
                if !page.more {
                    return out;
                }
                after = page.keys.last().cloned();
            }
        };
        let with = |f: fn(&mut ViolationFilter)| {
            let mut filter = ViolationFilter::default();
            f(&mut filter);
            filter
        };
        assert_eq!(paged(Default::default(), 7).await, expect(&|_| true));
        assert_eq!(
            paged(with(|f| f.cluster = "c1".into()), 4).await,
            expect(&|v| v.cluster == "c1")
        );
        assert_eq!(
            paged(
                with(|f| {
                    f.cluster = "c1".into();
                    f.namespace = "ns-b".into();
                    f.kind = "Deployment".into();
                }),
                3
            )
            .await,
            expect(&|v| v.cluster == "c1" && v.namespace == "ns-b" && v.kind == "Deployment")
        );
        assert_eq!(paged(with(|f| f.name = "w07".into()), 1).await.len(), 2);
        assert_eq!(
            paged(with(|f| f.policy = "p3".into()), 5).await,
            expect(&|v| v.policy == "p3")
        );
        assert_eq!(
            paged(with(|f| f.action = "alert".into()), 5).await,
            expect(&|v| v.action == "alert")
        );
        assert_eq!(
            paged(with(|f| f.image = "special".into()), 5).await.len(),
            2
        );
        assert_eq!(
            paged(with(|f| f.vulnerability_id = "cve-2024-3094".into()), 5)
                .await
                .len(),
            2
        );
        assert_eq!(
            paged(with(|f| f.state = "resolved".into()), 5).await,
            ["c1/ns-b/Deployment/w01/p2"]
        );
        assert_eq!(
            paged(with(|f| f.state = "open".into()), 100).await.len(),
            59
        );
        assert!(paged(with(|f| f.cluster = "c3".into()), 5).await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_cluster_filter_reads_only_that_clusters_records() {
    let f = Fixture::sled(&["c1", "c2"]).await;
    let audit = &f.audit;
    for cluster in ["c1", "c2"] {
        f.agent(cluster)
            .report(&run(1), WHOLE, vec![mk_open("a", "p")])
            .await
            .unwrap();
    }
    // Damage c2's record: listings skip it (never read it as data), and c1's listing is
    // by c1's key range alone.
    let key = record::violation_key("c2", &mk_open("a", "p"));
    f.tree().insert(&key, b"damaged".to_vec()).unwrap();
    let c1 = ViolationFilter {
        cluster: "c1".into(),
        ..Default::default()
    };
    assert_eq!(audit.list(&c1, 10, None).await.unwrap().violations.len(), 1);
    assert_eq!(matcher_prefix(&c1), record::violation_prefix(&["c1"]));
    let all = audit
        .list(&Default::default(), 10, None)
        .await
        .unwrap()
        .violations;
    assert_eq!(
        all.iter().map(|v| v.cluster.as_str()).collect::<Vec<_>>(),
        ["c1"]
    );
}

#[tokio::test]
async fn summaries_and_open_counts_follow_every_change_and_survive_a_restart() {
    on_each_backend("summaries", &["c1", "c2"], |f| async move {
        let c1 = f.agent("c1");
        let mut critical = mk_open("b", "p");
        critical.severity = "critical".into();
        c1.report(
            &run(1),
            WHOLE,
            vec![mk_open("a", "p"), critical, mk_open("c", "q")],
        )
        .await
        .unwrap();
        f.agent("c2")
            .report(&run(1), WHOLE, vec![mk_open("a", "p")])
            .await
            .unwrap();
        c1.report(&run(1), PLAIN, vec![mk_resolved("c", "q")])
            .await
            .unwrap();
        let rows = |audit: &ViolationStore, cluster: Option<&str>| -> (Vec<String>, u64) {
            let (rows, total) = audit.summarize(cluster);
            let rows = rows
                .iter()
                .map(|r| {
                    let count = r.violations.to_string();
                    [&r.cluster, &r.namespace, &r.policy, &r.severity, &count]
                        .map(String::as_str)
                        .join(" ")
                })
                .collect();
            (rows, total)
        };
        assert_eq!(
            rows(&f.audit, None),
            (
                vec![
                    "c1 ns p critical 1".into(),
                    "c1 ns p high 1".into(),
                    "c2 ns p high 1".into()
                ],
                3
            )
        );
        assert_eq!(
            rows(&f.audit, Some("c2")),
            (vec!["c2 ns p high 1".into()], 1)
        );
        assert_eq!((f.audit.open_in("c1"), f.audit.open_total()), (2, 3));

        // Counted again from the records when the store opens again.
        let f = f.reopen().await;
        let audit = &f.audit;
        assert_eq!((audit.open_in("c1"), audit.open_in("c2")), (2, 1));
        // c was resolved in 2023, past the retention: purged when the store opened.
        assert_eq!(list_all(audit, Default::default()).await.len(), 3);

        // A deleted cluster's violations and run go with it.
        f.store.delete_cluster("c1").await.unwrap();
        assert_eq!(audit.delete_cluster("c1").await.unwrap(), 2);
        assert_eq!((audit.open_in("c1"), audit.open_total()), (0, 1));
        assert_eq!(rows(audit, None).0, ["c2 ns p high 1"]);
        assert_eq!(list_all(audit, Default::default()).await.len(), 1);
        assert_eq!(f.runs().await, ["c2"]);
    })
    .await;
}

#[tokio::test]
async fn resolved_violations_are_purged_after_the_retention() {
    on_each_backend("retention", &["c1"], |f| async move {
        let audit = &f.audit;
        let c1 = f.agent("c1");
        let mut old = mk_resolved("old", "p");
        old.resolved_time = secs(1_700_000_000);
        let mut recent = mk_resolved("recent", "p");
        recent.resolved_time = secs(1_700_000_000 + 29 * 86_400);
        let batch = vec![
            mk_open("old", "p"),
            mk_open("recent", "p"),
            mk_open("open", "p"),
        ];
        c1.report(&run(1), WHOLE, batch).await.unwrap();
        c1.report(&run(1), PLAIN, vec![old, recent]).await.unwrap();
        let now_ms = (1_700_000_000 + 30 * 86_400 + 1) * 1000;
        assert_eq!(audit.purge_resolved(now_ms).await.unwrap(), 1);
        assert_eq!(
            names(&list_all(audit, Default::default()).await),
            [
                ("open".into(), "open".into()),
                ("recent".into(), "resolved".into())
            ]
        );
        assert_eq!(audit.purge_resolved(now_ms).await.unwrap(), 0);
        assert_eq!(audit.open_in("c1"), 1);
    })
    .await;
}

fn matcher_prefix(filter: &ViolationFilter) -> Vec<u8> {
    Matcher::new(filter).key_prefix()
}
