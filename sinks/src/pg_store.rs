//! The Postgres store: binary COPY into a temporary staging table and one
//! `INSERT ... ON CONFLICT` for large batches, `UNNEST` arrays for small ones;
//! rows and offsets in one transaction; rejected rows found by bisecting.
//!
//! Complete records take those statements as they always did. Partial records (few: webhooks)
//! go through `UNNEST` statements of their own, one per set of carried fields, whose `DO
//! UPDATE` sets only those columns: a batch of complete records pays nothing for them. A key
//! with records stacked under a partial one ([`SinkRow::earlier`]) is applied in layers, the
//! oldest record of every key first, each under the guard.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use callsync_schemas::{CallField, CallRecord, ContentFingerprint, FieldSet};
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};
use std::str::FromStr;

use crate::batch::{SinkBatch, SinkRow, Update};
use crate::columns::{self, CALL_COLUMNS};
use crate::dlq::reason_code;
use crate::pg_copy::BinaryCopyWriter;
use crate::store::{
    is_row_error, AppliedCounts, ApplyOutcome, CallStore, DeadLetterCounts, DeadLetterId,
    DeadLetterQuery, OffsetCommit, OffsetConflict, RedriveMarks, RedriveOutcome, RejectedRow,
    StoreError, StoredCall, StoredDeadLetter, StoredOffset,
};

/// Postgres migrations (`callsync db migrate`).
pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Batches with at least this many rows go through binary COPY by default.
pub const DEFAULT_COPY_THRESHOLD: usize = 1000;

/// Bytes of COPY data sent per message.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    copy_threshold: usize,
}

