//! Revisions, optimistic concurrency, the change log, and every query of the store, on both
//! backends.

use std::sync::Arc;

use portcullis_proto::v1::{Cluster, ImageIdentity, ImageSummary, ProtectionSettings};
use prost::Message;

use super::{mk_policy, on_each_backend};
use crate::store::{ApplyOutcome, Change, ChangesSince, StoreError, test_support::mk_scan_of};

fn revisions(changes: ChangesSince) -> Vec<u64> {
    match changes {
        ChangesSince::Changes(c) => c.iter().map(|r| r.revision).collect(),
        ChangesSince::SnapshotNeeded => panic!("snapshot needed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_writers_take_gapless_revisions_in_commit_order() {
    on_each_backend("writers", |store| async move {
        let store = Arc::new(store);
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.create_policy(mk_policy(&format!("p{i:02}"))).await },
                )
            })
            .collect();
        let mut taken = Vec::new();
        for writer in writers {
            taken.push(writer.await.unwrap().unwrap().revision);
        }
        taken.sort_unstable();
        assert_eq!(
            taken,
            (1..=64).collect::<Vec<u64>>(),
            "{}",
            store.backend_name()
        );
        assert_eq!(store.revision(), 64);
        let ChangesSince::Changes(log) = store.changes_since(0, 1000).await.unwrap() else {
            panic!("snapshot needed");
        };
        // The log holds each revision once, in order, each with the object as written then.
        for (expected, record) in (1..).zip(&log) {
            assert_eq!(record.revision, expected);
            let Some(Change::PolicyPut(policy)) = &record.change else {
                panic!("{record:?}");
            };
            assert_eq!(policy.revision, expected);
        }
        assert_eq!(log.len(), 64);
        assert_eq!(
            store.list_policies(None, 100).await.unwrap().items.len(),
            64
        );
    })
    .await;
}

