//! The embedded store (SQLite) for the demo and small deployments: the same
//! precedence guard and partial-record updates, and offsets in the same
//! transaction as the rows.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use callsync_schemas::{CallField, CallRecord, ContentFingerprint, FieldSet};
use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::batch::{RowKey, SinkBatch, Update};
use crate::columns::{self, CALL_COLUMNS};
use crate::dlq::reason_code;
use crate::store::{
    is_row_error, AppliedCounts, ApplyOutcome, CallStore, DeadLetterCounts, DeadLetterId,
    DeadLetterQuery, OffsetCommit, OffsetConflict, RedriveMarks, RedriveOutcome, RejectedRow,
    StoreError, StoredCall, StoredDeadLetter, StoredOffset,
};

/// SQLite migrations.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// See the module docs.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl SqliteStore {
    /// Open (creating if missing) the database file at `path`; `:memory:` for
    /// a private in-memory database.
    pub async fn open(path: &str) -> Result<Self, StoreError> {
        let options = if path == ":memory:" {
            SqliteConnectOptions::from_str("sqlite::memory:").map_err(|source| {
                StoreError::Connect {
                    store: "sqlite",
                    target: path.to_string(),
                    source,
                }
            })?
        } else {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
        }
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
        // One connection: SQLite has one writer, and `:memory:` is per connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                store: "sqlite",
                target: path.to_string(),
                source,
            })?;
        Ok(SqliteStore { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn advance_offsets(
    conn: &mut SqliteConnection,
    offsets: &OffsetCommit,
) -> Result<Vec<OffsetConflict>, StoreError> {
    let now = time_text(&Utc::now());
    let mut conflicts = Vec::new();
    let mut advances = offsets.advances.clone();
    advances.sort_by_key(|a| a.partition);
    for a in &advances {
        let moved = match a.expected {
            Some(expected) => sqlx::query(
                "UPDATE callsync_offsets SET next_offset = ?4, updated_at = ?6, \
                 topic_id = COALESCE(?7, topic_id) \
                 WHERE consumer_group = ?1 AND topic = ?2 AND partition = ?3 AND next_offset = ?5",
            )
            .bind(offsets.consumer_group.clone())
            .bind(offsets.topic.clone())
            .bind(a.partition)
            .bind(a.next_offset)
            .bind(expected)
            .bind(&now)
            .bind(offsets.topic_id.as_deref())
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::from_sqlx("advancing callsync_offsets", e))?,
            None => sqlx::query(
                "INSERT INTO callsync_offsets (consumer_group, topic, partition, next_offset, updated_at, \
                 topic_id, backfill_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )
            .bind(offsets.consumer_group.clone())
            .bind(offsets.topic.clone())
            .bind(a.partition)
            .bind(a.next_offset)
            .bind(&now)
            .bind(offsets.topic_id.as_deref())
            .bind(a.backfill_until)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::from_sqlx("inserting into callsync_offsets", e))?,
        };
        if moved.rows_affected() != 1 {
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT next_offset FROM callsync_offsets WHERE consumer_group = ?1 AND topic = ?2 AND partition = ?3",
            )
            .bind(offsets.consumer_group.clone())
            .bind(offsets.topic.clone())
            .bind(a.partition)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| StoreError::from_sqlx("reading callsync_offsets", e))?;
            conflicts.push(OffsetConflict {
                partition: a.partition,
                expected: a.expected,
                stored,
            });
        }
    }
    Ok(conflicts)
}

/// Keep the batch's dead letters with its offsets (see the Postgres store).
async fn record_dead_letters(
    conn: &mut SqliteConnection,
    offsets: &OffsetCommit,
    batch: &SinkBatch,
) -> Result<(), StoreError> {
    let now = time_text(&Utc::now());
    for letter in batch.dead_letters() {
        sqlx::query(
            "INSERT INTO callsync_dead_letters (consumer_group, topic, partition, kafka_offset, \
             record_key, value, reason, message, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (consumer_group, topic, partition, kafka_offset) DO UPDATE SET \
             record_key = excluded.record_key, value = excluded.value, reason = excluded.reason, \
             message = excluded.message, created_at = excluded.created_at, published_at = NULL, \
             redrive_attempts = 0, last_redrive_error = NULL, redriven_at = NULL",
        )
        .bind(&offsets.consumer_group)
        .bind(&offsets.topic)
        .bind(letter.source.partition)
        .bind(letter.source.offset)
        .bind(letter.source.key.as_deref())
        .bind(letter.source.payload.as_deref())
        .bind(reason_code(&letter.reason))
        .bind(&letter.reason)
        .bind(&now)
        .execute(&mut *conn)
        .await
        .map_err(|e| StoreError::from_sqlx("recording dead letters", e))?;
    }
    Ok(())
}