impl PgStore {
    /// Connect a pool to `url` (a `postgres://` URL).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        copy_threshold: usize,
    ) -> Result<Self, StoreError> {
        let target = redacted_target(url);
        let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
            store: "postgres",
            target: target.clone(),
            source,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                store: "postgres",
                target: target.clone(),
                source,
            })?;
        warn_when_commits_can_be_lost(&pool, &target).await;
        Ok(PgStore {
            pool,
            copy_threshold,
        })
    }

    pub fn from_pool(pool: PgPool, copy_threshold: usize) -> Self {
        PgStore {
            pool,
            copy_threshold,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Turn the reader policy on, and force it (see [`crate::row_security`]): roles other
    /// than the owner see only the accounts granted to them in `callsync_account_grants`.
    pub async fn enable_row_level_security(&self) -> Result<(), StoreError> {
        crate::row_security::enforce(&self.pool)
            .await
            .map_err(|e| match e {
                crate::row_security::RowSecurityError::Database { operation, source } => {
                    StoreError::from_sqlx(operation, source)
                }
                other => StoreError::Database {
                    operation: "enforcing row-level security on calls",
                    source: sqlx::Error::Protocol(other.to_string()),
                },
            })
    }

    /// Grant `role_name` the calls of one provider account.
    pub async fn grant_account(
        &self,
        role_name: &str,
        provider: &str,
        account_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO callsync_account_grants (role_name, provider, account_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(role_name)
        .bind(provider)
        .bind(account_id)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("granting an account", e))?;
        Ok(())
    }

    /// Upsert the batch's rows and write its ledger (offsets and dead letters, or redrive
    /// marks) in one transaction; bisect when a row is refused.
    async fn apply_with(
        &self,
        batch: &SinkBatch,
        ledger: Ledger<'_>,
    ) -> Result<Outcome, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| StoreError::from_sqlx("beginning the batch transaction", e))?;
        if let Some(conflict) = write_ledger(&mut tx, batch, ledger).await? {
            let _ = tx.rollback().await;
            return Ok(Outcome::Conflict(conflict));
        }
        let rows: Vec<&SinkRow> = batch.rows().map(|(_, r)| r).collect();
        let mut counts = AppliedCounts::default();
        if !rows.is_empty() {
            match apply_rows(&mut tx, batch.topic(), &rows, self.copy_threshold).await {
                Ok(written) => {
                    counts.written = written;
                    counts.stale = (batch.update_count() as u64).saturating_sub(written);
                }
                Err(e) if is_row_error(&e) => {
                    let _ = tx.rollback().await;
                    return self.bisect(batch, ledger).await;
                }
                Err(e) => return Err(StoreError::from_sqlx("upserting the batch into calls", e)),
            }
        }
        tx.commit()
            .await
            .map_err(|e| StoreError::from_sqlx("committing the batch transaction", e))?;
        Ok(Outcome::Committed(counts))
    }

    /// Find the rows Postgres refuses: halve the batch under savepoints until
    /// each failing half is one row. Nothing is committed when a row is refused.
    async fn bisect(&self, batch: &SinkBatch, ledger: Ledger<'_>) -> Result<Outcome, StoreError> {
        let span = tracing::info_span!("bisect", rows = batch.row_count());
        let _guard = span.enter();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| StoreError::from_sqlx("beginning the bisect transaction", e))?;
        if let Some(conflict) = write_ledger(&mut tx, batch, ledger).await? {
            let _ = tx.rollback().await;
            return Ok(Outcome::Conflict(conflict));
        }
        let rows: Vec<&SinkRow> = batch.rows().map(|(_, r)| r).collect();
        let mut rejected = Vec::new();
        let mut written = 0;
        let mut ranges = vec![(0usize, rows.len())];
        while let Some((lo, hi)) = ranges.pop() {
            exec(&mut tx, "SAVEPOINT callsync_bisect").await?;
            match apply_rows(&mut tx, batch.topic(), &rows[lo..hi], usize::MAX).await {
                Ok(n) => {
                    written += n;
                    exec(&mut tx, "RELEASE SAVEPOINT callsync_bisect").await?;
                }
                Err(e) if is_row_error(&e) => {
                    exec(&mut tx, "ROLLBACK TO SAVEPOINT callsync_bisect").await?;
                    exec(&mut tx, "RELEASE SAVEPOINT callsync_bisect").await?;
                    if hi - lo == 1 {
                        rejected.push(RejectedRow {
                            key: crate::batch::RowKey::of(&rows[lo].record),
                            reason: database_message(&e),
                        });
                    } else {
                        let mid = lo + (hi - lo) / 2;
                        ranges.push((mid, hi));
                        ranges.push((lo, mid));
                    }
                }
                Err(e) => {
                    return Err(StoreError::from_sqlx(
                        "upserting while bisecting the batch",
                        e,
                    ))
                }
            }
        }
        if !rejected.is_empty() {
            let _ = tx.rollback().await;
            return Ok(Outcome::Rejected(rejected));
        }
        tx.commit()
            .await
            .map_err(|e| StoreError::from_sqlx("committing the bisected batch", e))?;
        Ok(Outcome::Committed(AppliedCounts {
            written,
            stale: (batch.update_count() as u64).saturating_sub(written),
        }))
    }
}

/// What a transaction records besides the rows.
#[derive(Debug, Clone, Copy)]
enum Ledger<'a> {
    /// The sink's batch: its offsets (compare-and-set) and its dead letters.
    Batch(&'a OffsetCommit),
    /// `dlq redrive`: the dead letters whose rows the batch carries.
    Redrive(&'a RedriveMarks),
}

/// Why a ledger could not be written (nothing is).
#[derive(Debug)]
enum LedgerConflict {
    Offsets(Vec<OffsetConflict>),
    AlreadyRedriven,
}

/// The outcome of [`PgStore::apply_with`].
#[derive(Debug)]
enum Outcome {
    Committed(AppliedCounts),
    Rejected(Vec<RejectedRow>),
    Conflict(LedgerConflict),
}

fn write_ledger<'a>(
    conn: &'a mut PgConnection,
    batch: &'a SinkBatch,
    ledger: Ledger<'a>,
) -> BoxFuture<'a, Result<Option<LedgerConflict>, StoreError>> {
    Box::pin(async move {
        match ledger {
            Ledger::Batch(offsets) => {
                let conflicts = advance_offsets(&mut *conn, offsets).await?;
                if !conflicts.is_empty() {
                    return Ok(Some(LedgerConflict::Offsets(conflicts)));
                }
                record_dead_letters(conn, offsets, batch).await?;
                Ok(None)
            }
            Ledger::Redrive(marks) => {
                let mut marked = 0u64;
                for id in &marks.ids {
                    marked += sqlx::query(
                        "UPDATE callsync_dead_letters SET redriven_at = now(), \
                         redrive_attempts = redrive_attempts + 1, last_redrive_error = NULL \
                         WHERE consumer_group = $1 AND topic = $2 AND partition = $3 \
                         AND kafka_offset = $4 AND redriven_at IS NULL",
                    )
                    .bind(&marks.consumer_group)
                    .bind(&marks.topic)
                    .bind(id.partition)
                    .bind(id.offset)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| StoreError::from_sqlx("marking dead letters redriven", e))?
                    .rows_affected();
                }
                Ok((marked != marks.ids.len() as u64).then_some(LedgerConflict::AlreadyRedriven))
            }
        }
    })
}

