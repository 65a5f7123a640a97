//! Test harness: throwaway Postgres, rdkafka MockCluster, the real Kafka broker.
//!
//! Two tiers of Kafka tests (see `docs/testing.md`):
//! - **fast tier**: [`MockKafka`], librdkafka's in-process mock cluster. No broker, always
//!   available, but no compaction, no transaction markers, no `offsets_for_times`, no admin API.
//! - **real tier**: [`real_kafka()`], a real Apache Kafka 4.x broker started by
//!   `scripts/kafka-broker.sh` (or `scripts/test.sh`), found through `KAFKA_BOOTSTRAP`.
//!
//! Postgres: [`test_database()`] gives every call a fresh database, on `DATABASE_URL`'s server
//! when set, else on a throwaway cluster this process starts (once) and stops when it exits.
//!
//! Skipping: a test that needs a service uses [`skip_unless_kafka!`] / [`skip_unless_postgres!`].
//! Outside CI a missing service skips the test with a line on stderr; under `CI=true` it is a
//! failure, never a silent skip.

#![warn(missing_docs)]

use std::io::Write as _;

mod byte_edits;
mod error;
mod kafka;
pub mod markdown;
mod postgres;
mod process;

pub use byte_edits::apply_byte_edits;
pub use error::TestkitError;
pub use kafka::{real_kafka, unique_group, unique_topic, MockKafka, RealKafka};
pub use postgres::{pg_server, test_database, PgDurability, PgServer, PgStopMode, TestDatabase};

/// Re-exported so tests using the macros need no direct dependency.
#[doc(hidden)]
pub use tokio as __tokio;

/// Whether this process runs under CI: the `CI` environment variable is `true` or `1`
/// (case-insensitive), as CI runners set it.
pub fn ci() -> bool {
    matches!(
        std::env::var("CI").map(|v| v.trim().to_ascii_lowercase()),
        Ok(v) if v == "true" || v == "1"
    )
}

/// Declares that the calling test needs `service`, which is unavailable because of `reason`.
///
/// Under CI ([`ci()`]) this panics, failing the test with a message naming the service and the
/// reason: CI must run every test. Otherwise it prints a `SKIPPED` line naming the test and
/// returns, and the caller should return early (the `skip_unless_*!` macros do that).
pub fn require(service: &str, reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if ci() {
        panic!(
            "{test}: {service} is required under CI but unavailable: {reason} \
             (run the tests with scripts/test.sh, which starts the services)"
        );
    }
    // straight to stderr: the test harness captures eprintln! of passing tests, not this
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {service} unavailable: {reason} (scripts/test.sh starts it)"
    );
}

/// Gives the real Kafka broker ([`RealKafka`]) or returns from the calling test.
///
/// Outside CI an unset `KAFKA_BOOTSTRAP` skips the test (with a line on stderr); under CI it
/// fails it. Use `skip_unless_kafka!(value)` in a test that returns something, e.g.
/// `skip_unless_kafka!(Ok(()))`.
///
/// ```no_run
/// # async fn t() {
/// let kafka = callsync_testkit::skip_unless_kafka!();
/// let topic = kafka.unique_topic("orders");
/// kafka.create_topic(&topic, 3, &[]).await.unwrap();
/// # }
/// ```
#[macro_export]
macro_rules! skip_unless_kafka {
    () => {
        $crate::skip_unless_kafka!(())
    };
    ($ret:expr) => {
        match $crate::real_kafka() {
            ::std::option::Option::Some(kafka) => kafka,
            ::std::option::Option::None => return $ret,
        }
    };
}

/// Gives a fresh [`TestDatabase`] or returns from the calling (async) test.
///
/// Postgres counts as unavailable when `DATABASE_URL` is unset and no PostgreSQL server binaries
/// are installed: outside CI the test is skipped (with a line on stderr), under CI it fails.
/// Any other error (a `DATABASE_URL` that does not answer, initdb failing) fails the test.
/// Use `skip_unless_postgres!(value)` in a test that returns something.
///
/// ```no_run
/// # async fn t() {
/// let db = callsync_testkit::skip_unless_postgres!();
/// sqlx::query("SELECT 1").execute(&db.pool).await.unwrap();
/// # }
/// ```
#[macro_export]
macro_rules! skip_unless_postgres {
    () => {
        $crate::skip_unless_postgres!(())
    };
    ($ret:expr) => {
        match $crate::test_database_or_skip().await {
            ::std::option::Option::Some(db) => db,
            ::std::option::Option::None => return $ret,
        }
    };
}

/// [`test_database()`], but `None` (after [`require`]) when Postgres is unavailable; panics on
/// any other error. Backs [`skip_unless_postgres!`].
pub async fn test_database_or_skip() -> Option<TestDatabase> {
    match test_database().await {
        Ok(db) => Some(db),
        Err(e) if e.is_unavailable() => {
            require("PostgreSQL", &e.to_string());
            None
        }
        Err(e) => panic!("test database: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_reads_the_env_var() {
        // only reads; the value depends on how the tests run
        let v = std::env::var("CI").unwrap_or_default();
        assert_eq!(ci(), v.eq_ignore_ascii_case("true") || v == "1");
    }

    #[test]
    fn unique_names_differ() {
        let a = unique_topic("t");
        let b = unique_topic("t");
        assert_ne!(a, b);
        assert!(a.starts_with("t-"));
        assert!(unique_group("g").starts_with("g-"));
    }
}