/// Mark dead letters redriven; false when one of them already was.
async fn mark_redriven(
    conn: &mut SqliteConnection,
    marks: &RedriveMarks,
) -> Result<bool, StoreError> {
    let now = time_text(&Utc::now());
    let mut marked = 0u64;
    for id in &marks.ids {
        marked += sqlx::query(
            "UPDATE callsync_dead_letters SET redriven_at = ?5, redrive_attempts = redrive_attempts + 1, \
             last_redrive_error = NULL WHERE consumer_group = ?1 AND topic = ?2 AND partition = ?3 \
             AND kafka_offset = ?4 AND redriven_at IS NULL",
        )
        .bind(&marks.consumer_group)
        .bind(&marks.topic)
        .bind(id.partition)
        .bind(id.offset)
        .bind(&now)
        .execute(&mut *conn)
        .await
        .map_err(|e| StoreError::from_sqlx("marking dead letters redriven", e))?
        .rows_affected();
    }
    Ok(marked == marks.ids.len() as u64)
}

/// A time column stored as RFC 3339 text; `key` names the row in the error.
fn parse_time(
    column: &'static str,
    key: &str,
    text: Option<String>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(&t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| StoreError::Decode {
                column,
                key: key.to_string(),
                message: e.to_string(),
            })
    })
    .transpose()
}

/// The upsert of a complete record (`carried: None`) or of a partial one carrying `carried`.
fn upsert_sql(carried: Option<FieldSet>) -> String {
    let params: Vec<String> = (1..=CALL_COLUMNS.len() + 1)
        .map(|i| format!("?{i}"))
        .collect();
    let conflict = match carried {
        None => columns::upsert_conflict_clause(),
        Some(set) => columns::partial_conflict_clause(set),
    };
    format!(
        "INSERT INTO calls ({}, synced_at) VALUES ({}) {conflict}",
        CALL_COLUMNS.join(", "),
        params.join(", "),
    )
}