/// Keep the batch's dead letters with its offsets. A record read again (after a rewind)
/// and refused again replaces its earlier dead letter, pending and unpublished once more.
fn record_dead_letters<'a>(
    conn: &'a mut PgConnection,
    offsets: &'a OffsetCommit,
    batch: &'a SinkBatch,
) -> BoxFuture<'a, Result<(), StoreError>> {
    Box::pin(async move {
        for letter in batch.dead_letters() {
            sqlx::query(
                "INSERT INTO callsync_dead_letters (consumer_group, topic, partition, kafka_offset, \
                 record_key, value, reason, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (consumer_group, topic, partition, kafka_offset) DO UPDATE SET \
                 record_key = EXCLUDED.record_key, value = EXCLUDED.value, reason = EXCLUDED.reason, \
                 message = EXCLUDED.message, created_at = now(), published_at = NULL, \
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
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::from_sqlx("recording dead letters", e))?;
        }
        Ok(())
    })
}

fn exec<'a>(
    conn: &'a mut PgConnection,
    sql: &'static str,
) -> BoxFuture<'a, Result<(), StoreError>> {
    Box::pin(async move {
        sqlx::Executor::execute(conn, sql)
            .await
            .map_err(|e| StoreError::from_sqlx(sql, e))?;
        Ok(())
    })
}

/// The database's own message for a refused row.
fn database_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    }
}

/// `postgres://user@host:port/db` without the password.
fn redacted_target(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(unparseable database url)".to_string(),
    }
}

