//! The calls sink: Kafka `calls` -> Postgres (or SQLite), exactly once.
//!
//! - [`batch`]: batches bounded by records and time, collapsed by primary key.
//! - [`store`]: the [`CallStore`] trait; [`PgStore`] (binary COPY / UNNEST
//!   upserts) and [`SqliteStore`] (the embedded store) implement it, with
//!   rows and offsets in one transaction and the version guard.
//! - [`sink`]: the consumer loop ([`run_sink`]); [`consumer`]: the Kafka
//!   consumer thread and its rebalance handshake; [`dlq`]: dead letters.
//! - [`partition_start`]: where a newly assigned partition is read from (stored offset,
//!   backfill, or stopped when the offset does not fit the partition).
//! - [`bench_support`]: the sink benchmark's measurements.
//! - [`row_security`]: row-level security on `calls` for multi-tenant readers.

pub mod batch;
pub mod bench_support;
pub mod columns;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod partition_start;
pub mod pg_copy;
pub mod pg_store;
pub mod redrive;
pub mod row_security;
pub mod sink;
pub mod sqlite_store;
pub mod store;
pub mod testing;

use std::sync::Arc;

pub use batch::{BatchLimits, DeadLetter, Pushed, RowKey, SinkBatch, SinkRow, SourceRecord};
pub use config::{RetryPolicy, SinkConfig};
pub use partition_start::{
    classify, PartitionRange, PartitionStart, PartitionStopped, StopCause, TopicInspector,
    TopicSnapshot,
};
pub use pg_store::{PgStore, PG_MIGRATOR};
pub use redrive::{redrive_dead_letters, DeadLetterRedriveReport, RedriveOptions};
pub use sink::{avro_decoder, run_sink, run_sink_with_decoder, CallDecoder, SinkError, SinkReport};
pub use sqlite_store::{SqliteStore, SQLITE_MIGRATOR};
pub use store::{
    AppliedCounts, ApplyOutcome, CallStore, DeadLetterCounts, DeadLetterId, DeadLetterQuery,
    OffsetAdvance, OffsetCommit, OffsetConflict, RedriveMarks, RedriveOutcome, RejectedRow,
    StoreError, StoredCall, StoredDeadLetter, StoredOffset,
};

/// Open the store `config.database_url` names: `postgres://` / `postgresql://`
/// for Postgres, `sqlite://PATH` or `sqlite::memory:` for the embedded store.
/// Used by `callsync db migrate` and `callsync run --roles sink`.
pub async fn connect_store(config: &SinkConfig) -> Result<Arc<dyn CallStore>, StoreError> {
    let url = config.database_url.expose();
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(SqliteStore::open(path).await?));
    }
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(":memory:").await?));
    }
    let store = PgStore::connect(url, config.max_connections, config.copy_threshold).await?;
    if config.row_level_security {
        store.migrate().await?;
        store.enable_row_level_security().await?;
    }
    Ok(Arc::new(store))
}