/// Upsert one record under the guard; returns the rows written (0 or 1).
async fn upsert(
    conn: &mut SqliteConnection,
    sql: &str,
    topic: &str,
    update: &Update<'_>,
    synced_at: &str,
) -> Result<u64, sqlx::Error> {
    let r = update.record;
    let done = sqlx::query(sql)
        .bind(r.provider.as_str())
        .bind(&r.account_id)
        .bind(&r.call_id)
        .bind(r.version)
        .bind(update.fingerprint.as_i64())
        .bind(
            r.carries(CallField::StartedAt)
                .then(|| time_text(&r.started_at)),
        )
        .bind(r.answered_at.as_ref().map(time_text))
        .bind(r.ended_at.as_ref().map(time_text))
        .bind(r.duration_secs)
        .bind(r.billable_secs)
        .bind(r.caller_number.as_deref())
        .bind(r.tracking_number.as_deref())
        .bind(r.destination_number.as_deref())
        .bind(r.campaign_id.as_deref())
        .bind(r.campaign_name.as_deref())
        .bind(r.publisher_id.as_deref())
        .bind(r.publisher_name.as_deref())
        .bind(r.buyer_id.as_deref())
        .bind(r.buyer_name.as_deref())
        .bind(r.status.as_str())
        .bind(r.provider_status.as_deref())
        .bind(r.converted)
        .bind(r.revenue.map(|d| d.to_string()))
        .bind(r.payout.map(|d| d.to_string()))
        .bind(r.currency.as_deref())
        .bind(r.recording_url.as_deref())
        .bind(String::from_utf8_lossy(&columns::tags_json(&r.tags)).into_owned())
        .bind(r.source.as_str())
        .bind(time_text(&r.observed_at))
        .bind(r.provider_updated_at.as_ref().map(time_text))
        .bind(r.raw.as_deref())
        .bind(topic)
        .bind(update.source.partition)
        .bind(update.source.offset)
        .bind(synced_at)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

const SELECT_CALLS: &str = "SELECT provider, account_id, call_id, version, fingerprint, started_at, answered_at, ended_at, \
duration_secs, billable_secs, caller_number, tracking_number, destination_number, campaign_id, campaign_name, \
publisher_id, publisher_name, buyer_id, buyer_name, status, provider_status, converted, revenue, payout, currency, \
recording_url, tags, source, observed_at, provider_updated_at, raw, kafka_topic, kafka_partition, kafka_offset FROM calls";

fn stored_call(row: &SqliteRow) -> Result<StoredCall, StoreError> {
    let get_err = |column: &'static str, e: sqlx::Error| StoreError::Decode {
        column,
        key: "?".to_string(),
        message: e.to_string(),
    };
    macro_rules! col {
        ($name:literal) => {
            row.try_get($name).map_err(|e| get_err($name, e))?
        };
    }
    let provider: String = col!("provider");
    let account_id: String = col!("account_id");
    let call_id: String = col!("call_id");
    let key = format!("{provider}:{account_id}:{call_id}");
    let time = |column: &'static str, text: Option<String>| parse_time(column, &key, text);
    let required = |column: &'static str, v: Option<DateTime<Utc>>| {
        v.ok_or_else(|| StoreError::Decode {
            column,
            key: key.clone(),
            message: "NULL in a NOT NULL column".to_string(),
        })
    };
    let money =
        |column: &'static str, text: Option<String>| -> Result<Option<Decimal>, StoreError> {
            text.map(|t| columns::parse_field::<Decimal>(column, &key, &t))
                .transpose()
        };
    let status: String = col!("status");
    let source: String = col!("source");
    let tags: String = col!("tags");
    let started_at = time("started_at", col!("started_at"))?;
    let fingerprint: i64 = col!("fingerprint");
    let record = CallRecord {
        provider: columns::parse_field("provider", &key, &provider)?,
        account_id: account_id.clone(),
        call_id: call_id.clone(),
        version: col!("version"),
        started_at: started_at.unwrap_or_default(),
        answered_at: time("answered_at", col!("answered_at"))?,
        ended_at: time("ended_at", col!("ended_at"))?,
        duration_secs: col!("duration_secs"),
        billable_secs: col!("billable_secs"),
        caller_number: col!("caller_number"),
        tracking_number: col!("tracking_number"),
        destination_number: col!("destination_number"),
        campaign_id: col!("campaign_id"),
        campaign_name: col!("campaign_name"),
        publisher_id: col!("publisher_id"),
        publisher_name: col!("publisher_name"),
        buyer_id: col!("buyer_id"),
        buyer_name: col!("buyer_name"),
        status: columns::parse_field("status", &key, &status)?,
        provider_status: col!("provider_status"),
        converted: col!("converted"),
        revenue: money("revenue", col!("revenue"))?,
        payout: money("payout", col!("payout"))?,
        currency: col!("currency"),
        recording_url: col!("recording_url"),
        tags: columns::parse_tags(&key, &tags)?,
        source: columns::parse_field("source", &key, &source)?,
        observed_at: required("observed_at", time("observed_at", col!("observed_at"))?)?,
        provider_updated_at: time("provider_updated_at", col!("provider_updated_at"))?,
        raw: col!("raw"),
        present_fields: columns::stored_fields(started_at.is_some()),
    };
    Ok(StoredCall {
        record,
        fingerprint: ContentFingerprint::from_i64(fingerprint),
        kafka_topic: col!("kafka_topic"),
        kafka_partition: col!("kafka_partition"),
        kafka_offset: col!("kafka_offset"),
    })
}

