//! One PostgreSQL server per test binary, and a fresh database on it per test.

use std::sync::{
    OnceLock,
    atomic::{AtomicU32, Ordering},
};

use super::Postgres;

/// The test binary's server, started on first use; None without PostgreSQL (after saying how
/// to get it).
pub fn shared_postgres() -> Option<&'static Postgres> {
    static SERVER: OnceLock<Option<Postgres>> = OnceLock::new();
    SERVER.get_or_init(Postgres::start).as_ref()
}

/// A new database named after `test` on the shared server; its URL. None without PostgreSQL.
pub fn fresh_database(test: &str) -> Option<String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = shared_postgres()?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name: String = format!("{test}_{}_{n}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    Some(server.create_database(&name))
}

/// Whether the end-to-end tests run their control planes on PostgreSQL
/// (`PORTCULLIS_TEST_STORE=postgres`; `cargo xtask test` runs the fleet, scan and event suites
/// that way too).
pub fn postgres_requested() -> bool {
    std::env::var("PORTCULLIS_TEST_STORE").is_ok_and(|v| v == "postgres")
}
