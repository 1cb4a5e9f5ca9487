//! What only the PostgreSQL backend has: replicas on one database, schema versions, and the
//! database going away.

use std::time::Duration;

use portcullis_testkit::Postgres;

use super::{connect, eventually, fresh_database, mk_policy, server};
use crate::store::{Store, StoreError, postgres::PgSettings};

#[tokio::test]
async fn replicas_share_the_epoch_and_see_each_others_writes_at_once() {
    let Some(url) = fresh_database("replicas") else {
        return;
    };
    let a = connect(&url).await;
    let b = connect(&url).await;
    assert_eq!(a.epoch(), b.epoch());
    let mut watching = b.subscribe();
    let policy = a.create_policy(mk_policy("p")).await.unwrap();
    // B learns the revision from A's notification (or its poll) and reads the policy.
    tokio::time::timeout(Duration::from_secs(30), watching.wait_for(|r| *r >= 1))
        .await
        .expect("replica B saw the revision")
        .unwrap();
    assert_eq!(b.get_policy("p").await.unwrap(), Some(policy));
    // A write on B takes the next revision: one counter for every replica.
    let next = b.create_policy(mk_policy("q")).await.unwrap();
    assert_eq!(next.revision, 2);
    drop((a, b));
    let again = connect(&url).await;
    assert_eq!(
        again.revision(),
        2,
        "a replica started later starts at the head"
    );

    let Some(other) = fresh_database("replicas_other") else {
        return;
    };
    let fresh = connect(&other).await;
    assert_ne!(
        fresh.epoch(),
        again.epoch(),
        "a new database is a new history"
    );
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused_naming_both_versions() {
    let (Some(server), Some(url)) = (server(), fresh_database("newer")) else {
        return;
    };
    drop(connect(&url).await);
    let database = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    server.sql(
        database,
        "INSERT INTO portcullis_schema (version) VALUES (99)",
    );
    let error = Store::connect_postgres(&PgSettings::new(&url))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(error, StoreError::NewerSchema { found: 99, .. }),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("99")
            && text.contains(&format!(
                "this build's {}",
                crate::store::postgres::SCHEMA_VERSION
            )),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_password_an_unreachable_host_and_a_missing_database_fail_at_start() {
    let (Some(server), Some(url)) = (server(), fresh_database("bad_input")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let password = server.password();
    let wrong = url.replace(password, "not-the-password");
    let unreachable = format!(
        "postgres://portcullis:{password}@127.0.0.1:{}/x?sslmode=disable",
        portcullis_testkit::free_port()
    );
    let missing = url.replace(
        url.rsplit('/').next().unwrap(),
        "no_such_db?sslmode=disable",
    );
    for (url, reason) in [
        (wrong, "password authentication failed"),
        (unreachable, "refused"),
        (missing, "does not exist"),
    ] {
        let error = Store::connect_postgres(&PgSettings::new(&url))
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(reason), "{error}");
        assert!(
            !error.contains(password),
            "the password is never shown: {error}"
        );
        assert!(!error.contains("not-the-password"), "{error}");
    }
    // `prefer` never falls back to clear text: this server has no TLS, so no connection.
    let error = Store::connect_postgres(&PgSettings::new(
        url.replace("sslmode=disable", "sslmode=prefer"),
    ))
    .await
    .err()
    .expect("no clear text for sslmode=prefer")
    .to_string();
    assert!(error.to_lowercase().contains("tls"), "{error}");
    assert!(!error.contains(password), "{error}");
    // The password from a file, not the URL.
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let mut settings = PgSettings::new(url.replace(&format!(":{password}@"), "@"));
    settings.password_file = Some(file);
    let store = Store::connect_postgres(&settings).await.unwrap();
    assert_eq!(store.revision(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_fails_calls_with_unavailable_and_the_store_recovers() {
    // A server of its own: this one is stopped and started again.
    let Some(mut own) = Postgres::start() else {
        return;
    };
    let url = own.create_database("restart");
    let store = connect(&url).await;
    store.create_policy(mk_policy("a")).await.unwrap();
    assert!(store.is_available());
    own.stop();
    let error = store.create_policy(mk_policy("b")).await.unwrap_err();
    assert!(matches!(error, StoreError::Unavailable(_)), "{error}");
    assert_eq!(tonic::Status::from(error).code(), tonic::Code::Unavailable);
    eventually("the store reports the database gone", || {
        !store.is_available()
    })
    .await;
    own.start_again();
    eventually("the store reports the database back", || {
        store.is_available()
    })
    .await;
    // Pooled connections to the old server are dropped, not used again.
    let mut written = None;
    for _ in 0..20 {
        match store.create_policy(mk_policy("b")).await {
            Ok(policy) => {
                written = Some(policy);
                break;
            }
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(written.expect("a write after the restart").revision, 2);
    assert!(
        store.get_policy("a").await.unwrap().is_some(),
        "acknowledged writes kept"
    );
}
