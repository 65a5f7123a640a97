//! The store the sink writes to: a trait with the operations the sink needs,
//! and the types they exchange. Implemented by [`crate::PgStore`] and
//! [`crate::SqliteStore`] with the same semantics.

use std::collections::BTreeMap;

use async_trait::async_trait;
use callsync_schemas::{CallRecord, ContentFingerprint};
use chrono::{DateTime, Utc};

use crate::batch::{RowKey, SinkBatch};

/// The offsets a batch moves, checked and written in the batch's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub consumer_group: String,
    pub topic: String,
    /// The Kafka topic id of the incarnation the offsets belong to, when known; stored with
    /// them (and filled into rows written before ids were kept).
    pub topic_id: Option<String>,
    /// Sorted by partition.
    pub advances: Vec<OffsetAdvance>,
}

/// One partition's move: from `expected` (what the sink believes is stored;
/// `None` for no row yet) to `next_offset`. If the stored value differs,
/// another instance has moved the partition on and nothing is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub partition: i32,
    pub expected: Option<i64>,
    pub next_offset: i64,
    /// Where the partition's backfill ends (its end offset when the sink found it without a
    /// stored offset); written with the partition's first row only.
    pub backfill_until: Option<i64>,
}

/// A partition's row of `callsync_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    pub next_offset: i64,
    /// The topic id of the incarnation the offset belongs to (None: not known).
    pub topic_id: Option<String>,
    /// Set when the partition was backfilled: the end offset it had when the backfill began.
    pub backfill_until: Option<i64>,
}

impl StoredOffset {
    /// Offsets still to read before the backfill is done (0 when it is, or never was).
    pub fn backfill_remaining(&self) -> i64 {
        self.backfill_until
            .map_or(0, |until| until.saturating_sub(self.next_offset).max(0))
    }
}

/// Identifies a sink dead letter: the Kafka record it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeadLetterId {
    pub partition: i32,
    pub offset: i64,
}

/// A record the sink could not write, as kept in `callsync_dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeadLetter {
    pub consumer_group: String,
    pub topic: String,
    pub id: DeadLetterId,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// A short code: `undecodable`, `empty_value`, `database_rejected`.
    pub reason: String,
    /// What exactly went wrong (the decoder's or the database's message).
    pub message: String,
    pub created_at: DateTime<Utc>,
    /// When it was published to the DLQ topic (None: not yet).
    pub published_at: Option<DateTime<Utc>>,
    pub redrive_attempts: i32,
    pub last_redrive_error: Option<String>,
    /// When `dlq redrive` applied it to the table (None: pending).
    pub redriven_at: Option<DateTime<Utc>>,
}

/// Which dead letters to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Only those not redriven yet.
    pub pending_only: bool,
    /// Only those not published to the DLQ topic yet.
    pub unpublished_only: bool,
    /// Only these partitions (all when empty).
    pub partitions: Vec<i32>,
    /// Only this reason code.
    pub reason: Option<String>,
    /// Only those after this one (paging), in (partition, offset) order.
    pub after: Option<DeadLetterId>,
    pub limit: i64,
}

/// How many dead letters (group, topic) has, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterCounts {
    pub total: i64,
    /// Not redriven yet.
    pub pending: i64,
    /// Not published to the DLQ topic yet.
    pub unpublished: i64,
}

/// Dead letters `dlq redrive` applies in one transaction, with the rows they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveMarks {
    pub consumer_group: String,
    pub topic: String,
    pub ids: Vec<DeadLetterId>,
}

/// What one redrive transaction did. Only `Committed` wrote anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveOutcome {
    /// The rows were upserted (or left alone where the table is newer) and the dead letters
    /// marked redriven.
    Committed(AppliedCounts),
    /// Nothing written: these rows are still refused.
    Rejected(Vec<RejectedRow>),
    /// Nothing written: another redrive got to some of these dead letters first.
    AlreadyRedriven,
}

/// A partition whose stored offset was not what the batch expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetConflict {
    pub partition: i32,
    pub expected: Option<i64>,
    pub stored: Option<i64>,
}

/// A row the database refused, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRow {
    pub key: RowKey,
    pub reason: String,
}

/// What one `apply` did. Only `Committed` wrote anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    Committed(AppliedCounts),
    /// Nothing written: these rows are refused by the database (found by
    /// bisecting). Send them to the DLQ, drop them from the batch, apply again.
    Rejected(Vec<RejectedRow>),
    /// Nothing written: another instance moved these partitions on.
    OffsetConflict(Vec<OffsetConflict>),
}

/// Counts of a committed batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedCounts {
    /// Rows inserted or updated.
    pub written: u64,
    /// Rows left alone because the table holds a newer version.
    pub stale: u64,
}