/// Compare-and-set every partition's offset, in partition order (so two
/// instances lock offsets in one order and never deadlock). Returns the
/// partitions whose stored offset was not the expected one.
fn advance_offsets<'a>(
    conn: &'a mut PgConnection,
    offsets: &'a OffsetCommit,
) -> BoxFuture<'a, Result<Vec<OffsetConflict>, StoreError>> {
    Box::pin(async move {
        let mut conflicts = Vec::new();
        let mut advances = offsets.advances.clone();
        advances.sort_by_key(|a| a.partition);
        for a in &advances {
            let moved = match a.expected {
                Some(expected) => sqlx::query(
                    "UPDATE callsync_offsets SET next_offset = $4, updated_at = now(), \
                     topic_id = COALESCE($6, topic_id) \
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $5",
                )
                .bind(offsets.consumer_group.clone())
                .bind(offsets.topic.clone())
                .bind(a.partition)
                .bind(a.next_offset)
                .bind(expected)
                .bind(offsets.topic_id.as_deref())
                .execute(&mut *conn)
                .await
                .map_err(|e| StoreError::from_sqlx("advancing callsync_offsets", e))?,
                None => sqlx::query(
                    "INSERT INTO callsync_offsets (consumer_group, topic, partition, next_offset, \
                     topic_id, backfill_until) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(offsets.consumer_group.clone())
                .bind(offsets.topic.clone())
                .bind(a.partition)
                .bind(a.next_offset)
                .bind(offsets.topic_id.as_deref())
                .bind(a.backfill_until)
                .execute(&mut *conn)
                .await
                .map_err(|e| StoreError::from_sqlx("inserting into callsync_offsets", e))?,
            };
            if moved.rows_affected() != 1 {
                let stored: Option<i64> = sqlx::query_scalar(
                "SELECT next_offset FROM callsync_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
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
    })
}

/// Every record of `rows`, in layers (the oldest record of every key first), complete ones by
/// COPY when at least `copy_threshold` of them, else by UNNEST, partial ones by UNNEST per set
/// of carried fields. Returns the rows written.
fn apply_rows<'a>(
    conn: &'a mut PgConnection,
    topic: &'a str,
    rows: &'a [&'a SinkRow],
    copy_threshold: usize,
) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(async move {
        let layers = rows.iter().map(|r| r.update_count()).max().unwrap_or(0);
        let mut written = 0;
        for layer in 0..layers {
            let mut complete: Vec<Update<'_>> = Vec::with_capacity(rows.len());
            let mut partial: BTreeMap<u32, (FieldSet, Vec<Update<'_>>)> = BTreeMap::new();
            for update in rows.iter().filter_map(|r| r.update(layer)) {
                match update.record.present_fields {
                    None => complete.push(update),
                    Some(set) => partial
                        .entry(set.bits())
                        .or_insert_with(|| (set, Vec::new()))
                        .1
                        .push(update),
                }
            }
            if !complete.is_empty() {
                written += if complete.len() >= copy_threshold {
                    upsert_by_copy(&mut *conn, topic, &complete).await?
                } else {
                    upsert_by_unnest(&mut *conn, topic, &complete, None).await?
                };
            }
            for (set, updates) in partial.values() {
                written += upsert_by_unnest(&mut *conn, topic, updates, Some(*set)).await?;
            }
        }
        Ok(written)
    })
}

/// The upsert of complete records (`carried: None`) or of partial records carrying `carried`.
fn upsert_sql(select: &str, carried: Option<FieldSet>) -> String {
    let conflict = match carried {
        None => columns::upsert_conflict_clause(),
        Some(set) => columns::partial_conflict_clause(set),
    };
    format!(
        "INSERT INTO calls ({}, synced_at) {select} {conflict}",
        CALL_COLUMNS.join(", "),
    )
}

const STAGING_DDL: &str = "SET LOCAL client_min_messages = warning; \
CREATE TEMP TABLE IF NOT EXISTS callsync_staging (\
provider text, account_id text, call_id text, version int8, fingerprint int8, \
started_at timestamptz, \
answered_at timestamptz, ended_at timestamptz, duration_secs int4, billable_secs int4, \
caller_number text, tracking_number text, destination_number text, campaign_id text, \
campaign_name text, publisher_id text, publisher_name text, buyer_id text, buyer_name text, \
status text, provider_status text, converted bool, revenue numeric, payout numeric, \
currency text, recording_url text, tags jsonb, source text, observed_at timestamptz, \
provider_updated_at timestamptz, raw bytea, kafka_topic text, kafka_partition int4, \
kafka_offset int8) ON COMMIT DELETE ROWS";

/// Binary COPY of complete records into the staging table, then one INSERT ... ON CONFLICT.
fn upsert_by_copy<'a>(
    conn: &'a mut PgConnection,
    topic: &'a str,
    updates: &'a [Update<'a>],
) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(async move {
        sqlx::Executor::execute(&mut *conn, STAGING_DDL).await?;
        let copy_sql = format!(
            "COPY callsync_staging ({}) FROM STDIN (FORMAT binary)",
            CALL_COLUMNS.join(", ")
        );
        let mut copy = conn.copy_in_raw(&copy_sql).await?;
        let mut writer = BinaryCopyWriter::with_capacity(COPY_CHUNK_BYTES + 64 * 1024);
        for update in updates {
            write_copy_row(&mut writer, topic, update);
            if writer.len() >= COPY_CHUNK_BYTES {
                if let Err(e) = copy.send(writer.take_chunk()).await {
                    let _ = copy.abort("callsync: sending COPY data failed").await;
                    return Err(e);
                }
            }
        }
        if let Err(e) = copy.send(writer.finish()).await {
            let _ = copy.abort("callsync: sending COPY data failed").await;
            return Err(e);
        }
        copy.finish().await?;
        let result = sqlx::query(&upsert_sql(
            &format!(
                "SELECT {}, now() FROM callsync_staging",
                CALL_COLUMNS.join(", ")
            ),
            None,
        ))
        .execute(&mut *conn)
        .await?;
        // staging rows go on commit; clear now too, in case of bisect on the same tx
        sqlx::Executor::execute(&mut *conn, "TRUNCATE callsync_staging").await?;
        Ok(result.rows_affected())
    })
}

