//! `[sink]` configuration.

use std::time::Duration;

use callsync_runtime::Secret;
use serde::Deserialize;

use crate::pg_store::DEFAULT_COPY_THRESHOLD;

/// How the sink runs. Every field but the database URL has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `postgres://...` for Postgres, `sqlite://path` (or `sqlite::memory:`) for
    /// the embedded store.
    pub database_url: Secret,
    /// Consumer group of the sink instances.
    #[serde(default = "default_group")]
    pub group: String,
    /// Full name of the topic to read; default: the prefixed `calls`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Full name of the dead-letter topic; default: the prefixed `calls.dlq`.
    #[serde(default)]
    pub dlq_topic: Option<String>,
    /// Kafka records per batch, before collapsing by key.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Kafka value bytes per batch, before collapsing by key: whichever of this and
    /// `batch_rows` is reached first closes the batch. The batch holds a few times this in
    /// memory (each row decoded, and as read for the DLQ).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Milliseconds after which a non-empty batch is committed.
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
    /// Milliseconds without a new record after which the batch in flight is committed at once,
    /// when its newest record was written less than `catch_up_after_ms` ago (live traffic).
    /// The processor's transactions become readable whole, so a few quiet milliseconds mean
    /// one has been read to its end. Otherwise (catching up) the wait is 20 ms, so that the
    /// gaps between two fetches do not cut a drain into small batches.
    #[serde(default = "default_live_idle_ms")]
    pub live_idle_ms: u64,
    /// Milliseconds after being written past which a record counts as read late (the sink
    /// is catching up); see `live_idle_ms`.
    #[serde(default = "default_catch_up_after_ms")]
    pub catch_up_after_ms: u64,
    /// Batches with at least this many rows use binary COPY; smaller ones UNNEST.
    #[serde(default = "default_copy_threshold")]
    pub copy_threshold: usize,
    /// Postgres connections of the pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Run migrations at start.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
    /// Enable the reader policy on `calls` at start (multi-tenant BI).
    #[serde(default)]
    pub row_level_security: bool,
    /// Kafka static membership (`group.instance.id`): a restarted instance
    /// takes its partitions back without a rebalance.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Retries of transient database and DLQ errors.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Milliseconds the consumer waits for the sink loop at a rebalance (the loop may be in
    /// the middle of a batch). After that it goes on without the answer: partitions it was
    /// given are assigned unread, and the loop seeks them to the stored offsets when it gets
    /// to them.
    #[serde(default = "default_rebalance_timeout_ms")]
    pub rebalance_timeout_ms: u64,
}

/// Exponential backoff with jitter. Transient errors are retried until the
/// sink is shut down (Postgres down for an hour is still recovered from);
/// `max_attempts` bounds it if set.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): doubling from the
    /// initial backoff up to the maximum, with up to 25% jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        let base = exp.min(self.max_backoff_ms).max(1);
        let jitter = rand::random::<u64>() % (base / 4 + 1);
        Duration::from_millis(base - base / 8 + jitter)
    }

    /// Whether retry number `attempt` may still happen.
    pub fn allows(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt <= max)
    }
}

fn default_group() -> String {
    "callsync-sink".to_string()
}
fn default_batch_rows() -> usize {
    10_000
}
/// 4 MiB: ~3,000 of the backfill's records with the provider's raw JSON (~1.5 KB each),
/// all 10,000 of records without it.
fn default_batch_max_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_batch_max_ms() -> u64 {
    500
}
fn default_live_idle_ms() -> u64 {
    5
}
fn default_catch_up_after_ms() -> u64 {
    1_000
}
fn default_copy_threshold() -> usize {
    DEFAULT_COPY_THRESHOLD
}
fn default_max_connections() -> u32 {
    4
}
fn default_true() -> bool {
    true
}
fn default_rebalance_timeout_ms() -> u64 {
    30_000
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    10_000
}