/// A call as stored, with the Kafka record it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCall {
    /// The row as a record: complete, or partial without `started_at` when no record has
    /// carried the call's start yet (see [`crate::columns::stored_fields`]).
    pub record: CallRecord,
    /// The content fingerprint of the record last applied ([`ContentFingerprint::UNKNOWN`]
    /// for rows written before the column existed).
    pub fingerprint: ContentFingerprint,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: connection lost, serialization failure, deadlock,
    /// shutdown of the server, too many connections.
    #[error("{operation} failed (transient, will retry): {source}")]
    Transient {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{operation} failed: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("running {store} migrations: {source}")]
    Migrate {
        store: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("connecting to {store} at {target}: {source}")]
    Connect {
        store: &'static str,
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("reading column {column} of call {key}: {message}")]
    Decode {
        column: &'static str,
        key: String,
        message: String,
    },
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient { .. })
    }

    /// The SQLSTATE of the database error behind this, if any.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            StoreError::Transient { source, .. } | StoreError::Database { source, .. } => {
                sqlstate(source)
            }
            _ => None,
        }
    }

    /// Classify a sqlx error from `operation`.
    pub fn from_sqlx(operation: &'static str, source: sqlx::Error) -> Self {
        if is_transient(&source) {
            StoreError::Transient { operation, source }
        } else {
            StoreError::Database { operation, source }
        }
    }
}

pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Transient failures: retried with backoff without advancing any offset.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => is_transient_sqlstate(&code),
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6)
            None => false,
        },
        _ => false,
    }
}

/// SQLSTATEs worth retrying.
pub fn is_transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" // serialization_failure
            | "40P01" // deadlock_detected
            | "55P03" // lock_not_available
            | "57P01" // admin_shutdown
            | "57P02" // crash_shutdown
            | "57P03" // cannot_connect_now
            | "53300" // too_many_connections
            | "53400" // configuration_limit_exceeded
            | "25006" // read_only_sql_transaction (failover to a standby)
            | "5" // SQLITE_BUSY
            | "6" // SQLITE_LOCKED
            | "517" // SQLITE_BUSY_SNAPSHOT
    ) || code.starts_with("08") // connection exceptions
}

/// Errors caused by a row's data (bisect the batch to find it): data
/// exceptions (22xxx) and integrity violations (23xxx); SQLite constraint
/// failures.
pub fn is_row_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => {
                code.starts_with("22") || code.starts_with("23") || code == "19" || code == "275"
            }
            None => false,
        },
        _ => false,
    }
}

/// Where the sink keeps calls and its offsets.
#[async_trait]
pub trait CallStore: Send + Sync + std::fmt::Debug {
    /// `"postgres"` or `"sqlite"`.
    fn kind(&self) -> &'static str;

    /// Run the migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// partition -> next offset stored for (group, topic).
    async fn load_offsets(
        &self,
        consumer_group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, StoreError> {
        Ok(self
            .load_partition_offsets(consumer_group, topic)
            .await?
            .into_iter()
            .map(|(p, s)| (p, s.next_offset))
            .collect())
    }

    /// partition -> its row of `callsync_offsets` for (group, topic).
    async fn load_partition_offsets(
        &self,
        consumer_group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, StoredOffset>, StoreError>;

    /// Upsert the batch's rows (guard: an older version never overwrites a
    /// newer; an equal one is re-applied), record its dead letters and move the
    /// offsets, in one transaction.
    async fn apply(
        &self,
        batch: &SinkBatch,
        offsets: &OffsetCommit,
    ) -> Result<ApplyOutcome, StoreError>;

    /// Dead letters of (group, topic) matching `query`, in (partition, offset) order.
    async fn dead_letters(
        &self,
        consumer_group: &str,
        topic: &str,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError>;

    /// How many dead letters (group, topic) has, by state.
    async fn count_dead_letters(
        &self,
        consumer_group: &str,
        topic: &str,
    ) -> Result<DeadLetterCounts, StoreError>;

    /// Note that these dead letters are in the DLQ topic.
    async fn mark_dead_letters_published(
        &self,
        consumer_group: &str,
        topic: &str,
        ids: &[DeadLetterId],
    ) -> Result<(), StoreError>;

    /// Upsert the batch's rows (rebuilt from dead letters) and mark those dead letters
    /// redriven, in one transaction.
    async fn redrive(
        &self,
        batch: &SinkBatch,
        marks: &RedriveMarks,
    ) -> Result<RedriveOutcome, StoreError>;

    /// Note a redrive that failed again for one dead letter (it stays pending).
    async fn record_redrive_failure(
        &self,
        consumer_group: &str,
        topic: &str,
        id: DeadLetterId,
        error: &str,
    ) -> Result<(), StoreError>;

    /// One call by primary key.
    async fn get(
        &self,
        provider: &str,
        account_id: &str,
        call_id: &str,
    ) -> Result<Option<StoredCall>, StoreError>;

    /// Every call, sorted by primary key (tests, the demo, small exports).
    async fn all_calls(&self) -> Result<Vec<StoredCall>, StoreError>;
}