/// `started_at`, NULL when a partial record does not carry it.
fn started_at(r: &CallRecord) -> Option<&chrono::DateTime<chrono::Utc>> {
    r.carries(CallField::StartedAt).then_some(&r.started_at)
}

fn write_copy_row(w: &mut BinaryCopyWriter, topic: &str, update: &Update<'_>) {
    let r = update.record;
    w.tuple(CALL_COLUMNS.len() as i16);
    w.text(r.provider.as_str());
    w.text(&r.account_id);
    w.text(&r.call_id);
    w.int8(r.version);
    w.int8(update.fingerprint.as_i64());
    w.opt_timestamptz(started_at(r));
    w.opt_timestamptz(r.answered_at.as_ref());
    w.opt_timestamptz(r.ended_at.as_ref());
    w.opt_int4(r.duration_secs);
    w.opt_int4(r.billable_secs);
    w.opt_text(r.caller_number.as_deref());
    w.opt_text(r.tracking_number.as_deref());
    w.opt_text(r.destination_number.as_deref());
    w.opt_text(r.campaign_id.as_deref());
    w.opt_text(r.campaign_name.as_deref());
    w.opt_text(r.publisher_id.as_deref());
    w.opt_text(r.publisher_name.as_deref());
    w.opt_text(r.buyer_id.as_deref());
    w.opt_text(r.buyer_name.as_deref());
    w.text(r.status.as_str());
    w.opt_text(r.provider_status.as_deref());
    w.opt_bool(r.converted);
    w.opt_numeric(r.revenue.as_ref());
    w.opt_numeric(r.payout.as_ref());
    w.opt_text(r.currency.as_deref());
    w.opt_text(r.recording_url.as_deref());
    w.jsonb(&columns::tags_json(&r.tags));
    w.text(r.source.as_str());
    w.timestamptz(&r.observed_at);
    w.opt_timestamptz(r.provider_updated_at.as_ref());
    w.opt_bytes(r.raw.as_deref());
    w.text(topic);
    w.int4(update.source.partition);
    w.int8(update.source.offset);
}

