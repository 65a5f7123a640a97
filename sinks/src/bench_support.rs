//! Measurements for `cargo run --release -p callsync-bench -- sink`.
//!
//! All on the same rows and the same database, side by side in one run:
//! - [`measure_sink_drain`]: the sink's store path ([`PgStore::apply`] with the
//!   offsets, in batches of `batch_rows`, binary COPY above the threshold);
//! - [`measure_psql_copy`]: the real `psql` binary running its own staging
//!   `\copy` of a CSV file + one `INSERT ... ON CONFLICT` (the 90% target);
//! - [`measure_row_by_row`]: one `INSERT ... ON CONFLICT` per row, either each row
//!   committed on its own (autocommit: the plain row-by-row sink the 10x target is
//!   about) or a transaction per batch (a generous variant, reported beside it);
//! - [`peak_rss_bytes`]: the process's peak resident set (VmHWM).
//!
//! Each measurement starts from an empty `calls` table.
//! [`run_sink_benchmark`] runs all of them and returns a [`SinkBenchReport`]
//! (serde, for the bench's JSON line).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callsync_schemas::Provider;
use serde::Serialize;

use crate::batch::{SinkBatch, SinkRow, SourceRecord};
use crate::columns::{self, CALL_COLUMNS};
use crate::pg_store::PgStore;
use crate::store::{ApplyOutcome, CallStore, OffsetAdvance, OffsetCommit, StoreError};
use crate::testing::sample_call;

/// A benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{step}: {source}")]
    Sql {
        step: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("writing the CSV file {path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running {program}: {detail}")]
    Psql { program: String, detail: String },
    #[error("the sink did not commit a batch: {0}")]
    NotCommitted(String),
}

/// One measured method.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub rows: usize,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

impl Measurement {
    fn new(rows: usize, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Measurement {
            rows,
            seconds,
            rows_per_sec: rows as f64 / seconds,
        }
    }
}

/// The figures of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct SinkBenchReport {
    pub sink: Measurement,
    pub psql_copy: Measurement,
    /// one upsert per row, each its own transaction (autocommit)
    pub row_by_row: Measurement,
    /// one upsert per row, one transaction per batch
    pub row_by_row_batched: Measurement,
    /// sink rate / psql rate (target >= 0.9)
    pub sink_vs_psql: f64,
    /// sink rate / row-by-row (autocommit) rate (target >= 10)
    pub sink_vs_row_by_row: f64,
    /// sink rate / row-by-row in batch transactions
    pub sink_vs_row_by_row_batched: f64,
    pub peak_rss_bytes: u64,
}

/// `n` distinct calls across 20 accounts and 12 partitions, every field set.
pub fn sample_rows(n: usize) -> Vec<SinkRow> {
    (0..n)
        .map(|i| {
            let account = format!("acct-{}", i % 20);
            let call_id = format!("call-{i:09}");
            SinkRow::new(
                sample_call(
                    Provider::Ringba,
                    &account,
                    &call_id,
                    1_700_000_000_000_000 + i as i64,
                ),
                SourceRecord {
                    partition: (i % 12) as i32,
                    offset: (i / 12) as i64,
                    key: None,
                    payload: None,
                },
            )
        })
        .collect()
}

async fn truncate(store: &PgStore) -> Result<(), BenchError> {
    sqlx::query("TRUNCATE calls, callsync_offsets")
        .execute(store.pool())
        .await
        .map_err(|source| BenchError::Sql {
            step: "truncating calls",
            source,
        })?;
    Ok(())
}

/// The sink's store path: batches of `batch_rows` applied with their offsets.
pub async fn measure_sink_drain(
    store: &PgStore,
    topic: &str,
    rows: &[SinkRow],
    batch_rows: usize,
) -> Result<Measurement, BenchError> {
    truncate(store).await?;
    // batches built ahead, as the consumer builds them while the previous one commits
    let batches: Vec<SinkBatch> = rows
        .chunks(batch_rows.max(1))
        .map(|chunk| SinkBatch::from_rows(topic, chunk.iter().cloned()))
        .collect();
    let mut stored: std::collections::BTreeMap<i32, i64> = Default::default();
    let started = Instant::now();
    for batch in &batches {
        let offsets = OffsetCommit {
            consumer_group: "callsync-bench".into(),
            topic: topic.into(),
            topic_id: None,
            advances: batch
                .next_offsets()
                .iter()
                .map(|(&partition, &next_offset)| OffsetAdvance {
                    partition,
                    expected: stored.get(&partition).copied(),
                    next_offset,
                    backfill_until: None,
                })
                .collect(),
        };
        match store.apply(batch, &offsets).await? {
            ApplyOutcome::Committed(_) => {
                for a in &offsets.advances {
                    stored.insert(a.partition, a.next_offset);
                }
            }
            other => return Err(BenchError::NotCommitted(format!("{other:?}"))),
        }
    }
    Ok(Measurement::new(rows.len(), started.elapsed()))
}

