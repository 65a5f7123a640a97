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
use crate::store::{
    is_row_error, AppliedCounts, ApplyOutcome, CallStore, OffsetCommit, OffsetConflict,
    RejectedRow, StoreError, StoredCall,
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
                "UPDATE callsync_offsets SET next_offset = ?4, updated_at = ?6 \
                 WHERE consumer_group = ?1 AND topic = ?2 AND partition = ?3 AND next_offset = ?5",
            )
            .bind(offsets.consumer_group.clone())
            .bind(offsets.topic.clone())
            .bind(a.partition)
            .bind(a.next_offset)
            .bind(expected)
            .bind(&now)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::from_sqlx("advancing callsync_offsets", e))?,
            None => sqlx::query(
                "INSERT INTO callsync_offsets (consumer_group, topic, partition, next_offset, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .bind(offsets.consumer_group.clone())
            .bind(offsets.topic.clone())
            .bind(a.partition)
            .bind(a.next_offset)
            .bind(&now)
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
    let time =
        |column: &'static str, text: Option<String>| -> Result<Option<DateTime<Utc>>, StoreError> {
            text.map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| StoreError::Decode {
                        column,
                        key: key.clone(),
                        message: e.to_string(),
                    })
            })
            .transpose()
        };
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

    async fn load_offsets(
        &self,
        consumer_group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, StoreError> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, next_offset FROM callsync_offsets WHERE consumer_group = ?1 AND topic = ?2",
        )
        .bind(consumer_group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("loading callsync_offsets", e))?;
        Ok(rows.into_iter().collect())
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