impl SinkConfig {
    /// A config with every default and this database URL.
    pub fn new(database_url: impl Into<String>) -> Self {
        SinkConfig {
            database_url: Secret::new(database_url),
            group: default_group(),
            topic: None,
            dlq_topic: None,
            batch_rows: default_batch_rows(),
            batch_max_bytes: default_batch_max_bytes(),
            batch_max_ms: default_batch_max_ms(),
            live_idle_ms: default_live_idle_ms(),
            catch_up_after_ms: default_catch_up_after_ms(),
            copy_threshold: default_copy_threshold(),
            max_connections: default_max_connections(),
            migrate_on_start: true,
            row_level_security: false,
            group_instance_id: None,
            retry: RetryPolicy::default(),
            rebalance_timeout_ms: default_rebalance_timeout_ms(),
        }
    }

    pub fn rebalance_timeout(&self) -> Duration {
        Duration::from_millis(self.rebalance_timeout_ms.max(1))
    }

    pub fn batch_max_age(&self) -> Duration {
        Duration::from_millis(self.batch_max_ms.max(1))
    }

    /// When the poller reports that nothing more is waiting to be read.
    pub fn idle_timing(&self) -> IdleTiming {
        IdleTiming {
            live: Duration::from_millis(self.live_idle_ms.max(1)),
            catching_up: CATCHING_UP_IDLE.max(Duration::from_millis(self.live_idle_ms)),
            live_within: Duration::from_millis(self.catch_up_after_ms),
        }
    }
}

/// The quiet time that ends a batch while the sink is catching up.
const CATCHING_UP_IDLE: Duration = Duration::from_millis(20);

/// How long the poller waits for another record before it tells the sink loop that nothing
/// more is waiting (and the batch in flight can be committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTiming {
    /// After a record written less than `live_within` ago.
    pub live: Duration,
    /// After an older record, and while nothing has been read.
    pub catching_up: Duration,
    /// How old a record may be and still count as live.
    pub live_within: Duration,
}

impl IdleTiming {
    /// The wait after a record with Kafka timestamp `timestamp_ms` (if it has one), read at
    /// `now_ms`. A record without a timestamp counts as caught up on.
    pub fn after_record(&self, timestamp_ms: Option<i64>, now_ms: i64) -> Duration {
        let live = timestamp_ms
            .is_some_and(|ts| now_ms.saturating_sub(ts) <= self.live_within.as_millis() as i64);
        if live {
            self.live
        } else {
            self.catching_up
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in_and_unknown_keys_are_refused() {
        let cfg: SinkConfig =
            serde_json::from_str(r#"{"database_url": "postgres://u:pw@h/db"}"#).unwrap();
        assert_eq!(cfg.group, "callsync-sink");
        assert_eq!(cfg.batch_rows, 10_000);
        assert_eq!(cfg.batch_max_bytes, 4 << 20);
        assert_eq!(cfg.copy_threshold, DEFAULT_COPY_THRESHOLD);
        assert!(cfg.migrate_on_start);
        assert!(!format!("{cfg:?}").contains("pw"));
        let err = serde_json::from_str::<SinkConfig>(r#"{"database_url": "x", "batch_size": 5}"#)
            .unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }

    #[test]
    fn a_live_record_ends_a_batch_after_a_short_quiet_and_a_late_one_after_the_long_one() {
        let cfg = SinkConfig::new("postgres://h/db");
        let idle = cfg.idle_timing();
        assert_eq!(idle.live, Duration::from_millis(5));
        assert_eq!(idle.catching_up, Duration::from_millis(20));
        let now = 1_000_000;
        assert_eq!(idle.after_record(Some(now - 40), now), idle.live);
        assert_eq!(idle.after_record(Some(now - 1_000), now), idle.live);
        assert_eq!(idle.after_record(Some(now - 1_001), now), idle.catching_up);
        // a producer clock ahead of ours is still live
        assert_eq!(idle.after_record(Some(now + 500), now), idle.live);
        assert_eq!(idle.after_record(None, now), idle.catching_up);
        // the catching-up wait is never shorter than the live one
        let slow = SinkConfig {
            live_idle_ms: 50,
            ..SinkConfig::new("postgres://h/db")
        };
        assert_eq!(slow.idle_timing().catching_up, Duration::from_millis(50));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            max_attempts: Some(3),
        };
        assert!(p.backoff(1) <= Duration::from_millis(125));
        assert!(p.backoff(3) >= Duration::from_millis(350));
        assert!(p.backoff(30) <= Duration::from_millis(1125));
        assert!(p.allows(3) && !p.allows(4));
    }
}
