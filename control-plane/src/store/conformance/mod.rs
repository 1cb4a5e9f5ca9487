//! The store's conformance suite: every test runs against both backends (sled in a temporary
//! dir; PostgreSQL in a fresh database of the test binary's private server, skipped with a
//! message when PostgreSQL is not installed), so the two keep the same semantics.

mod objects;
mod postgres;

use std::future::Future;

use portcullis_proto::v1::Policy;
pub(crate) use portcullis_testkit::{fresh_database, shared_postgres as server};

use super::{Store, postgres::PgSettings};

/// Waits (bounded: 30 s) until `check` holds.
pub(crate) async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..600 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not within 30 s: {what}");
}

/// A store (a replica) on PostgreSQL at `url`.
pub(crate) async fn connect(url: &str) -> Store {
    Store::connect_postgres(&PgSettings::new(url))
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Runs `test` on a new sled store, then on a new PostgreSQL store (when there is PostgreSQL).
pub(crate) async fn on_each_backend<F, Fut>(name: &str, test: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    test(Store::open_sled(dir.path()).unwrap()).await;
    if let Some(url) = fresh_database(name) {
        test(connect(&url).await).await;
    }
}

pub(crate) fn mk_policy(name: &str) -> Policy {
    Policy {
        name: name.into(),
        action: "block".into(),
        ..Default::default()
    }
}