/// Upsert the batch's rows in `tx` and commit, unless the database refuses one (then
/// nothing is committed).
async fn upsert_rows(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    batch: &SinkBatch,
) -> Result<ApplyOutcome, StoreError> {
    let complete_sql = upsert_sql(None);
    let mut partial_sql: BTreeMap<u32, String> = BTreeMap::new();
    let synced_at = time_text(&Utc::now());
    let mut counts = AppliedCounts::default();
    let mut rejected = Vec::new();
    'rows: for (key, row) in batch.rows() {
        // a key's records in order, each under the guard (see crate::batch)
        for update in row.updates() {
            let sql = match update.record.present_fields {
                None => &complete_sql,
                Some(set) => partial_sql
                    .entry(set.bits())
                    .or_insert_with(|| upsert_sql(Some(set))),
            };
            match upsert(&mut tx, sql, batch.topic(), &update, &synced_at).await {
                Ok(written) => {
                    counts.written += written;
                    counts.stale += 1 - written.min(1);
                }
                // SQLite rolls back only the failing statement: note the row, go on.
                Err(e) if is_row_error(&e) => {
                    rejected.push(RejectedRow {
                        key: RowKey::clone(key),
                        reason: match &e {
                            sqlx::Error::Database(db) => db.message().to_string(),
                            other => other.to_string(),
                        },
                    });
                    continue 'rows;
                }
                Err(e) => return Err(StoreError::from_sqlx("upserting a call into calls", e)),
            }
        }
    }
    if !rejected.is_empty() {
        let _ = tx.rollback().await;
        return Ok(ApplyOutcome::Rejected(rejected));
    }
    tx.commit()
        .await
        .map_err(|e| StoreError::from_sqlx("committing the batch transaction", e))?;
    Ok(ApplyOutcome::Committed(counts))
}

