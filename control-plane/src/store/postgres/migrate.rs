//! Schema migrations: the SQL files in `control-plane/migrations`, numbered from 1, applied in
//! order at start, each in its own transaction, under an advisory lock so replicas starting at
//! once apply each one once. A database whose schema is newer than this build's is refused,
//! naming both versions: an older build must not write tables it does not know.

use super::{StoreError, connect::error_text};

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/0001_store.sql"),
    include_str!("../../../migrations/0002_events.sql"),
    include_str!("../../../migrations/0003_audit.sql"),
    include_str!("../../../migrations/0004_fleet.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock key: "portcull" in ASCII.
const LOCK_KEY: i64 = 0x706f_7274_6375_6c6c;

pub async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let error = |what: &str, e: tokio_postgres::Error| {
        StoreError::Database(format!("schema migration: {what}: {}", error_text(&e)))
    };
    // Another replica may hold the lock for a long migration: wait for it, and let a
    // migration take as long as it takes (the connection's usual limits return after).
    client
        .batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
        .await
        .map_err(|e| error("preparing the session", e))?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| error("taking the migration lock", e))?;
    let result = apply(client).await;
    // The lock is the session's: released here, or with the connection.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result?;
    unlocked.map_err(|e| error("releasing the migration lock", e))?;
    client
        .batch_execute("RESET lock_timeout; RESET statement_timeout")
        .await
        .map_err(|e| error("restoring the session", e))?;
    Ok(())
}

async fn apply(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let error = |what: String, e: tokio_postgres::Error| {
        StoreError::Database(format!("schema migration: {what}: {}", error_text(&e)))
    };
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS portcullis_schema (
                 version bigint PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| error("the version table".into(), e))?;
    let current: i64 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM portcullis_schema",
            &[],
        )
        .await
        .map_err(|e| error("reading the version".into(), e))?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let tx = client
            .transaction()
            .await
            .map_err(|e| error(format!("version {version}"), e))?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| error(format!("version {version}"), e))?;
        tx.execute(
            "INSERT INTO portcullis_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| error(format!("version {version}"), e))?;
        tx.commit()
            .await
            .map_err(|e| error(format!("version {version}"), e))?;
        tracing::info!(version, "PostgreSQL: schema migrated");
    }
    Ok(())
}