#[tokio::test]
async fn a_stale_revision_is_aborted_and_nothing_is_half_applied() {
    on_each_backend("stale", |store| async move {
        let a = store.create_policy(mk_policy("a")).await.unwrap();
        let mut changed = a.clone();
        changed.description = "new".into();
        let updated = store.update_policy(changed.clone()).await.unwrap();
        assert_eq!((updated.revision, updated.create_time), (2, a.create_time));
        let error = store.update_policy(changed).await.unwrap_err();
        assert!(
            matches!(
                error,
                StoreError::Conflict {
                    expected: 1,
                    current: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(tonic::Status::from(error).code(), tonic::Code::Aborted);

        let mut stale = mk_policy("a");
        stale.revision = 1;
        let error = store
            .apply_policies(vec![mk_policy("b"), stale])
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
        assert!(
            store.get_policy("b").await.unwrap().is_none(),
            "nothing half-applied"
        );
        assert_eq!(store.revision(), 2, "a refused write takes no revision");

        let mut c = mk_policy("c");
        c.description = "x".into();
        let applied = store
            .apply_policies(vec![updated.clone(), c])
            .await
            .unwrap();
        let outcomes: Vec<_> = applied
            .iter()
            .map(|(p, o)| (p.name.as_str(), *o, p.revision))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("a", ApplyOutcome::Unchanged, 2),
                ("c", ApplyOutcome::Created, 3)
            ]
        );
        let error = store.create_policy(mk_policy("a")).await.unwrap_err();
        assert!(matches!(error, StoreError::AlreadyExists { .. }), "{error}");
        let error = store.delete_policy("a", 1).await.unwrap_err();
        assert!(matches!(error, StoreError::Conflict { .. }), "{error}");
        assert_eq!(store.delete_policy("a", 2).await.unwrap(), 4);
        let error = store.delete_policy("a", 0).await.unwrap_err();
        assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    })
    .await;
}

#[tokio::test]
async fn the_change_log_resumes_readers_and_compaction_sends_old_ones_to_a_snapshot() {
    on_each_backend("changelog", |store| async move {
        for name in ["a", "b", "c", "d", "e"] {
            store.create_policy(mk_policy(name)).await.unwrap();
        }
        store.delete_policy("a", 0).await.unwrap();
        assert_eq!(
            revisions(store.changes_since(3, 100).await.unwrap()),
            [4, 5, 6]
        );
        assert_eq!(revisions(store.changes_since(3, 2).await.unwrap()), [4, 5]);
        assert_eq!(
            revisions(store.changes_since(6, 100).await.unwrap()),
            Vec::<u64>::new()
        );
        let ChangesSince::Changes(last) = store.changes_since(5, 10).await.unwrap() else {
            panic!()
        };
        assert_eq!(last[0].change, Some(Change::PolicyDeleted("a".into())));
        assert_eq!(
            store.changes_since(9, 10).await.unwrap(),
            ChangesSince::SnapshotNeeded,
            "a reader ahead of the store"
        );
        assert_eq!(store.compact(2).await.unwrap(), 4);
        assert_eq!(store.compacted_through().await.unwrap(), 4);
        assert_eq!(
            store.changes_since(3, 10).await.unwrap(),
            ChangesSince::SnapshotNeeded
        );
        assert_eq!(revisions(store.changes_since(4, 10).await.unwrap()), [5, 6]);
        assert_eq!(store.compact(2).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn policies_and_clusters_list_in_name_order_by_pages() {
    on_each_backend("pages", |store| async move {
        for name in ["c", "a", "b"] {
            store.create_policy(mk_policy(name)).await.unwrap();
        }
        let page = store.list_policies(None, 2).await.unwrap();
        let names: Vec<_> = page.items.iter().map(|p| p.name.as_str()).collect();
        assert_eq!((names, page.more), (vec!["a", "b"], true));
        let page = store.list_policies(Some("b"), 2).await.unwrap();
        assert_eq!((page.items.len(), page.more), (1, false));
        assert_eq!(store.get_policy("c").await.unwrap().unwrap().revision, 1);
        assert!(store.get_policy("zz").await.unwrap().is_none());
        for (i, name) in ["z", "x", "y"].iter().enumerate() {
            let cluster = Cluster {
                name: name.to_string(),
                ..Default::default()
            };
            store
                .register_cluster(cluster, [i as u8; 32])
                .await
                .unwrap();
        }
        let page = store.list_clusters(Some("x"), 1).await.unwrap();
        let names: Vec<_> = page.items.iter().map(|c| c.name.as_str()).collect();
        assert_eq!((names, page.more), (vec!["y"], true));
    })
    .await;
}

#[tokio::test]
async fn clusters_register_with_a_token_change_protection_and_delete_revoking_it() {
    on_each_backend("clusters", |store| async move {
        let protection = ProtectionSettings {
            enabled: true,
            failure_policy: "ignore".into(),
            timeout_seconds: 10,
        };
        let cluster = Cluster {
            name: "prod-1".into(),
            protection: Some(protection.clone()),
            ..Default::default()
        };
        let hash = [7u8; 32];
        let registered = store.register_cluster(cluster.clone(), hash).await.unwrap();
        assert_eq!(registered.revision, 1);
        assert!(registered.create_time.is_some());
        assert_eq!(
            store.cluster_for_token(&hash).await.unwrap().as_deref(),
            Some("prod-1")
        );
        assert_eq!(store.cluster_for_token(&[8u8; 32]).await.unwrap(), None);
        let error = store
            .register_cluster(cluster, [9u8; 32])
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::AlreadyExists { .. }), "{error}");

        let off = ProtectionSettings {
            enabled: false,
            ..protection
        };
        let changed = store.set_protection("prod-1", off.clone()).await.unwrap();
        assert_eq!(
            (changed.revision, changed.protection.as_ref()),
            (2, Some(&off))
        );
        let again = store.set_protection("prod-1", off.clone()).await.unwrap();
        assert_eq!(again.revision, 2, "no change, no revision");
        assert_eq!(store.get_cluster("prod-1").await.unwrap(), Some(changed));
        let error = store.set_protection("nope", off).await.unwrap_err();
        assert!(matches!(error, StoreError::NotFound { .. }), "{error}");

        assert_eq!(store.delete_cluster("prod-1").await.unwrap(), 3);
        assert_eq!(
            store.cluster_for_token(&hash).await.unwrap(),
            None,
            "token revoked"
        );
        assert!(store.get_cluster("prod-1").await.unwrap().is_none());
        let error = store.delete_cluster("prod-1").await.unwrap_err();
        assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
        let ChangesSince::Changes(log) = store.changes_since(0, 10).await.unwrap() else {
            panic!()
        };
        assert_eq!(log[2].change, Some(Change::ClusterDeleted("prod-1".into())));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_are_found_listed_summarised_with_numbered_ids_and_deleted() {
    on_each_backend("scans", |store| async move {
        let mut first = mk_scan_of("1.25", &["CVE-1", "CVE-2"]);
        first.image.as_mut().unwrap().digests = vec![format!("sha256:{}", "a".repeat(64))];
        let stored = store.put_scan(first.clone()).await.unwrap();
        assert_eq!(
            (stored.revision, stored.id.as_str()),
            (1, first.image.as_ref().unwrap().digests[0].as_str())
        );
        assert!(
            stored.vulnerabilities.is_empty(),
            "the list is not returned"
        );
        let second = store
            .put_scan(mk_scan_of("1.26", &["CVE-2", "CVE-3"]))
            .await
            .unwrap();
        assert_eq!(second.id, "docker.io/library/nginx:1.26");

        // By digest, by tag (normalised), by id, by a reference with the digest.
        let digest = format!("sha256:{}", "a".repeat(64));
        for image in [
            digest.clone(),
            "nginx:1.25".to_owned(),
            "docker.io/library/nginx:1.25".to_owned(),
            format!("nginx@{digest}"),
        ] {
            let found = store
                .find_scan(&image)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{image}"));
            assert_eq!(found.id, digest, "{image}");
            assert_eq!(found.vulnerabilities.len(), 2, "the whole report is kept");
        }
        assert!(store.find_scan("nginx:1.27").await.unwrap().is_none());
        assert!(
            store
                .find_scan(&format!("nginx@sha256:{}", "b".repeat(64)))
                .await
                .unwrap()
                .is_none(),
            "a digest finds only its own report, not the tag's"
        );
        assert!(store.find_scan("\0not an image").await.unwrap().is_none());

        let page = store.list_scans(None, 1, |_| true).await.unwrap();
        assert_eq!((page.items.len(), page.more), (1, true));
        let page = store
            .list_scans(Some(&page.items[0].id), 5, |_| true)
            .await
            .unwrap();
        assert_eq!((page.items.len(), page.more), (1, false));
        let only_126 = store
            .list_scans(None, 5, |s| {
                s.image.as_ref().is_some_and(|i| i.tags == ["1.26"])
            })
            .await
            .unwrap();
        assert_eq!(only_126.items.len(), 1);

        // Summaries number their vulnerabilities; the dictionary spells the numbers out.
        let summaries = store.scan_summaries();
        let ids = store.vulnerability_ids();
        let (summaries, dictionary) = tokio::task::spawn_blocking(move || {
            let summaries: Vec<ImageSummary> = summaries
                .map(|s| ImageSummary::decode(&*s.unwrap()).unwrap())
                .collect();
            (summaries, ids.from(0).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(dictionary, ["CVE-1", "CVE-2", "CVE-3"]);
        let spelled: Vec<Vec<&str>> = summaries
            .iter()
            .map(|s| {
                s.vulnerability_refs
                    .iter()
                    .map(|&n| dictionary[n as usize].as_str())
                    .collect()
            })
            .collect();
        assert_eq!(spelled, [vec!["CVE-2", "CVE-3"], vec!["CVE-1", "CVE-2"]]);

        // A re-import replaces the scan and its keys in one revision; a delete removes both.
        let mut again = mk_scan_of("1.26", &["CVE-4"]);
        again.image = Some(ImageIdentity {
            repository: "docker.io/library/nginx".into(),
            tags: vec!["1.26".into()],
            ..Default::default()
        });
        let replaced = store.put_scan(again).await.unwrap();
        assert_eq!(replaced.revision, 3);
        let found = store.find_scan("nginx:1.26").await.unwrap().unwrap();
        assert_eq!(found.vulnerabilities[0].id, "CVE-4");
        let (id, revision) = store.delete_scan("nginx:1.26").await.unwrap();
        assert_eq!((id.as_str(), revision), ("docker.io/library/nginx:1.26", 4));
        assert!(store.find_scan("nginx:1.26").await.unwrap().is_none());
        let error = store.delete_scan("nginx:1.26").await.unwrap_err();
        assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
        let error = store
            .put_scan(mk_scan_of("1.27", &["CVE-\0-1"]))
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Invalid { .. }), "{error}");
        let error = store
            .put_scan(portcullis_proto::v1::ImageScan::default())
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Invalid { .. }), "{error}");
    })
    .await;
}

#[tokio::test]
async fn a_snapshot_holds_every_policy_and_the_cluster_at_one_revision() {
    on_each_backend("snapshot", |store| async move {
        for name in ["b", "a"] {
            store.create_policy(mk_policy(name)).await.unwrap();
        }
        let cluster = Cluster {
            name: "c1".into(),
            ..Default::default()
        };
        store.register_cluster(cluster, [1; 32]).await.unwrap();
        let snapshot = store.snapshot("c1").await.unwrap();
        assert_eq!(snapshot.revision, 3);
        assert_eq!(snapshot.epoch, store.epoch());
        let names: Vec<_> = snapshot.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(snapshot.cluster.unwrap().name, "c1");
        assert!(store.snapshot("other").await.unwrap().cluster.is_none());
    })
    .await;
}