#[async_trait]
impl CallStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        SQLITE_MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                store: "sqlite",
                source,
            })
    }

    async fn load_partition_offsets(
        &self,
        consumer_group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, StoredOffset>, StoreError> {
        let rows: Vec<(i32, i64, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT partition, next_offset, topic_id, backfill_until FROM callsync_offsets \
             WHERE consumer_group = ?1 AND topic = ?2",
        )
        .bind(consumer_group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("loading callsync_offsets", e))?;
        Ok(rows
            .into_iter()
            .map(|(p, next_offset, topic_id, backfill_until)| {
                (
                    p,
                    StoredOffset {
                        next_offset,
                        topic_id,
                        backfill_until,
                    },
                )
            })
            .collect())
    }

    async fn apply(
        &self,
        batch: &SinkBatch,
        offsets: &OffsetCommit,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| StoreError::from_sqlx("beginning the batch transaction", e))?;
        let conflicts = advance_offsets(&mut tx, offsets).await?;
        if !conflicts.is_empty() {
            let _ = tx.rollback().await;
            return Ok(ApplyOutcome::OffsetConflict(conflicts));
        }
        record_dead_letters(&mut tx, offsets, batch).await?;
        upsert_rows(tx, batch).await
    }

    async fn dead_letters(
        &self,
        consumer_group: &str,
        topic: &str,
        query: &DeadLetterQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let (after_partition, after_offset) = query
            .after
            .map_or((i32::MIN, i64::MIN), |a| (a.partition, a.offset));
        let partitions = serde_json::to_string(&query.partitions).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(
            "SELECT partition, kafka_offset, record_key, value, reason, message, created_at, \
             published_at, redrive_attempts, last_redrive_error, redriven_at \
             FROM callsync_dead_letters WHERE consumer_group = ?1 AND topic = ?2 \
             AND (NOT ?3 OR redriven_at IS NULL) AND (NOT ?4 OR published_at IS NULL) \
             AND (json_array_length(?5) = 0 OR partition IN (SELECT value FROM json_each(?5))) \
             AND (?6 IS NULL OR reason = ?6) \
             AND (partition > ?7 OR (partition = ?7 AND kafka_offset > ?8)) \
             ORDER BY partition, kafka_offset LIMIT ?9",
        )
        .bind(consumer_group)
        .bind(topic)
        .bind(query.pending_only)
        .bind(query.unpublished_only)
        .bind(partitions)
        .bind(query.reason.as_deref())
        .bind(after_partition)
        .bind(after_offset)
        .bind(query.limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("reading callsync_dead_letters", e))?;
        rows.iter()
            .map(|row| {
                let get = |column: &'static str, e: sqlx::Error| StoreError::Decode {
                    column,
                    key: format!("dead letter of {topic}"),
                    message: e.to_string(),
                };
                macro_rules! col {
                    ($name:literal) => {
                        row.try_get($name).map_err(|e| get($name, e))?
                    };
                }
                let created_at: Option<String> = col!("created_at");
                Ok(StoredDeadLetter {
                    consumer_group: consumer_group.to_string(),
                    topic: topic.to_string(),
                    id: DeadLetterId {
                        partition: col!("partition"),
                        offset: col!("kafka_offset"),
                    },
                    key: col!("record_key"),
                    value: col!("value"),
                    reason: col!("reason"),
                    message: col!("message"),
                    created_at: parse_time("created_at", "dead letter", created_at)?
                        .unwrap_or_default(),
                    published_at: parse_time("published_at", "dead letter", col!("published_at"))?,
                    redrive_attempts: col!("redrive_attempts"),
                    last_redrive_error: col!("last_redrive_error"),
                    redriven_at: parse_time("redriven_at", "dead letter", col!("redriven_at"))?,
                })
            })
            .collect()
    }

    async fn count_dead_letters(
        &self,
        consumer_group: &str,
        topic: &str,
    ) -> Result<DeadLetterCounts, StoreError> {
        let (total, pending, unpublished): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE redriven_at IS NULL), \
             count(*) FILTER (WHERE published_at IS NULL) \
             FROM callsync_dead_letters WHERE consumer_group = ?1 AND topic = ?2",
        )
        .bind(consumer_group)
        .bind(topic)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("counting callsync_dead_letters", e))?;
        Ok(DeadLetterCounts {
            total,
            pending,
            unpublished,
        })
    }

    async fn mark_dead_letters_published(
        &self,
        consumer_group: &str,
        topic: &str,
        ids: &[DeadLetterId],
    ) -> Result<(), StoreError> {
        let now = time_text(&Utc::now());
        let mut tx =
            self.pool.begin().await.map_err(|e| {
                StoreError::from_sqlx("beginning to mark dead letters published", e)
            })?;
        for id in ids {
            sqlx::query(
                "UPDATE callsync_dead_letters SET published_at = ?5 WHERE consumer_group = ?1 \
                 AND topic = ?2 AND partition = ?3 AND kafka_offset = ?4 AND published_at IS NULL",
            )
            .bind(consumer_group)
            .bind(topic)
            .bind(id.partition)
            .bind(id.offset)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_sqlx("marking dead letters published", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| StoreError::from_sqlx("committing dead letters published", e))
    }

    async fn redrive(
        &self,
        batch: &SinkBatch,
        marks: &RedriveMarks,
    ) -> Result<RedriveOutcome, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| StoreError::from_sqlx("beginning the redrive transaction", e))?;
        if !mark_redriven(&mut tx, marks).await? {
            let _ = tx.rollback().await;
            return Ok(RedriveOutcome::AlreadyRedriven);
        }
        Ok(match upsert_rows(tx, batch).await? {
            ApplyOutcome::Committed(counts) => RedriveOutcome::Committed(counts),
            ApplyOutcome::Rejected(rows) => RedriveOutcome::Rejected(rows),
            ApplyOutcome::OffsetConflict(_) => RedriveOutcome::AlreadyRedriven,
        })
    }

    async fn record_redrive_failure(
        &self,
        consumer_group: &str,
        topic: &str,
        id: DeadLetterId,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE callsync_dead_letters SET redrive_attempts = redrive_attempts + 1, \
             last_redrive_error = ?5 WHERE consumer_group = ?1 AND topic = ?2 AND partition = ?3 \
             AND kafka_offset = ?4 AND redriven_at IS NULL",
        )
        .bind(consumer_group)
        .bind(topic)
        .bind(id.partition)
        .bind(id.offset)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("recording a failed redrive", e))?;
        Ok(())
    }

    async fn get(
        &self,
        provider: &str,
        account_id: &str,
        call_id: &str,
    ) -> Result<Option<StoredCall>, StoreError> {
        let row = sqlx::query(&format!(
            "{SELECT_CALLS} WHERE provider = ?1 AND account_id = ?2 AND call_id = ?3"
        ))
        .bind(provider)
        .bind(account_id)
        .bind(call_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("reading a call", e))?;
        row.as_ref().map(stored_call).transpose()
    }

    async fn all_calls(&self) -> Result<Vec<StoredCall>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT_CALLS} ORDER BY provider, account_id, call_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("reading all calls", e))?;
        rows.iter().map(stored_call).collect()
    }
}