fn csv_field(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => {}
        Some(v) => {
            out.push(b'"');
            for b in v.bytes() {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        }
    }
}

/// Write `rows` as CSV in [`CALL_COLUMNS`] order (NULL as an unquoted empty field).
pub fn write_csv(path: &Path, topic: &str, rows: &[SinkRow]) -> Result<(), BenchError> {
    let csv_err = |source| BenchError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(csv_err)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(2048);
    let t =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for row in rows {
        let r = &row.record;
        line.clear();
        let fields: [Option<String>; 34] = [
            Some(r.provider.as_str().to_string()),
            Some(r.account_id.clone()),
            Some(r.call_id.clone()),
            Some(r.version.to_string()),
            Some(row.fingerprint.as_i64().to_string()),
            Some(t(&r.started_at)),
            r.answered_at.as_ref().map(t),
            r.ended_at.as_ref().map(t),
            r.duration_secs.map(|v| v.to_string()),
            r.billable_secs.map(|v| v.to_string()),
            r.caller_number.clone(),
            r.tracking_number.clone(),
            r.destination_number.clone(),
            r.campaign_id.clone(),
            r.campaign_name.clone(),
            r.publisher_id.clone(),
            r.publisher_name.clone(),
            r.buyer_id.clone(),
            r.buyer_name.clone(),
            Some(r.status.as_str().to_string()),
            r.provider_status.clone(),
            r.converted.map(|v| v.to_string()),
            r.revenue.map(|v| v.to_string()),
            r.payout.map(|v| v.to_string()),
            r.currency.clone(),
            r.recording_url.clone(),
            Some(String::from_utf8_lossy(&columns::tags_json(&r.tags)).into_owned()),
            Some(r.source.as_str().to_string()),
            Some(t(&r.observed_at)),
            r.provider_updated_at.as_ref().map(t),
            r.raw.as_ref().map(|b| {
                let mut s = String::with_capacity(2 + b.len() * 2);
                s.push_str("\\x");
                for byte in b {
                    s.push_str(&format!("{byte:02x}"));
                }
                s
            }),
            Some(topic.to_string()),
            Some(row.source.partition.to_string()),
            Some(row.source.offset.to_string()),
        ];
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            csv_field(&mut line, f.as_deref());
        }
        line.push(b'\n');
        w.write_all(&line).map_err(csv_err)?;
    }
    w.flush().map_err(csv_err)?;
    Ok(())
}

/// The `psql` binary: `$PSQL`, else `psql` on PATH, else PostgreSQL 15's.
pub fn psql_program() -> String {
    if let Ok(p) = std::env::var("PSQL") {
        return p;
    }
    let debian = "/usr/lib/postgresql/15/bin/psql";
    if std::process::Command::new("psql")
        .arg("--version")
        .output()
        .is_ok()
    {
        "psql".to_string()
    } else {
        debian.to_string()
    }
}