/// One INSERT ... SELECT FROM UNNEST of column arrays: complete records (`carried: None`) or
/// partial records that all carry `carried`.
fn upsert_by_unnest<'a>(
    conn: &'a mut PgConnection,
    topic: &'a str,
    updates: &'a [Update<'a>],
    carried: Option<FieldSet>,
) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
    Box::pin(async move {
        const TYPES: [&str; 34] = [
            "text",
            "text",
            "text",
            "int8",
            "int8",
            "timestamptz",
            "timestamptz",
            "timestamptz",
            "int4",
            "int4",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
            "bool",
            "numeric",
            "numeric",
            "text",
            "text",
            "jsonb",
            "text",
            "timestamptz",
            "timestamptz",
            "bytea",
            "text",
            "int4",
            "int8",
        ];
        let params: Vec<String> = TYPES
            .iter()
            .enumerate()
            .map(|(i, t)| format!("${}::{t}[]", i + 1))
            .collect();
        let sql = upsert_sql(
            &format!("SELECT u.*, now() FROM UNNEST({}) AS u", params.join(", ")),
            carried,
        );

        macro_rules! column {
            ($r:ident => $e:expr) => {
                updates
                    .iter()
                    .map(|u| u.record)
                    .map(|$r| $e)
                    .collect::<Vec<_>>()
            };
        }
        let tags: Vec<serde_json::Value> =
            column!(r => serde_json::to_value(&r.tags).unwrap_or(serde_json::Value::Null));
        let providers = column!(r => r.provider.as_str());
        let account_ids = column!(r => r.account_id.as_str());
        let call_ids = column!(r => r.call_id.as_str());
        let versions = column!(r => r.version);
        let fingerprints: Vec<i64> = updates.iter().map(|u| u.fingerprint.as_i64()).collect();
        let started_at = column!(r => started_at(r).copied());
        let answered_at = column!(r => r.answered_at);
        let ended_at = column!(r => r.ended_at);
        let duration_secs = column!(r => r.duration_secs);
        let billable_secs = column!(r => r.billable_secs);
        let caller_number = column!(r => r.caller_number.as_deref());
        let tracking_number = column!(r => r.tracking_number.as_deref());
        let destination_number = column!(r => r.destination_number.as_deref());
        let campaign_id = column!(r => r.campaign_id.as_deref());
        let campaign_name = column!(r => r.campaign_name.as_deref());
        let publisher_id = column!(r => r.publisher_id.as_deref());
        let publisher_name = column!(r => r.publisher_name.as_deref());
        let buyer_id = column!(r => r.buyer_id.as_deref());
        let buyer_name = column!(r => r.buyer_name.as_deref());
        let status = column!(r => r.status.as_str());
        let provider_status = column!(r => r.provider_status.as_deref());
        let converted = column!(r => r.converted);
        let revenue = column!(r => r.revenue);
        let payout = column!(r => r.payout);
        let currency = column!(r => r.currency.as_deref());
        let recording_url = column!(r => r.recording_url.as_deref());
        let source = column!(r => r.source.as_str());
        let observed_at = column!(r => r.observed_at);
        let provider_updated_at = column!(r => r.provider_updated_at);
        let raw: Vec<Option<&[u8]>> = column!(r => r.raw.as_deref());
        let topics = vec![topic; updates.len()];
        let partitions: Vec<i32> = updates.iter().map(|u| u.source.partition).collect();
        let offsets: Vec<i64> = updates.iter().map(|u| u.source.offset).collect();

        let result = sqlx::query(&sql)
            .bind(providers)
            .bind(account_ids)
            .bind(call_ids)
            .bind(versions)
            .bind(fingerprints)
            .bind(started_at)
            .bind(answered_at)
            .bind(ended_at)
            .bind(duration_secs)
            .bind(billable_secs)
            .bind(caller_number)
            .bind(tracking_number)
            .bind(destination_number)
            .bind(campaign_id)
            .bind(campaign_name)
            .bind(publisher_id)
            .bind(publisher_name)
            .bind(buyer_id)
            .bind(buyer_name)
            .bind(status)
            .bind(provider_status)
            .bind(converted)
            .bind(revenue)
            .bind(payout)
            .bind(currency)
            .bind(recording_url)
            .bind(tags)
            .bind(source)
            .bind(observed_at)
            .bind(provider_updated_at)
            .bind(raw)
            .bind(topics)
            .bind(partitions)
            .bind(offsets)
            .execute(&mut *conn)
            .await?;
        Ok(result.rows_affected())
    })
}
const SELECT_CALLS: &str = "SELECT provider, account_id, call_id, version, fingerprint, started_at, answered_at, ended_at, \
duration_secs, billable_secs, caller_number, tracking_number, destination_number, campaign_id, campaign_name, \
publisher_id, publisher_name, buyer_id, buyer_name, status, provider_status, converted, revenue, payout, currency, \
recording_url, tags::text AS tags, source, observed_at, provider_updated_at, raw, kafka_topic, kafka_partition, \
kafka_offset FROM calls";