/// psql's own staging `\copy` + one `INSERT ... ON CONFLICT`, timed around
/// the psql process (the CSV file is written before the clock starts).
pub async fn measure_psql_copy(
    store: &PgStore,
    database_url: &str,
    topic: &str,
    rows: &[SinkRow],
    work_dir: &Path,
) -> Result<Measurement, BenchError> {
    truncate(store).await?;
    let csv = work_dir.join("callsync-bench-rows.csv");
    write_csv(&csv, topic, rows)?;
    let script = work_dir.join("callsync-bench-copy.sql");
    let cols = CALL_COLUMNS.join(", ");
    let sql = format!(
        "\\set ON_ERROR_STOP on\nBEGIN;\n\
         CREATE TEMP TABLE staging ON COMMIT DROP AS SELECT {cols} FROM calls WITH NO DATA;\n\
         \\copy staging ({cols}) FROM '{}' WITH (FORMAT csv)\n\
         INSERT INTO calls ({cols}, synced_at) SELECT {cols}, now() FROM staging {};\n\
         COMMIT;\n",
        csv.display(),
        columns::upsert_conflict_clause()
    );
    std::fs::write(&script, sql).map_err(|source| BenchError::Csv {
        path: script.clone(),
        source,
    })?;
    let program = psql_program();
    let started = Instant::now();
    let output = tokio::process::Command::new(&program)
        .arg("-X")
        .arg("-q")
        .arg("-d")
        .arg(database_url)
        .arg("-f")
        .arg(&script)
        .output()
        .await
        .map_err(|e| BenchError::Psql {
            program: program.clone(),
            detail: e.to_string(),
        })?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(BenchError::Psql {
            program,
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let _ = std::fs::remove_file(&csv);
    let _ = std::fs::remove_file(&script);
    Ok(Measurement::new(rows.len(), elapsed))
}

/// How the row-by-row baseline commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowByRowCommit {
    /// Every statement is its own transaction (autocommit), as a sink that writes each
    /// record as it consumes it.
    PerRow,
    /// One transaction per this many rows.
    PerBatch(usize),
}

/// One `INSERT ... ON CONFLICT` per row (a prepared statement, so only Bind/Execute per
/// row), committed as `commit` says.
pub async fn measure_row_by_row(
    store: &PgStore,
    topic: &str,
    rows: &[SinkRow],
    commit: RowByRowCommit,
) -> Result<Measurement, BenchError> {
    truncate(store).await?;
    let params: Vec<String> = (1..=CALL_COLUMNS.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "INSERT INTO calls ({}, synced_at) VALUES ({}, now()) {}",
        CALL_COLUMNS.join(", "),
        params.join(", "),
        columns::upsert_conflict_clause()
    );
    let sql_err = |source| BenchError::Sql {
        step: "row-by-row upsert",
        source,
    };
    let chunk_rows = match commit {
        RowByRowCommit::PerRow => rows.len().max(1),
        RowByRowCommit::PerBatch(n) => n.max(1),
    };
    let mut conn = store.pool().acquire().await.map_err(sql_err)?;
    let started = Instant::now();
    for chunk in rows.chunks(chunk_rows) {
        if let RowByRowCommit::PerBatch(_) = commit {
            sqlx::query("BEGIN")
                .execute(&mut *conn)
                .await
                .map_err(sql_err)?;
        }
        for row in chunk {
            let r = &row.record;
            sqlx::query(&sql)
                .bind(r.provider.as_str())
                .bind(&r.account_id)
                .bind(&r.call_id)
                .bind(r.version)
                .bind(row.fingerprint.as_i64())
                .bind(r.started_at)
                .bind(r.answered_at)
                .bind(r.ended_at)
                .bind(r.duration_secs)
                .bind(r.billable_secs)
                .bind(&r.caller_number)
                .bind(&r.tracking_number)
                .bind(&r.destination_number)
                .bind(&r.campaign_id)
                .bind(&r.campaign_name)
                .bind(&r.publisher_id)
                .bind(&r.publisher_name)
                .bind(&r.buyer_id)
                .bind(&r.buyer_name)
                .bind(r.status.as_str())
                .bind(&r.provider_status)
                .bind(r.converted)
                .bind(r.revenue)
                .bind(r.payout)
                .bind(&r.currency)
                .bind(&r.recording_url)
                .bind(serde_json::to_value(&r.tags).unwrap_or_default())
                .bind(r.source.as_str())
                .bind(r.observed_at)
                .bind(r.provider_updated_at)
                .bind(&r.raw)
                .bind(topic)
                .bind(row.source.partition)
                .bind(row.source.offset)
                .execute(&mut *conn)
                .await
                .map_err(sql_err)?;
        }
        if let RowByRowCommit::PerBatch(_) = commit {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(sql_err)?;
        }
    }
    Ok(Measurement::new(rows.len(), started.elapsed()))
}

/// Peak resident set size of this process (VmHWM), in bytes; 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Everything, side by side: `rows` rows for the sink and psql, fewer (they are slow)
/// for the row-by-row baselines: `row_by_row_rows` committed one by one and
/// `batched_row_by_row_rows` in transactions of `batch_rows`.
pub async fn run_sink_benchmark(
    database_url: &str,
    rows: usize,
    row_by_row_rows: usize,
    batched_row_by_row_rows: usize,
    batch_rows: usize,
    copy_threshold: usize,
    work_dir: &Path,
) -> Result<SinkBenchReport, BenchError> {
    let store = PgStore::connect(database_url, 4, copy_threshold).await?;
    store.migrate().await?;
    let topic = "calls";
    let data = sample_rows(rows);
    let psql_copy = measure_psql_copy(&store, database_url, topic, &data, work_dir).await?;
    let sink = measure_sink_drain(&store, topic, &data, batch_rows).await?;
    let row_by_row = measure_row_by_row(
        &store,
        topic,
        &data[..row_by_row_rows.min(rows)],
        RowByRowCommit::PerRow,
    )
    .await?;
    let row_by_row_batched = measure_row_by_row(
        &store,
        topic,
        &data[..batched_row_by_row_rows.min(rows)],
        RowByRowCommit::PerBatch(batch_rows),
    )
    .await?;
    truncate(&store).await?;
    Ok(SinkBenchReport {
        sink_vs_psql: sink.rows_per_sec / psql_copy.rows_per_sec,
        sink_vs_row_by_row: sink.rows_per_sec / row_by_row.rows_per_sec,
        sink_vs_row_by_row_batched: sink.rows_per_sec / row_by_row_batched.rows_per_sec,
        sink,
        psql_copy,
        row_by_row,
        row_by_row_batched,
        peak_rss_bytes: peak_rss_bytes(),
    })
}