fn stored_call(row: &sqlx::postgres::PgRow) -> Result<StoredCall, StoreError> {
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
    let status: String = col!("status");
    let source: String = col!("source");
    let tags: String = col!("tags");
    let started_at: Option<chrono::DateTime<chrono::Utc>> = col!("started_at");
    let fingerprint: i64 = col!("fingerprint");
    let record = CallRecord {
        provider: columns::parse_field("provider", &key, &provider)?,
        account_id,
        call_id,
        version: col!("version"),
        started_at: started_at.unwrap_or_default(),
        answered_at: col!("answered_at"),
        ended_at: col!("ended_at"),
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
        revenue: col!("revenue"),
        payout: col!("payout"),
        currency: col!("currency"),
        recording_url: col!("recording_url"),
        tags: columns::parse_tags(&key, &tags)?,
        source: columns::parse_field("source", &key, &source)?,
        observed_at: col!("observed_at"),
        provider_updated_at: col!("provider_updated_at"),
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
impl CallStore for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        PG_MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|source| StoreError::Migrate {
                store: "postgres",
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
             WHERE consumer_group = $1 AND topic = $2",
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
        Ok(
            match self.apply_with(batch, Ledger::Batch(offsets)).await? {
                Outcome::Committed(counts) => ApplyOutcome::Committed(counts),
                Outcome::Rejected(rows) => ApplyOutcome::Rejected(rows),
                Outcome::Conflict(LedgerConflict::Offsets(c)) => ApplyOutcome::OffsetConflict(c),
                Outcome::Conflict(LedgerConflict::AlreadyRedriven) => {
                    ApplyOutcome::OffsetConflict(Vec::new())
                }
            },
        )
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
        let rows = sqlx::query(
            "SELECT partition, kafka_offset, record_key, value, reason, message, created_at, \
             published_at, redrive_attempts, last_redrive_error, redriven_at \
             FROM callsync_dead_letters WHERE consumer_group = $1 AND topic = $2 \
             AND (NOT $3 OR redriven_at IS NULL) AND (NOT $4 OR published_at IS NULL) \
             AND (cardinality($5::int4[]) = 0 OR partition = ANY($5)) \
             AND ($6::text IS NULL OR reason = $6) AND (partition, kafka_offset) > ($7, $8) \
             ORDER BY partition, kafka_offset LIMIT $9",
        )
        .bind(consumer_group)
        .bind(topic)
        .bind(query.pending_only)
        .bind(query.unpublished_only)
        .bind(&query.partitions)
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
                    created_at: col!("created_at"),
                    published_at: col!("published_at"),
                    redrive_attempts: col!("redrive_attempts"),
                    last_redrive_error: col!("last_redrive_error"),
                    redriven_at: col!("redriven_at"),
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
             FROM callsync_dead_letters WHERE consumer_group = $1 AND topic = $2",
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
        let partitions: Vec<i32> = ids.iter().map(|i| i.partition).collect();
        let offsets: Vec<i64> = ids.iter().map(|i| i.offset).collect();
        sqlx::query(
            "UPDATE callsync_dead_letters d SET published_at = now() \
             FROM UNNEST($3::int4[], $4::int8[]) AS u(partition, kafka_offset) \
             WHERE d.consumer_group = $1 AND d.topic = $2 AND d.partition = u.partition \
             AND d.kafka_offset = u.kafka_offset AND d.published_at IS NULL",
        )
        .bind(consumer_group)
        .bind(topic)
        .bind(partitions)
        .bind(offsets)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("marking dead letters published", e))?;
        Ok(())
    }

    async fn redrive(
        &self,
        batch: &SinkBatch,
        marks: &RedriveMarks,
    ) -> Result<RedriveOutcome, StoreError> {
        Ok(
            match self.apply_with(batch, Ledger::Redrive(marks)).await? {
                Outcome::Committed(counts) => RedriveOutcome::Committed(counts),
                Outcome::Rejected(rows) => RedriveOutcome::Rejected(rows),
                Outcome::Conflict(_) => RedriveOutcome::AlreadyRedriven,
            },
        )
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
             last_redrive_error = $5 WHERE consumer_group = $1 AND topic = $2 AND partition = $3 \
             AND kafka_offset = $4 AND redriven_at IS NULL",
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
            "{SELECT_CALLS} WHERE provider = $1 AND account_id = $2 AND call_id = $3"
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
            "{SELECT_CALLS} ORDER BY provider COLLATE \"C\", account_id COLLATE \"C\", call_id COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| StoreError::from_sqlx("reading all calls", e))?;
        rows.iter().map(stored_call).collect()
    }
}

/// Exactly-once rests on a commit, once acknowledged, staying committed. With
/// `synchronous_commit` or `fsync` off a server crash can lose the newest
/// commits (rows and offsets together, so the table stays consistent with its
/// offsets); the sink notices when a partition's next batch meets the offset
/// conflict and reads again from the stored offset, but not before.
async fn warn_when_commits_can_be_lost(pool: &PgPool, target: &str) {
    for setting in ["synchronous_commit", "fsync"] {
        let value: Result<String, _> = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(pool)
            .await;
        if let Ok(value) = value {
            if value == "off" {
                tracing::warn!(
                    %target,
                    setting,
                    "{setting} is off: a server crash can lose acknowledged commits; the sink \
                     re-applies them only when their partition gets new records"
                );
            }
        }
    }
}
